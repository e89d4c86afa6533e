"""The status block of an EmailAccount as a pure function of (account, old status, result, now).

DESIGN §5. Decide first, act once: `build_status` copies the old status, sets the probe fields
and each positive condition, then derives Ready and Stalled from them with the chain of named
checks in reconciler.state.readiness, and returns the new status. `status_differs` tells the run
whether anything must be written at all, and reconciler.state.conditions.transitions which events
to record.

Rules worth knowing:
- `lastTransitionTime` changes only when a condition's status flips (`set_condition`).
- No heartbeat: when no probe ran (`result is None`) the probe fields and the probe-driven
  conditions are carried over untouched, so an unchanged account yields an identical status.
- Ready is True only when Validated, Connected, Authenticated, SigningReady (with signing) and
  SecretPublished are all True; otherwise it carries the first failing condition's reason.
- Stalled is True when that reason is terminal (`reasons.TERMINAL`): retrying cannot fix it.
- `suspended: true` is set while `spec.probe.suspend` is true; conditions stay as they were.
- `lastRequestedAt` records the requested-at annotation a probe honoured (see schedule.py).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from reconciler import reasons
from reconciler.log import safe_text
from reconciler.model import REQUESTED_AT_ANNOTATION, Account, Diagnostic, Outcome, ProbeResult
from reconciler.state.conditions import (
    MAX_MESSAGE,
    Conditions,
    cap_message,
    drop_condition,
    find_condition,
    order_conditions,
    put_condition,
    put_outcome,
    set_condition,
)
from reconciler.state.fold import Checks, fold_into
from reconciler.state.formats import format_warnings
from reconciler.state.readiness import (
    all_problems,
    auth_not_required,
    first_failure,
    probe_passed,
    ready_message,
    signing_configured,
    stalled_message,
)
from reconciler.state.schedule import max_failed_probes, next_probe_time, rfc3339

#: Fields that describe what the last probe found; absent in the result means absent in status.
PROBE_FIELDS = ("connectivity", "protocol", "tlsVersion", "cipher", "certificate",
                "authMechanisms")
#: Status fields in the order a human reads them; unknown fields follow, conditions come last.
STATUS_ORDER = ("observedGeneration", "suspended", "connectivity", "protocol", "tlsVersion",
                "cipher", "certificate", "authMechanisms", "signing", "secretName",
                "lastProbeTime", "lastAuthTime", "lastRequestedAt", "failedProbes",
                "nextProbeTime", "secretVersions")

Status = dict[str, Any]


def _clean(value: Any) -> Any:
    """Strings of a status block made safe the same way (certificate names come from servers)."""
    if isinstance(value, str):
        return safe_text(value, MAX_MESSAGE)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _summarise(account: Account, status: Status, now: datetime,
               failure: tuple[str, str] | None) -> Status:
    """Set Ready and Stalled from the positive conditions (`failure`: their first_failure)."""
    gen = account.generation
    conditions = status["conditions"]
    if failure is None:
        put_condition(conditions, "Ready", "True", reasons.READY,
                      ready_message(account, status), now, gen)
    else:
        put_condition(conditions, "Ready", "False", failure[0],
                      all_problems(conditions, failure), now, gen)
    if failure is not None and failure[0] in reasons.TERMINAL:
        put_condition(conditions, "Stalled", "True", failure[0], stalled_message(*failure),
                      now, gen)
    else:
        put_condition(conditions, "Stalled", "False", reasons.NOT_STALLED,
                      "Nothing needs a change by hand.", now, gen)
    order_conditions(conditions)
    return _ordered(status)


def _ordered(status: Status) -> Status:
    known = [k for k in STATUS_ORDER if k in status]
    rest = sorted(k for k in status if k not in STATUS_ORDER and k != "conditions")
    out = {k: status[k] for k in known + rest}
    out["conditions"] = status.get("conditions") or []
    return out


# --------------------------------------------------------------------------- probe fields


def _probe_fields(result: ProbeResult) -> dict[str, Any]:
    values: dict[str, Any] = {
        "connectivity": result.connectivity or None,
        "protocol": result.protocol,
        "tlsVersion": result.tls_version,
        "cipher": result.cipher,
        "certificate": result.certificate.to_status() if result.certificate else None,
        "authMechanisms": list(result.auth_mechanisms) or None,
    }
    return {k: _clean(v) for k, v in values.items() if v is not None}


def _signing_status(result: ProbeResult) -> dict[str, Any] | None:
    """Certificate facts of the signing key: never key material."""
    signing = result.signing
    if signing is None or signing.certificate is None:
        return None
    cert = signing.certificate
    out: dict[str, Any] = {"subject": cert.subject, "notAfter": cert.not_after}
    if cert.serial is not None:
        out["serial"] = cert.serial
    if cert.signature_algorithm is not None:
        out["signatureAlgorithm"] = cert.signature_algorithm
    if signing.alias:
        out["alias"] = signing.alias
    return out


def _warnings(account: Account, result: ProbeResult) -> list[Outcome]:
    found = list(result.warnings)
    if result.signing is not None:
        found += list(result.signing.warnings)
    return found + list(format_warnings(account, result))


def _apply_result(account: Account, status: Status, result: ProbeResult,
                  now: datetime) -> None:
    """Probe fields and the Connected/Authenticated/SigningReady/Warning conditions."""
    gen = account.generation
    for name in PROBE_FIELDS:
        status.pop(name, None)
    status.update(_probe_fields(result))
    status["lastProbeTime"] = rfc3339(now)
    status["secretVersions"] = dict(sorted(result.secret_versions.items()))
    requested = account.annotations.get(REQUESTED_AT_ANNOTATION)
    if requested:
        status["lastRequestedAt"] = requested

    if result.authentication is not None and not auth_not_required(account):
        status["lastAuthTime"] = rfc3339(now)
    conds = status["conditions"]
    fold_into(account, conds, Checks(endpoint=result.connection,
                                     connectivity=result.connectivity,
                                     credential=result.authentication), now)
    if signing_configured(account):
        if result.signing is not None:
            put_outcome(conds, "SigningReady", result.signing.outcome,
                        "The signing key and certificate are usable.", now, gen)
            signing = _signing_status(result)
            if signing is None:
                status.pop("signing", None)
            else:
                status["signing"] = signing
        elif find_condition(conds, "SigningReady") is None:
            put_condition(conds, "SigningReady", "Unknown", reasons.PROGRESSING,
                          "The signing keystore has not been checked yet.", now, gen)
    else:
        drop_condition(conds, "SigningReady")
        status.pop("signing", None)

    warnings = _warnings(account, result)
    if warnings:
        put_condition(conds, "Warning", "True", warnings[0].reason,
                      "; ".join(w.message or w.reason for w in warnings), now, gen)
    else:
        drop_condition(conds, "Warning")


def _apply_published(account: Account, status: Status, published: Outcome | None,
                     probe_failed: bool, now: datetime) -> None:
    """SecretPublished: this run's publish outcome, or why nothing was published."""
    gen = account.generation
    name = account.publish.secret_name
    conds = status["conditions"]
    old = find_condition(conds, "SecretPublished")
    if published is not None:
        put_condition(conds, "SecretPublished", "True" if published.ok else "False",
                      published.reason,
                      published.message or f"Secret {name} holds the sender configuration.",
                      now, gen)
    elif probe_failed:
        reason, message = first_failure(conds, signing_configured(account)) or (
            reasons.PROGRESSING, "the probe did not pass")
        if old is not None and old.get("status") == "True":
            put_condition(
                conds, "SecretPublished", "True", reasons.PUBLISHED,
                f"Secret {name} keeps the last good configuration; it was not updated because "
                f"the probe failed ({reason}).", now, gen)
        else:
            put_condition(
                conds, "SecretPublished", "False", reason,
                f"Secret {name} was not published because the probe failed: {message}",
                now, gen)


# --------------------------------------------------------------------------- public builders


def build_status(*, account: Account, old_status: Mapping[str, Any] | None,
                 result: ProbeResult | None, published: Outcome | None,
                 now: datetime, publishing: bool = True) -> Status:
    """The complete new status block (DESIGN §5); `result is None` means not probed this run.

    `publishing=False` (the `probe` command, which has no store) leaves SecretPublished out, so
    Ready says whether the account works, not whether a Secret exists.

    The old status is copied once (`_copy`); the conditions are then set on that copy in place
    and ordered once, at the end (put_condition).
    """
    old = old_status or {}
    status: Status = {k: _copy(v) for k, v in old.items() if k != "conditions"}
    conds: Conditions = [dict(_copy(c)) for c in old.get("conditions") or ()]
    status["conditions"] = conds
    gen = account.generation
    status["observedGeneration"] = gen
    if published is not None and published.ok:
        # Only a Secret that exists is named here: after a rename whose first probe failed, the
        # old name stays so the next good run can remove the old Secret.
        status["secretName"] = account.publish.secret_name
    # For the VIA printer column: the spec may leave sendUsing to its default.
    status["via"] = "Graph" if account.send_using == "MicrosoftGraph" else "SMTP"
    # For the EMAIL and HOST printer columns, whichever way the account sends.
    if account.graph is not None:
        status["sender"] = account.graph.user_principal_name
        status["host"] = urlsplit(account.graph.endpoint).hostname or account.graph.endpoint
    elif account.smtp is not None:
        status["sender"] = account.smtp.identity.email_address
        status["host"] = account.smtp.connection.host
    if account.probe.suspend:
        status["suspended"] = True
    else:
        status.pop("suspended", None)

    validated = "The manifest is valid."
    if account.warnings:
        validated += " Warnings: " + "; ".join(d.message for d in account.warnings)
    put_condition(conds, "Validated", "True", reasons.VALID, validated, now, gen)
    signing = signing_configured(account)
    if result is not None:
        _apply_result(account, status, result, now)
        failed_probe = not probe_passed(account=account, old_status=old, result=result)
        if publishing:
            _apply_published(account, status, published, failed_probe, now)
        else:
            drop_condition(conds, "SecretPublished")
            status.pop("secretName", None)
        # Without a store (the probe command) SecretPublished is absent, and that is no failure.
        failure = first_failure(conds, signing, publishing)
        # Counted up to the failure whose backoff reaches the interval: past it the next probe
        # time is the same, and a count that moved on every failed probe would be a write per
        # interval for an account that stays broken.
        failed = 0 if failure is None else int(old.get("failedProbes") or 0) + 1
        failed = min(failed, max_failed_probes(account))
        status["failedProbes"] = failed
        # A terminal failure waits for a human, so backing off faster helps no one.
        backoff = 0 if failure is not None and failure[0] in reasons.TERMINAL else failed
        status["nextProbeTime"] = rfc3339(next_probe_time(account, now=now,
                                                          failed_probes=backoff))
    else:
        if published is not None:
            _apply_published(account, status, published, False, now)
        failure = first_failure(conds, signing, publishing)
    status.setdefault("failedProbes", 0)
    return _summarise(account, status, now, failure)


def _copy(value: Any) -> Any:
    """A deep copy of a status value: dicts and lists (what a status is made of, JSON-like)
    copied here, anything else by copy.deepcopy (copy.deepcopy of the whole status was 45 us
    of the controller's status with conditions; this is a quarter of that)."""
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    return copy.deepcopy(value)


def invalid_status(*, old_status: Mapping[str, Any] | None, generation: int,
                   diagnostics: Sequence[Diagnostic], now: datetime) -> Status:
    """Status of a manifest that failed validation: Validated/Ready False, Stalled True.

    Everything else (the last good probe information) is kept from `old_status`.
    """
    status: Status = copy.deepcopy(dict(old_status or {}))
    status["observedGeneration"] = generation
    errors = [d for d in diagnostics if d.severity == "error"] or list(diagnostics)
    detail = "; ".join(d.message if not d.pointer else f"{d.pointer}: {d.message}"
                       for d in errors) or "the manifest is invalid"
    message = cap_message(f"Fix the manifest: {detail}")
    conds: Conditions = status.get("conditions") or []
    conds = set_condition(conds, "Validated", "False", reasons.INVALID_SPEC, message, now,
                          generation)
    conds = set_condition(conds, "Ready", "False", reasons.INVALID_SPEC, message, now,
                          generation)
    conds = set_condition(conds, "Stalled", "True", reasons.INVALID_SPEC,
                          stalled_message(reasons.INVALID_SPEC, message), now, generation)
    status["conditions"] = conds
    return _ordered(status)


def refused_status(*, old_status: Mapping[str, Any] | None, generation: int, message: str,
                   now: datetime) -> Status:
    """Status of an account the API server refused as invalid (422): Ready False, Stalled True,
    reason Invalid, until the spec changes. The rest of `old_status` is kept."""
    status: Status = copy.deepcopy(dict(old_status or {}))
    status["observedGeneration"] = generation
    message = cap_message(f"The API server refused it: {message}")
    conds: Conditions = status.get("conditions") or []
    conds = set_condition(conds, "Ready", "False", reasons.INVALID, message, now, generation)
    conds = set_condition(conds, "Stalled", "True", reasons.INVALID,
                          stalled_message(reasons.INVALID, message), now, generation)
    status["conditions"] = conds
    return _ordered(status)


def _normal(value: Any) -> Any:
    """A JSON-comparable form (tuples -> lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


#: When the last probe ran and when the next is due: they move with every probe, so they are
#: written only with another change (DESIGN §5: no heartbeat; a run or controller that finds
#: nothing changed writes nothing, at any number of accounts). Freshness is a metric instead
#: (run/metrics.py, the age of the oldest probe per namespace); the controller keeps the times
#: it decided in memory, and a CronJob probes what its stored nextProbeTime says is due.
SCHEDULE_FIELDS = ("lastProbeTime", "nextProbeTime")
#: What the controller also keeps in memory and writes only with another change: lastAuthTime,
#: which moves with every AUTH (once per authInterval per account: 1.2 writes a second at
#: 100,000 accounts with the default 24h). After a restart the stored one may be old; the
#: controller spreads the AUTHs that are then overdue over authInterval (schedule.py
#: spread_auth_time). A short-lived run (`reconcile`, the CronJob) compares with SCHEDULE_FIELDS
#: only: it writes lastAuthTime when an AUTH ran, as the next run knows only what is stored.
REMEMBERED_FIELDS = (*SCHEDULE_FIELDS, "lastAuthTime")


def status_differs(old: Mapping[str, Any] | None, new: Mapping[str, Any], *,
                   quiet: Sequence[str] = SCHEDULE_FIELDS) -> bool:
    """True when `new` must be written: a deep comparison, not identity, in which the `quiet`
    fields count only when one side lacks them (a first probe or AUTH is always recorded)."""
    if old is None:
        return True
    moved = [k for k in quiet if k in old and k in new]
    if moved:
        old = {k: v for k, v in old.items() if k not in moved}
        new = {k: v for k, v in new.items() if k not in moved}
    if _plain(old) and _plain(new):  # their JSON forms are themselves: compare them as they are
        return bool(old != new)
    return bool(_normal(old) != _normal(new))


def _plain(value: Any) -> bool:
    """Whether `value` reads back from JSON as itself: dicts with string keys, lists, strings,
    ints, bools, None and finite floats (a status as built, or as read from a store). Comparing
    two such values is comparing their JSON forms, without the two dumps and loads of each
    (52 us a status, the controller's every write decision)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return kind is float and math.isfinite(value)
