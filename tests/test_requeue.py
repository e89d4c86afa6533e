"""The controller's requeue rule (reconciler/run/requeue.py): a pure function, table-tested."""

from __future__ import annotations

import pytest

from reconciler.run.requeue import (
    LATE,
    Requeue,
    key_phase,
    requeue_after,
    resync_delay,
    uses_backoff,
)

RESYNC, BACKOFF = 600.0, 8.0


@pytest.mark.parametrize(("outcome", "until_probe", "suspended", "expected"), [
    # Ready: the resync, or the next probe time when sooner (a little after it, so it is due)
    ("ready", None, False, Requeue(RESYNC, "ready", forget=True)),
    ("ready", 30.0, False, Requeue(30.0 + LATE, "ready", forget=True)),
    ("ready", 900.0, False, Requeue(RESYNC, "ready", forget=True)),
    ("ready", -5.0, False, Requeue(LATE, "ready", forget=True)),  # already past: at once
    # suspended: its next probe time is stale, never probed: the resync, not a loop
    ("ready", -5.0, True, Requeue(RESYNC, "ready", forget=True)),
    # Stalled: retrying cannot fix it
    ("stalled", 30.0, False, Requeue(RESYNC, "not_ready", forget=True)),
    # not Ready: the backoff, but not before the status's next probe
    ("not_ready", None, False, Requeue(BACKOFF, "not_ready", forget=False)),
    ("not_ready", 3.0, False, Requeue(BACKOFF, "not_ready", forget=False)),
    ("not_ready", 20.0, False, Requeue(20.0 + LATE, "not_ready", forget=False)),
    ("not_ready", 20.0, True, Requeue(BACKOFF, "not_ready", forget=False)),
    # the reconcile failed (store error): the backoff
    ("error", 20.0, False, Requeue(BACKOFF, "error", forget=False)),
])
def test_requeue_after(outcome: str, until_probe: float | None, suspended: bool,
                       expected: Requeue) -> None:
    backoff = BACKOFF if uses_backoff(outcome) else 0.0  # type: ignore[arg-type]
    assert requeue_after(outcome, until_probe=until_probe,  # type: ignore[arg-type]
                         suspended=suspended, resync=RESYNC, backoff=backoff) == expected


@pytest.mark.parametrize(("outcome", "backs_off"), [
    ("error", True), ("not_ready", True), ("ready", False), ("stalled", False),
])
def test_only_failures_take_a_backoff(outcome: str, backs_off: bool) -> None:
    assert uses_backoff(outcome) is backs_off  # type: ignore[arg-type]


def test_keys_reconciled_together_spread_over_the_interval_after_one_turn() -> None:
    """1,000 keys reconciled at one moment (a backlog taken at once) have their next resyncs
    spread evenly over the interval, each half an interval to one and a half away; a random
    +-10 % jitter would keep them within a fifth of it."""
    now, interval = 1_000_000.0, 600.0
    delays = [resync_delay(key_phase("tenant", f"a{i:04d}"), now, interval) for i in range(1000)]
    assert all(interval / 2 <= d < 1.5 * interval for d in delays)
    buckets = [0] * 10
    for d in delays:
        buckets[int(((now + d) % interval) / interval * 10)] += 1
    assert min(buckets) >= 70 and max(buckets) <= 130, buckets


@pytest.mark.parametrize(("phase", "now", "expected"), [
    (0.25, 150.0, 600.0),  # on its slot: exactly the interval, so it stays periodic
    (0.25, 150.2, 599.8),  # taken a little late: back to its slot
    (0.25, 500.0, 850.0),  # off its slot (a change queued it): its slot after next
    (0.25, 0.0, 750.0),  # its slot only 150 s away: the one after (at least half an interval)
    (0.0, 1200.0, 600.0),
    (0.5, 0.0, 300.0),  # exactly half an interval away: taken
])
def test_resync_delay(phase: float, now: float, expected: float) -> None:
    assert resync_delay(phase, now, 600.0) == pytest.approx(expected)


def test_key_phase_is_stable_and_differs_by_key() -> None:
    assert key_phase("mail", "billing") == key_phase("mail", "billing")
    assert 0 <= key_phase("mail", "billing") < 1
    assert key_phase("mail", "billing") != key_phase("shop", "billing")
