"""The controller's work queue and the API backoff (reconciler/run/workqueue.py): pure, no cluster."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.run.workqueue import ApiBackoff, WorkQueue


def test_work_queue_deduplicates_and_requeues_keys_added_while_processing() -> None:
    q = WorkQueue()
    a, b = ("ns", "a"), ("ns", "b")
    for key in (a, b, a, a):
        q.add(key)
    assert q.depth() == 2
    assert q.get(0.1) == a
    q.add(a)  # while a is being worked on: not handed to a second worker
    assert q.get(0.1) == b
    assert q.get(0.05) is None
    q.done(a)
    assert q.get(0.1) == a
    q.done(a)
    q.done(b)
    q.shutdown()


def test_work_queue_delays_keep_the_earliest_and_backoff_grows_to_a_cap() -> None:
    q = WorkQueue(base=0.1, cap=1.0)
    key = ("ns", "a")
    q.add_after(key, 0.2)
    q.add_after(key, 5.0)  # a later due time does not postpone the pending one
    started = time.monotonic()
    assert q.get(2.0) == key
    assert 0.15 <= time.monotonic() - started < 1.0
    q.done(key)
    delays = [q.backoff(key) for _ in range(8)]
    for earlier, later in zip(delays[:3], delays[1:4], strict=True):
        assert later >= earlier  # jitter stays in the upper half: never shrinks while growing
    assert all(0.5 <= d <= 1.0 for d in delays[4:])  # capped
    q.forget(key)
    assert q.failures(key) == 0 and q.backoff(key) <= 0.1
    q.shutdown()
    assert q.get(0.1) is None


def test_changed_keys_go_before_the_clocks_and_the_retries() -> None:
    q = WorkQueue()
    for key in (("ns", "timer-1"), ("ns", "timer-2"), ("ns", "changed")):
        q.add(key)
    q.add(("ns", "changed"), urgent=True)  # already queued: moves ahead
    q.add(("ns", "new"), urgent=True)
    order = [q.get(timeout=0) for _ in range(4)]
    assert order == [("ns", "changed"), ("ns", "new"), ("ns", "timer-1"), ("ns", "timer-2")]
    assert q.depth() == 0


def test_api_backoff_grows_once_per_round_and_resets_on_success() -> None:
    backoff = ApiBackoff(base=10.0, cap=60.0)
    first = backoff.failed()
    assert 5.0 <= first <= 10.0 and backoff.failures == 1
    assert backoff.failed() <= first and backoff.failures == 1  # same round: no growth
    assert backoff.remaining() > 0
    backoff.succeeded()
    assert backoff.remaining() == 0 and backoff.failures == 0
    stopping = threading.Event()
    backoff.wait(stopping)  # returns at once: no backoff


def test_after_a_failure_one_thread_at_a_time_tries() -> None:
    """The half-open round (issue 23 item 11): once the delay is over, the first thread to wait
    gets the turn; another waits until that try fails, succeeds or decides nothing."""
    backoff = ApiBackoff(base=0.001, cap=0.001)
    backoff.failed()
    stopping = threading.Event()
    backoff.wait(stopping)  # the delay passes, and this thread has the turn
    backoff.wait(stopping)  # again: still its turn
    passed = threading.Event()

    def other() -> None:
        backoff.wait(stopping)
        passed.set()
        backoff.done()

    t = threading.Thread(target=other)
    t.start()
    assert not passed.wait(0.3)  # blocked behind this thread's try (a bounded look, not a sync)
    backoff.done()  # the try decided nothing: the other may try
    assert passed.wait(10)
    t.join(10)
    backoff.succeeded()
    assert backoff.failures == 0


def _drain(q: WorkQueue) -> list[object]:
    out = []
    while (key := q.get(timeout=0)) is not None:
        out.append(key[1])
        q.done(key)
    return out


@pytest.mark.parametrize(("steps", "order"), [
    # (operation, name): add, urgent (add urgent), remove; then every key is taken in turn
    ([("add", "a"), ("add", "b"), ("add", "c")], ["a", "b", "c"]),
    ([("add", "a"), ("add", "b"), ("urgent", "b")], ["b", "a"]),
    ([("add", "a"), ("urgent", "b"), ("urgent", "a"), ("urgent", "a")], ["b", "a"]),
    ([("urgent", "a"), ("add", "a"), ("add", "b")], ["a", "b"]),  # urgent stays urgent
    ([("add", "a"), ("add", "b"), ("remove", "a"), ("add", "a")], ["b", "a"]),
    ([("add", "a"), ("urgent", "a"), ("remove", "a"), ("add", "a"), ("urgent", "c")], ["c", "a"]),
    ([("add", "a"), ("remove", "a"), ("remove", "a")], []),
    ([("add", f"k{i}") for i in range(200)] + [("remove", f"k{i}") for i in range(199)],
     ["k199"]),  # the dropped entries are compacted away
    ([("add", f"k{i}") for i in range(100)] + [("urgent", f"k{i}") for i in range(99, 49, -1)],
     [f"k{i}" for i in range(99, 49, -1)] + [f"k{i}" for i in range(50)]),
])
def test_lanes_keep_their_order_through_moves_and_removals(steps: list[tuple[str, str]],
                                                           order: list[str]) -> None:
    q = WorkQueue()
    for op, name in steps:
        key = ("ns", name)
        if op == "remove":
            q.remove(key)
        else:
            q.add(key, urgent=op == "urgent")
    assert q.depth() == len(order)
    assert _drain(q) == order
    assert q.depth() == 0 and q.idle()


class _Name(str):
    """A key part that counts how often it is compared with another (not itself)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        _Name.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_moving_or_dropping_a_key_does_not_scan_the_queue() -> None:
    """100,000 accounts (issue 26 item 4): a credential Secret read by a namespace's thousands of
    accounts changes while their resyncs wait in the queue. Moving each ahead, or dropping one,
    looked for it through the whole lane (about 3.8 ms a key at 100,000); now it compares no key
    with another, whatever the number queued."""
    q = WorkQueue()
    keys = [(_Name("ns"), _Name(f"a{i:05d}")) for i in range(5000)]
    for key in keys:
        q.add(key)
    _Name.compared = 0
    for key in keys[-100:]:
        q.add(key, urgent=True)
    for key in keys[:100]:
        q.remove(key)
    assert _Name.compared == 0
    assert q.get(timeout=0) == keys[-100]
    assert q.depth() == 5000 - 200 + 99
