"""When the controller takes an account up again after a reconcile: a pure rule, as Flux's
reconcilers return `ctrl.Result{RequeueAfter: ...}`.

`requeue_after` maps what a reconcile ended with to the delay before the key's next turn:
- it failed (a store error, no report): the key's backoff;
- Ready: the resync interval, or sooner when the status says the next probe is due earlier;
- Stalled: the resync only (retrying cannot fix it; a change of spec or Secret queues it anyway);
- not Ready: the backoff, but not before the next probe time the status holds.
A suspended account is not probed, so its next probe time stays where the last probe put it;
once past, waiting for it would requeue the account at once, over and over: it gets the resync.
The worker supplies the resync (`resync_delay`) and the backoff (random), this decides.

`resync_delay` puts each key's resync on a slot of its own within the interval (`key_phase`, a
hash of the key), not at "interval after its last reconcile": keys reconciled together (the
resyncs the create of 100,000 accounts held back, being less urgent, then taken at once) would
otherwise stay bunched, cycle after cycle, as a +-10% jitter spreads them only slowly
(benchmark 9 at 100,000 accounts: 664 resyncs a second after the create instead of 166).
"""

from __future__ import annotations

import hashlib
import math
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


def key_phase(namespace: str, name: str) -> float:
    """The key's stable slot within the resync interval, in [0, 1), from a hash of the key (the
    same in every replica and after a restart)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[16:24], "big") / float(2**64)


def resync_delay(phase: float, now: float, interval: float) -> float:
    """The delay to the key's next resync slot (`phase` of `interval`, counted from the epoch of
    `now`'s clock) at least half an interval away: exactly `interval` when the key is on its
    slot (its resyncs stay periodic), between 0.5 and 1.5 intervals when it was not, so keys
    reconciled together spread evenly over the interval by their phase after one turn."""
    if interval <= 0:
        return 0.0
    slot = phase * interval
    turns = math.ceil((now + interval / 2 - slot) / interval)
    return slot + turns * interval - now
