"""The relay (issue 24): an application that cannot do OAuth logs in with a plain password and its
message goes upstream the OAuth way, configured only from the mounted Secret.

Real parts on 127.0.0.1: the relay as `email-reconciler relay` runs it (`serve`, in a thread of
its own), Python's smtplib as the application (AUTH PLAIN, as Django's SMTP backend sends), the
Microsoft identity platform stand-in issuing tokens, an aiosmtpd upstream that takes only XOAUTH2
with a token that stand-in issued, and a Graph stand-in that records the MIME and the recipients
it would deliver to.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import smtplib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from reconciler.demo.graph import FakeGraph
from reconciler.demo.https import Seen
from reconciler.demo.token_endpoints import Client, MicrosoftIdentity
from reconciler.relay.config import PASSWORD_KEY, load_config
from reconciler.relay.message import bare_line_ending, graph_recipients, header_senders
from reconciler.relay.serve import serve
from tests.mta.process import wait_for
from tests.smtpservers import LOOPBACK, RunningServer, ThrowawayCA, unused_port

SENDER = "orders@contoso.example"
TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT_ID = "00000000-0000-0000-0000-0000000000bb"
CLIENT_SECRET = "relay~client~S3cret~0123456789"
RELAY_PASSWORD = "relay-Pa55word-for-the-app-8c1e"
OUTLOOK = "https://outlook.office365.com"


# ---------------------------------------------------------------------- stand-ins and the relay


@pytest.fixture
def idp(ca: ThrowawayCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[MicrosoftIdentity]:
    bundle = tmp_path / "idp-ca.pem"
    bundle.write_text(ca.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # how msal and the relay trust it
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with MicrosoftIdentity(ca=ca, tenant_id=TENANT) as fake:
        fake.clients[CLIENT_ID] = Client(secret=CLIENT_SECRET,
                                         roles=("SMTP.SendAsApp", "Mail.Send"))
        yield fake


@dataclass
class HeldGraph(FakeGraph):
    """Graph whose sendMail waits for `release` when `hold` is set (a send in flight)."""

    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def send_mail(self, upn: str, req: Seen) -> tuple[int, Any]:
        if self.hold:
            self.entered.set()
            self.release.wait(30)
        return super().send_mail(upn, req)


@pytest.fixture
def graph(ca: ThrowawayCA, idp: MicrosoftIdentity) -> Iterator[HeldGraph]:
    with HeldGraph(ca=ca, idp=idp, users={SENDER}) as fake:
        yield fake


def smtp_account(port: int, authority: str) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"provider": "office365", "smtp": {
                "identity": {"emailAddress": SENDER},
                "connection": {"host": LOOPBACK, "port": port, "security": "STARTTLS",
                               "timeoutSeconds": 5, "truststore": {"configMapRef": {
                                   "name": "orders-sender", "key": "relay-upstream-ca.crt"}}},
                "authentication": {"method": "OAuth2", "oauth2": {
                    "grantType": "ClientCredentials", "tenantId": TENANT, "clientId": CLIENT_ID,
                    "authority": authority, "clientSecretSecretRef": {
                        "name": "orders-sender", "key": "relay-upstream-client-secret"}}}}}}


def graph_account(graph: FakeGraph, authority: str) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"provider": "office365", "sendUsing": "MicrosoftGraph", "graph": {
                "userPrincipalName": SENDER, "endpoint": graph.url, "timeoutSeconds": 5,
                "authentication": {"tenantId": TENANT, "clientId": CLIENT_ID,
                                   "grantType": "ClientCredentials", "authority": authority,
                                   "clientSecretSecretRef": {
                                       "name": "orders-sender",
                                       "key": "relay-upstream-client-secret"}}}}}


def mount(folder: Path, account: dict[str, Any], ca: ThrowawayCA, **relay: Any) -> Path:
    """The published Secret as kubelet mounts it (one file a key)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"version": 1, "listen": {"host": LOOPBACK, "port": relay.pop("port", 2525)},
              "username": SENDER, "account": account, "limits": relay}
    (folder / "relay.json").write_text(json.dumps(config))
    (folder / PASSWORD_KEY).write_text(RELAY_PASSWORD)
    (folder / "relay-upstream-client-secret").write_text(CLIENT_SECRET)
    (folder / "relay-upstream-ca.crt").write_text(ca.ca_pem)
    return folder


@dataclass
class RunningRelay:
    port: int
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop | None = None
    stop_event: asyncio.Event | None = None
    exit_code: int | None = None

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the relay did not stop"


@pytest.fixture
def relay() -> Iterator[Callable[[Path], RunningRelay]]:
    started: list[RunningRelay] = []

    def start(folder: Path, port: int | None = None) -> RunningRelay:
        ready = threading.Event()
        running = RunningRelay(port or unused_port(), threading.Thread(target=lambda: None))

        async def main() -> None:
            running.loop = asyncio.get_running_loop()
            running.stop_event = asyncio.Event()
            up = asyncio.Event()
            task = asyncio.create_task(serve(folder, port=running.port, ready=up,
                                             stop=running.stop_event))
            waiter = asyncio.create_task(up.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            ready.set()
            running.exit_code = await task
            waiter.cancel()

        running.thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        running.thread.start()
        assert ready.wait(30), "the relay did not start"
        assert running.exit_code is None, f"the relay exited {running.exit_code}"
        started.append(running)
        return running

    yield start
    for r in started:
        r.stop()
        r.join()


def listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port (read from /proc rather than by connecting: a
    connection made while the relay closes its listener would be one more session to drain)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(f[1].endswith(f":{port:04X}") and f[3] == "0A" for f in (ln.split() for ln in lines))


def message(to: str = "alice@example.net", sender: str = SENDER, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "relayed"
    for name, value in headers.items():
        msg[name] = value
    msg.set_content("Hello through the relay.\n")
    return msg


def send(port: int, msg: EmailMessage | bytes, rcpts: list[str], *,
         password: str = RELAY_PASSWORD, sender: str = SENDER) -> dict[str, Any]:
    """The application: smtplib, AUTH PLAIN with the relay password, one message."""
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as client:
        client.ehlo("app.example.test")
        client.login(SENDER, password)
        data = msg if isinstance(msg, bytes) else msg.as_bytes(policy=email.policy.SMTP)
        return client.sendmail(sender, rcpts, data)


def xoauth2_upstream(smtp_server: Callable[..., RunningServer],
                     idp: MicrosoftIdentity) -> RunningServer:
    """Exchange Online's stand-in: AUTH XOAUTH2 only, with a token the identity platform issued
    for outlook.office365.com."""
    def checker(mechanism: str, login: str, token: str) -> bool:
        claims = idp.issued.get(token, {})
        return mechanism == "XOAUTH2" and login == SENDER and claims.get("aud") == OUTLOOK

    return smtp_server("STARTTLS", checker=checker, mechanisms=("XOAUTH2",))


# ---------------------------------------------------------------------- SMTP upstream (XOAUTH2)


def test_plain_login_relayed_with_xoauth2(tmp_path: Path, ca: ThrowawayCA,
                                          idp: MicrosoftIdentity, smtp_server: Any,
                                          relay: Any) -> None:
    upstream = xoauth2_upstream(smtp_server, idp)
    r = relay(mount(tmp_path / "secret", smtp_account(upstream.port, idp.url), ca))
    assert send(r.port, message(), ["alice@example.net", "hidden@example.net"]) == {}
    [received] = upstream.messages
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ("alice@example.net", "hidden@example.net")
    assert b"Hello through the relay." in received.content
    assert [(a.mechanism, a.login, a.accepted) for a in upstream.auth_attempts] == [
        ("XOAUTH2", SENDER, True)]
    assert len(idp.token_requests()) == 1


def test_wrong_relay_password_is_535(tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity,
                                     smtp_server: Any, relay: Any) -> None:
    upstream = xoauth2_upstream(smtp_server, idp)
    r = relay(mount(tmp_path / "secret", smtp_account(upstream.port, idp.url), ca))
    with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        send(r.port, message(), ["alice@example.net"], password="not-the-relay-password-00")
    assert exc.value.smtp_code == 535
    assert upstream.messages == [] and upstream.auth_attempts == []


def test_sender_not_the_account_is_550(tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity,
                                       smtp_server: Any, relay: Any) -> None:
    upstream = xoauth2_upstream(smtp_server, idp)
    r = relay(mount(tmp_path / "secret", smtp_account(upstream.port, idp.url), ca))
    with pytest.raises(smtplib.SMTPSenderRefused) as envelope:
        send(r.port, message(), ["alice@example.net"], sender="ceo@contoso.example")
    assert envelope.value.smtp_code == 550 and SENDER.encode() in envelope.value.smtp_error
    with pytest.raises(smtplib.SMTPDataError) as header:
        send(r.port, message(sender="ceo@contoso.example"), ["alice@example.net"])
    assert header.value.smtp_code == 550
    assert upstream.messages == []
    assert send(r.port, message(), ["alice@example.net"]) == {}  # the account's own still goes
    assert len(upstream.messages) == 1


def test_token_endpoint_down_is_4xx(tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity,
                                    smtp_server: Any, relay: Any) -> None:
    upstream = xoauth2_upstream(smtp_server, idp)
    down = f"https://{LOOPBACK}:{unused_port()}"
    r = relay(mount(tmp_path / "secret", smtp_account(upstream.port, down), ca))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(r.port, message(), ["alice@example.net"])
    assert 400 <= exc.value.smtp_code < 500, exc.value
    assert b"retry later" in exc.value.smtp_error
    assert upstream.messages == []


def test_bare_line_feed_is_refused(tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity,
                                   smtp_server: Any, relay: Any) -> None:
    upstream = xoauth2_upstream(smtp_server, idp)
    r = relay(mount(tmp_path / "secret", smtp_account(upstream.port, idp.url), ca))
    raw = (f"From: {SENDER}\r\nTo: alice@example.net\r\nSubject: x\r\n\r\n"
           "line one\n.\r\nMAIL FROM:<x@evil.example>\r\n").encode()
    with smtplib.SMTP(LOOPBACK, r.port, timeout=30) as client:
        client.login(SENDER, RELAY_PASSWORD)
        client.mail(SENDER)
        client.rcpt("alice@example.net")
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send(raw + b".\r\n")
        code, text = client.getreply()
    assert code == 554 and b"bare CR or LF" in text
    assert upstream.messages == []


# ---------------------------------------------------------------------- Graph upstream


def test_graph_delivers_bcc_and_no_header_only_address(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, graph: HeldGraph,
        relay: Any) -> None:
    r = relay(mount(tmp_path / "secret", graph_account(graph, idp.url), ca))
    msg = message(to="alice@example.net", Cc="header-only@example.net")
    assert send(r.port, msg, ["alice@example.net", "bcc@example.net"]) == {}
    [sent] = graph.sent
    assert sent.sender == SENDER
    assert sorted(sent.recipients) == ["alice@example.net", "bcc@example.net"]
    assert b"header-only@example.net" not in sent.mime
    assert b"Hello through the relay." in sent.mime


def test_graph_429_is_4xx_and_the_retry_succeeds(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, graph: HeldGraph,
        relay: Any) -> None:
    r = relay(mount(tmp_path / "secret", graph_account(graph, idp.url), ca))
    graph.send_faults.append(429)
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(r.port, message(), ["alice@example.net"])
    assert 400 <= exc.value.smtp_code < 500 and b"429" in exc.value.smtp_error
    assert graph.sent == []
    assert send(r.port, message(), ["alice@example.net"]) == {}  # the application's retry
    assert len(graph.sent) == 1


def test_graph_oversized_message_is_552_with_the_limit(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, graph: HeldGraph,
        relay: Any) -> None:
    r = relay(mount(tmp_path / "secret", graph_account(graph, idp.url), ca))
    big = message()
    big.set_content("x" * 76 + "\n", subtype="plain")
    big.add_attachment(b"\0" * (3 * 1024 * 1024 + 1), maintype="application",
                       subtype="octet-stream", filename="big.bin")
    with pytest.raises(smtplib.SMTPSenderRefused) as declared:  # SIZE= in MAIL FROM
        send(r.port, big, ["alice@example.net"])
    assert declared.value.smtp_code == 552 and b"4 MB" in declared.value.smtp_error
    with smtplib.SMTP(LOOPBACK, r.port, timeout=30) as client:  # a client that declares nothing
        client.login(SENDER, RELAY_PASSWORD)
        client.mail(SENDER)
        client.rcpt("alice@example.net")
        code, text = client.data(big.as_bytes(policy=email.policy.SMTP))
    assert code == 552 and b"4 MB" in text
    assert graph.sent == [] and not [s for s in graph.seen if s.method == "POST"
                                     and s.path.endswith("/sendMail")]


def test_restart_during_a_send_loses_and_duplicates_nothing(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, graph: HeldGraph,
        relay: Any) -> None:
    folder = mount(tmp_path / "secret", graph_account(graph, idp.url), ca)
    first = relay(folder)
    graph.hold = True
    outcome: dict[str, Any] = {}

    def app() -> None:
        try:
            outcome["refused"] = send(first.port, message(), ["alice@example.net"])
        except smtplib.SMTPException as exc:  # the application would retry
            outcome["error"] = exc

    sender = threading.Thread(target=app)
    sender.start()
    assert graph.entered.wait(30), "the send did not reach Graph"
    first.stop()  # SIGTERM while the message is with Graph: no new sessions, this one finishes

    wait_for(lambda: not listening(first.port), timeout=30,
             what="the stopping relay to stop listening")
    graph.hold = False
    graph.release.set()
    sender.join(30)
    first.join()
    assert outcome == {"refused": {}}, outcome
    assert len(graph.sent) == 1
    second = relay(folder, port=first.port)  # the restarted relay serves the next message
    assert send(second.port, message(), ["bob@example.net"]) == {}
    assert [s.recipients for s in graph.sent] == [("alice@example.net",), ("bob@example.net",)]


# ---------------------------------------------------------------------- configuration, pure parts


def test_configuration_reloads_when_the_secret_changes(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, graph: HeldGraph,
        relay: Any) -> None:
    folder = mount(tmp_path / "secret", graph_account(graph, idp.url), ca)
    r = relay(folder)
    assert send(r.port, message(), ["alice@example.net"]) == {}
    (folder / PASSWORD_KEY).write_text("rotated-relay-password-0a9b8c7d")

    def rotated() -> bool:
        try:
            send(r.port, message(), ["alice@example.net"], password="rotated-relay-password-0a9b8c7d")
            return True
        except smtplib.SMTPAuthenticationError:
            return False

    wait_for(rotated, timeout=30, what="the relay to take the rotated password")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        send(r.port, message(), ["alice@example.net"])


def test_missing_secret_names_the_key(tmp_path: Path) -> None:
    from reconciler.relay.config import RelayConfigError

    with pytest.raises(RelayConfigError, match="relay.json is missing"):
        load_config(tmp_path)


@pytest.mark.parametrize(("data", "bare"), [
    (b"a\r\nb\r\n", False), (b"a\nb\r\n", True), (b"a\rb\r\n", True), (b"a\r\n\r\n", False)])
def test_bare_line_ending(data: bytes, bare: bool) -> None:
    assert bare_line_ending(data) is bare


def test_graph_recipients_rewrite_keeps_the_body() -> None:
    raw = (b"From: Orders <orders@contoso.example>\r\nTo: a@x.example,\r\n\tshown-only@x.example\r\n"
           b"Cc: c@x.example\r\nBcc: old@x.example\r\nSubject: s\r\n\r\nTo: not a header\r\n")
    out = graph_recipients(raw, ["a@x.example", "c@x.example", "hidden@x.example"])
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"To: not a header\r\n"
    assert b"shown-only" not in head and b"old@x.example" not in head
    assert b"To: a@x.example" in head and b"Cc: c@x.example" in head
    assert b"Bcc: hidden@x.example" in head
    assert header_senders(raw) == ["orders@contoso.example"]


def test_the_relay_needs_nothing_beyond_the_runtime_dependencies() -> None:
    """The image installs the runtime dependencies only (Dockerfile): the sidecar's SMTP server
    must be one of them, not of the demo or test extras."""
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                            .read_text())["project"]
    assert any(d.startswith("aiosmtpd>=") for d in project["dependencies"])
