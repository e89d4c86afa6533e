"""Throwaway SMTP servers on loopback, for the `demo` command and for the test suite.

Everything runs on one asyncio event loop in a daemon thread (`ServerLoop`), so callers — a
synchronous CLI command or a pytest fixture — can start and stop servers without owning a loop.
Servers listen on 127.0.0.1 with ephemeral ports and take their certificates from a `ThrowawayCA`
(reconciler/demo/certificates.py). aiosmtpd is imported only here (trustme only there): they are
runtime dependencies of the demo, not of the reconciler itself.

Server kinds:
- `ServerLoop.smtp(SmtpServerOptions(...))`: a real aiosmtpd server in mode STARTTLS, SMTPS or
  plain, with PLAIN/LOGIN/XOAUTH2 authentication checked against given users/tokens (or a checker
  callback), recording every AUTH attempt and every message it receives.
- `ServerLoop.scripted(kind)`: tiny raw servers for faults: "hang" (accepts TCP, never speaks),
  "reject421" (421 banner), "close_in_handshake" (STARTTLS accepted, then the connection is
  dropped in the middle of the TLS handshake), "slow" (each reply 0.3 s late; no TLS).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime as dt
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from reconciler.demo.certificates import LOOPBACK, ThrowawayCA

T = TypeVar("T")
Mode = Literal["STARTTLS", "SMTPS", "plain"]
ScriptKind = Literal["hang", "reject421", "close_in_handshake", "slow"]
SLOW_REPLY_DELAY = 0.3

#: checker(mechanism, login, secret) -> True (accept), False (535) or a full reply such as
#: "454 4.7.0 Temporary authentication failure".
AuthChecker = Callable[[str, str, str], "bool | str"]


# --------------------------------------------------------------------------- SMTP servers


@dataclass(frozen=True)
class AuthAttempt:
    """What the server saw in one AUTH exchange (the secret is kept only in test memory)."""

    mechanism: str
    login: str
    secret: str = field(repr=False)
    accepted: bool


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    authenticated_as: str | None


@dataclass
class SmtpServerOptions:
    """How an aiosmtpd server behaves."""

    mode: Mode = "STARTTLS"
    tls_context: ssl.SSLContext | None = None  # required for STARTTLS and SMTPS
    users: Mapping[str, str] = field(default_factory=dict)  # login -> password (PLAIN, LOGIN)
    tokens: Mapping[str, str] = field(default_factory=dict)  # login -> bearer token (XOAUTH2)
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "XOAUTH2")  # advertised
    checker: AuthChecker | None = None  # overrides users/tokens
    banner_delay: float = 0.0
    hostname: str = "mail.test"


@dataclass
class SessionRecord:
    """One connection: when it opened and closed (time.monotonic()) and the logins it tried."""

    opened: float
    closed: float | None = None
    logins: list[str] = field(default_factory=list)


@dataclass
class RunningServer:
    """A server listening on host:port; records what it saw. Close it (or its ServerLoop)."""

    host: str
    port: int
    kind: str
    auth_attempts: list[AuthAttempt] = field(default_factory=list)
    messages: list[ReceivedMessage] = field(default_factory=list)
    connections: int = 0
    sessions: list[SessionRecord] = field(default_factory=list)
    _closer: Callable[[], None] | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()


class _Handler:
    """aiosmtpd handler: records messages; provides the XOAUTH2 mechanism."""

    def __init__(self, options: SmtpServerOptions, record: RunningServer) -> None:
        self.options, self.record = options, record

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = session.auth_data
        login = getattr(data, "login", data)
        login = login.decode("utf-8", "replace") if isinstance(login, bytes) else None
        self.record.messages.append(ReceivedMessage(
            envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.original_content or b""),
            login))
        return "250 2.0.0 OK queued as demo"

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        from aiosmtpd.smtp import MISSING, AuthResult

        if len(args) == 2:
            blob: Any = args[1].encode()
        else:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False)
        try:
            fields = base64.b64decode(blob, validate=True).decode().split("\x01")
            login = next(f[5:] for f in fields if f.startswith("user="))
            token = next(f[12:] for f in fields if f.startswith("auth=Bearer "))
        except (ValueError, StopIteration):
            await server.push("501 5.5.2 Cannot parse XOAUTH2 response")
            return AuthResult(success=False, handled=True)
        result = _check(self.options, "XOAUTH2", login, token)
        self.record.auth_attempts.append(AuthAttempt("XOAUTH2", login, token, result is True))
        if result is True:
            return AuthResult(success=True, auth_data=login.encode())
        if isinstance(result, str):
            return AuthResult(success=False, handled=False, message=result)
        error = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"mail"}').decode()
        await server.push(f"334 {error}")
        await server._reader.readline()  # the client's empty line ends the exchange
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")


def _check(options: SmtpServerOptions, mechanism: str, login: str, secret: str) -> bool | str:
    if options.checker is not None:
        return options.checker(mechanism, login, secret)
    table = options.tokens if mechanism == "XOAUTH2" else options.users
    return login in table and table[login] == secret


class _Authenticator:
    """aiosmtpd authenticator for PLAIN and LOGIN; records every attempt."""

    def __init__(self, options: SmtpServerOptions, record: RunningServer) -> None:
        self.options, self.record = options, record

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        result = _check(self.options, mechanism, login, password)
        connection = getattr(server, "connection_record", None)
        if connection is not None:
            connection.logins.append(login)
        self.record.auth_attempts.append(AuthAttempt(mechanism, login, password, result is True))
        if result is True:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False, or aiosmtpd sends no reply at all
        return AuthResult(success=False, handled=False,
                          message=result if isinstance(result, str) else None)


# --------------------------------------------------------------------------- the loop


class ServerLoop:
    """An asyncio loop in a daemon thread that hosts servers until close()."""

    def __init__(self) -> None:
        # aiosmtpd logs every failed client handshake with a traceback; the faults are on purpose.
        logging.getLogger("mail.log").setLevel(logging.CRITICAL)
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._on_loop_error)
        self.errors: list[str] = []  # server-side errors (failed handshakes etc.), for debugging
        self._servers: list[asyncio.base_events.Server] = []
        self._transports: set[asyncio.BaseTransport] = set()
        self._thread = threading.Thread(target=self._run, name="demo-servers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.errors.append(str(context.get("message") or context.get("exception")))

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        """Run a coroutine on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    def __enter__(self) -> ServerLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server, drop every connection, stop the thread and close the loop."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.call(self._shutdown)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for transport in list(self._transports):
            transport.abort() if hasattr(transport, "abort") else transport.close()  # type: ignore[attr-defined]
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)

    def _track(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)

    def _closer(self, server: asyncio.base_events.Server) -> Callable[[], None]:
        async def stop() -> None:
            server.close()
            await server.wait_closed()

        def close() -> None:
            if not self.loop.is_closed():
                with contextlib.suppress(Exception):
                    self.call(stop)
        return close

    # -------------------------------------------------------------- aiosmtpd

    def smtp(self, options: SmtpServerOptions | None = None) -> RunningServer:
        """Start an aiosmtpd server on 127.0.0.1 (ephemeral port)."""
        options = options or SmtpServerOptions()
        if options.mode != "plain" and options.tls_context is None:
            raise ValueError(f"mode {options.mode} needs a tls_context")
        record = RunningServer(LOOPBACK, 0, f"smtp-{options.mode}")
        return self.call(lambda: self._start_smtp(options, record))

    async def _start_smtp(self, options: SmtpServerOptions, record: RunningServer
                          ) -> RunningServer:
        from aiosmtpd.smtp import SMTP, Session

        loop_ref = self

        class _Session(Session):  # type: ignore[misc]
            login_data = None  # a plain attribute: the deprecated property logs on every AUTH
        handler = _Handler(options, record)
        excluded = [m for m in ("PLAIN", "LOGIN", "XOAUTH2") if m not in options.mechanisms]

        class _Smtp(SMTP):  # type: ignore[misc]
            # AUTH XOAUTH2 lines with Microsoft tokens run to a few KB, which Exchange Online
            # accepts (RFC 4954 allows 12288 octets); aiosmtpd's default limit is 512.
            command_size_limit = 12288
            connection_record: SessionRecord | None = None

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                # aiosmtpd's per-command limits default to the base class's 512, in a dict
                # shared by every server: give this one its own.
                self.command_size_limits = collections.defaultdict(lambda: 12288)

            def _create_session(self) -> Session:
                return _Session(self.loop)

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if self.transport is None:
                    record.connections += 1
                    self.connection_record = SessionRecord(time.monotonic())
                    record.sessions.append(self.connection_record)
                loop_ref._track(transport)
                super().connection_made(transport)

            async def _handle_client(self) -> None:
                try:
                    if options.banner_delay:
                        await asyncio.sleep(options.banner_delay)
                    await super()._handle_client()
                finally:
                    if self.connection_record is not None:
                        self.connection_record.closed = time.monotonic()

        def factory() -> _Smtp:
            return _Smtp(
                handler,
                hostname=options.hostname,
                ident="ESMTP demo",
                tls_context=options.tls_context if options.mode == "STARTTLS" else None,
                auth_require_tls=options.mode == "STARTTLS",
                authenticator=_Authenticator(options, record),
                auth_exclude_mechanism=excluded,
                loop=asyncio.get_running_loop(),
            )

        ssl_ctx = options.tls_context if options.mode == "SMTPS" else None
        server = await asyncio.get_running_loop().create_server(
            factory, LOOPBACK, 0, ssl=ssl_ctx)
        self._servers.append(server)
        record.port = server.sockets[0].getsockname()[1]
        record._closer = self._closer(server)
        return record

    # -------------------------------------------------------------- scripted faults

    def scripted(self, kind: ScriptKind) -> RunningServer:
        """Start a raw fault server: hang, reject421, close_in_handshake or slow."""
        record = RunningServer(LOOPBACK, 0, kind)
        return self.call(lambda: self._start_scripted(kind, record))

    async def _start_scripted(self, kind: ScriptKind, record: RunningServer) -> RunningServer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            record.connections += 1
            self._track(writer.transport)
            try:
                if kind == "reject421":
                    writer.write(b"421 4.3.2 mail.test Service not available, try later\r\n")
                    await writer.drain()
                elif kind == "close_in_handshake":
                    writer.write(b"220 mail.test ESMTP\r\n")
                    while line := await reader.readline():
                        verb = line.strip().upper()
                        if verb.startswith((b"EHLO", b"HELO")):
                            writer.write(b"250-mail.test\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
                        elif verb == b"STARTTLS":
                            writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                            await writer.drain()
                            await reader.read(100)  # part of the ClientHello, then drop
                            break
                        else:
                            writer.write(b"500 5.5.1 unrecognized\r\n")
                        await writer.drain()
                elif kind == "slow":
                    await asyncio.sleep(SLOW_REPLY_DELAY)
                    writer.write(b"220 mail.test ESMTP slow\r\n")
                    while line := await reader.readline():
                        await asyncio.sleep(SLOW_REPLY_DELAY)
                        if line.strip().upper() == b"QUIT":
                            writer.write(b"221 2.0.0 Bye\r\n")
                        else:
                            writer.write(b"250-mail.test\r\n250 STARTTLS\r\n")
                        await writer.drain()
                else:  # hang: read and never answer until the peer leaves
                    while await reader.read(4096):
                        pass
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(serve, LOOPBACK, 0)
        self._servers.append(server)
        record.port = server.sockets[0].getsockname()[1]
        record._closer = self._closer(server)
        return record


def unused_port() -> int:
    """A loopback port with nobody listening (connections are refused)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the demo set


@dataclass
class DemoServers:
    """STARTTLS, SMTPS and plain servers sharing one throwaway CA and one set of users."""

    loop: ServerLoop
    ca: ThrowawayCA
    starttls: RunningServer
    smtps: RunningServer
    plain: RunningServer

    @property
    def ca_pem(self) -> str:
        return self.ca.ca_pem

    def close(self) -> None:
        self.loop.close()

    def __enter__(self) -> DemoServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_demo_servers(users: Mapping[str, str], tokens: Mapping[str, str] | None = None, *,
                       checker: AuthChecker | None = None, ca: ThrowawayCA | None = None
                       ) -> DemoServers:
    """Start the three demo servers on 127.0.0.1; certificates name 127.0.0.1 and localhost.

    checker, when given, decides every AUTH instead of users/tokens (the demo checks XOAUTH2
    tokens against its identity provider fakes); ca defaults to a new ThrowawayCA.
    """
    loop = ServerLoop()
    try:
        ca = ca or ThrowawayCA()
        common: dict[str, Any] = {"users": dict(users), "tokens": dict(tokens or {}),
                                  "checker": checker}
        # Certificates that live as long as public ones do, so CERT-EXPIRES reads like a real one.
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(days=90)
        starttls = loop.smtp(SmtpServerOptions(
            mode="STARTTLS", tls_context=ca.server_context(not_after=expiry), **common))
        smtps = loop.smtp(SmtpServerOptions(
            mode="SMTPS", tls_context=ca.server_context(not_after=expiry), **common))
        plain = loop.smtp(SmtpServerOptions(mode="plain", **common))
    except BaseException:
        loop.close()
        raise
    return DemoServers(loop, ca, starttls, smtps, plain)
