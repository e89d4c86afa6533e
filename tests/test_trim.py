"""Giving the C allocator's free memory back after reconciles (reconciler/run/trim.py)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from reconciler.run.trim import Trimmer, due, settle_heap


@pytest.mark.parametrize(("now", "last", "done", "done_at_last", "expected"), [
    (100.0, 0.0, 5, 0, True),      # a period gone by, reconciles since
    (100.0, 0.0, 5, 5, False),     # idle: nothing ran since the last trim
    (30.0, 0.0, 5, 0, False),      # too soon after the last trim
    (60.0, 0.0, 1, 0, True),       # exactly one period
    (59.9, 0.0, 1000, 0, False),
])
def test_due(now: float, last: float, done: int, done_at_last: int, expected: bool) -> None:
    assert due(now=now, last=last, period=60.0, done=done, done_at_last=done_at_last) is expected


def test_the_trimmer_trims_after_reconciles_and_not_when_idle() -> None:
    clock = [0.0]
    reconciles = [0]
    trimmer = Trimmer(lambda: reconciles[0], period=60.0, clock=lambda: clock[0])
    if not trimmer.available:
        pytest.skip("no malloc_trim in this C library")
    clock[0] = 120.0
    assert not trimmer.maybe_trim()  # idle since it started
    reconciles[0] = 10
    assert trimmer.maybe_trim()
    clock[0] = 150.0
    reconciles[0] = 20
    assert not trimmer.maybe_trim()  # within the period
    clock[0] = 180.0
    assert trimmer.maybe_trim()
    clock[0] = 400.0
    assert not trimmer.maybe_trim()  # nothing ran since
    assert trimmer.trims == 2


def test_run_stops_when_asked() -> None:
    trimmer = Trimmer(lambda: 0, period=60.0)
    stopping = threading.Event()
    stopping.set()
    thread = threading.Thread(target=trimmer.run, args=(stopping,))
    thread.start()
    thread.join(5)
    assert not thread.is_alive()


def test_settle_heap_leaves_what_lives_out_of_the_full_passes_and_collects_the_rest() -> None:
    """After settle_heap, a full pass walks only what was made since: objects alive before sit
    in the permanent generation (gc.freeze); garbage cycles of before were collected first, and
    cycles made after are still collected."""

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    kept = [Cycle() for _ in range(100)]
    dropped = weakref.ref(Cycle())  # a cycle: only the collector frees it
    gc.disable()
    try:
        frozen = settle_heap()
        assert dropped() is None  # collected, not frozen
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert all(not any(obj is k for obj in gc.get_objects()) for k in kept[:3])
        later = weakref.ref(Cycle())
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()
        gc.enable()
    assert any(obj is kept[0] for obj in gc.get_objects())
