"""An account's two checks folded into its conditions (DESIGN §4, "Work keyed by what it checks").

A probe is an *endpoint check* (connect, TLS, EHLO), which the accounts of one endpoint share
within its interval, and the account's own *credential check* (AUTH and the envelope check), run
on `authInterval`, on a change and on a forced probe. `fold_checks` is the pure rule that turns
them into conditions:
- Connected is the endpoint's latest result, whichever account's session took it;
- Authenticated is this run's credential check when one ran; otherwise the last one is kept as
  it was (an endpoint result, good or bad, says nothing about a password), or, when there was
  none yet, Unknown with AuthCheckDeferred; method None is NotRequired whatever happened;
- RelayReady (spec.relay) follows the endpoint while it fails, else the credential check.
Ready, Stalled and SecretPublished are derived from these afterwards (reconciler.state.status).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from reconciler import reasons
from reconciler.model import Account, Outcome
from reconciler.state.conditions import (
    Conditions,
    drop_condition,
    find_condition,
    order_conditions,
    put_condition,
    put_outcome,
)
from reconciler.state.readiness import auth_not_required, identity


@dataclass(frozen=True)
class Checks:
    """What one probe found: the endpoint's result and the account's credential result."""

    endpoint: Outcome
    connectivity: str = ""  # "SMTP (Connect using STARTTLS)": how the endpoint was reached
    credential: Outcome | None = None  # None: no credential check this run (authInterval)


def fold_checks(account: Account, conditions: Conditions, checks: Checks, now: datetime
                ) -> Conditions:
    """Connected, Authenticated and RelayReady of `account` from its checks; a new list."""
    conds = [dict(c) for c in conditions]
    fold_into(account, conds, checks, now)
    order_conditions(conds)
    return conds


def fold_into(account: Account, conds: Conditions, checks: Checks, now: datetime) -> None:
    """`fold_checks` in place, on a list the caller owns, left unordered (put_condition)."""
    gen = account.generation
    put_outcome(conds, "Connected", checks.endpoint, f"Connected: {checks.connectivity}.", now,
                gen)
    if auth_not_required(account):
        put_condition(conds, "Authenticated", "True", reasons.NOT_REQUIRED,
                      "spec.smtp.authentication.method is None.", now, gen)
    elif checks.credential is not None:
        put_outcome(conds, "Authenticated", checks.credential,
                    f"Authenticated as {identity(account)}.", now, gen)
    elif find_condition(conds, "Authenticated") is None:
        put_condition(conds, "Authenticated", "Unknown", reasons.AUTH_SKIPPED,
                      "Authentication has not been attempted yet.", now, gen)
    _relay(account, conds, checks, now)


def _relay(account: Account, conds: Conditions, checks: Checks, now: datetime) -> None:
    """RelayReady (spec.relay): whether the relay's upstream path works, as far as the probe
    saw it: the token request and the upstream's acceptance (XOAUTH2, or Graph's mailbox)."""
    gen = account.generation
    if not account.relay.enabled:
        drop_condition(conds, "RelayReady")
        return
    upstream = ("Microsoft Graph accepts the token for the mailbox"
                if account.graph is not None else "the SMTP server accepts XOAUTH2")
    if not checks.endpoint.ok:
        put_outcome(conds, "RelayReady", checks.endpoint, "", now, gen)
    elif checks.credential is not None:
        put_outcome(conds, "RelayReady", checks.credential,
                    f"The relay can forward: {upstream}.", now, gen)
    elif find_condition(conds, "RelayReady") is None:
        put_condition(conds, "RelayReady", "Unknown", reasons.AUTH_SKIPPED,
                      "The upstream login has not been checked yet.", now, gen)
