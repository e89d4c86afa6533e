"""The fold of an account's endpoint check and its own credential check into conditions (DESIGN §4).

Pure: a table of (endpoint result, credential result or none this run, what the status held)
against the conditions it yields, and through build_status the Ready it leads to.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from reconciler import reasons
from reconciler.model import Outcome, ProbeResult, Relay
from reconciler.model import status_condition as condition
from reconciler.state.fold import Checks, fold_checks
from reconciler.state.status import build_status
from tests.smtpservers import make_account

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)

UP = Outcome(True, reasons.SUCCEEDED, "connected to 127.0.0.1:587 using STARTTLS")
DOWN = Outcome(False, reasons.CONNECT_FAILED, "cannot connect to 127.0.0.1:587")
UNTRUSTED = Outcome(False, reasons.CERTIFICATE_UNTRUSTED, "certificate untrusted")
LOGGED_IN = Outcome(True, reasons.SUCCEEDED, "authenticated with PLAIN")
WRONG_PASSWORD = Outcome(False, reasons.AUTHENTICATION_FAILED, "535 5.7.8")


def _cond(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "before",
            "lastTransitionTime": "2026-12-01T07:00:00Z", "observedGeneration": 1}


AUTH_OK = _cond("Authenticated", "True", reasons.SUCCEEDED)
AUTH_FAILED = _cond("Authenticated", "False", reasons.AUTHENTICATION_FAILED)


@pytest.mark.parametrize(("endpoint", "credential", "held", "connected", "authenticated", "why"), [
    (UP, None, [AUTH_OK], ("True", reasons.SUCCEEDED), ("True", reasons.SUCCEEDED),
     "endpoint shared, no AUTH this run: the last AUTH stands"),
    (DOWN, None, [AUTH_OK], ("False", reasons.CONNECT_FAILED), ("True", reasons.SUCCEEDED),
     "the endpoint is down: says nothing about the password"),
    (UNTRUSTED, None, [AUTH_FAILED], ("False", reasons.CERTIFICATE_UNTRUSTED),
     ("False", reasons.AUTHENTICATION_FAILED), "a failed AUTH stays failed until retried"),
    (UP, None, [AUTH_FAILED], ("True", reasons.SUCCEEDED),
     ("False", reasons.AUTHENTICATION_FAILED), "a good endpoint does not fix a password"),
    (UP, None, [], ("True", reasons.SUCCEEDED), ("Unknown", reasons.AUTH_SKIPPED),
     "never authenticated yet"),
    (UP, LOGGED_IN, [AUTH_FAILED], ("True", reasons.SUCCEEDED), ("True", reasons.SUCCEEDED),
     "this run's credential check wins"),
    (UP, WRONG_PASSWORD, [AUTH_OK], ("True", reasons.SUCCEEDED),
     ("False", reasons.AUTHENTICATION_FAILED), "this run's credential check wins"),
])
def test_fold_checks(endpoint: Outcome, credential: Outcome | None, held: list[dict[str, Any]],
                     connected: tuple[str, str], authenticated: tuple[str, str],
                     why: str) -> None:
    conds = fold_checks(make_account(), held, Checks(endpoint, "SMTP", credential), NOW)
    got = {c["type"]: (c["status"], c["reason"]) for c in conds}
    assert (got["Connected"], got["Authenticated"]) == (connected, authenticated), why
    kept = [c for c in conds if c["type"] == "Authenticated" and c["message"] == "before"]
    if credential is None and held:
        assert kept == held, "kept as it was, lastTransitionTime included"


@pytest.mark.parametrize("endpoint", [UP, DOWN])
def test_method_none_is_not_required_whatever_the_endpoint(endpoint: Outcome) -> None:
    conds = fold_checks(make_account(method="None"), [AUTH_FAILED],
                        Checks(endpoint, "SMTP", None), NOW)
    assert condition({"conditions": conds}, "Authenticated")["reason"] == reasons.NOT_REQUIRED


@pytest.mark.parametrize(("endpoint", "credential", "held", "relay"), [
    (DOWN, None, [], ("False", reasons.CONNECT_FAILED)),
    (UP, LOGGED_IN, [], ("True", reasons.SUCCEEDED)),
    (UP, WRONG_PASSWORD, [], ("False", reasons.AUTHENTICATION_FAILED)),
    (UP, None, [], ("Unknown", reasons.AUTH_SKIPPED)),
    (UP, None, [_cond("RelayReady", "True", reasons.SUCCEEDED)], ("True", reasons.SUCCEEDED)),
])
def test_relay_ready_follows_the_endpoint_then_the_credential(
        endpoint: Outcome, credential: Outcome | None, held: list[dict[str, Any]],
        relay: tuple[str, str]) -> None:
    account = dataclasses.replace(make_account(method="OAuth2"), relay=Relay(enabled=True))
    conds = fold_checks(account, held, Checks(endpoint, "SMTP", credential), NOW)
    got = condition({"conditions": conds}, "RelayReady")
    assert (got["status"], got["reason"]) == relay


@pytest.mark.parametrize(("endpoint", "held", "ready"), [
    (UP, AUTH_OK, ("True", reasons.READY)),
    (DOWN, AUTH_OK, ("False", reasons.CONNECT_FAILED)),
    (UP, AUTH_FAILED, ("False", reasons.AUTHENTICATION_FAILED)),
    (DOWN, AUTH_FAILED, ("False", reasons.CONNECT_FAILED)),  # the first failing condition
])
def test_ready_from_a_shared_endpoint_and_the_last_credential_check(
        endpoint: Outcome, held: dict[str, Any], ready: tuple[str, str]) -> None:
    account = make_account()
    old = {"observedGeneration": 1, "lastAuthTime": "2026-12-01T07:00:00Z",
           "lastProbeTime": "2026-12-01T07:50:00Z",
           "conditions": [held, _cond("SecretPublished", "True", reasons.PUBLISHED)]}
    result = ProbeResult(connection=endpoint, authentication=None,
                         connectivity="SMTP (Connect using STARTTLS)", protocol="STARTTLS")
    status = build_status(account=account, old_status=old, result=result, published=None,
                          now=NOW)
    got = condition(status, "Ready")
    assert (got["status"], got["reason"]) == ready
    assert status["lastAuthTime"] == old["lastAuthTime"]  # no credential check this run
    assert status["lastProbeTime"] == "2026-12-01T08:00:00Z"
