"""Endpoint checks shared by the accounts of one endpoint (issue 26 item 2, DESIGN §4).

Pure rules as tables (freshness, the key, what of a session is the endpoint's), then the probe
against aiosmtpd stand-ins that count their connections, then whole reconcile runs with an
injected clock: N accounts on one endpoint are one session, while a changed credential or a
forced probe is a full session (AUTH included) of each account it concerns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import reasons
from reconciler.model import Account, KeyRef, Outcome, ProbeResult
from reconciler.probe import probe_accounts
from reconciler.probe.credentials import DirSecretReader
from reconciler.probe.endpoints import (
    EndpointCache,
    EndpointFacts,
    endpoint_facts,
    endpoint_key,
    endpoint_only,
    usable,
)
from reconciler.probe.smtpsession import SessionState
from tests.smtpservers import (
    NAMESPACE,
    NOW,
    PASSWORD,
    TRUSTSTORE_REF,
    USER,
    RunningServer,
    ThrowawayCA,
    make_account,
    unused_port,
    write_secret,
)

T0 = dt.datetime(2026, 12, 1, 8, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# --------------------------------------------------------------------------- freshness


@pytest.mark.parametrize(("taken", "after", "now", "expected", "why"), [
    (10, None, 20, True, "never probed: any result younger than the interval"),
    (10, 0, 20, True, "taken after the account's last probe"),
    (10, 10, 20, False, "the account's own last result: not newer than its last probe"),
    (10.7, 10, 20, False, "same second as its last probe (lastProbeTime has whole seconds)"),
    (11, 10.9, 20, True, "a later second than its last probe"),
    (10, 20, 25, False, "taken before the account's last probe"),
    (10, 0, 609, True, "just younger than the interval"),
    (10, 0, 610, False, "as old as the interval: expired"),
    (10, 0, 10, True, "taken this instant"),
])
def test_usable(taken: float, after: float | None, now: float, expected: bool, why: str) -> None:
    got = usable(at(taken), after=None if after is None else at(after), now=at(now),
                 max_age_seconds=600)
    assert got is expected, why


# --------------------------------------------------------------------------- the key

OTHER_CA = KeyRef("other-ca", "ca.crt", kind="ConfigMap",
                  field="/spec/smtp/connection/truststore/configMapRef")


def _key(ca_pem: str | None = "CA", **o: Any) -> Any:
    account = make_account(**o)
    conn = account.smtp.connection if account.smtp else None
    assert conn is not None
    where = (f"{conn.truststore.kind} {account.namespace}/{conn.truststore.name}"
             if conn.truststore else None)
    return endpoint_key(account, ca_pem, where)


@pytest.mark.parametrize(("change", "same"), [
    ({"name": "other", "email_address": "other@example.test"}, True),
    ({"method": "OAuth2"}, True),
    ({"password": KeyRef("someone-else", "password")}, True),
    ({"host": "127.0.0.1."}, False),  # messages name the host as written
    ({"port": 2525}, False),
    ({"security": "SMTPS"}, False),
    ({"min_tls_version": "1.3"}, False),
    ({"ca_pem": "ANOTHER CA"}, False),  # the truststore's content changed
    ({"truststore": OTHER_CA}, False),  # another object (messages name it)
    ({"namespace": "other-team"}, False),  # never a message naming another namespace's object
    ({"truststore": None, "ca_pem": None}, False),  # system CAs
    ({"advanced": {"mail.smtp.localhost": "mta.example.test"}}, False),  # EHLO name
    ({"timeout_seconds": 30.0}, False),
    ({"provider": "office365"}, False),  # messages name a preset's host as the provider's
])
def test_endpoint_key(change: dict[str, Any], same: bool) -> None:
    assert (_key(**change) == _key()) is same


# --------------------------------------------------------------------------- the endpoint part

OK = Outcome(True, reasons.SUCCEEDED, "connected to 127.0.0.1:587 using STARTTLS")
REFUSED = Outcome(False, reasons.CONNECT_FAILED, "cannot connect")
SENDER = Outcome(False, reasons.SENDER_REJECTED, "refused MAIL FROM")
BUSY = Outcome(False, reasons.SERVER_BUSY, "busy (AUTH: 421)")


@pytest.mark.parametrize(("connection", "stages", "shared"), [
    (OK, (), OK),  # an endpoint check alone
    (OK, ("auth", "envelope"), OK),  # a full session that went well: its endpoint part
    (REFUSED, (), REFUSED),  # the endpoint failed: every account on it learns so
    (SENDER, ("envelope",), None),  # this sender's refusal is no endpoint's verdict
    (BUSY, ("auth",), None),  # a 421 during this account's AUTH
    (None, (), None),  # no result at all
])
def test_endpoint_facts(connection: Outcome | None, stages: tuple[str, ...],
                        shared: Outcome | None) -> None:
    st = SessionState(connection=connection, tls_version="TLSv1.3", extensions=("STARTTLS",),
                      auth_mechanisms=("PLAIN",), timings={"connect": 0.1, "auth": 0.2})
    for stage in stages:
        st.begin(stage)
    facts = endpoint_facts(st, NOW)
    assert (facts.connection if facts else None) == shared
    if facts is not None:
        assert facts.tls_version == "TLSv1.3" and facts.auth_mechanisms == ("PLAIN",)
        assert "auth" not in facts.timings  # the account's own steps are not shared


@pytest.mark.parametrize(("overrides", "authenticate", "alone"), [
    ({}, False, True),
    ({}, True, False),  # AUTH: the account's own session
    ({"method": "None"}, False, False),  # the envelope check runs without AUTH there
])
def test_endpoint_only(overrides: dict[str, Any], authenticate: bool, alone: bool) -> None:
    assert endpoint_only(make_account(**overrides), authenticate, None) is alone


def test_endpoint_only_with_method_none_and_no_envelope_check() -> None:
    account = make_account(method="None")
    account = dataclasses.replace(account, probe=dataclasses.replace(account.probe,
                                                                     envelope_check=False))
    assert endpoint_only(account, False, None)


def test_a_cached_certificate_counts_its_days_from_the_reader() -> None:
    from reconciler.model import CertificateInfo

    info = CertificateInfo("CN=x", "CN=ca", "2026-12-31T00:00:00Z", 30)
    facts = EndpointFacts(taken_at=T0, connection=OK, certificate=info)
    assert facts.session_state(at(86400 * 3)).certificate.days_remaining == 26  # type: ignore[union-attr]


# --------------------------------------------------------------------------- on the wire


def _accounts(server: RunningServer, n: int, **o: Any) -> list[Account]:
    return [make_account(name=f"a{i}", email_address=f"a{i}@example.test", port=server.port,
                         **o) for i in range(n)]


def _probe(accounts: list[Account], secrets: DirSecretReader, cache: EndpointCache, *,
           now: dt.datetime = NOW, authenticate: Callable[[Account], bool] | bool = False,
           last_probe: dt.datetime | None = None) -> list[ProbeResult]:
    return asyncio.run(probe_accounts(accounts, secrets, now=now, authenticate=authenticate,
                                      endpoints=cache, last_probe=lambda a: last_probe))


def test_accounts_on_one_endpoint_share_one_session(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path) -> None:
    server = smtp_server(mode="STARTTLS", tls="expiring", users={USER: PASSWORD})
    accounts = _accounts(server, 12)
    cache = EndpointCache()
    results = _probe(accounts, DirSecretReader(secrets_dir), cache)
    assert server.connections == 1  # without the cache: 12
    assert cache.checks == 1 and cache.served == 11
    for result in results:
        assert result.connection.ok, result.connection
        assert result.authentication is None  # no credential check this run
        assert result.tls_version and result.cipher and result.certificate is not None
        assert "AUTH" in result.extensions and "PLAIN" in result.auth_mechanisms
        # warnings are the account's own, the certificate's expiry included
        assert [w.reason for w in result.warnings] == [reasons.CERTIFICATE_EXPIRING_SOON]
        assert result.credentials["password"] == PASSWORD  # the Secret is rendered per account
    assert not server.auth_attempts


def test_a_changed_endpoint_is_another_check(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path, ca: ThrowawayCA) -> None:
    server = smtp_server(mode="STARTTLS", tls="default", users={USER: PASSWORD})
    write_secret(secrets_dir, NAMESPACE, OTHER_CA.name, OTHER_CA.key,
                 ca.ca_pem + "\n" + ThrowawayCA().ca_pem)  # another truststore content
    accounts = [*_accounts(server, 3),
                make_account(name="floor", port=server.port, min_tls_version="1.3"),
                make_account(name="trust", port=server.port, truststore=OTHER_CA)]
    cache = EndpointCache()
    results = _probe(accounts, DirSecretReader(secrets_dir), cache)
    assert all(r.connection.ok for r in results), [r.connection for r in results]
    assert server.connections == 3 and cache.checks == 3


def test_an_account_that_authenticates_runs_its_own_session_and_refreshes_the_endpoint(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path) -> None:
    server = smtp_server(mode="STARTTLS", users={"a0@example.test": PASSWORD})
    accounts = _accounts(server, 5)
    secrets = DirSecretReader(secrets_dir)
    cache = EndpointCache()
    _probe(accounts, secrets, cache, now=at(0))
    assert server.connections == 1
    # one account's credential changed: its own full session, AUTH and envelope included
    result, = _probe(accounts[:1], secrets, cache, now=at(60), authenticate=True,
                     last_probe=at(0))
    assert result.authentication is not None and result.authentication.ok
    assert server.connections == 2
    assert [(a.login, a.accepted) for a in server.auth_attempts] == [("a0@example.test", True)]
    # that session's endpoint part serves the others' next probes
    results = _probe(accounts[1:], secrets, cache, now=at(120), last_probe=at(0))
    assert server.connections == 2 and all(r.connection.ok for r in results)


def test_the_shared_result_expires_after_the_interval(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path) -> None:
    server = smtp_server(mode="STARTTLS", users={USER: PASSWORD})
    accounts = _accounts(server, 3)  # interval 600 s
    secrets = DirSecretReader(secrets_dir)
    cache = EndpointCache()
    _probe(accounts, secrets, cache, now=at(0))
    _probe(accounts, secrets, cache, now=at(599))
    assert server.connections == 1
    _probe(accounts, secrets, cache, now=at(600))
    assert server.connections == 2


def test_an_account_alone_on_its_endpoint_is_checked_every_time_it_is_due(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path) -> None:
    server = smtp_server(mode="STARTTLS", users={USER: PASSWORD})
    account = _accounts(server, 1)
    secrets = DirSecretReader(secrets_dir)
    cache = EndpointCache()
    _probe(account, secrets, cache, now=at(0))
    _probe(account, secrets, cache, now=at(30), last_probe=at(0))  # a retry after a failure
    assert server.connections == 2


def test_a_failing_endpoint_is_shared_too(secrets_dir: Path) -> None:
    port = unused_port()
    accounts = [make_account(name=f"a{i}", port=port) for i in range(6)]
    cache = EndpointCache()
    results = _probe(accounts, DirSecretReader(secrets_dir), cache)
    assert cache.checks == 1
    assert {r.connection.reason for r in results} == {reasons.CONNECT_FAILED}


def test_one_check_in_flight_serves_every_thread(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path) -> None:
    """The controller's workers each run an event loop of their own: a check in flight on one
    serves the others (or its result does, once it is done)."""
    server = smtp_server(mode="STARTTLS", users={USER: PASSWORD})
    accounts = _accounts(server, 8)
    secrets = DirSecretReader(secrets_dir)
    cache = EndpointCache()
    results: list[ProbeResult] = []
    start = threading.Barrier(4)

    def worker(part: list[Account]) -> None:
        start.wait()
        results.extend(_probe(part, secrets, cache))

    threads = [threading.Thread(target=worker, args=(accounts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r.connection.ok for r in results)
    assert server.connections == 1 and cache.checks == 1


def test_a_truststore_of_another_namespace_never_serves(
        smtp_server: Callable[..., RunningServer], secrets_dir: Path) -> None:
    """Two tenants trusting the same CA content still get their own check: a message names the
    truststore object, and one tenant never reads another's name in its status."""
    server = smtp_server(mode="STARTTLS", users={USER: PASSWORD})
    unrelated = ThrowawayCA().ca_pem  # both trust a CA that did not sign the server
    for namespace in (NAMESPACE, "other-team"):
        write_secret(secrets_dir, namespace, TRUSTSTORE_REF.name, TRUSTSTORE_REF.key, unrelated)
    accounts = [make_account(name="mine", port=server.port),
                make_account(name="theirs", namespace="other-team", port=server.port)]
    results = _probe(accounts, DirSecretReader(secrets_dir), EndpointCache())
    assert server.connections == 2
    for account, result in zip(accounts, results, strict=True):
        assert result.connection.reason == reasons.CERTIFICATE_UNTRUSTED
        other = "other-team" if account.namespace == NAMESPACE else f"{NAMESPACE}/"
        assert f"{account.namespace}/{TRUSTSTORE_REF.name}" in result.connection.message
        assert other not in result.connection.message
