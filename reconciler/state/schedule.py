"""When to probe and when to authenticate: a pure function of (account, old status, now).

Decide first, act once: `probe_decision` gathers every trigger into one `Decision` with a
human-readable `why`, and the run acts on it. The clock is a parameter.

Triggers for a probe (first match wins the `why`):
- never probed (no status, or no `lastProbeTime`);
- the spec changed (`metadata.generation` != `status.observedGeneration`);
- a referenced Secret/ConfigMap key changed (its version differs from `status.secretVersions`);
- the `email.reconciler.io/requested-at` annotation holds a value other than the one recorded in
  `status.lastRequestedAt` (compared as opaque strings, so any value works and clock skew between
  the annotating client and the reconciler does not matter; `build_status` records the value once
  a probe ran);
- the published Secret (`status.secretName`) is missing while Ready was True: a Secret is only
  (re)published from a fresh probe (a failing account never overwrites a good Secret), so a
  deleted Secret needs one now rather than at the next interval; AUTH still follows authInterval;
- `now >= status.nextProbeTime` (or no nextProbeTime recorded).
`probe.suspend: true` stops all of it.

AUTH is attempted only while probing, and only when it was never attempted, the spec or a
credential changed, a probe was requested, the last AUTH failed with a reason that retrying can
fix, or `authInterval` passed since the last attempt. After a terminal failure (wrong password)
AUTH waits for a changed credential, spec or an explicit request: probing never locks an
account out.

The controller writes `lastAuthTime` only with another change (status.REMEMBERED_FIELDS), so
after a restart or a shard hand-over the stored one is often older than authInterval. An AUTH
that was already due when the controller took the account over (`taken_over`) waits for the
account's stable share of authInterval (`spread_auth_time`): a restart spreads its AUTHs over one
authInterval instead of sending every account's at once to the provider. A change, a request or
a failed AUTH that retrying can fix still authenticates at once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler import reasons
from reconciler.model import (
    MAX_DURATION_SECONDS,
    REQUESTED_AT_ANNOTATION,
    Account,
    status_condition,
)

#: The jitter is at most this fraction of the interval, either way.
JITTER_FRACTION = 0.10


@dataclass(frozen=True)
class Decision:
    """Whether this run probes the account, whether it attempts AUTH, and why (for logs)."""

    probe: bool
    authenticate: bool
    why: str


@functools.lru_cache(maxsize=256)
def rfc3339(dt: datetime) -> str:
    """Format as RFC 3339 UTC with seconds precision: 2026-11-25T08:00:00Z.

    Cached: a run formats its one `now` about seven times an account (strftime was a fifth of
    building a status)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp ('Z' or an offset) into an aware UTC datetime."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def days_until(value: Any, now: datetime) -> int | None:
    """Whole days from `now` until an RFC 3339 time (negative once past, floored as the probe
    counts a certificate's days), None when unreadable. Where a certificate's days remaining are
    shown: the status keeps only notAfter, as days would change (and be written) every day."""
    at = _parse_or_none(value)
    if at is None:
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return int((at - now).total_seconds() // 86400)


def _parse_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        return None


def _changed_refs(old: Mapping[str, Any], current: Mapping[str, str]) -> list[str]:
    recorded = old.get("secretVersions")
    if not isinstance(recorded, Mapping):
        recorded = {}
    keys = set(recorded) | set(current)
    return sorted(k for k in keys if recorded.get(k) != current.get(k))


def _spec_triggers(account: Account, old: Mapping[str, Any],
                   secret_versions: Mapping[str, str]) -> str | None:
    """A reason to probe AND to authenticate: a change made by a human, not by the clock."""
    if old.get("observedGeneration") != account.generation:
        return (f"spec changed (generation {old.get('observedGeneration')} -> "
                f"{account.generation})")
    changed = _changed_refs(old, secret_versions)
    if changed:
        return f"referenced secret changed: {', '.join(changed)}"
    requested = account.annotations.get(REQUESTED_AT_ANNOTATION)
    if requested and requested != old.get("lastRequestedAt"):
        return f"probe requested ({REQUESTED_AT_ANNOTATION}={requested})"
    return None


def auth_offset(account: Account) -> float:
    """The account's stable share of authInterval, in [0, 1), from the object's identity (another
    part of the digest than the probe jitter's, so the two are not in step)."""
    identity = account.uid or f"{account.namespace}/{account.name}"
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[8:16], "big") / float(2**64)


def spread_auth_time(account: Account, *, last_auth: datetime,
                     taken_over: datetime | None) -> datetime | None:
    """When an AUTH that authInterval already asked for when this controller took the account
    over (`taken_over`: its start, or a shard hand-over) may run: that moment plus the account's
    share of authInterval. None: nothing to spread (not taken over, or the AUTH was not yet due
    then, so its own time, spread by the last controller, holds)."""
    if taken_over is None:
        return None
    interval = timedelta(seconds=bounded_seconds(account.probe.auth_interval_seconds))
    if last_auth + interval > taken_over:
        return None
    return taken_over + interval * auth_offset(account)


def _auth_due(account: Account, old: Mapping[str, Any], now: datetime,
              taken_over: datetime | None = None) -> tuple[bool, str]:
    """Whether a clock-driven probe should also attempt AUTH."""
    last_auth = _parse_or_none(old.get("lastAuthTime"))
    if last_auth is None:
        return True, "never authenticated"
    cond = status_condition(old, "Authenticated")
    if cond and cond.get("status") != "True":
        reason = str(cond.get("reason", ""))
        if reason in reasons.TERMINAL:
            return False, f"last AUTH failed with {reason}; waiting for a changed credential"
        if reason != reasons.AUTH_SKIPPED:
            return True, f"last AUTH failed with {reason}; retrying"
    auth_interval = bounded_seconds(account.probe.auth_interval_seconds)
    if now - last_auth < timedelta(seconds=auth_interval):
        return False, "authInterval not elapsed"
    spread = spread_auth_time(account, last_auth=last_auth, taken_over=taken_over)
    if spread is not None and now < spread:
        return False, (f"authInterval elapsed before this controller took the account over; "
                       f"AUTH spread to {rfc3339(spread)}")
    return True, "authInterval elapsed"


def probe_decision(*, account: Account, old_status: Mapping[str, Any] | None,
                   secret_versions: Mapping[str, str], now: datetime,
                   published_secret_missing: bool = False,
                   taken_over: datetime | None = None) -> Decision:
    """Decide whether to probe (and authenticate) this account now; see the module docstring.

    `published_secret_missing`: the Secret named by `status.secretName` does not exist, or
    someone else edited it (the caller looked; only the controller watches Secrets).
    `taken_over`: when this controller took the account over (None: a run, which spreads
    nothing).
    """
    if account.probe.suspend:
        return Decision(False, False, "suspended (spec.probe.suspend: true)")
    old = old_status or {}
    if not old or _parse_or_none(old.get("lastProbeTime")) is None:
        return Decision(True, True, "never probed")
    trigger = _spec_triggers(account, old, secret_versions)
    if trigger is not None:
        return Decision(True, True, trigger)
    if (published_secret_missing and old.get("secretName")
            and status_condition(old, "Ready").get("status") == "True"):
        auth, why_auth = _auth_due(account, old, now, taken_over)
        return Decision(True, auth, f"published Secret {old['secretName']} missing or edited; "
                        f"{why_auth}")
    next_probe = _parse_or_none(old.get("nextProbeTime"))
    if next_probe is not None and now < next_probe:
        return Decision(False, False, f"next probe at {rfc3339(next_probe)}")
    auth, why_auth = _auth_due(account, old, now, taken_over)
    return Decision(True, auth, f"interval due; {why_auth}")


def last_probe_time(old_status: Mapping[str, Any] | None) -> datetime | None:
    """When the account was last probed (`lastProbeTime`), None when never or unreadable: a
    shared endpoint result must be newer than that to serve it (probe/endpoints.py)."""
    return _parse_or_none((old_status or {}).get("lastProbeTime"))


def bounded_seconds(seconds: float) -> float:
    """A duration clamped to [0, MAX_DURATION_SECONDS] (NaN: 0), so that no spec, however it got
    past validation, makes `now + timedelta(...)` raise OverflowError and stop the run."""
    return min(max(seconds, 0.0), MAX_DURATION_SECONDS) if seconds == seconds else 0.0


def _jitter_factor(account: Account) -> float:
    """A stable factor in [1 - JITTER_FRACTION, 1 + JITTER_FRACTION] from the object's identity."""
    identity = account.uid or f"{account.namespace}/{account.name}"
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    unit = int.from_bytes(digest[:8], "big") / float(2**64 - 1)  # [0, 1]
    return 1.0 + JITTER_FRACTION * (2.0 * unit - 1.0)


def probe_delay_seconds(account: Account, *, failed_probes: int) -> float:
    """Seconds until the next probe: the jittered interval, or backoff after failures."""
    interval = max(bounded_seconds(account.probe.interval_seconds), 1.0)
    if failed_probes > 0:
        retry = max(bounded_seconds(account.probe.retry_interval_seconds), 1.0)
        # 2**n overflows float for absurd n; the cap makes anything past 64 doublings moot.
        return min(retry * 2.0 ** min(failed_probes - 1, 64), interval)
    return interval * _jitter_factor(account)


def max_failed_probes(account: Account) -> int:
    """The consecutive failures after which the backoff has reached the interval (further ones
    change nothing: `probe_delay_seconds` is the interval from there on)."""
    interval = max(account.probe.interval_seconds, 1.0)
    retry = max(account.probe.retry_interval_seconds, 1.0)
    n = 1
    while retry * 2.0 ** (n - 1) < interval and n < 64:
        n += 1
    return n


def next_probe_time(account: Account, *, now: datetime, failed_probes: int) -> datetime:
    """When to probe next: `now` plus `probe_delay_seconds`, rounded up to whole seconds (the
    status has seconds precision; rounding down could make a backoff of 1 s due at once)."""
    delay = probe_delay_seconds(account, failed_probes=failed_probes)
    try:
        at = now + timedelta(seconds=delay)
    except OverflowError:  # only a clock near year 9999: the latest time there is
        return datetime.max.replace(tzinfo=now.tzinfo, microsecond=0)
    return at if at.microsecond == 0 else at.replace(microsecond=0) + timedelta(seconds=1)
