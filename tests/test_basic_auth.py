"""Exchange Online's Basic SMTP AUTH retirement: the 550 5.7.30 refusal, and the dated warning.

The refusal comes from a real aiosmtpd server on loopback answering AUTH the way Exchange
Online does once Basic authentication is off; the schedule's wording is checked with the clock
injected on both sides of 2026-12-31.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler import reasons
from reconciler.model import Account, ProbeResult, status_condition
from reconciler.probe import probe_account
from reconciler.probe.credentials import DirSecretReader
from reconciler.state.status import build_status
from tests.smtpservers import PASSWORD, RunningServer, make_account

Factory = Callable[..., RunningServer]
REFUSAL = "550 5.7.30 Basic authentication is not supported for Client Submission"
BEFORE = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
AFTER = dt.datetime(2027, 1, 5, 8, 0, tzinfo=dt.UTC)


def _office365(port: int) -> Account:
    """An office365 password account pointed at the loopback server (explicit host wins)."""
    return dataclasses.replace(make_account(port=port), provider="office365")


def _probe(account: Account, secrets_dir: Path, now: dt.datetime) -> ProbeResult:
    return asyncio.run(probe_account(account, DirSecretReader(secrets_dir), now=now))


def test_550_5_7_30_is_basic_auth_deprecated(smtp_server: Factory, secrets_dir: Path) -> None:
    server = smtp_server("STARTTLS", checker=lambda mech, login, pw: REFUSAL)
    result = _probe(_office365(server.port), secrets_dir, BEFORE)
    assert result.connection.ok and server.auth_attempts
    auth = result.authentication
    assert auth is not None and not auth.ok
    assert auth.reason == reasons.BASIC_AUTH_DEPRECATED
    assert REFUSAL in auth.message
    assert ("method: OAuth2 with oauth2.grantType: ClientCredentials, or sendUsing: "
            "MicrosoftGraph") in auth.message
    assert PASSWORD not in auth.message


def test_550_5_7_30_stalls_the_account(smtp_server: Factory, secrets_dir: Path) -> None:
    """Retrying the same password cannot help: Stalled, with the reason and the fix."""
    server = smtp_server("STARTTLS", checker=lambda mech, login, pw: REFUSAL)
    account = _office365(server.port)
    result = _probe(account, secrets_dir, AFTER)
    status = build_status(account=account, old_status=None, result=result, published=None,
                          now=AFTER)
    authenticated = status_condition(status, "Authenticated")
    stalled = status_condition(status, "Stalled")
    assert authenticated is not None and authenticated["reason"] == "BasicAuthDeprecated"
    assert stalled is not None and stalled["status"] == "True"
    assert "ClientCredentials" in stalled["message"]


def test_other_5xx_replies_stay_authentication_failed(smtp_server: Factory,
                                                      secrets_dir: Path) -> None:
    server = smtp_server("STARTTLS", checker=lambda mech, login, pw:
                         "535 5.7.3 Authentication unsuccessful")
    result = _probe(_office365(server.port), secrets_dir, BEFORE)
    assert result.authentication is not None
    assert result.authentication.reason == reasons.AUTHENTICATION_FAILED


def _deprecation(result: ProbeResult) -> Any:
    [warning] = [w for w in result.warnings if w.reason == reasons.BASIC_AUTH_DEPRECATED]
    return warning


def test_probe_warning_is_worded_by_the_clock(smtp_server: Factory, secrets_dir: Path) -> None:
    """A password that still works gets the schedule as it stands on the probe's `now`."""
    from tests.smtpservers import USER

    server = smtp_server("STARTTLS", users={USER: PASSWORD})
    account = _office365(server.port)
    before, after = (_probe(account, secrets_dir, now) for now in (BEFORE, AFTER))
    assert before.authentication is not None and before.authentication.ok
    early, late = _deprecation(before).message, _deprecation(after).message
    assert "unchanged until the end of December 2026" in early
    assert "disabled by default for existing tenants on 2026-12-31" in early
    assert "since" not in early
    assert "disabled by default for existing tenants since 2026-12-31" in late
    assert "only where an admin re-enabled it" in late
    for text in (early, late):
        assert "unavailable for tenants created after December 2026" in text
        assert "ClientCredentials" in text and "MicrosoftGraph" in text
