"""When to probe and authenticate: every trigger, backoff growth, jitter bounds and stability."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from reconciler import reasons
from reconciler.model import (
    REQUESTED_AT_ANNOTATION,
    Account,
    Authentication,
    Connection,
    Identity,
    KeyRef,
    ProbeSettings,
    Publish,
    SmtpSpec,
)
from reconciler.state.schedule import (
    Decision,
    auth_offset,
    days_until,
    max_failed_probes,
    next_probe_time,
    parse_rfc3339,
    probe_decision,
    probe_delay_seconds,
    rfc3339,
    spread_auth_time,
)

NOW = datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)
PW = "Secret/mail/password"


def account(**changes: Any) -> Account:
    base = Account(
        namespace="mail", name="billing", provider="custom", send_using="SMTP",
        publish=Publish(secret_name="billing-sender"),
        smtp=SmtpSpec(identity=Identity("billing@example.com"),
                      connection=Connection("smtp.example.com", 587),
                      authentication=Authentication("Password", password=KeyRef("mail", "pw"))),
        generation=3, uid="0b9a5c1e-uid",
    )
    return dataclasses.replace(base, **changes)


def status(*, auth_status: str = "True", auth_reason: str = reasons.SUCCEEDED,
           last_probe: datetime = NOW - timedelta(minutes=5),
           next_probe: datetime = NOW + timedelta(minutes=5),
           last_auth: datetime | None = NOW - timedelta(hours=1), **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "observedGeneration": 3,
        "lastProbeTime": rfc3339(last_probe),
        "nextProbeTime": rfc3339(next_probe),
        "secretVersions": {PW: "v1"},
        "conditions": [{"type": "Authenticated", "status": auth_status, "reason": auth_reason,
                        "message": "", "lastTransitionTime": rfc3339(last_probe),
                        "observedGeneration": 3}],
    }
    if last_auth is not None:
        out["lastAuthTime"] = rfc3339(last_auth)
    out.update(extra)
    return out


VERSIONS = {PW: "v1"}
REQUESTED = {REQUESTED_AT_ANNOTATION: "2026-11-25T07:59:00Z"}


@pytest.mark.parametrize(("acc", "old", "versions", "probe", "auth", "why"), [
    (account(), None, VERSIONS, True, True, "never probed"),
    (account(), {}, VERSIONS, True, True, "never probed"),
    (account(), status(lastProbeTime=""), VERSIONS, True, True, "never probed"),
    (account(generation=4), status(), VERSIONS, True, True, "spec changed"),
    (account(), status(), {PW: "v2"}, True, True, "referenced secret changed: " + PW),
    (account(), status(), {PW: "v1", "Secret/mail/ca": "v1"}, True, True,
     "referenced secret changed"),
    (account(annotations=REQUESTED), status(), VERSIONS, True, True, "probe requested"),
    (account(annotations=REQUESTED), status(lastRequestedAt="2026-11-25T07:59:00Z"), VERSIONS,
     False, False, "next probe at"),
    (account(), status(), VERSIONS, False, False, "next probe at 2026-11-25T08:05:00Z"),
    (account(), status(next_probe=NOW), VERSIONS, True, False, "interval due"),
    (account(), status(next_probe=NOW, last_auth=NOW - timedelta(hours=24)), VERSIONS,
     True, True, "authInterval elapsed"),
    (account(), status(next_probe=NOW, last_auth=None), VERSIONS, True, True,
     "never authenticated"),
    (account(), status(next_probe=NOW, auth_status="False",
                       auth_reason=reasons.AUTHENTICATION_TEMPORARY_FAILURE), VERSIONS,
     True, True, "retrying"),
    # a wrong password is never retried by the clock, not even after authInterval
    (account(), status(next_probe=NOW, auth_status="False",
                       auth_reason=reasons.AUTHENTICATION_FAILED,
                       last_auth=NOW - timedelta(days=3)), VERSIONS,
     True, False, "waiting for a changed credential"),
    # ... but a changed password, spec or an explicit request does retry it
    (account(), status(auth_status="False", auth_reason=reasons.AUTHENTICATION_FAILED),
     {PW: "v2"}, True, True, "referenced secret changed"),
    (account(generation=4), status(auth_status="False",
                                   auth_reason=reasons.AUTHENTICATION_FAILED),
     VERSIONS, True, True, "spec changed"),
    (account(annotations=REQUESTED), status(auth_status="False",
                                            auth_reason=reasons.AUTHENTICATION_FAILED),
     VERSIONS, True, True, "probe requested"),
    (account(probe=ProbeSettings(suspend=True)), None, VERSIONS, False, False, "suspended"),
    (account(probe=ProbeSettings(suspend=True), generation=9), status(), {PW: "v9"},
     False, False, "suspended"),
])
def test_probe_decision(acc: Account, old: dict[str, Any] | None, versions: dict[str, str],
                        probe: bool, auth: bool, why: str) -> None:
    decision = probe_decision(account=acc, old_status=old, secret_versions=versions, now=NOW)
    assert isinstance(decision, Decision)
    assert (decision.probe, decision.authenticate) == (probe, auth)
    assert why in decision.why


READY = {"type": "Ready", "status": "True", "reason": reasons.READY, "message": "",
         "lastTransitionTime": rfc3339(NOW - timedelta(minutes=5)), "observedGeneration": 3}


def published(*, ready: str = "True", secret_name: str | None = "billing-sender",
              **extra: Any) -> dict[str, Any]:
    """A status that has published `secret_name`, with Ready `ready`."""
    out = status(**extra)
    out["conditions"] = [*out["conditions"], {**READY, "status": ready}]
    if secret_name is not None:
        out["secretName"] = secret_name
    return out


@pytest.mark.parametrize(("acc", "old", "missing", "probe", "auth", "why"), [
    # the published Secret is gone: probe now; AUTH only as authInterval says
    (account(), published(), True, True, False, "published Secret billing-sender missing"),
    (account(), published(last_auth=NOW - timedelta(hours=24)), True, True, True,
     "authInterval elapsed"),
    (account(), published(last_auth=None), True, True, True, "never authenticated"),
    (account(), published(auth_status="False", auth_reason=reasons.AUTHENTICATION_FAILED),
     True, True, False, "waiting for a changed credential"),
    # present, or nothing to miss: the clock decides
    (account(), published(), False, False, False, "next probe at"),
    (account(), published(secret_name=None), True, False, False, "next probe at"),
    # not Ready: its backoff already probes it again, and a failing probe publishes nothing
    (account(), published(ready="False"), True, False, False, "next probe at"),
    # other reasons to probe still come first
    (account(generation=4), published(), True, True, True, "spec changed"),
    (account(), {}, True, True, True, "never probed"),
    (account(probe=ProbeSettings(suspend=True)), published(), True, False, False, "suspended"),
])
def test_probe_decision_published_secret_missing(acc: Account, old: dict[str, Any],
                                                 missing: bool, probe: bool, auth: bool,
                                                 why: str) -> None:
    decision = probe_decision(account=acc, old_status=old, secret_versions=VERSIONS, now=NOW,
                              published_secret_missing=missing)
    assert (decision.probe, decision.authenticate) == (probe, auth)
    assert why in decision.why


@pytest.mark.parametrize(("failed", "seconds"), [
    (1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 600), (7, 600), (500, 600),
])
def test_backoff_doubles_from_retry_interval_and_is_capped_at_interval(failed: int,
                                                                      seconds: int) -> None:
    acc = account()
    assert probe_delay_seconds(acc, failed_probes=failed) == seconds
    assert next_probe_time(acc, now=NOW, failed_probes=failed) == NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(("interval", "retry", "cap"), [
    (600, 30, 6),  # 30, 60, 120, 240, 480, 600: the sixth failure reaches the interval
    (600, 600, 1),
    (600, 900, 1),  # a retryInterval longer than the interval: capped at once
    (60, 1, 7),  # 1, 2, 4, ... 64 > 60
    (86400, 0.001, 18),  # retryInterval below 1 s counts as 1 s: 2**17 > 86400
])
def test_failures_are_counted_until_the_backoff_reaches_the_interval(interval: float,
                                                                    retry: float,
                                                                    cap: int) -> None:
    from reconciler.model import ProbeSettings

    acc = account(probe=ProbeSettings(interval_seconds=interval, retry_interval_seconds=retry))
    assert max_failed_probes(acc) == cap
    capped = probe_delay_seconds(acc, failed_probes=cap)
    assert capped == min(probe_delay_seconds(acc, failed_probes=cap + 1), interval)
    if cap > 1:
        assert probe_delay_seconds(acc, failed_probes=cap - 1) < capped


@pytest.mark.parametrize("uid", [f"uid-{i}" for i in range(40)] + [""])
def test_jitter_stays_within_ten_percent_and_is_stable(uid: str) -> None:
    acc = account(uid=uid)
    delay = probe_delay_seconds(acc, failed_probes=0)
    assert 540 <= delay <= 660
    assert probe_delay_seconds(acc, failed_probes=0) == delay
    nxt = next_probe_time(acc, now=NOW, failed_probes=0)
    assert nxt.microsecond == 0 and timedelta(seconds=539) <= nxt - NOW <= timedelta(seconds=660)


def test_jitter_spreads_accounts() -> None:
    delays = {probe_delay_seconds(account(uid=f"uid-{i}"), failed_probes=0) for i in range(50)}
    assert len(delays) > 40
    assert min(delays) < 570 and max(delays) > 630


def test_jitter_without_uid_uses_namespace_and_name() -> None:
    a = probe_delay_seconds(account(uid="", name="a"), failed_probes=0)
    b = probe_delay_seconds(account(uid="", name="b"), failed_probes=0)
    assert a != b
    assert a == probe_delay_seconds(account(uid="", name="a"), failed_probes=0)


@pytest.mark.parametrize(("dt", "text"), [
    (datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC), "2026-11-25T08:00:00Z"),
    (datetime(2026, 11, 25, 8, 0, 0, 999999, tzinfo=UTC), "2026-11-25T08:00:00Z"),
    (datetime(2026, 11, 25, 9, 30, 5, tzinfo=timezone(timedelta(hours=1, minutes=30))),
     "2026-11-25T08:00:05Z"),
    (datetime(2026, 11, 25, 8, 0, 0), "2026-11-25T08:00:00Z"),  # naive is taken as UTC
])
def test_rfc3339(dt: datetime, text: str) -> None:
    assert rfc3339(dt) == text


@pytest.mark.parametrize(("text", "dt"), [
    ("2026-11-25T08:00:00Z", datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)),
    ("2026-11-25T08:00:00.5Z", datetime(2026, 11, 25, 8, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-25T10:00:00+02:00", datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)),
    ("2026-11-25T08:00:00", datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)),
])
def test_parse_rfc3339(text: str, dt: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == dt and parsed.utcoffset() == timedelta(0)
    assert parse_rfc3339(rfc3339(parsed)) == parsed.replace(microsecond=0)


def test_unparseable_next_probe_time_means_due() -> None:
    old = status(nextProbeTime="not a time")
    decision = probe_decision(account=account(), old_status=old, secret_versions=VERSIONS, now=NOW)
    assert decision.probe


@pytest.mark.parametrize("when", [
    datetime(2026, 11, 25, 8, 0, 0),  # naive: taken as UTC
    datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 25, 10, 0, 0, 999, tzinfo=timezone(timedelta(hours=2))),
])
def test_rfc3339_is_utc_seconds_whatever_was_formatted_before(when: datetime) -> None:
    # rfc3339 is cached (a run formats one `now` many times): equal instants, another zone or
    # a naive time first, must still give each its own UTC rendering.
    rfc3339(datetime(2026, 11, 25, 9, 0, 0))
    assert rfc3339(when) == rfc3339(when) == "2026-11-25T08:00:00Z"


@pytest.mark.parametrize(("value", "days"), [
    ("2026-12-25T08:00:00Z", 30),
    ("2026-11-26T07:59:59Z", 0),  # whole days, floored
    ("2026-11-25T08:00:00Z", 0),
    ("2026-11-25T07:59:59Z", -1),  # past: negative
    ("2026-11-25T10:00:00+02:00", 0),
    ("not a time", None), ("", None), (None, None), (42, None),
])
def test_days_until(value: Any, days: int | None) -> None:
    assert days_until(value, NOW) == days
    assert days_until(value, NOW.replace(tzinfo=None)) == days  # naive now taken as UTC


# --------------------------------------------------------------------------- AUTH after a restart

DAY = timedelta(hours=24)  # the default authInterval
OFFSET = auth_offset(account())  # the test account's share of it
TAKEN = NOW - timedelta(minutes=1)  # when the controller took the account over


@pytest.mark.parametrize(("acc", "last_auth", "taken_over", "expected"), [
    (account(), NOW - 30 * DAY, None, None),  # a run: no spreading
    (account(), TAKEN - timedelta(hours=1), TAKEN, None),  # not yet due then: its own time
    (account(), TAKEN - DAY + timedelta(seconds=1), TAKEN, None),
    (account(), TAKEN - DAY, TAKEN, TAKEN + DAY * OFFSET),  # due just then: spread
    (account(), TAKEN - 30 * DAY, TAKEN, TAKEN + DAY * OFFSET),  # long overdue: the same
    (account(probe=ProbeSettings(auth_interval_seconds=3600)), TAKEN - DAY, TAKEN,
     TAKEN + timedelta(hours=1) * OFFSET),
    (account(probe=ProbeSettings(auth_interval_seconds=0)), TAKEN - DAY, TAKEN, TAKEN),
])
def test_spread_auth_time(acc: Account, last_auth: datetime, taken_over: datetime | None,
                          expected: datetime | None) -> None:
    assert spread_auth_time(acc, last_auth=last_auth, taken_over=taken_over) == expected


def test_auth_offsets_are_stable_and_spread_evenly() -> None:
    """Accounts overdue after a restart AUTH at the restart plus their share of authInterval:
    in any quarter of it about a quarter of them, never all at once."""
    offsets = [auth_offset(account(uid=f"uid-{i}")) for i in range(4000)]
    assert all(0.0 <= o < 1.0 for o in offsets)
    assert offsets == [auth_offset(account(uid=f"uid-{i}")) for i in range(4000)]  # stable
    for quarter in range(4):
        share = sum(quarter / 4 <= o < (quarter + 1) / 4 for o in offsets) / len(offsets)
        assert 0.22 < share < 0.28, (quarter, share)
    assert sum(o < 0.01 for o in offsets) < 80  # the first 1 %: about 40
    # without a uid, namespace and name make it; another account has another share
    assert auth_offset(account(uid="")) == auth_offset(account(uid=""))
    assert auth_offset(account(uid="")) != auth_offset(account(uid="", name="other"))


STALE = NOW - 3 * DAY  # the stored lastAuthTime: written only with another change


@pytest.mark.parametrize(("acc", "old", "versions", "taken_over", "auth", "why"), [
    # overdue when taken over: not before its share of authInterval has passed since
    (account(), status(next_probe=NOW, last_auth=STALE), VERSIONS,
     NOW - DAY * OFFSET + timedelta(seconds=1), False, "AUTH spread to"),
    (account(), status(next_probe=NOW, last_auth=STALE), VERSIONS, NOW - DAY * OFFSET, True,
     "authInterval elapsed"),
    # a run (no controller memory) authenticates as authInterval says
    (account(), status(next_probe=NOW, last_auth=STALE), VERSIONS, None, True,
     "authInterval elapsed"),
    # due only after the take-over: at its own time
    (account(), status(next_probe=NOW, last_auth=NOW - DAY), VERSIONS, TAKEN, True,
     "authInterval elapsed"),
    # a change, a request, a retryable failure or never authenticated: at once
    (account(generation=4), status(last_auth=STALE), VERSIONS, TAKEN, True, "spec changed"),
    (account(), status(last_auth=STALE), {PW: "v2"}, TAKEN, True, "referenced secret changed"),
    (account(annotations=REQUESTED), status(last_auth=STALE), VERSIONS, TAKEN, True,
     "probe requested"),
    (account(), status(next_probe=NOW, last_auth=STALE, auth_status="False",
                       auth_reason=reasons.AUTHENTICATION_TEMPORARY_FAILURE), VERSIONS, TAKEN,
     True, "retrying"),
    (account(), status(next_probe=NOW, last_auth=None), VERSIONS, TAKEN, True,
     "never authenticated"),
])
def test_probe_decision_after_a_restart(acc: Account, old: dict[str, Any],
                                        versions: dict[str, str], taken_over: datetime | None,
                                        auth: bool, why: str) -> None:
    decision = probe_decision(account=acc, old_status=old, secret_versions=versions, now=NOW,
                              taken_over=taken_over)
    assert decision.probe and decision.authenticate is auth
    assert why in decision.why
