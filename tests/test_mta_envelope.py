"""The probe's envelope check, EHLO name, QUIT and politeness against real Postfix (issue 14).

Like tests/test_mta_postfix.py: accounts probed through the CLI against the private Postfix of
tests/mta/bed.py, verdicts judged by the condition reason and by Postfix's own log (which
commands the session carried, how it ended, what anvil counted). The envelope check says
MAIL FROM and RSET, never RCPT or DATA: nothing is ever queued.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from reconciler.model import status_condition
from tests.mta.bed import SENDER_LOGINS
from tests.mta.harness import Run, message, ready, reason, why
from tests.mta.process import wait_for


def test_envelope_check_is_mail_from_then_rset(mta: Run) -> None:
    mta.account("envelope", "authonly")
    mta.account("envelope-relay", "relay", method="None")
    off = mta.account("envelope-off", "relay", method="None")
    off["spec"]["probe"] = {"envelopeCheck": False}
    status = mta.probe()
    for name in ("envelope", "envelope-relay", "envelope-off"):
        assert ready(status[name]), why(status[name])
    [checked] = mta.sessions("authonly", at_least=1)
    assert checked.commands | {"commands": ""} == {
        "ehlo": "2", "starttls": "1", "auth": "1", "mail": "1", "rset": "1", "quit": "1",
        "commands": ""}, checked.text()
    relay = mta.sessions("relay", at_least=2)
    assert sorted(s.commands.get("mail", "-") for s in relay) == ["-", "1"]
    assert all("rcpt" not in s.commands and "data" not in s.commands for s in relay)


def test_sender_login_mismatch(mta: Run) -> None:
    """reject_sender_login_mismatch: the login may not send as this address (553 5.7.1)."""
    owner = SENDER_LOGINS["sendas@example.com"]
    mta.account("sendas", "sendermap")  # logs in as sendas@example.com, its owner
    mta.account("impostor", "sendermap", login="impostor@example.com", email="sendas@example.com")
    status = mta.probe()
    assert ready(status["sendas"]), why(status["sendas"])
    impostor = status["impostor"]
    assert reason(impostor) == "SenderRejected", why(impostor)
    assert reason(impostor, "Connected") == "Succeeded"
    assert "553" in message(impostor) and "not owned by user impostor@example.com" in message(
        impostor)

    sessions = mta.sessions("sendermap", at_least=2)
    text = "\n".join(s.text() for s in sessions)
    assert "NOQUEUE: reject: MAIL from" in text and "not owned by user impostor" in text
    assert sorted(s.commands.get("mail", "-") for s in sessions) == ["0/1", "1"]
    assert sorted(mta.auth_results()) == [("impostor@example.com", "OK"), (owner, "OK")]


def test_helo_name_passes_reject_non_fqdn_helo_hostname(mta: Run) -> None:
    """Without an override the probe says an FQDN or the address literal, never a bare name."""
    mta.account("helo-default", "fqdnhelo")
    status = mta.probe()["helo-default"]
    assert ready(status), why(status)
    text = "\n".join(s.text() for s in mta.sessions("fqdnhelo", at_least=1))
    assert "reject:" not in text, text
    names = set(re.findall(r"helo=<([^>]*)>", text))
    assert names, text
    assert all(n == "[127.0.0.1]" or ("." in n and not n.startswith("[")) for n in names), names


def test_quit_after_early_failures(mta: Run) -> None:
    """A session that can still carry QUIT gets it: Postfix logs no "lost connection"."""
    mta.account("quit-nostarttls", "nostarttls")
    mta.account("quit-helo", "fqdnhelo", advanced={"mail.smtp.localhost": "laptop"})
    status = mta.probe()
    assert reason(status["quit-nostarttls"]) == "StartTLSNotOffered"
    assert reason(status["quit-helo"]) == "ServerRejected"
    for service in ("nostarttls", "fqdnhelo"):
        [session] = mta.sessions(service, at_least=1)
        assert session.ended == "disconnect", session.text()
        assert session.commands.get("quit") == "1", session.text()


def test_tls_required_at_mail_from(mta: Run) -> None:
    """security None, method None on a server that wants STARTTLS first: not Ready."""
    mta.account("tlsreq-plain", "tlsrequired", security="None", method="None")
    mta.account("tlsreq-starttls", "tlsrequired", method="None")
    status = mta.probe()
    plain = status["tlsreq-plain"]
    assert reason(plain) == "TLSRequired", why(plain)
    assert "530" in message(plain)
    assert ready(status["tlsreq-starttls"]), why(status["tlsreq-starttls"])
    sessions = mta.sessions("tlsrequired", at_least=2)
    by_tls = {"starttls" in s.commands: s for s in sessions}
    assert by_tls[False].commands.get("mail") == "0/1", by_tls[False].text()
    assert by_tls[True].commands.get("mail") == "1", by_tls[True].text()


def test_sessions_per_server_are_capped(mta: Run) -> None:
    """30 accounts of one server: Postfix's anvil never counts more than the probe's cap (4)."""
    names = [f"cap{i:02d}" for i in range(30)]
    for name in names:
        mta.account(name, "connlimit", method="None")
    status = mta.probe()
    assert all(ready(status[n]) for n in names), {n: why(status[n]) for n in names}
    mta.sessions("connlimit", at_least=30)
    assert mta.bed.max_connection_count("connlimit", mta.postfix_since) <= 4


@contextmanager
def occupied(port: int, count: int) -> Iterator[Occupied]:
    """`count` idle SMTP connections from 127.0.0.1 (each past its 220 greeting, so Postfix's
    anvil counts it); closed at exit, or earlier by the test.

    A slot an earlier test closed is freed when its smtpd sees the close and tells anvil, which
    under load may come after this test starts: a 421 greeting is taken as "not yet", and the
    connection is tried again until a slot is free (each such 421 is counted: Postfix logs
    one "limit exceeded" line for it)."""
    held = Occupied([], 0)

    def take() -> bool:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        greeting = s.recv(512)
        if greeting.startswith(b"220 "):
            held.sockets.append(s)
            return True
        s.close()
        assert greeting.startswith(b"421 "), greeting
        held.refused += 1
        return False

    try:
        for _ in range(count):
            wait_for(take, timeout=60, what="a free connection slot on the busy port")
        yield held
    finally:
        for s in held.sockets:
            s.close()


@dataclass
class Occupied:
    sockets: list[socket.socket]
    refused: int  # 421 greetings this test got itself while taking the slots


def test_busy_server_is_retried_then_server_busy(mta: Run) -> None:
    """Every slot taken: 421 at the greeting, retried with backoff, then ServerBusy (transient)."""
    mta.account("busy-full", "busy", method="None", timeout=2)
    with occupied(mta.bed.port("busy"), 2) as held:
        status = mta.probe()["busy-full"]
    assert reason(status) == "ServerBusy", why(status)
    assert status_condition(status, "Stalled")["status"] == "False"
    refused = [line for line in mta.bed.postfix.log_lines("busy", mta.postfix_since)
               if "Connection concurrency limit exceeded" in line]
    assert len(refused) >= 2 + held.refused, refused  # the probe's 421 was retried


def test_busy_server_is_retried_until_a_slot_frees(mta: Run) -> None:
    mta.account("busy-later", "busy", method="None", timeout=3)
    with occupied(mta.bed.port("busy"), 2) as held:
        def release() -> None:
            wait_for(lambda: sum("Connection concurrency limit exceeded" in line for line in
                                 mta.bed.postfix.log_lines("busy", mta.postfix_since))
                     > held.refused, timeout=20, what="the probe's first 421")
            for s in held.sockets:
                s.close()

        releaser = threading.Thread(target=release)
        releaser.start()
        status = mta.probe()["busy-later"]
        releaser.join()
    assert ready(status), why(status)
    sessions = mta.sessions("busy", at_least=4)
    assert any(s.commands.get("mail") == "1" and s.commands.get("quit") == "1"
               for s in sessions), [s.text() for s in sessions]
