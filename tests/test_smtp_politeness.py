"""Issue 14 items 1-6 and issue 12 item 2 on the SMTP side, against raw asyncio servers.

Per-operation timeouts and the overall deadline, bounded replies, per-server session limit, 421
retries, AUTH serialised after a failure, EHLO name, QUIT after failures, the envelope check and
503 as ProtocolViolation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import reasons
from reconciler.model import Account, KeyRef, ProbeResult, ProbeSettings
from reconciler.probe import limits, probe_account, probe_accounts
from reconciler.probe.credentials import DirSecretReader
from reconciler.probe.smtpclient import ehlo_name
from tests.hostile import HostileServers, MiniSmtp
from tests.smtpservers import NOW, PASSWORD, USER, ServerLoop, make_account, write_secret

OTHER = "other@example.test"
WRONG_REF = KeyRef("wrong-credentials", "password")


@pytest.fixture(autouse=True)
def fresh_politeness() -> Iterator[limits.Politeness]:
    """Each test starts with the documented defaults and no memory of other tests' servers."""
    yield limits.configure()
    limits.configure()


@pytest.fixture
def hostile(server_loop: ServerLoop) -> Iterator[HostileServers]:
    servers = HostileServers(server_loop)
    yield servers
    servers.close()


@pytest.fixture
def secrets(secrets_dir: Path) -> DirSecretReader:
    write_secret(secrets_dir, "mail", WRONG_REF.name, WRONG_REF.key, "not-the-password")
    return DirSecretReader(secrets_dir)


def plain(port: int, **o: Any) -> Account:
    """An account for a MiniSmtp server: plain text, AUTH allowed (loopback test server)."""
    envelope = o.pop("envelope_check", True)
    account = make_account(port=port, security="None", allow_insecure_auth=True, truststore=None,
                           **o)
    return dataclasses.replace(account, probe=ProbeSettings(envelope_check=envelope))


def probe(account: Account, secrets: DirSecretReader) -> ProbeResult:
    return asyncio.run(probe_account(account, secrets, now=NOW))


# --------------------------------------------------------------------------- timeouts


def test_banner_and_auth_delays_each_within_timeout_are_ready(hostile: HostileServers,
                                                              secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, banner_delay=2.0,
                                        auth_delay=2.0))
    result = probe(plain(server.port, timeout_seconds=3), secrets)
    assert result.ok, (result.connection, result.authentication)
    assert result.timings["total"] > 4  # more than timeoutSeconds in total: per operation


# --------------------------------------------------------------------------- bounded replies


def test_endless_ehlo_reply_is_protocol_violation(hostile: HostileServers,
                                                  secrets: DirSecretReader) -> None:
    port = hostile.smtp_endless_ehlo()
    result = probe(plain(port), secrets)
    assert result.connection.reason == reasons.PROTOCOL_VIOLATION
    assert "512 lines or 65536 bytes" in result.connection.message
    assert "waiting for the EHLO reply" in result.connection.message


def test_endless_535_reply_is_protocol_violation(hostile: HostileServers,
                                                 secrets: DirSecretReader) -> None:
    port = hostile.smtp_endless_535()
    result = probe(plain(port), secrets)
    assert result.connection.ok
    assert result.authentication is not None
    assert result.authentication.reason == reasons.PROTOCOL_VIOLATION


# --------------------------------------------------------------------------- politeness


def test_thirty_accounts_on_a_server_limited_to_twenty_connections(
        hostile: HostileServers, secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, max_connections=20,
                                        banner_delay=0.05))
    accounts = [plain(server.port, name=f"acct-{i}") for i in range(30)]
    results = asyncio.run(probe_accounts(accounts, secrets, now=NOW, concurrency=32))
    assert [r.ok for r in results] == [True] * 30
    assert server.rejected_busy == 0
    assert server.peak <= limits.DEFAULT_MAX_SESSIONS_PER_SERVER


def test_the_ports_of_one_mta_share_its_session_bound(hostile: HostileServers,
                                                     secrets: DirSecretReader) -> None:
    """Issue 26 item 3: one Exim on several ports counts our sessions together
    (smtp_accept_max). Per (host, port), 30 accounts over two ports held 8 sessions and drew
    421s; per MTA (the host), they hold 4 and none is refused."""
    mta = MiniSmtp(users={USER: PASSWORD}, max_connections=limits.DEFAULT_MAX_SESSIONS_PER_SERVER,
                   banner_delay=0.05)
    ports = [hostile.start(mta.serve), hostile.start(mta.serve)]
    accounts = [plain(ports[i % 2], name=f"acct-{i}") for i in range(30)]
    results = asyncio.run(probe_accounts(accounts, secrets, now=NOW, concurrency=32))
    assert [r.ok for r in results] == [True] * 30
    assert mta.rejected_busy == 0
    assert mta.peak <= limits.DEFAULT_MAX_SESSIONS_PER_SERVER
    assert limits.politeness().peak_sessions["127.0.0.1"] <= limits.DEFAULT_MAX_SESSIONS_PER_SERVER


@pytest.mark.parametrize(("host", "key"), [
    ("smtp.Example.COM", "smtp.example.com"),
    ("smtp.example.com.", "smtp.example.com"),
    ("127.0.0.1", "127.0.0.1"),
    ("::FFFF:127.0.0.1", "::ffff:7f00:1"),
    ("[::1]", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
])
def test_a_server_is_its_host_whatever_the_port(host: str, key: str) -> None:
    assert limits.mta_key(host) == key


@pytest.mark.parametrize(("override", "provider", "sessions"), [
    (None, None, limits.DEFAULT_MAX_SESSIONS_PER_SERVER),
    (None, "custom", limits.DEFAULT_MAX_SESSIONS_PER_SERVER),
    (None, "gmail", 16),  # the preset's: a multi-tenant service
    (None, "office365", 16),
    (2, "gmail", 2),  # --max-sessions-per-server wins
    (2, None, 2),
])
def test_session_bound_comes_from_the_preset(override: int | None, provider: str | None,
                                             sessions: int) -> None:
    assert limits.Politeness(override).max_sessions(provider) == sessions


def _runs_through(coro: Any) -> bool:
    """Whether a coroutine finishes in its first step, without waiting for anything."""
    async def check() -> bool:
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(0)  # the task's first step runs meanwhile
        done = task.done()
        task.cancel()
        return done

    return asyncio.run(check())


def test_successful_auths_are_not_rate_limited() -> None:
    """Issue 26 item 3: with 60 AUTHs a minute per server, 100,000 accounts on one provider
    took 28 hours. Only failures spend the budget now."""
    polite = limits.configure(max_auth_failures_per_minute=2)
    for _ in range(1000):
        assert _runs_through(polite.auth_allowance("mail.test"))
        polite.auth_result("mail.test", ok=True)


def test_failed_auths_spend_the_budget_then_the_next_auth_waits() -> None:
    polite = limits.configure(max_auth_failures_per_minute=3)
    for _ in range(3):
        assert _runs_through(polite.auth_allowance("mail.test"))
        polite.auth_result("mail.test", ok=False)
    assert polite.penalized("mail.test")
    assert not _runs_through(polite.auth_allowance("mail.test"))  # waits for a refill
    assert not _runs_through(polite.auth_allowance("MAIL.test."))  # the same MTA
    assert _runs_through(polite.auth_allowance("other.test"))  # another MTA is not concerned
    polite.auth_result("mail.test", ok=True)  # a success ends the penalty, not the spending
    assert not polite.penalized("mail.test")
    assert not _runs_through(polite.auth_allowance("mail.test"))


def test_421_past_the_limit_is_retried_until_ready(hostile: HostileServers,
                                                   secrets: DirSecretReader) -> None:
    limits.configure(max_sessions_per_server=30)  # more than the server takes: it 421s
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, max_connections=20,
                                        banner_delay=0.3))
    accounts = [plain(server.port, name=f"acct-{i}", timeout_seconds=3) for i in range(30)]
    results = asyncio.run(probe_accounts(accounts, secrets, now=NOW, concurrency=32))
    assert server.rejected_busy > 0
    assert [r.connection.reason for r in results] == [reasons.SUCCEEDED] * 30


def test_busy_greeting_retried_within_the_deadline(hostile: HostileServers,
                                                   secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, busy_first=2))
    result = probe(plain(server.port, timeout_seconds=1), secrets)
    assert result.ok
    assert server.connections == 3


def test_other_accounts_wait_their_turn_after_a_wrong_password(
        hostile: HostileServers, secrets: DirSecretReader) -> None:
    # Dovecot-like: after a failure, every AUTH reply of the server waits 1.5 s, longer than
    # timeoutSeconds 1; a success clears it. The healthy accounts are Ready all the same.
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, penalty_delay=1.5))
    bad = plain(server.port, name="bad", password=WRONG_REF, timeout_seconds=1)
    good = [plain(server.port, name=f"good-{i}", timeout_seconds=1) for i in range(3)]
    results = asyncio.run(probe_accounts([bad, *good], secrets, now=NOW))
    assert results[0].authentication is not None
    assert results[0].authentication.reason == reasons.AUTHENTICATION_FAILED
    assert [r.ok for r in results[1:]] == [True] * 3


# --------------------------------------------------------------------------- EHLO and QUIT


def test_ehlo_name_is_fqdn_or_address_literal() -> None:
    assert ehlo_name({"mail.smtp.localhost": "app.example.com"}, "10.0.0.1") == "app.example.com"
    name = ehlo_name({}, "127.0.0.1")
    host = socket.gethostname()
    assert name == (host if "." in host else "[127.0.0.1]")
    if "." not in host:
        assert ehlo_name({}, "::1") == "[IPv6:::1]"


def test_ehlo_sends_the_override_and_quits_after_starttls_not_offered(
        hostile: HostileServers, secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}))
    account = make_account(port=server.port, security="STARTTLS", truststore=None,
                           advanced={"mail.smtp.localhost": "probe.example.com"})
    result = probe(account, secrets)
    assert result.connection.reason == reasons.STARTTLS_NOT_OFFERED
    assert server.ehlo_names == ["probe.example.com"]
    assert server.quits == 1  # QUIT after the failure: no "lost connection after EHLO"


def test_quit_after_wrong_password_and_success(hostile: HostileServers,
                                               secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}))
    probe(plain(server.port, password=WRONG_REF), secrets)
    probe(plain(server.port), secrets)
    assert server.quits == 2


# --------------------------------------------------------------------------- the envelope check


def test_envelope_check_mail_from_then_rset_never_rcpt(hostile: HostileServers,
                                                       secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}))
    result = probe(plain(server.port), secrets)
    assert result.ok
    verbs = [c.split()[0].split(":")[0].upper() for c in server.commands]
    assert verbs == ["EHLO", "AUTH", "MAIL", "RSET", "QUIT"]
    assert f"MAIL FROM:<{USER}>" in server.commands


def test_sender_login_mismatch_is_sender_rejected(hostile: HostileServers,
                                                  secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, senders={USER: {USER}}))
    result = probe(plain(server.port, email_address=OTHER, user_id=USER), secrets)
    assert not result.ok
    assert result.authentication is not None
    assert result.authentication.reason == reasons.SENDER_REJECTED
    assert "553 5.7.1" in result.authentication.message
    assert server.quits == 1


def test_envelope_check_can_be_turned_off(hostile: HostileServers,
                                          secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, senders={USER: {USER}}))
    result = probe(plain(server.port, email_address=OTHER, user_id=USER, envelope_check=False),
                   secrets)
    assert result.ok
    assert not any(c.startswith("MAIL") for c in server.commands)


def test_tls_required_at_mail_from(hostile: HostileServers, secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(require_tls_at_mail=True))
    result = probe(plain(server.port, method="None"), secrets)
    assert not result.ok
    assert result.connection.reason == reasons.TLS_REQUIRED
    assert "530 5.7.0" in result.connection.message


def test_503_to_auth_is_protocol_violation_not_wrong_password(
        hostile: HostileServers, secrets: DirSecretReader) -> None:
    server = hostile.mini_smtp(MiniSmtp(users={USER: PASSWORD}, answer_503=True))
    result = probe(plain(server.port), secrets)
    assert result.authentication is not None
    assert result.authentication.reason == reasons.PROTOCOL_VIOLATION
    assert "not a wrong password" in result.authentication.message


def test_session_limit_holds_across_threads_with_their_own_event_loops() -> None:
    # The controller's workers each run their own event loop; the limit is per process.
    import threading

    polite = limits.configure(max_sessions_per_server=2)
    inside = 0
    peak = 0
    lock = threading.Lock()

    async def one() -> None:
        nonlocal inside, peak
        async with polite.session("mail.test"):
            with lock:
                inside += 1
                peak = max(peak, inside)
            await asyncio.sleep(0.02)
            with lock:
                inside -= 1

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(5)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert peak == 2
    assert polite.peak_sessions["mail.test"] == 2
