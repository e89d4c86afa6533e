"""Loopback SMTP servers that record what a client did: TLS, AUTH, envelope, message.

Four kinds, all on 127.0.0.1 with OS-chosen ports and one private CA:
- starttls: offers STARTTLS, requires it before AUTH, requires AUTH before MAIL.
- smtps: implicit TLS, requires AUTH.
- relay: plain SMTP, no TLS, no AUTH (a relay on a trusted network).
- stripped: what a downgrading attacker shows a STARTTLS client: no STARTTLS, AUTH in clear.
  A client holding the STARTTLS Secret must never AUTH or send here.
"""

from __future__ import annotations

import asyncio
import collections
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.smtpservers import LOOPBACK, ServerLoop, ThrowawayCA

Kind = Literal["starttls", "smtps", "relay", "stripped"]
KINDS: tuple[Kind, ...] = ("starttls", "smtps", "relay", "stripped")


@dataclass(frozen=True)
class Auth:
    mechanism: str
    login: str
    password: str = field(repr=False)
    tls: bool
    accepted: bool


@dataclass(frozen=True)
class Received:
    tls: bool
    tls_version: str | None
    authenticated_as: str | None
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes


@dataclass
class Recording:
    """Everything one server saw."""

    kind: Kind
    port: int = 0
    auths: list[Auth] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    connections: int = 0


class _Handler:
    def __init__(self, record: Recording) -> None:
        self.record = record

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        tls, version = _tls_of(server)
        data = session.auth_data
        login = getattr(data, "login", None)
        self.record.messages.append(Received(
            tls=tls, tls_version=version,
            authenticated_as=login.decode("utf-8", "replace") if isinstance(login, bytes) else None,
            mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos),
            content=bytes(envelope.original_content or b"")))
        return "250 2.0.0 OK queued"


def _tls_of(server: Any) -> tuple[bool, str | None]:
    ssl_object = None
    if server.transport is not None:
        ssl_object = server.transport.get_extra_info("ssl_object")
    return ssl_object is not None, (ssl_object.version() if ssl_object is not None else None)


class _Authenticator:
    def __init__(self, record: Recording, users: Mapping[str, str]) -> None:
        self.record, self.users = record, users

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = self.users.get(login) == password
        self.record.auths.append(Auth(mechanism, login, password, _tls_of(server)[0], ok))
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)


class ClientServers:
    """The four servers for one client, on a shared ServerLoop."""

    def __init__(self, loop: ServerLoop, ca: ThrowawayCA, users: Mapping[str, str]) -> None:
        self.ca_pem = ca.ca_pem
        self.servers: dict[Kind, Recording] = {}
        for kind in KINDS:
            record = Recording(kind)
            loop.call(lambda r=record: _start(loop, ca, r, users))  # type: ignore[misc]
            self.servers[kind] = record

    def __getitem__(self, kind: Kind) -> Recording:
        return self.servers[kind]


async def _start(loop: ServerLoop, ca: ThrowawayCA, record: Recording,
                 users: Mapping[str, str]) -> None:
    from aiosmtpd.smtp import SMTP

    kind = record.kind
    tls_context = ca.server_context() if kind in ("starttls", "smtps") else None

    class _Smtp(SMTP):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.command_size_limits = collections.defaultdict(lambda: 12288)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if self.transport is None:
                record.connections += 1
            loop._track(transport)
            super().connection_made(transport)

    def factory() -> _Smtp:
        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS": aiosmtpd cannot see implicit TLS.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS",
                                    UserWarning)
            return _make()

    def _make() -> _Smtp:
        return _Smtp(
            _Handler(record), hostname="mail.test", ident="ESMTP client-test",
            tls_context=tls_context if kind == "starttls" else None,
            require_starttls=kind == "starttls",
            auth_required=kind in ("starttls", "smtps"),
            # aiosmtpd knows only STARTTLS as TLS; implicit TLS and the stripped server (which
            # takes AUTH in clear on purpose) turn its check off.
            auth_require_tls=kind == "starttls",
            authenticator=_Authenticator(record, users),
            loop=asyncio.get_running_loop())

    server = await asyncio.get_running_loop().create_server(
        factory, LOOPBACK, 0, ssl=tls_context if kind == "smtps" else None)
    loop._servers.append(server)
    record.port = server.sockets[0].getsockname()[1]
