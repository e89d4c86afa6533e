"""The controller's work queue and the API backoff (reconciler/run/workqueue.py): pure, no cluster."""

from __future__ import annotations

import threading
import time

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
