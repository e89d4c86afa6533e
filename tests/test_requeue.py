"""The controller's requeue rule (reconciler/run/requeue.py): a pure function, table-tested."""

from __future__ import annotations

import pytest

from reconciler.run.requeue import LATE, Requeue, requeue_after, uses_backoff

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
