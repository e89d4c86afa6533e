"""When the controller takes an account up again after a reconcile: a pure rule, as Flux's
reconcilers return `ctrl.Result{RequeueAfter: ...}`.

`requeue_after` maps what a reconcile ended with to the delay before the key's next turn:
- it failed (a store error, no report): the key's backoff;
- Ready: the resync interval, or sooner when the status says the next probe is due earlier;
- Stalled: the resync only (retrying cannot fix it; a change of spec or Secret queues it anyway);
- not Ready: the backoff, but not before the next probe time the status holds.
A suspended account is not probed, so its next probe time stays where the last probe put it;
once past, waiting for it would requeue the account at once, over and over: it gets the resync.
The worker supplies the jittered resync and the backoff (both random), this decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["error", "ready", "stalled", "not_ready"]

#: A due time is honoured this long after it passes, so the probe finds it due (status times
#: have whole seconds).
LATE = 0.05


@dataclass(frozen=True)
class Requeue:
    """The delay before the next turn, the result label of the metric, and whether the key's
    failure count is reset (its backoff starts again from the base)."""

    after: float
    result: str
    forget: bool


def uses_backoff(outcome: Outcome) -> bool:
    """Whether `requeue_after` needs the key's next backoff (taking one counts a failure)."""
    return outcome in ("error", "not_ready")


def requeue_after(outcome: Outcome, *, until_probe: float | None, suspended: bool,
                  resync: float, backoff: float = 0.0) -> Requeue:
    """The next turn of a key whose reconcile ended with `outcome`; `until_probe` is the time
    to the status's nextProbeTime (None when it has none)."""
    if suspended:
        until_probe = None
    if outcome == "error":
        return Requeue(backoff, "error", forget=False)
    if outcome == "ready":
        after = resync if until_probe is None else min(resync, max(until_probe, 0.0) + LATE)
        return Requeue(after, "ready", forget=True)
    if outcome == "stalled":
        return Requeue(resync, "not_ready", forget=True)
    return Requeue(max(backoff, (until_probe or 0.0) + LATE), "not_ready", forget=False)
