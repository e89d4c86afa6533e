"""Readiness: the chain of named checks that decides Ready, Stalled and whether to publish.

Ready is True only when Validated, Connected, Authenticated, SigningReady (with signing) and
SecretPublished are all True (`READY_CHAIN`); otherwise it carries the first failing condition's
reason (`first_failure`). Stalled is True when that reason is terminal (`reasons.TERMINAL`):
retrying cannot fix it (`stalled_message` says what to change). `probe_passed` says whether this
run's probe allows publishing. Pure: conditions and the account in, (reason, message) out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler import reasons
from reconciler.model import Account, ProbeResult
from reconciler.state.conditions import find_condition

#: The positive conditions Ready summarises, in the order the first failure is reported.
READY_CHAIN = ("Validated", "Connected", "Authenticated", "SigningReady", "SecretPublished")


def identity(account: Account) -> str:
    """Who the account authenticates as, for messages."""
    if account.graph is not None:
        return account.graph.user_principal_name
    if account.smtp is not None:
        ident, user = account.smtp.identity, account.smtp.authentication.username
        if user is not None and account.smtp.authentication.method == "Password":
            # a username that is a credential is named by where it lies, never shown
            return f"the username in Secret {account.namespace}/{user.name} key {user.key!r}"
        return ident.user_id or ident.email_address
    return account.name


def auth_not_required(account: Account) -> bool:
    """Whether the account sends without authentication (SMTP method None)."""
    return (account.send_using == "SMTP" and account.smtp is not None
            and account.smtp.authentication.method == "None")


def signing_configured(account: Account) -> bool:
    """Whether the account signs its mail (S/MIME), so SigningReady counts."""
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


#: Failures worth naming beside the first one: each needs its own fix (SecretPublished follows
#: from the others, so it would only repeat them).
_ALSO = ("Connected", "Authenticated", "SigningReady")


def all_problems(conditions: Sequence[Mapping[str, Any]], first: tuple[str, str]) -> str:
    """The first failure's message, then every other failed step's: one run shows them all.

    A missing Secret and a DNS failure are both found before the first failing step (the
    credentials are read before connecting); Ready names both, not only the first.
    """
    others = []
    for type_ in _ALSO:
        cond = find_condition(conditions, type_)
        if (cond is not None and cond.get("status") == "False"
                and (cond.get("reason"), cond.get("message")) != first):
            others.append(f"{type_} {cond.get('reason')}: {cond.get('message')}")
    message = first[1]
    return "; also ".join([message.rstrip("."), *others]) if others else message


def ready_message(account: Account, status: Mapping[str, Any]) -> str:
    """'SMTP (Connect using STARTTLS), TLSv1.3, authenticated as x' from the status fields."""
    parts = [str(status.get("connectivity") or account.send_using)]
    if status.get("tlsVersion"):
        parts.append(str(status["tlsVersion"]))
    auth = find_condition(status.get("conditions"), "Authenticated")
    if auth is not None and auth.get("reason") == reasons.NOT_REQUIRED:
        parts.append("no authentication")
    else:
        parts.append(f"authenticated as {identity(account)}")
    return ", ".join(parts)


def stalled_message(reason: str, message: str) -> str:
    """A terminal failure's message plus what to do about it."""
    what = {
        reasons.SECRET_CONFLICT: "rename spec.publish.secretName or remove the existing Secret",
        reasons.INVALID_SPEC: "fix the manifest",
        reasons.INVALID: "fix the spec so the API server admits it (the causes above)",
    }.get(reason, "change the spec or the referenced Secret")
    return f"{message.rstrip('.')}. Retrying cannot fix this: {what}."


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
    if auth_not_required(account):
        return True
    if result.authentication is not None:
        return result.authentication.ok
    last = find_condition((old_status or {}).get("conditions"), "Authenticated")
    return last is not None and last.get("status") == "True"
