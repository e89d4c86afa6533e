"""Memory the C allocator keeps after a burst of reconciles, given back to the system.

A reconcile's transient objects (the API server's answers, the probe's TLS and SMTP objects,
OpenSSL's own buffers) are freed when it ends, but glibc keeps the pages of what it freed in
its heaps unless they sit at a heap's top; so resident memory stays at a burst's high-water
mark. `malloc_trim(0)` hands every wholly free page back (bench/memory_profile.py: RSS above
the base 3.9 -> 3.2 KB an account at 3,000 accounts, 5.0 -> 3.6 KB with a credential per
account, issue 26). The controller calls it from a thread of its own, at most every `period`
seconds and only when reconciles ran since the last time (`due`): nothing when idle, and about
a walk of the heaps a minute while busy. Elsewhere than glibc (musl, macOS) it does nothing.

`settle_heap` is the cyclic garbage collector's counterpart, called once by the controller
command when its caches have synced: what is alive then (modules, classes, the clients, the
caches' first objects) moves to the collector's permanent generation, so its full passes no
longer walk it again and again while the accounts are reconciled (benchmark 9, 20,000 accounts:
128,600 objects frozen; a full pass 97-112 ms -> 12 ms, the collector's time per reconcile
0.27-0.29 -> 0.15 ms, where without it it grew with N from 0.19-0.22 ms at 1,000).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two trims at most: a trim walks every heap (a few ms per 100 MB).
PERIOD = 60.0


def due(*, now: float, last: float, period: float, done: int, done_at_last: int) -> bool:
    """Whether to trim at `now`: `period` seconds since the `last` trim, and reconciles have
    run since (`done` reconciles in all, `done_at_last` at the last trim)."""
    return done > done_at_last and now - last >= period


def _libc_trim() -> Callable[[int], Any] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return None
    return trim  # type: ignore[no-any-return]


class Trimmer:
    """Calls malloc_trim(0) after reconciles, at most every `period` seconds; thread-safe."""

    def __init__(self, reconciles: Callable[[], int], period: float = PERIOD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reconciles, self.period, self.clock = reconciles, period, clock
        self._trim = _libc_trim()
        self._last = clock()
        self._done_at_last = reconciles()
        self.trims = 0  # for tests and logs

    @property
    def available(self) -> bool:
        """Whether the C library has malloc_trim (glibc)."""
        return self._trim is not None

    def maybe_trim(self) -> bool:
        """Trim if `due`; True when it did."""
        now, done = self.clock(), self.reconciles()
        if self._trim is None or not due(now=now, last=self._last, period=self.period,
                                         done=done, done_at_last=self._done_at_last):
            return False
        self._trim(0)
        self._last, self._done_at_last = self.clock(), done
        self.trims += 1
        return True

    def run(self, stopping: threading.Event, tick: float = 1.0) -> None:
        """Until `stopping` is set: trim whenever due (checked every `tick` seconds)."""
        if self._trim is None:
            return
        while not stopping.wait(min(tick, self.period)):
            self.maybe_trim()


def settle_heap() -> int:
    """Collect, then freeze what is left (gc.freeze): a full pass of the cyclic collector
    walks every tracked object, and what a controller holds at start-up (its modules and
    clients, about 128,000 objects) lives as long as the process. Later objects are collected
    as before. The objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
