"""The relay's SMTP server: the application logs in with the relay password, the message goes on
upstream before the application hears 250 (no local queue).

aiosmtpd speaks SMTP (line limits, DATA framing that ends only at CRLF.CRLF since 1.4.5, SIZE,
AUTH PLAIN/LOGIN); this module holds the policy, each rule answered with a reply that says what to
change:
- only the relay password authenticates (compared in constant time), AUTH is required, and
  without a TLS certificate the relay listens on loopback only;
- MAIL FROM and the From/Sender headers must be the account's address or a declared alias (550);
- at most `max_recipients` RCPT TO a message (452), `messages_per_minute` a minute (451), the
  message size (552, with the limit), `concurrent_upstream` sends at once;
- a bare CR or LF in DATA is refused (554; SMTP smuggling);
- every reply and log line is redacted as the probe's are.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.log import get_logger, redact_text, register_secret
from reconciler.probe.tokencache import TokenCache
from reconciler.relay.config import LOOPBACK_HOSTS, MountedSecretReader, RelayConfig, account_address
from reconciler.relay.message import bare_line_ending, header_senders
from reconciler.relay.metrics import RelayMetrics
from reconciler.relay.upstream import GRAPH_MAX_MIME_BYTES, Delivery, send_graph, send_smtp

log = get_logger("reconciler.relay")


@dataclass
class RelayState:
    """What every session reads: the current configuration (swapped whole on reload) and the
    counters shared by all sessions."""

    config: RelayConfig
    secrets: MountedSecretReader
    tokens: TokenCache = field(default_factory=TokenCache)
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    sent_at: collections.deque[float] = field(default_factory=collections.deque)
    clock: Callable[[], float] = time.monotonic
    sessions: int = 0  # open connections
    inflight: int = 0  # messages being handed upstream
    _gate: asyncio.Semaphore | None = None

    def __post_init__(self) -> None:
        self.register(self.config)

    def register(self, config: RelayConfig) -> None:
        """Make config current; its password joins the redaction registry."""
        register_secret(config.password)
        self.config = config
        self._gate = asyncio.Semaphore(config.limits.concurrent_upstream)

    @property
    def gate(self) -> asyncio.Semaphore:
        assert self._gate is not None
        return self._gate

    def message_size_limit(self) -> int:
        limit = self.config.limits.max_message_bytes
        if self.config.account.graph is not None:
            limit = min(limit, GRAPH_MAX_MIME_BYTES)
        return limit

    async def drained(self, grace: float) -> bool:
        """After the listener closed: wait (at most grace seconds) until no message is in flight
        and every session has ended, so a restart neither loses nor duplicates a message: the
        application hears the upstream's answer to what it sent, and retries anything it did not
        get to send. True when everything ended in time."""
        end = self.clock() + grace
        while self.inflight or self.sessions:
            if self.clock() >= end:
                return False
            await asyncio.sleep(0.05)
        return True

    def over_rate(self) -> bool:
        """True when another message now would pass messages_per_minute."""
        now, window = self.clock(), 60.0
        while self.sent_at and now - self.sent_at[0] >= window:
            self.sent_at.popleft()
        return len(self.sent_at) >= self.config.limits.messages_per_minute


class RelayHandler:
    """aiosmtpd handler: the relay's rules; DATA forwards upstream and answers with its verdict."""

    def __init__(self, state: RelayState) -> None:
        self.state = state

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        cfg = self.state.config
        ok = (isinstance(auth_data, LoginPassword)
              and hmac.compare_digest(auth_data.login, cfg.username.encode())
              and hmac.compare_digest(auth_data.password, cfg.password.encode()))
        if not ok:
            self.state.metrics.refused("AuthenticationFailed")
            log.warning("relay login refused", mechanism=mechanism)
        return AuthResult(success=ok, handled=False)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        cfg = self.state.config
        if address.lower() not in cfg.senders:
            self.state.metrics.refused("SenderNotAllowed")
            return (f"550 5.7.1 <{redact_text(address)}> is not this account's address: send as "
                    f"<{account_address(cfg.account)}>")
        declared = _declared_size(mail_options)
        if declared is not None and declared > self.state.message_size_limit():
            return self._too_large(declared)
        if self.state.over_rate():
            self.state.metrics.refused("RateLimited")
            return (f"451 4.7.0 at most {cfg.limits.messages_per_minute} messages a minute "
                    "through this relay (the provider's limit); retry later")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        limit = self.state.config.limits.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            self.state.metrics.refused("TooManyRecipients")
            return (f"452 4.5.3 at most {limit} recipients a message (the provider's limit); "
                    "send the others in another message")
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = bytes(envelope.original_content or b"")
        refusal = self._refusal(data)
        if refusal is not None:
            return refusal
        started = time.monotonic()
        self.state.inflight += 1
        try:
            async with self.state.gate:
                delivery = await self._forward(envelope.mail_from, list(envelope.rcpt_tos), data)
        finally:
            self.state.inflight -= 1
        self.state.metrics.forwarded(delivery, time.monotonic() - started)
        if delivery.accepted:
            self.state.sent_at.append(self.state.clock())
        log.info("relayed" if delivery.accepted else "relay refused", code=delivery.code,
                 recipients=len(envelope.rcpt_tos), bytes=len(data), reply=delivery.reply)
        return delivery.reply

    def _too_large(self, size: int) -> str:
        cfg, limit = self.state.config, self.state.message_size_limit()
        self.state.metrics.refused("MessageTooLarge")
        why = ("Microsoft Graph's sendMail limit of 4 MB a request, base64 included"
               if cfg.account.graph is not None and limit == GRAPH_MAX_MIME_BYTES
               else "the relay's limit")
        return f"552 5.3.4 the message is {size} bytes; at most {limit} ({why})"

    def _refusal(self, data: bytes) -> str | None:
        cfg = self.state.config
        if len(data) > self.state.message_size_limit():
            return self._too_large(len(data))
        if bare_line_ending(data):
            self.state.metrics.refused("BareLineEnding")
            return ("554 5.6.0 bare CR or LF in the message (not part of CRLF) refused: "
                    "send CRLF line endings")
        strangers = [a for a in header_senders(data) if a not in cfg.senders]
        if strangers or not header_senders(data):
            self.state.metrics.refused("SenderNotAllowed")
            return (f"550 5.7.1 the From header must be this account's address "
                    f"<{account_address(cfg.account)}>")
        return None

    async def _forward(self, mail_from: str, rcpts: list[str], data: bytes) -> Delivery:
        cfg, state = self.state.config, self.state
        if cfg.account.graph is not None:
            return await send_graph(cfg.account, state.secrets, state.tokens, rcpts=rcpts,
                                    data=data)
        return await send_smtp(cfg.account, state.secrets, state.tokens, mail_from=mail_from,
                               rcpts=rcpts, data=data)


def _declared_size(mail_options: list[str]) -> int | None:
    """The SIZE= a client declared in MAIL FROM (RFC 1870), if any."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def server_tls(cfg: RelayConfig, folder: Path) -> ssl.SSLContext | None:
    """The TLS context for a relay listening beyond loopback (its certificate from the Secret)."""
    if not (cfg.tls_certificate and cfg.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(folder / cfg.tls_certificate, folder / cfg.tls_key)
    return ctx


def check_listen(cfg: RelayConfig, host: str, tls: ssl.SSLContext | None) -> None:
    """A password in clear only over loopback: any other address needs the TLS certificate."""
    if host not in LOOPBACK_HOSTS and not host.startswith("127.") and tls is None:
        raise ValueError(f"the relay listens on {host} only with a TLS certificate "
                         "(spec.relay.tls); without one it serves 127.0.0.1 alone")


async def start_server(state: RelayState, folder: Path, host: str | None = None,
                       port: int | None = None) -> asyncio.Server:
    """Listen on host:port (default: the configuration's); returns the asyncio server."""
    from aiosmtpd.smtp import SMTP

    cfg = state.config
    host = host or cfg.host
    tls = server_tls(cfg, folder)
    check_listen(cfg, host, tls)
    handler = RelayHandler(state)
    on_loopback = tls is None
    # aiosmtpd logs two warnings a session in plain text beside our JSON lines ("auth_required ==
    # True but auth_require_tls == False", which check_listen settles; "Session.login_data is
    # deprecated", its own use); its errors still show.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    class Session(SMTP):  # type: ignore[misc]  # counts open connections for the drain
        # AUTH LOGIN prompts as Exchange Online and Cyrus SASL send them: aiosmtpd's own
        # ("User Name\0") fail clients that match the prompt, e.g. Alertmanager's loginAuth
        # ("unexpected server challenge"), which picks LOGIN when the server lists it first.
        AuthLoginUsernameChallenge = "Username:"
        AuthLoginPasswordChallenge = "Password:"

        def connection_made(self, transport: Any) -> None:
            state.sessions += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            state.sessions -= 1
            super().connection_lost(exc)

    def factory() -> SMTP:
        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS": the relay allows that on loopback alone
            # (check_listen), where the password never crosses a network.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return _smtp(handler, tls, on_loopback)

    def _smtp(handler: RelayHandler, tls: ssl.SSLContext | None, on_loopback: bool) -> SMTP:
        return Session(handler, data_size_limit=2 * state.message_size_limit() + 1024 * 1024,
                    hostname="email-reconciler-relay", ident="email-reconciler relay",
                    tls_context=tls, require_starttls=not on_loopback,
                    auth_required=True, auth_require_tls=not on_loopback,
                    authenticator=handler.authenticate, auth_exclude_mechanism=["CRAM-MD5"])

    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=host, port=cfg.port if port is None else port)
