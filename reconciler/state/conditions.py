"""The status block of an EmailAccount as a pure function of (account, old status, result, now).

DESIGN §5. Decide first, act once: `build_status` copies the old status, sets the probe fields
and each positive condition, then derives Ready and Stalled from them with a chain of small named
checks, and returns the new status. `status_differs` tells the run whether anything must be
written at all, and `transitions` which events to record.

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
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from reconciler import reasons
from reconciler.log import safe_text
from reconciler.model import REQUESTED_AT_ANNOTATION, Account, Diagnostic, Outcome, ProbeResult
from reconciler.state.formats import format_warnings
from reconciler.state.schedule import next_probe_time, rfc3339

#: Conditions appear in this order; anything else follows, sorted by type.
CONDITION_ORDER = ("Ready", "Stalled", "Validated", "Connected", "Authenticated",
                   "SecretPublished", "SigningReady", "Warning")
#: The positive conditions Ready summarises, in the order the first failure is reported.
READY_CHAIN = ("Validated", "Connected", "Authenticated", "SigningReady", "SecretPublished")
#: Fields that describe what the last probe found; absent in the result means absent in status.
PROBE_FIELDS = ("connectivity", "protocol", "tlsVersion", "cipher", "certificate",
                "authMechanisms")
#: Status fields in the order a human reads them; unknown fields follow, conditions come last.
STATUS_ORDER = ("observedGeneration", "suspended", "connectivity", "protocol", "tlsVersion",
                "cipher", "certificate", "authMechanisms", "signing", "secretName",
                "lastProbeTime", "lastAuthTime", "lastRequestedAt", "failedProbes",
                "nextProbeTime", "secretVersions")
MAX_MESSAGE = 1024  # condition messages are for humans in `kubectl describe`, not for dumps

Status = dict[str, Any]
Conditions = list[dict[str, Any]]


# --------------------------------------------------------------------------- condition helpers


def _cap(message: str, limit: int = MAX_MESSAGE) -> str:
    """Redacted, free of control characters (server text reaches terminals), bounded."""
    return safe_text(message, limit)


def _clean(value: Any) -> Any:
    """Strings of a status block made safe the same way (certificate names come from servers)."""
    if isinstance(value, str):
        return safe_text(value, MAX_MESSAGE)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def find_condition(conditions: Sequence[Mapping[str, Any]] | None,
                   type_: str) -> Mapping[str, Any] | None:
    """The condition of that type, or None."""
    for cond in conditions or ():
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(conditions: Sequence[Mapping[str, Any]], type_: str, status: str,
                  reason: str, message: str, now: datetime, generation: int) -> Conditions:
    """Return a copy of `conditions` with `type_` set.

    `lastTransitionTime` is kept unless the status flips (or the condition is new);
    `observedGeneration` is always set.
    """
    old = find_condition(conditions, type_)
    transition = rfc3339(now)
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        transition = str(old["lastTransitionTime"])
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": _cap(message),
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    out = [dict(c) for c in conditions if c.get("type") != type_]
    out.append(new)
    return _sorted(out)


def remove_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Conditions:
    """Return a copy of `conditions` without `type_`."""
    return [dict(c) for c in conditions if c.get("type") != type_]


def _sorted(conditions: Conditions) -> Conditions:
    def key(c: Mapping[str, Any]) -> tuple[int, str]:
        t = str(c.get("type", ""))
        return (CONDITION_ORDER.index(t) if t in CONDITION_ORDER else len(CONDITION_ORDER), t)

    return sorted(conditions, key=key)


def _set_outcome(conditions: Conditions, type_: str, outcome: Outcome, ok_message: str,
                 now: datetime, generation: int) -> Conditions:
    status = "True" if outcome.ok else "False"
    message = outcome.message or (ok_message if outcome.ok else outcome.reason)
    return set_condition(conditions, type_, status, outcome.reason, message, now, generation)


# --------------------------------------------------------------------------- the named checks


def _identity(account: Account) -> str:
    if account.graph is not None:
        return account.graph.user_principal_name
    if account.smtp is not None:
        ident = account.smtp.identity
        return ident.user_id or ident.email_address
    return account.name


def _auth_not_required(account: Account) -> bool:
    return (account.send_using == "SMTP" and account.smtp is not None
            and account.smtp.authentication.method == "None")


def _signing_configured(account: Account) -> bool:
    return account.send_using == "SMTP" and account.smtp is not None \
        and account.smtp.signing is not None


def first_failure(conditions: Sequence[Mapping[str, Any]],
                  signing: bool, publishing: bool = True) -> tuple[str, str] | None:
    """(reason, message) of the first positive condition that is not True, in READY_CHAIN order."""
    for type_ in READY_CHAIN:
        if (type_ == "SigningReady" and not signing) or (
                type_ == "SecretPublished" and not publishing):
            continue
        cond = find_condition(conditions, type_)
        if cond is None:
            return reasons.PROGRESSING, f"{type_} has not been checked yet; waiting for a probe."
        if cond.get("status") != "True":
            return str(cond.get("reason", "")), str(cond.get("message", ""))
    return None


def ready_message(account: Account, status: Mapping[str, Any]) -> str:
    """'SMTP (Connect using STARTTLS), TLSv1.3, authenticated as x' from the status fields."""
    parts = [str(status.get("connectivity") or account.send_using)]
    if status.get("tlsVersion"):
        parts.append(str(status["tlsVersion"]))
    auth = find_condition(status.get("conditions"), "Authenticated")
    if auth is not None and auth.get("reason") == reasons.NOT_REQUIRED:
        parts.append("no authentication")
    else:
        parts.append(f"authenticated as {_identity(account)}")
    return ", ".join(parts)


def stalled_message(reason: str, message: str) -> str:
    """A terminal failure's message plus what to do about it."""
    what = {
        reasons.SECRET_CONFLICT: "rename spec.publish.secretName or remove the existing Secret",
        reasons.INVALID_SPEC: "fix the manifest",
        reasons.INVALID: "fix the spec so the API server admits it (the causes above)",
    }.get(reason, "change the spec or the referenced Secret")
    return f"{message.rstrip('.')}. Retrying cannot fix this: {what}."


def _summarise(account: Account, status: Status, now: datetime, publishing: bool = True) -> Status:
    """Set Ready and Stalled from the positive conditions."""
    gen = account.generation
    conditions = status.get("conditions") or []
    failure = first_failure(conditions, _signing_configured(account), publishing)
    if failure is None:
        conditions = set_condition(conditions, "Ready", "True", reasons.READY,
                                   ready_message(account, status), now, gen)
    else:
        conditions = set_condition(conditions, "Ready", "False", failure[0], failure[1], now, gen)
    if failure is not None and failure[0] in reasons.TERMINAL:
        conditions = set_condition(conditions, "Stalled", "True", failure[0],
                                   stalled_message(*failure), now, gen)
    else:
        conditions = set_condition(conditions, "Stalled", "False", reasons.NOT_STALLED,
                                   "Nothing needs a change by hand.", now, gen)
    status["conditions"] = conditions
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
                  now: datetime) -> Status:
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

    conds: Conditions = status.get("conditions") or []
    conds = _set_outcome(conds, "Connected", result.connection,
                         f"Connected: {result.connectivity}.", now, gen)
    if _auth_not_required(account):
        conds = set_condition(conds, "Authenticated", "True", reasons.NOT_REQUIRED,
                              "spec.smtp.authentication.method is None.", now, gen)
    elif result.authentication is not None:
        status["lastAuthTime"] = rfc3339(now)
        conds = _set_outcome(conds, "Authenticated", result.authentication,
                             f"Authenticated as {_identity(account)}.", now, gen)
    elif find_condition(conds, "Authenticated") is None:
        conds = set_condition(conds, "Authenticated", "Unknown", reasons.AUTH_SKIPPED,
                              "Authentication has not been attempted yet.", now, gen)

    if _signing_configured(account):
        if result.signing is not None:
            conds = _set_outcome(conds, "SigningReady", result.signing.outcome,
                                 "The signing key and certificate are usable.", now, gen)
            signing = _signing_status(result)
            if signing is None:
                status.pop("signing", None)
            else:
                status["signing"] = signing
        elif find_condition(conds, "SigningReady") is None:
            conds = set_condition(conds, "SigningReady", "Unknown", reasons.PROGRESSING,
                                  "The signing keystore has not been checked yet.", now, gen)
    else:
        conds = remove_condition(conds, "SigningReady")
        status.pop("signing", None)

    warnings = _warnings(account, result)
    if warnings:
        conds = set_condition(conds, "Warning", "True", warnings[0].reason,
                              "; ".join(w.message or w.reason for w in warnings), now, gen)
    else:
        conds = remove_condition(conds, "Warning")
    status["conditions"] = conds
    return status


def _apply_published(account: Account, status: Status, published: Outcome | None,
                     probe_failed: bool, now: datetime) -> Status:
    """SecretPublished: this run's publish outcome, or why nothing was published."""
    gen = account.generation
    name = account.publish.secret_name
    conds: Conditions = status.get("conditions") or []
    old = find_condition(conds, "SecretPublished")
    if published is not None:
        conds = set_condition(conds, "SecretPublished", "True" if published.ok else "False",
                              published.reason,
                              published.message or f"Secret {name} holds the sender "
                              "configuration.", now, gen)
    elif probe_failed:
        reason, message = first_failure(conds, _signing_configured(account)) or (
            reasons.PROGRESSING, "the probe did not pass")
        if old is not None and old.get("status") == "True":
            conds = set_condition(
                conds, "SecretPublished", "True", reasons.PUBLISHED,
                f"Secret {name} keeps the last good configuration; it was not updated because "
                f"the probe failed ({reason}).", now, gen)
        else:
            conds = set_condition(
                conds, "SecretPublished", "False", reason,
                f"Secret {name} was not published because the probe failed: {message}",
                now, gen)
    status["conditions"] = conds
    return status


def probe_passed(*, account: Account, old_status: Mapping[str, Any] | None,
                 result: ProbeResult) -> bool:
    """Whether this run's probe allows publishing: connection, AUTH and signing all good.

    AUTH not attempted this run (authInterval) counts as good only when the last AUTH succeeded,
    so a wrong password found earlier never gets published as a working configuration.
    """
    if not result.connection.ok:
        return False
    if result.signing is not None and not result.signing.outcome.ok:
        return False
    if _auth_not_required(account):
        return True
    if result.authentication is not None:
        return result.authentication.ok
    last = find_condition((old_status or {}).get("conditions"), "Authenticated")
    return last is not None and last.get("status") == "True"


def _failed_probes(account: Account, status: Status, old: Mapping[str, Any],
                   publishing: bool = True) -> int:
    # Without a store (the probe command) SecretPublished is absent, and that is no failure.
    failure = first_failure(status.get("conditions") or [], _signing_configured(account),
                            publishing)
    if failure is None:
        return 0
    return int(old.get("failedProbes") or 0) + 1


# --------------------------------------------------------------------------- public builders


def build_status(*, account: Account, old_status: Mapping[str, Any] | None,
                 result: ProbeResult | None, published: Outcome | None,
                 now: datetime, publishing: bool = True) -> Status:
    """The complete new status block (DESIGN §5); `result is None` means not probed this run.

    `publishing=False` (the `probe` command, which has no store) leaves SecretPublished out, so
    Ready says whether the account works, not whether a Secret exists.
    """
    old = old_status or {}
    status: Status = copy.deepcopy(dict(old))
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
    status["conditions"] = set_condition(status.get("conditions") or [], "Validated", "True",
                                         reasons.VALID, validated, now, gen)
    if result is not None:
        status = _apply_result(account, status, result, now)
        failed_probe = not probe_passed(account=account, old_status=old, result=result)
        if publishing:
            status = _apply_published(account, status, published, failed_probe, now)
        else:
            status["conditions"] = remove_condition(status["conditions"], "SecretPublished")
            status.pop("secretName", None)
        failed = _failed_probes(account, status, old, publishing)
        status["failedProbes"] = failed
        failure = first_failure(status["conditions"], _signing_configured(account), publishing)
        # A terminal failure waits for a human, so backing off faster helps no one.
        backoff = 0 if failure is not None and failure[0] in reasons.TERMINAL else failed
        status["nextProbeTime"] = rfc3339(next_probe_time(account, now=now,
                                                          failed_probes=backoff))
    elif published is not None:
        status = _apply_published(account, status, published, False, now)
    status.setdefault("failedProbes", 0)
    return _summarise(account, status, now, publishing)


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
    message = _cap(f"Fix the manifest: {detail}")
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
    message = _cap(f"The API server refused it: {message}")
    conds: Conditions = status.get("conditions") or []
    conds = set_condition(conds, "Ready", "False", reasons.INVALID, message, now, generation)
    conds = set_condition(conds, "Stalled", "True", reasons.INVALID,
                          stalled_message(reasons.INVALID, message), now, generation)
    status["conditions"] = conds
    return _ordered(status)


def _normal(value: Any) -> Any:
    """A JSON-comparable form (tuples -> lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def status_differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when `new` must be written: a deep comparison, not identity."""
    if old is None:
        return True
    return bool(_normal(old) != _normal(new))


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
