"""The status block: conditions, Ready/Stalled derivation, no churn, invalid specs, transitions."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import reasons
from reconciler.model import (
    REQUESTED_AT_ANNOTATION,
    Account,
    Authentication,
    CertificateInfo,
    Connection,
    Diagnostic,
    Identity,
    KeyRef,
    Outcome,
    ProbeResult,
    ProbeSettings,
    Publish,
    Signing,
    SigningResult,
    SmtpSpec,
)
from reconciler.state.conditions import find_condition, set_condition, transitions
from reconciler.state.readiness import probe_passed
from reconciler.state.status import (
    REMEMBERED_FIELDS,
    build_status,
    invalid_status,
    status_differs,
)

T0 = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=10)
OK = Outcome(True, reasons.SUCCEEDED, "")
PUBLISHED = Outcome(True, reasons.PUBLISHED, "Secret mail/billing-sender holds the configuration")
CERT = CertificateInfo("CN=smtp.example.com", "CN=Example CA", "2027-01-01T00:00:00Z", 37,
                       serial="0A", signature_algorithm="sha256WithRSAEncryption")
SIGN_CERT = CertificateInfo("CN=billing@example.com", "CN=Example CA", "2027-06-01T00:00:00Z",
                            188, serial="1F", signature_algorithm="ecdsa-with-SHA256")
PRIVATE = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"


def account(method: str = "Password", signing: bool = False, **changes: Any) -> Account:
    base = Account(
        namespace="mail", name="billing", provider="custom", send_using="SMTP",
        publish=Publish(secret_name="billing-sender"),
        smtp=SmtpSpec(
            identity=Identity("billing@example.com", user_id="billing"),
            connection=Connection("smtp.example.com", 587),
            authentication=Authentication(method,  # type: ignore[arg-type]
                                          password=KeyRef("mail-pw", "password")
                                          if method == "Password" else None),
            signing=Signing(KeyRef("keys", "p12")) if signing else None),
        generation=3, uid="uid-1")
    return dataclasses.replace(base, **changes)


def result(connection: Outcome = OK, authentication: Outcome | None = OK,
           **changes: Any) -> ProbeResult:
    base = ProbeResult(
        connection=connection, authentication=authentication,
        connectivity="SMTP (Connect using STARTTLS)", protocol="STARTTLS",
        tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", certificate=CERT,
        auth_mechanisms=("PLAIN", "LOGIN"), secret_versions={"Secret/mail-pw/password": "7"},
        credentials={"password": "hunter2-secret"})
    return dataclasses.replace(base, **changes)


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = find_condition(status["conditions"], type_)
    assert found is not None, f"no {type_} condition in {status['conditions']}"
    return dict(found)


def types(status: dict[str, Any]) -> list[str]:
    return [c["type"] for c in status["conditions"]]


# --------------------------------------------------------------------------- set_condition


@pytest.mark.parametrize(("old_status", "new_status", "kept"), [
    ("True", "True", True),
    ("False", "False", True),
    ("True", "False", False),
    ("False", "True", False),
    ("Unknown", "True", False),
    (None, "True", False),
])
def test_set_condition_keeps_transition_time_unless_status_flips(
        old_status: str | None, new_status: str, kept: bool) -> None:
    conds = [] if old_status is None else [
        {"type": "Connected", "status": old_status, "reason": "X", "message": "m",
         "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
    out = set_condition(conds, "Connected", new_status, "Y", "new message", T0, 5)
    c = cond({"conditions": out}, "Connected")
    assert c["lastTransitionTime"] == ("2026-01-01T00:00:00Z" if kept else "2026-11-25T08:00:00Z")
    assert c["observedGeneration"] == 5
    assert (c["status"], c["reason"], c["message"]) == (new_status, "Y", "new message")
    assert conds == [] or conds[0]["reason"] == "X"  # the input is not modified


def test_set_condition_orders_conditions() -> None:
    out: list[dict[str, Any]] = []
    for t in ("Warning", "SecretPublished", "Custom", "Connected", "Ready", "Stalled"):
        out = set_condition(out, t, "True", "R", "", T0, 1)
    assert [c["type"] for c in out] == ["Ready", "Stalled", "Connected", "SecretPublished",
                                        "Warning", "Custom"]


# --------------------------------------------------------------------------- build_status


def test_first_successful_probe_builds_the_whole_status() -> None:
    s = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                     now=T0)
    assert s["observedGeneration"] == 3
    assert s["connectivity"] == "SMTP (Connect using STARTTLS)"
    assert (s["protocol"], s["tlsVersion"], s["cipher"]) == ("STARTTLS", "TLSv1.3",
                                                              "TLS_AES_256_GCM_SHA384")
    assert s["certificate"] == CERT.to_status()
    assert s["authMechanisms"] == ["PLAIN", "LOGIN"]
    assert s["lastProbeTime"] == s["lastAuthTime"] == "2026-11-25T08:00:00Z"
    assert s["secretName"] == "billing-sender"
    assert s["failedProbes"] == 0
    assert s["secretVersions"] == {"Secret/mail-pw/password": "7"}
    next_probe = datetime.fromisoformat(s["nextProbeTime"].replace("Z", "+00:00"))
    assert timedelta(seconds=540) <= next_probe - T0 <= timedelta(seconds=660)
    assert types(s) == ["Ready", "Stalled", "Validated", "Connected", "Authenticated",
                        "SecretPublished"]
    assert all(c["observedGeneration"] == 3 for c in s["conditions"])
    ready = cond(s, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", reasons.READY)
    assert ready["message"] == "SMTP (Connect using STARTTLS), TLSv1.3, authenticated as billing"
    assert cond(s, "Stalled")["status"] == "False"
    assert cond(s, "Stalled")["reason"] == reasons.NOT_STALLED
    assert cond(s, "Validated")["reason"] == reasons.VALID
    assert "hunter2-secret" not in json.dumps(s)


def test_auth_method_none_is_not_required_and_can_be_ready_insecure() -> None:
    r = result(authentication=None, connectivity="SMTP (Connect using default) – insecure",
               protocol="None", tls_version=None, cipher=None, certificate=None,
               warnings=(Outcome(False, reasons.INSECURE_CONNECTION, "No TLS."),))
    s = build_status(account=account("None"), old_status=None, result=r, published=PUBLISHED,
                     now=T0)
    auth = cond(s, "Authenticated")
    assert (auth["status"], auth["reason"]) == ("True", reasons.NOT_REQUIRED)
    assert cond(s, "Ready")["status"] == "True"
    assert cond(s, "Ready")["message"] == ("SMTP (Connect using default) – insecure, "
                                           "no authentication")
    assert "tlsVersion" not in s and "certificate" not in s and "lastAuthTime" not in s
    warning = cond(s, "Warning")
    assert (warning["status"], warning["reason"]) == ("True", reasons.INSECURE_CONNECTION)


@pytest.mark.parametrize(("connection", "authentication", "published", "reason", "stalled"), [
    (Outcome(False, reasons.CONNECT_FAILED, "Connection refused by smtp.example.com:587."), None,
     None, reasons.CONNECT_FAILED, False),
    (Outcome(False, reasons.TIMEOUT, "No answer within 30 s."), None, None, reasons.TIMEOUT,
     False),
    (Outcome(False, reasons.STARTTLS_NOT_OFFERED, "The server does not offer STARTTLS."), None,
     None, reasons.STARTTLS_NOT_OFFERED, True),
    (Outcome(False, reasons.CERTIFICATE_EXPIRED, "Expired."), None, None,
     reasons.CERTIFICATE_EXPIRED, False),
    (OK, Outcome(False, reasons.AUTHENTICATION_FAILED, "535 5.7.8 bad credentials"), None,
     reasons.AUTHENTICATION_FAILED, True),
    (OK, Outcome(False, reasons.AUTHENTICATION_TEMPORARY_FAILURE, "454 try later"), None,
     reasons.AUTHENTICATION_TEMPORARY_FAILURE, False),
    (OK, Outcome(False, reasons.AUTH_MECHANISM_UNAVAILABLE, "No PLAIN."), None,
     reasons.AUTH_MECHANISM_UNAVAILABLE, True),
    (OK, OK, Outcome(False, reasons.SECRET_CONFLICT, "Secret mail/billing-sender exists."),
     reasons.SECRET_CONFLICT, True),
    (OK, OK, Outcome(False, reasons.API_UNAVAILABLE, "503 from the API server."),
     reasons.API_UNAVAILABLE, False),
])
def test_ready_and_stalled_follow_the_first_failure(
        connection: Outcome, authentication: Outcome | None, published: Outcome | None,
        reason: str, stalled: bool) -> None:
    s = build_status(account=account(), old_status=None,
                     result=result(connection, authentication), published=published, now=T0)
    ready = cond(s, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert ready["message"]
    st = cond(s, "Stalled")
    assert st["status"] == ("True" if stalled else "False")
    assert st["reason"] == (reason if stalled else reasons.NOT_STALLED)
    if stalled:
        assert "Retrying cannot fix this" in st["message"]
    assert s["failedProbes"] == 1
    published_cond = cond(s, "SecretPublished")
    assert published_cond["status"] == "False"


@pytest.mark.parametrize(("reason", "stalled", "delay"), [
    (reasons.CONNECT_FAILED, False, 60),  # second consecutive failure: retryInterval * 2
    (reasons.AUTHENTICATION_FAILED, True, None),  # terminal: the regular (jittered) interval
])
def test_failed_probes_count_and_drive_next_probe_time(reason: str, stalled: bool,
                                                       delay: int | None) -> None:
    failing = (Outcome(False, reason, "x") if reason == reasons.CONNECT_FAILED else OK,
               Outcome(False, reason, "x") if reason != reasons.CONNECT_FAILED else None)
    s1 = build_status(account=account(), old_status=None, result=result(*failing),
                      published=None, now=T0)
    s2 = build_status(account=account(), old_status=s1, result=result(*failing),
                      published=None, now=T1)
    assert s2["failedProbes"] == 2
    gap = datetime.fromisoformat(s2["nextProbeTime"].replace("Z", "+00:00")) - T1
    if delay is not None:
        assert gap == timedelta(seconds=delay)
    else:
        assert timedelta(seconds=540) <= gap <= timedelta(seconds=660)
    s3 = build_status(account=account(), old_status=s2, result=result(), published=PUBLISHED,
                      now=T1 + timedelta(minutes=1))
    assert s3["failedProbes"] == 0 and cond(s3, "Ready")["status"] == "True"


def test_failed_probe_after_success_keeps_the_published_secret() -> None:
    good = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                        now=T0)
    refused = result(Outcome(False, reasons.CONNECT_FAILED, "Refused."), None,
                     tls_version=None, cipher=None, certificate=None, auth_mechanisms=())
    bad = build_status(account=account(), old_status=good, result=refused, published=None,
                       now=T1)
    pub = cond(bad, "SecretPublished")
    assert (pub["status"], pub["reason"]) == ("True", reasons.PUBLISHED)
    assert "keeps the last good configuration" in pub["message"]
    assert pub["lastTransitionTime"] == "2026-11-25T08:00:00Z"
    ready = cond(bad, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reasons.CONNECT_FAILED)
    assert ready["lastTransitionTime"] == "2026-11-25T08:10:00Z"
    # Authenticated was not attempted: the old result stays, with its time
    assert cond(bad, "Authenticated") == cond(good, "Authenticated")
    assert bad["lastAuthTime"] == "2026-11-25T08:00:00Z"
    # a failed connection shows no stale TLS facts
    assert not {"tlsVersion", "cipher", "certificate", "authMechanisms"} & set(bad)


def test_failed_first_probe_is_not_published() -> None:
    s = build_status(account=account(), old_status=None,
                     result=result(Outcome(False, reasons.TIMEOUT, "No answer."), None),
                     published=None, now=T0)
    pub = cond(s, "SecretPublished")
    assert (pub["status"], pub["reason"]) == ("False", reasons.TIMEOUT)
    assert "not published" in pub["message"]
    assert cond(s, "Authenticated")["status"] == "Unknown"


def test_auth_not_attempted_keeps_authenticated_and_last_auth_time() -> None:
    s1 = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                      now=T0)
    s2 = build_status(account=account(), old_status=s1, result=result(authentication=None),
                      published=PUBLISHED, now=T1)
    assert cond(s2, "Authenticated") == cond(s1, "Authenticated")
    assert s2["lastAuthTime"] == "2026-11-25T08:00:00Z"
    assert s2["lastProbeTime"] == "2026-11-25T08:10:00Z"


def test_no_churn_when_nothing_changed() -> None:
    s1 = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                      now=T0)
    # not probed this run: identical status, nothing to write
    s2 = build_status(account=account(), old_status=s1, result=None, published=None, now=T1)
    assert s2 == s1 and not status_differs(s1, s2)
    # probed again with the same findings: only the probe times move
    s3 = build_status(account=account(), old_status=s1, result=result(), published=PUBLISHED,
                      now=T1)
    changed = {k for k in s3 if s3[k] != s1.get(k)}
    assert changed <= {"lastProbeTime", "nextProbeTime", "lastAuthTime"}
    assert s3["conditions"] == s1["conditions"]
    assert transitions(s1, s3) == []
    # ... and that is not a write (issue 26 item 5: no heartbeat), unless it authenticated
    s4 = build_status(account=account(), old_status=s1, result=result(authentication=None),
                      published=PUBLISHED, now=T1)
    assert s4["lastProbeTime"] != s1["lastProbeTime"] and not status_differs(s1, s4)
    assert status_differs(s1, s3)  # a run: lastAuthTime moved, and the next run reads it
    # the controller keeps lastAuthTime in memory: an AUTH that finds the same is no write
    assert not status_differs(s1, s3, quiet=REMEMBERED_FIELDS)


@pytest.mark.parametrize(("old", "new", "differs"), [
    ({"lastProbeTime": "A", "nextProbeTime": "B", "x": 1},
     {"lastProbeTime": "C", "nextProbeTime": "D", "x": 1}, False),
    ({"lastProbeTime": "A", "nextProbeTime": "B", "x": 1},
     {"lastProbeTime": "C", "nextProbeTime": "D", "x": 2}, True),
    ({"x": 1}, {"lastProbeTime": "C", "nextProbeTime": "D", "x": 1}, True),  # a first probe
    ({"lastProbeTime": "A", "x": 1}, {"x": 1}, True),  # a field removed
    ({"lastProbeTime": "A", "failedProbes": 1}, {"lastProbeTime": "C", "failedProbes": 2}, True),
    ({"lastAuthTime": "A"}, {"lastAuthTime": "C"}, True),
    (None, {}, True),
])
def test_schedule_fields_alone_are_not_a_change(old: dict[str, Any] | None, new: dict[str, Any],
                                                differs: bool) -> None:
    assert status_differs(old, new) is differs


@pytest.mark.parametrize(("old", "new", "differs"), [
    ({"lastAuthTime": "A", "lastProbeTime": "A"}, {"lastAuthTime": "C", "lastProbeTime": "C"},
     False),
    ({"lastAuthTime": "A", "x": 1}, {"lastAuthTime": "C", "x": 2}, True),  # written with x
    ({"x": 1}, {"lastAuthTime": "C", "x": 1}, True),  # a first AUTH is recorded
    ({"lastAuthTime": "A", "x": 1}, {"x": 1}, True),
    ({"lastProbeTime": "A", "nextProbeTime": "B"}, {"lastProbeTime": "C", "nextProbeTime": "D"},
     False),
])
def test_the_controller_writes_last_auth_time_only_with_another_change(
        old: dict[str, Any], new: dict[str, Any], differs: bool) -> None:
    assert status_differs(old, new, quiet=REMEMBERED_FIELDS) is differs


def test_an_account_that_stays_broken_stops_changing_its_status() -> None:
    """failedProbes counts up to the failure whose backoff reaches the interval (30 s doubling
    to 600 s: the sixth); later failures leave the status as it was: nothing to write."""
    down = result(Outcome(False, reasons.CONNECT_FAILED, "refused"), None)
    statuses = [build_status(account=account(), old_status=None, result=down, published=None,
                             now=T0)]
    for i in range(1, 9):
        statuses.append(build_status(account=account(), old_status=statuses[-1], result=down,
                                     published=None, now=T0 + timedelta(minutes=10 * i)))
    assert [s["failedProbes"] for s in statuses] == [1, 2, 3, 4, 5, 6, 6, 6, 6]
    assert [status_differs(a, b) for a, b in zip(statuses, statuses[1:], strict=False)] == [
        True] * 5 + [False] * 3


def test_new_generation_updates_observed_generation_everywhere() -> None:
    s1 = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                      now=T0)
    s2 = build_status(account=account(generation=4), old_status=s1, result=result(),
                      published=PUBLISHED, now=T1)
    assert s2["observedGeneration"] == 4
    assert {c["observedGeneration"] for c in s2["conditions"]} == {4}
    assert {c["lastTransitionTime"] for c in s2["conditions"]} == {"2026-11-25T08:00:00Z"}


def test_suspended_keeps_conditions_and_marks_status() -> None:
    s1 = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                      now=T0)
    acc = account(probe=ProbeSettings(suspend=True))
    s2 = build_status(account=acc, old_status=s1, result=None, published=None, now=T1)
    assert s2["suspended"] is True
    assert s2["conditions"] == s1["conditions"]
    s3 = build_status(account=account(), old_status=s2, result=None, published=None, now=T1)
    assert "suspended" not in s3


def test_requested_at_is_recorded_once_probed() -> None:
    acc = account(annotations={REQUESTED_AT_ANNOTATION: "2026-11-25T07:59:00Z"})
    skipped = build_status(account=acc, old_status=None, result=None, published=None, now=T0)
    assert "lastRequestedAt" not in skipped
    s = build_status(account=acc, old_status=None, result=result(), published=PUBLISHED, now=T0)
    assert s["lastRequestedAt"] == "2026-11-25T07:59:00Z"


def test_signing_ready_and_signing_status_without_key_material() -> None:
    signing = SigningResult(outcome=OK, certificate=SIGN_CERT, alias="billing",
                            private_key_pem=PRIVATE, certificate_chain_pem="CHAIN",
                            warnings=(Outcome(False, reasons.SENDER_NOT_IN_CERTIFICATE,
                                              "billing@example.com is not in the certificate."),))
    r = result(signing=signing,
               warnings=(Outcome(False, reasons.CERTIFICATE_EXPIRING_SOON, "13 days left."),))
    s = build_status(account=account(signing=True), old_status=None, result=r,
                     published=PUBLISHED, now=T0)
    assert types(s) == ["Ready", "Stalled", "Validated", "Connected", "Authenticated",
                        "SecretPublished", "SigningReady", "Warning"]
    assert s["signing"] == {"subject": "CN=billing@example.com", "serial": "1F",
                            "notAfter": "2027-06-01T00:00:00Z",
                            "signatureAlgorithm": "ecdsa-with-SHA256", "alias": "billing"}
    warning = cond(s, "Warning")
    assert warning["reason"] == reasons.CERTIFICATE_EXPIRING_SOON
    assert warning["message"] == ("13 days left.; billing@example.com is not in the "
                                  "certificate.")
    assert cond(s, "Ready")["status"] == "True"
    assert "TOPSECRETKEYMATERIAL" not in json.dumps(s)
    # the warning goes away when the next probe finds none
    s2 = build_status(account=account(signing=True), old_status=s,
                      result=result(signing=dataclasses.replace(signing, warnings=())),
                      published=PUBLISHED, now=T1)
    assert "Warning" not in types(s2)


@pytest.mark.parametrize(("reason", "stalled"), [
    (reasons.KEYSTORE_PASSWORD_WRONG, True),
    (reasons.ALIAS_NOT_FOUND, True),
    (reasons.SIGNING_CERTIFICATE_EXPIRED, True),
    (reasons.KEYSTORE_NOT_FOUND, False),
])
def test_signing_failure_makes_ready_false(reason: str, stalled: bool) -> None:
    r = result(signing=SigningResult(outcome=Outcome(False, reason, "Fix the keystore.")))
    s = build_status(account=account(signing=True), old_status=None, result=r, published=None,
                     now=T0)
    assert (cond(s, "SigningReady")["status"], cond(s, "Ready")["reason"]) == ("False", reason)
    assert cond(s, "Stalled")["status"] == ("True" if stalled else "False")
    assert "signing" not in s


def test_signing_condition_removed_when_signing_unconfigured() -> None:
    r = result(signing=SigningResult(outcome=OK, certificate=SIGN_CERT))
    s1 = build_status(account=account(signing=True), old_status=None, result=r,
                      published=PUBLISHED, now=T0)
    s2 = build_status(account=account(), old_status=s1, result=result(), published=PUBLISHED,
                      now=T1)
    assert "SigningReady" not in types(s2) and "signing" not in s2


# --------------------------------------------------------------------------- invalid_status


def test_invalid_status_keeps_probe_info_and_stalls() -> None:
    good = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                        now=T0)
    diags = [Diagnostic("a.yaml", 3, 1, 1, "/spec/smtp/connection/port", "must be <= 65535"),
             Diagnostic("a.yaml", 9, 1, 1, "/spec", "deprecated field", severity="warning")]
    s = invalid_status(old_status=good, generation=4, diagnostics=diags, now=T1)
    assert s["observedGeneration"] == 4
    assert s["tlsVersion"] == "TLSv1.3" and s["connectivity"] == good["connectivity"]
    validated = cond(s, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", reasons.INVALID_SPEC)
    assert validated["message"] == "Fix the manifest: /spec/smtp/connection/port: must be <= 65535"
    assert validated["lastTransitionTime"] == "2026-11-25T08:10:00Z"
    assert (cond(s, "Ready")["status"], cond(s, "Ready")["reason"]) == ("False",
                                                                        reasons.INVALID_SPEC)
    assert (cond(s, "Stalled")["status"], cond(s, "Stalled")["reason"]) == ("True",
                                                                            reasons.INVALID_SPEC)
    assert cond(s, "Connected") == cond(good, "Connected")


def test_invalid_status_caps_the_message() -> None:
    diags = [Diagnostic("a.yaml", i, 1, 1, f"/spec/x{i}", "bad value " * 20) for i in range(50)]
    s = invalid_status(old_status=None, generation=1, diagnostics=diags, now=T0)
    assert 900 < len(cond(s, "Validated")["message"]) <= 1024
    assert cond(s, "Validated")["message"].endswith("…")


# --------------------------------------------------------------------------- differs, transitions


@pytest.mark.parametrize(("old", "new", "differs"), [
    (None, {}, True),
    ({"a": 1}, {"a": 1}, False),
    ({"a": [1, 2]}, {"a": (1, 2)}, False),
    ({"a": {"b": 1, "c": 2}}, {"a": {"c": 2, "b": 1}}, False),
    ({"a": {"b": 1}}, {"a": {"b": 2}}, True),
    ({"a": 1}, {"a": 1, "b": None}, True),
    # what a JSON form makes equal (status_differs compares plain statuses as they are)
    ({"a": float("nan")}, {"a": float("nan")}, False),  # both read back as json's one NaN
    ({"a": {1: "x"}}, {"a": {"1": "x"}}, False),
    ({"a": True}, {"a": 1}, False),
    ({"a": [datetime(2026, 1, 1, tzinfo=UTC)]}, {"a": ["2026-01-01 00:00:00+00:00"]}, False),
    ({"a": float("inf")}, {"a": 1e309}, False),
])
def test_status_differs(old: dict[str, Any] | None, new: dict[str, Any], differs: bool) -> None:
    assert status_differs(old, new) is differs



_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
    | st.sampled_from([0.0, -0.0, 1.0, float("inf"), float("nan")]) | st.text("ab\u00e9", max_size=2)
    | st.sampled_from([datetime(2026, 1, 1, tzinfo=UTC), b"ab"]),
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(st.text("abc", max_size=2) | st.integers(0, 2)
                                     | st.booleans(), inner, max_size=3)),
    max_leaves=8)


def _json_differs(old: Any, new: Any) -> bool:
    """status_differs' rule by its definition: the JSON forms differ (default=str)."""
    def normal(value: Any) -> Any:
        return json.loads(json.dumps(value, sort_keys=True, default=str))
    return bool(normal(old) != normal(new))


@settings(max_examples=600, deadline=None)
@given(old=_JSONISH, new=_JSONISH, same=st.booleans())
def test_status_differs_is_a_comparison_of_json_forms(old: Any, new: Any, same: bool) -> None:
    """Plain statuses are compared as they are (no dumps and loads); the answer is still the
    one of their JSON forms: tuples as lists, keys as strings, True and 1, -0.0, NaN, inf, and
    anything else as its str."""
    if same:
        new = copy.deepcopy(old)
    a, b = {"status": old}, {"status": new}
    try:
        expected = _json_differs(a, b)
    except (TypeError, ValueError) as exc:  # keys json cannot sort: raised either way
        with pytest.raises(type(exc)):
            status_differs(a, b)
        return
    assert status_differs(a, b, quiet=()) is expected
    assert status_differs(b, a, quiet=()) is expected

def test_transitions_on_first_run_failure_and_recovery() -> None:
    good = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                        now=T0)
    first = transitions(None, good)
    assert ("Normal", reasons.READY, cond(good, "Ready")["message"], "Ready") in first
    assert all(kind == "Normal" for kind, *_ in first)
    assert "Stalled" not in [t for *_, t in first]

    bad = build_status(account=account(), old_status=good,
                       result=result(OK, Outcome(False, reasons.AUTHENTICATION_FAILED, "535")),
                       published=None, now=T1)
    events = {(kind, reason, ctype) for kind, reason, _m, ctype in transitions(good, bad)}
    assert events == {("Warning", reasons.AUTHENTICATION_FAILED, "Ready"),
                      ("Warning", reasons.AUTHENTICATION_FAILED, "Stalled"),
                      ("Warning", reasons.AUTHENTICATION_FAILED, "Authenticated")}

    again = build_status(account=account(), old_status=bad,
                         result=result(OK, Outcome(False, reasons.AUTHENTICATION_FAILED, "535")),
                         published=None, now=T1 + timedelta(minutes=10))
    assert transitions(bad, again) == []

    fixed = build_status(account=account(), old_status=again, result=result(),
                         published=PUBLISHED, now=T1 + timedelta(minutes=20))
    kinds = {(kind, ctype) for kind, _r, _m, ctype in transitions(again, fixed)}
    assert ("Normal", "Ready") in kinds and ("Normal", "Stalled") in kinds


def test_probe_passed() -> None:
    good = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                        now=T0)
    wrong = build_status(account=account(), old_status=good,
                         result=result(OK, Outcome(False, reasons.AUTHENTICATION_FAILED, "535")),
                         published=None, now=T1)
    skipped = result(authentication=None)
    assert probe_passed(account=account(), old_status=None, result=result())
    assert probe_passed(account=account(), old_status=good, result=skipped)
    assert not probe_passed(account=account(), old_status=wrong, result=skipped)
    assert not probe_passed(account=account(), old_status=None, result=skipped)
    assert probe_passed(account=account("None"), old_status=None, result=skipped)
    assert not probe_passed(account=account(), old_status=good,
                            result=result(Outcome(False, reasons.TIMEOUT, "t"), None))


def test_sender_and_host_fill_the_wide_columns_for_smtp_and_graph() -> None:
    from reconciler.model import GraphSpec

    s = build_status(account=account(), old_status=None, result=result(), published=PUBLISHED,
                     now=T0)
    assert (s["via"], s["sender"], s["host"]) == ("SMTP", account().smtp.identity.email_address,
                                                  account().smtp.connection.host)
    graph = dataclasses.replace(account(), send_using="MicrosoftGraph", smtp=None, graph=GraphSpec(
        user_principal_name="orders@example.com", tenant_id="t", client_id="c",
        endpoint="https://graph.microsoft.us"))
    g = build_status(account=graph, old_status=None, result=result(), published=PUBLISHED, now=T0)
    assert (g["via"], g["sender"], g["host"]) == ("Graph", "orders@example.com",
                                                  "graph.microsoft.us")


def test_probe_command_status_of_a_ready_account_counts_no_failed_probe() -> None:
    # Issue 14: `probe` (no store, publishing=False) showed failedProbes 1 and a nextProbeTime
    # at the retry interval on Ready accounts: the absent SecretPublished counted as a failure.
    s = build_status(account=account(), old_status=None, result=result(), published=None,
                     now=T0, publishing=False)
    assert cond(s, "Ready")["status"] == "True"
    assert s["failedProbes"] == 0
    # the (jittered) 10-minute interval, not the 30 s retry interval
    assert "2026-11-25T08:05:00Z" < s["nextProbeTime"] <= "2026-11-25T08:15:00Z"
