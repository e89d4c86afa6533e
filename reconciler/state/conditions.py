"""The conditions of a status block: set one on a copy, find, remove, order, and the events of a change.

cert-manager's condition rules: `set_condition` keeps `lastTransitionTime` unless the condition's
status flips (or the condition is new) and always sets `observedGeneration`; conditions appear in
`CONDITION_ORDER`; messages are redacted, free of control characters and bounded
(`cap_message`: they are for humans in `kubectl describe`). `transitions` says which condition
changes deserve an event. The status block itself is built by reconciler.state.status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reconciler.log import safe_text
from reconciler.model import Outcome
from reconciler.state.schedule import rfc3339

#: Conditions appear in this order; anything else follows, sorted by type.
CONDITION_ORDER = ("Ready", "Stalled", "Validated", "Connected", "Authenticated",
                   "SecretPublished", "SigningReady", "Warning")
MAX_MESSAGE = 1024  # condition messages are for humans in `kubectl describe`, not for dumps

Conditions = list[dict[str, Any]]


def cap_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """Redacted, free of control characters (server text reaches terminals), bounded."""
    return safe_text(message, limit)


def find_condition(conditions: Sequence[Mapping[str, Any]] | None,
                   type_: str) -> Mapping[str, Any] | None:
    """The condition of that type, or None."""
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(conditions: Sequence[Mapping[str, Any]], type_: str, status: str,
                  reason: str, message: str, now: datetime, generation: int) -> Conditions:
    """Return a copy of `conditions` with `type_` set, in CONDITION_ORDER.

    `lastTransitionTime` is kept unless the status flips (or the condition is new);
    `observedGeneration` is always set.
    """
    out = [dict(cond) for cond in conditions]
    put_condition(out, type_, status, reason, message, now, generation)
    order_conditions(out)
    return out


def put_condition(conditions: Conditions, type_: str, status: str, reason: str, message: str,
                  now: datetime, generation: int) -> None:
    """`set_condition` in place, on a list (and conditions) the caller owns, left unordered.

    The status builder sets up to ten conditions an account on its own copy of the old status:
    copying and sorting the list at each was a third of building a status (bench/README.md,
    benchmark 7). `order_conditions` once at the end gives set_condition's order.
    """
    old: Mapping[str, Any] | None = None
    at = -1
    for i in range(len(conditions) - 1, -1, -1):  # the first of the type; drop the others
        if conditions[i].get("type") == type_:
            if old is not None:
                del conditions[at]
            old, at = conditions[i], i
    transition = rfc3339(now)
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        transition = str(old["lastTransitionTime"])
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": cap_message(message),
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    if old is None:
        conditions.append(new)
    else:
        conditions[at] = new


def drop_condition(conditions: Conditions, type_: str) -> None:
    """Remove every condition of `type_`, in place."""
    for i in range(len(conditions) - 1, -1, -1):
        if conditions[i].get("type") == type_:
            del conditions[i]


_RANK = {t: i for i, t in enumerate(CONDITION_ORDER)}


def _order_key(c: Mapping[str, Any]) -> tuple[int, str]:
    t = str(c.get("type", ""))
    return (_RANK.get(t, len(CONDITION_ORDER)), t)


def order_conditions(conditions: Conditions) -> None:
    """Sort in place in CONDITION_ORDER, anything else after it by type (stable)."""
    conditions.sort(key=_order_key)


def put_outcome(conditions: Conditions, type_: str, outcome: Outcome, ok_message: str,
                now: datetime, generation: int) -> None:
    """Set `type_` from an outcome, in place (see put_condition): True with `ok_message` when it
    is ok, else False with its reason."""
    status = "True" if outcome.ok else "False"
    message = outcome.message or (ok_message if outcome.ok else outcome.reason)
    put_condition(conditions, type_, status, outcome.reason, message, now, generation)


# --------------------------------------------------------------------------- events


def _is_bad(cond: Mapping[str, Any]) -> bool:
    type_, status = cond.get("type"), cond.get("status")
    if type_ in ("Stalled", "Warning"):
        return status == "True"
    return status != "True"


def transitions(old_status: Mapping[str, Any] | None,
                new_status: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(event type, reason, message, condition type) for each condition whose status or reason
    changed; a new condition counts as changed, except a Stalled that starts out False."""
    old_conds = (old_status or {}).get("conditions") or []
    events: list[tuple[str, str, str, str]] = []
    for cond in new_status.get("conditions") or []:
        type_ = str(cond.get("type", ""))
        before = find_condition(old_conds, type_)
        if before is None and type_ == "Stalled" and cond.get("status") != "True":
            continue
        if before is not None and (before.get("status"), before.get("reason")) == (
                cond.get("status"), cond.get("reason")):
            continue
        kind = "Warning" if _is_bad(cond) else "Normal"
        events.append((kind, str(cond.get("reason", "")), str(cond.get("message", "")), type_))
    return events
