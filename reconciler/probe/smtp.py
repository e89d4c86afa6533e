"""The SMTP probe (DESIGN §4): connect, TLS, EHLO, AUTH, the envelope check, QUIT — no message.

A small asyncio SMTP client, because smtplib hides what we must report (the negotiated TLS
version, the exact step that failed) and blocks a thread per probe.

Bounds (issues 12, 14): `timeoutSeconds` is the connect timeout and the per-command timeout (one
command and its whole reply), as the published JavaMail/Django/smtplib settings use it; the
probe's overall deadline (reconciler.probe.limits) bounds the whole session, 421 retries and the
TLS diagnostic session included. A reply is at most `MAX_REPLY_LINES` lines and
`MAX_REPLY_BYTES` bytes: past that the connection is dropped (ProtocolViolation).

Politeness: the session holds one of its server's slots (limits.Politeness); a 421 greeting or
reply is retried with backoff within the deadline (then ServerBusy); AUTH is rate-limited per
server and, after a failure there, serialised. QUIT is sent whenever the session can still carry
it, after failures too. After AUTH, `MAIL FROM:<emailAddress>` then `RSET` checks that the server
takes this sender (SenderRejected, TLSRequired); RCPT and DATA are never sent.

Expected failures become `Outcome`s with a reason from `reconciler.reasons`; credentials never
appear in a message (server text is redacted too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import redact_text, register_secret
from reconciler.model import (
    Account,
    CertificateInfo,
    KeyRef,
    Outcome,
    ProbeResult,
    SecretReader,
)
from reconciler.policy import certificates_only
from reconciler.probe import limits, tls
from reconciler.probe.limits import Deadline
from reconciler.secretrefs import secret_versions

if TYPE_CHECKING:
    from reconciler.probe import TokenProvider

CONNECTIVITY = {
    "STARTTLS": "SMTP (Connect using STARTTLS)",
    "SMTPS": "SMTP (Connect using SMTPS)",
    "None": "SMTP (Connect using default) \u2013 insecure",
}
MAX_REPLY_LINES = 512
MAX_REPLY_BYTES = 64 * 1024
#: Backoff before retrying a session answered with 421 (doubling; only within the deadline).
BUSY_BACKOFF_SECONDS = 0.5


def secret_not_found(exc: SecretNotFound, ref: KeyRef | None = None) -> Outcome:
    """The SecretNotFound outcome, naming the object and key and what to do."""
    where = f" (referenced by {ref.field})" if ref is not None and ref.field else ""
    if exc.reason != reasons.SECRET_NOT_FOUND:  # SecretNotAllowed: the message says what to do
        return Outcome(False, exc.reason, f"{exc}{where}")
    return Outcome(False, reasons.SECRET_NOT_FOUND,
                   f"{exc}{where}: create it or correct the reference")


# --------------------------------------------------------------------------- the wire


class _Closed(Exception):
    """The server closed the connection or sent something that is not SMTP."""


class _Violation(_Closed):
    """The server's reply passed the bounds; the connection is dropped."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line, redacted: '535 5.7.8 Authentication credentials invalid'."""
        return redact_text(f"{self.code} {' '.join(x for x in self.lines if x)}".strip())


class SmtpClient:
    """Line-level SMTP over asyncio streams, with STARTTLS upgrade, every step bounded.

    Each operation (connect, handshake, one command and its reply) gets `deadline.timeout`
    seconds, cut by what is left of the deadline. `usable` turns False once the session cannot
    carry another command (closed, desynchronised by a timeout or an oversized reply, failed TLS).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 deadline: Deadline | None = None) -> None:
        self.reader, self.writer = reader, writer
        self.deadline = deadline or Deadline.start(30.0)
        self.usable = True

    @classmethod
    async def connect(cls, host: str, port: int, deadline: Deadline | None = None
                      ) -> SmtpClient:
        deadline = deadline or Deadline.start(30.0)
        async with asyncio.timeout(deadline.budget()):
            reader, writer = await asyncio.open_connection(host, port,
                                                           limit=MAX_REPLY_BYTES + 2)
        return cls(reader, writer, deadline)

    async def read_reply(self, timeout: float | None = None) -> Reply:
        try:
            async with asyncio.timeout(self.deadline.budget(timeout)):
                return await self._read_reply()
        except BaseException:
            self.usable = False
            raise

    async def _read_reply(self) -> Reply:
        lines: list[str] = []
        size = 0
        while True:
            try:
                raw = await self.reader.readline()
            except ValueError:  # one line past the stream's limit
                raise _Violation(f"the server sent a reply line longer than {MAX_REPLY_BYTES} "
                                 "bytes") from None
            if not raw.endswith(b"\n"):
                raise _Closed("the server closed the connection")
            size += len(raw)
            if size > MAX_REPLY_BYTES or len(lines) >= MAX_REPLY_LINES:
                raise _Violation(f"the server sent a reply of more than {MAX_REPLY_LINES} lines "
                                 f"or {MAX_REPLY_BYTES} bytes")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise _Closed(f"the server sent a line that is not SMTP: {line[:60]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), tuple(lines))

    async def command(self, line: str, timeout: float | None = None,
                      patience: Callable[[], bool] | None = None) -> Reply:
        """Send one command and read its reply within one operation's time.

        With `patience`, a reply late past the operation's time is still awaited, until the
        deadline, when patience() says the server is delaying us on purpose.
        """
        try:
            budget = self.deadline.budget(timeout)
            async with asyncio.timeout(budget):
                self.writer.write(line.encode("utf-8") + b"\r\n")
                await self.writer.drain()
            if patience is None:
                return await self.read_reply(timeout)
            task = asyncio.ensure_future(self._read_reply())
            try:
                done, _ = await asyncio.wait({task}, timeout=self.deadline.budget(timeout))
                if not done and patience():
                    done, _ = await asyncio.wait({task}, timeout=max(0.0, self.deadline.remaining()))
                if not done:
                    raise TimeoutError("no reply in time")
                return task.result()
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        except BaseException:
            self.usable = False
            raise

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        try:
            async with asyncio.timeout(self.deadline.budget()):
                await self.writer.start_tls(ctx, server_hostname=server_hostname)
        except BaseException:
            self.usable = False
            raise

    def tls_facts(self) -> tuple[str | None, str | None, bytes | None]:
        """(version, cipher, DER leaf certificate) of the TLS session, if any."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None, None, None
        cipher = obj.cipher()
        return obj.version(), cipher[0] if cipher else None, obj.getpeercert(binary_form=True)

    def local_address(self) -> str | None:
        sockname = self.writer.get_extra_info("sockname")
        return str(sockname[0]) if sockname else None

    async def quit(self) -> None:
        """QUIT, when the session can still carry it; its reply is awaited briefly."""
        if not self.usable or self.writer.transport.is_closing():
            return
        with contextlib.suppress(_Closed, OSError, TimeoutError, RuntimeError):
            self.writer.write(b"QUIT\r\n")
            if self.deadline.remaining() > 0:
                await self.read_reply(min(self.deadline.timeout, 2.0))
        self.usable = False

    async def close(self) -> None:
        """Drop the connection at once (no TLS close_notify wait) and release the transport."""
        self.usable = False
        self.writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def ehlo_name(advanced: Mapping[str, str], local_address: str | None) -> str:
    """The EHLO argument: mail.smtp.localhost, else an FQDN host name, else [address literal].

    As smtplib and JavaMail do: Postfix's reject_non_fqdn_helo_hostname refuses a bare "vm".
    """
    configured = advanced.get("mail.smtp.localhost", "").strip()
    if configured:
        return configured
    host = _host_name()
    if host:
        return host
    if local_address is None:
        return "[127.0.0.1]"
    return f"[IPv6:{local_address}]" if ":" in local_address else f"[{local_address}]"


@functools.lru_cache(maxsize=1)
def _host_name() -> str | None:
    """socket.gethostname() when it is a fully qualified name (no DNS lookup); else None."""
    name = socket.gethostname().rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels) or labels[-1].isdigit():
        return None
    return name


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_ehlo(reply: Reply) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(extension keywords upper case, AUTH mechanisms) from an EHLO reply."""
    keywords: list[str] = []
    mechanisms: list[str] = []
    for line in reply.lines[1:]:
        parts = line.replace("=", " ", 1).split() if line.upper().startswith("AUTH=") \
            else line.split()
        if not parts:
            continue
        keyword = parts[0].upper()
        if keyword not in keywords:
            keywords.append(keyword)
        if keyword == "AUTH":
            mechanisms += [m.upper() for m in parts[1:] if m.upper() not in mechanisms]
    return tuple(keywords), tuple(mechanisms)


# --------------------------------------------------------------------------- mechanism choice


def choose_mechanism(method: str, offered: Sequence[str], adv: Mapping[str, str]
                     ) -> tuple[str | None, str]:
    """(mechanism, explanation) for the method among the server's offered mechanisms.

    OAuth2 needs XOAUTH2. Password prefers PLAIN then LOGIN; `mail.smtp.auth.mechanisms`
    restricts and orders them, `mail.smtp.auth.plain.disable: "true"` removes PLAIN.
    """
    if method == "OAuth2":
        wanted = ["XOAUTH2"]
    else:
        listed = adv.get("mail.smtp.auth.mechanisms", "")
        wanted = [m.upper() for m in listed.replace(",", " ").split()] or ["PLAIN", "LOGIN"]
        wanted = [m for m in wanted if m in ("PLAIN", "LOGIN")]
        if adv.get("mail.smtp.auth.plain.disable", "").strip().lower() == "true":
            wanted = [m for m in wanted if m != "PLAIN"]
    for mech in wanted:
        if mech in offered:
            return mech, ""
    offer = " ".join(offered) if offered else "no AUTH mechanism"
    usable = " or ".join(wanted) if wanted else "no mechanism (all disabled by advanced)"
    hint = ("ask the provider to enable it, or change authentication.method"
            if method == "OAuth2" else
            "adjust mail.smtp.auth.mechanisms / mail.smtp.auth.plain.disable in advanced, "
            "or use a server that offers one")
    return None, f"the server offers {offer}; {method} here needs {usable}: {hint}"


# --------------------------------------------------------------------------- the probe


@dataclass
class _State:
    """What the conversation found so far; read after a timeout to say where it stopped."""

    stage: str = "connect"
    client: SmtpClient | None = None
    connection: Outcome | None = None
    authentication: Outcome | None = None
    tls_version: str | None = None
    cipher: str | None = None
    certificate: CertificateInfo | None = None
    extensions: tuple[str, ...] = ()
    auth_mechanisms: tuple[str, ...] = ()
    auth_mechanism: str | None = None
    identity: str | None = None
    transaction: Outcome | None = None
    busy: bool = False  # the server answered 421: retry the session after a backoff
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    def begin(self, stage: str) -> None:
        self.stage = stage
        self.marks[stage] = time.monotonic()

    def done(self, stage: str, key: str | None = None) -> None:
        key = key or stage
        elapsed = time.monotonic() - self.marks.get(stage, time.monotonic())
        self.timings[key] = round(self.timings.get(key, 0.0) + elapsed, 4)


_STAGE_TEXT = {
    "connect": "connecting",
    "greeting": "waiting for the server greeting",
    "ehlo": "waiting for the EHLO reply",
    "starttls": "waiting for the STARTTLS reply",
    "tls": "in the TLS handshake",
    "auth": "during authentication",
    "envelope": "waiting for the MAIL FROM reply",
    "transaction": "sending the message",
    "quit": "waiting for the QUIT reply",
}


@dataclass(frozen=True)
class _Credentials:
    identity: str
    password: str | None = None
    token: str | None = None


#: A mail transaction run after a successful AUTH, before QUIT (used by send.py).
Transaction = Callable[[SmtpClient], Awaitable[Outcome]]


async def probe_smtp(account: Account, secrets: SecretReader, *, now: dt.datetime,
                     authenticate: bool = True, tokens: TokenProvider | None = None
                     ) -> ProbeResult:
    """Test connectivity of one SMTP account (DESIGN §4)."""
    result, _ = await run_session(account, secrets, now=now, authenticate=authenticate,
                                  tokens=tokens)
    return result


async def run_session(account: Account, secrets: SecretReader, *, now: dt.datetime,
                      authenticate: bool = True, tokens: TokenProvider | None = None,
                      transaction: Transaction | None = None
                      ) -> tuple[ProbeResult, Outcome | None]:
    """The probe conversation; with `transaction`, also run it once the session is ready.

    Returns the probe result and the transaction's outcome (None when it did not run).
    """
    assert account.smtp is not None, "probe_smtp needs an SMTP account"
    conn = account.smtp.connection
    auth = account.smtp.authentication
    started = time.monotonic()
    base: dict[str, Any] = {"connectivity": CONNECTIVITY[conn.security], "protocol": conn.security,
            "secret_versions": secret_versions(account, secrets)}

    ca_pem: str | None = None
    if conn.truststore is not None:
        try:
            ca_raw = secrets.read(account.namespace, conn.truststore)
        except SecretNotFound as exc:
            return ProbeResult(connection=secret_not_found(exc, conn.truststore), **base), None
        ca_pem, refused = certificates_only(ca_raw)
        if refused is not None:
            return ProbeResult(connection=Outcome(
                False, reasons.TRUSTSTORE_INVALID,
                f"the truststore {conn.truststore.kind} {account.namespace}/"
                f"{conn.truststore.name} key {conn.truststore.key!r} was not used: {refused}"),
                **base), None
    truststore = (f"{conn.truststore.kind} {account.namespace}/{conn.truststore.name} key "
                  f"{conn.truststore.key!r}" if conn.truststore else None)
    try:
        ctx = tls.client_context(conn.min_tls_version, ca_pem)
    except ssl.SSLError as exc:
        return ProbeResult(connection=Outcome(
            False, reasons.CERTIFICATE_UNTRUSTED,
            f"the truststore {truststore} holds no usable PEM certificate ({exc.reason or exc}): "
            "put the CA certificates in PEM form there"), ca_pem=ca_pem, **base), None

    polite = limits.politeness()
    will_auth = authenticate and auth.method != "None"
    if will_auth:  # wait for the server's AUTH rate before taking one of its session slots
        await polite.auth_allowance(conn.host, conn.port)
    # Credentials (a token request) first, without holding a session slot; the deadline
    # covers both phases, but not the wait for the slot.
    total = limits.overall_deadline(conn.timeout_seconds)
    deadline = Deadline.start(conn.timeout_seconds, total)
    with limits.deadline_scope(deadline):
        creds, pre = await _credentials(account, secrets, authenticate, tokens)
    left = deadline.remaining()
    async with polite.session(conn.host, conn.port):
        deadline = Deadline.start(conn.timeout_seconds, max(0.0, left))
        with limits.deadline_scope(deadline):
            st = await _attempts(account, ctx, truststore, authenticate, creds, now,
                                 transaction, deadline)
    credentials: dict[str, str] = {}
    identity = account.smtp.identity.user_id or account.smtp.identity.email_address
    if auth.method == "Password" and auth.password is not None:
        # The renderer needs the password even when AUTH is deferred this run.
        with contextlib.suppress(SecretNotFound):
            password = creds.password if creds else _read_text(secrets, account, auth.password)
            if password is not None:
                credentials = {"username": identity, "password": password}
    elif auth.method == "AWSAccessKey":
        # The published Secret carries the derived SMTP password, never the IAM secret key.
        with contextlib.suppress(SecretNotFound):
            ses = (creds.identity, creds.password) if creds else _ses(account, secrets)
            credentials = {"username": ses[0], "password": ses[1] or ""}
    elif auth.method == "OAuth2":
        credentials = {"username": identity}
    st.timings["total"] = round(time.monotonic() - started, 4)

    connection = st.connection or Outcome(False, reasons.CONNECT_FAILED, "no result")
    authentication: Outcome | None = None
    if authenticate:
        if auth.method == "None":
            authentication = (Outcome(True, reasons.NOT_REQUIRED, "authentication.method is None")
                              if connection.ok else None)
        elif pre is not None and (connection.ok or pre.reason in (reasons.SECRET_NOT_FOUND,
                                                                  reasons.SECRET_NOT_ALLOWED)):
            authentication = pre
        elif connection.ok or (st.authentication is not None
                               and st.authentication.reason in (reasons.SECRET_NOT_FOUND,
                                                                reasons.SECRET_NOT_ALLOWED)):
            authentication = st.authentication
    warnings: list[Outcome] = []
    if conn.security == "None":
        warnings.append(Outcome(False, reasons.INSECURE_CONNECTION,
                                f"{conn.host}:{conn.port} is used without TLS: set security "
                                "STARTTLS or SMTPS if the server supports it"))
    if st.certificate is not None and (w := tls.expiry_warning(st.certificate, conn.host)):
        warnings.append(Outcome(False, *w))
    return ProbeResult(
        connection=connection,
        authentication=authentication,
        tls_version=st.tls_version,
        cipher=st.cipher,
        certificate=st.certificate,
        extensions=st.extensions,
        auth_mechanisms=st.auth_mechanisms,
        auth_mechanism=st.auth_mechanism,
        authenticated_identity=st.identity,
        timings=dict(st.timings),
        warnings=tuple(warnings),
        credentials=credentials,
        ca_pem=ca_pem,
        **base,
    ), st.transaction


async def _credentials(account: Account, secrets: SecretReader, authenticate: bool,
                       tokens: TokenProvider | None
                       ) -> tuple[_Credentials | None, Outcome | None]:
    """(credentials, None), or (None, why there are none); (None, None) without AUTH."""
    assert account.smtp is not None
    conn = account.smtp.connection
    if not authenticate or account.smtp.authentication.method == "None":
        return None, None
    identity = account.smtp.identity.user_id or account.smtp.identity.email_address
    try:
        got = await _resolve_credentials(account, secrets, identity, tokens, conn.security)
    except TimeoutError:
        return None, Outcome(False, reasons.TIMEOUT,
                             f"no credentials within the probe's deadline "
                             f"({limits.overall_deadline(conn.timeout_seconds):g}s)")
    return (None, got) if isinstance(got, Outcome) else (got, None)


async def _attempts(account: Account, ctx: ssl.SSLContext, truststore: str | None,
                    authenticate: bool, creds: _Credentials | None, now: dt.datetime,
                    transaction: Transaction | None, deadline: Deadline) -> _State:
    """Sessions until one is not answered 421 or the deadline is near; the last one's state."""
    backoff = BUSY_BACKOFF_SECONDS
    while True:
        st = _State()
        await _session(st, account, ctx, truststore, creds, authenticate, now, transaction,
                       deadline)
        if not st.busy or deadline.remaining() - backoff < min(deadline.timeout, 1.0):
            return st
        await asyncio.sleep(backoff)
        backoff *= 2


async def _session(st: _State, account: Account, ctx: ssl.SSLContext, truststore: str | None,
                   creds: _Credentials | None, authenticate: bool, now: dt.datetime,
                   transaction: Transaction | None, deadline: Deadline) -> None:
    """One SMTP session; fills st (a timeout becomes the reason of the step it stopped)."""
    assert account.smtp is not None
    conn = account.smtp.connection
    try:
        await _converse(st, account, ctx, truststore, creds, authenticate, now, transaction,
                        deadline)
    except TimeoutError:
        where = _STAGE_TEXT.get(st.stage, st.stage)
        if deadline.remaining() <= 0:
            msg = (f"{conn.host}:{conn.port} did not complete the probe within its deadline of "
                   f"{limits.overall_deadline(conn.timeout_seconds):g}s ({where}): check the "
                   "server, or raise timeoutSeconds")
        else:
            msg = (f"no answer from {conn.host}:{conn.port} within {conn.timeout_seconds:g}s "
                   f"({where}): check host, port and firewall, or raise timeoutSeconds")
        if st.connection is None:
            st.connection = Outcome(False, reasons.TIMEOUT, msg)
        elif st.stage == "auth" and st.authentication is None:
            st.authentication = Outcome(False, reasons.TIMEOUT, msg)
        elif st.stage == "envelope":
            _envelope_failed(st, account, Outcome(False, reasons.TIMEOUT, msg))
        elif st.stage == "transaction" and st.transaction is None:
            st.transaction = Outcome(False, reasons.TIMEOUT, msg)
    finally:
        if st.client is not None:
            st.begin("quit")
            await st.client.quit()
            await st.client.close()


def _read_text(secrets: SecretReader, account: Account, ref: KeyRef) -> str:
    value = secrets.read(account.namespace, ref).decode("utf-8").rstrip("\r\n")
    register_secret(value)
    return value


def _ses(account: Account, secrets: SecretReader) -> tuple[str, str]:
    """(access key id, derived SES SMTP password) of an AWSAccessKey account."""
    from reconciler.probe.aws import ses_credentials

    ses = ses_credentials(account, secrets)
    return ses.username, ses.password


async def _resolve_credentials(account: Account, secrets: SecretReader, identity: str,
                               tokens: TokenProvider | None, security: str
                               ) -> _Credentials | Outcome:
    """Password or token before connecting; an Outcome when they cannot be had."""
    assert account.smtp is not None
    auth = account.smtp.authentication
    if security == "None" and not account.smtp.connection.allow_insecure_auth:
        return Outcome(False, reasons.INSECURE_AUTH_REFUSED,
                       "credentials are never sent without TLS: set security STARTTLS or SMTPS, "
                       "or allowInsecureAuth: true if this server is on a trusted network")
    if auth.method == "Password":
        if auth.password is None:
            return Outcome(False, reasons.INVALID_SPEC,
                           "authentication.method Password needs passwordSecretRef")
        try:
            return _Credentials(identity, password=_read_text(secrets, account, auth.password))
        except SecretNotFound as exc:
            return secret_not_found(exc, auth.password)
    if auth.method == "AWSAccessKey":
        try:
            key_id, password = _ses(account, secrets)
        except SecretNotFound as exc:
            return secret_not_found(exc)
        return _Credentials(key_id, password=password)
    if tokens is None:
        return Outcome(False, reasons.TOKEN_REQUEST_FAILED,
                       "no OAuth2 token provider is configured in this run")
    try:
        token = await tokens.smtp_token(account, secrets)
    except SecretNotFound as exc:
        return secret_not_found(exc)
    if isinstance(token, Outcome):
        return token
    register_secret(token)
    return _Credentials(identity, token=token)


def _busy(st: _State, where: str, reply: Reply, step: str) -> None:
    """A 421 (service not available, closing): retry later, within the deadline."""
    st.busy = True
    if st.client is not None:
        st.client.usable = False  # 421 closes the session; nothing more to say
    st.connection = Outcome(False, reasons.SERVER_BUSY,
                            f"{where} is busy ({step}: {reply.text}); retried with backoff within "
                            "the probe's deadline: retry later, or lower "
                            "--max-sessions-per-server")


async def _converse(st: _State, account: Account, ctx: ssl.SSLContext, truststore: str | None,
                    creds: _Credentials | None, authenticate: bool, now: dt.datetime,
                    transaction: Transaction | None, deadline: Deadline) -> None:
    """Steps 1-5 of DESIGN §4; fills st. Returns early on the first failure."""
    assert account.smtp is not None
    conn = account.smtp.connection
    where = f"{conn.host}:{conn.port}"
    st.begin("connect")
    try:
        st.client = client = await SmtpClient.connect(conn.host, conn.port, deadline)
    except socket.gaierror as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"cannot resolve {conn.host} ({exc.strerror}): check connection.host")
        return
    except TimeoutError:
        raise
    except OSError as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"cannot connect to {where}: {exc.strerror or exc}: check "
                                "connection.host and port, and that the server is reachable")
        return
    st.done("connect")

    try:
        if conn.security == "SMTPS" and not await _handshake(st, account, ctx, truststore, now):
            return
        st.begin("greeting")
        greeting = await client.read_reply()
        if greeting.code == 421:
            _busy(st, where, greeting, "greeting")
            return
        if greeting.code != 220:
            st.connection = Outcome(False, reasons.SERVER_REJECTED,
                                    f"{where} refused the session: {greeting.text}")
            return
        st.done("greeting", "ehlo")
        if not await _ehlo(st, account):
            return
        if conn.security == "STARTTLS":
            if "STARTTLS" not in st.extensions:
                st.connection = Outcome(
                    False, reasons.STARTTLS_NOT_OFFERED,
                    f"{where} does not offer STARTTLS (it offers "
                    f"{' '.join(st.extensions) or 'no extensions'}); no credentials were sent: "
                    "use security SMTPS with the SMTPS port, or ask the provider to enable TLS")
                return
            st.begin("starttls")
            reply = await client.command("STARTTLS")
            if reply.code == 421:
                _busy(st, where, reply, "STARTTLS")
                return
            if reply.code != 220:
                st.connection = Outcome(False, reasons.SERVER_REJECTED,
                                        f"{where} refused STARTTLS: {reply.text}")
                return
            st.done("starttls", "tls")
            if not await _handshake(st, account, ctx, truststore, now):
                return
            if not await _ehlo(st, account):
                return
    except TimeoutError:
        raise
    except _Violation as exc:
        st.connection = _violation(where, exc, st.stage)
        return
    except _Closed as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"{where}: {exc} ({_STAGE_TEXT.get(st.stage, st.stage)}): "
                                "check that host and port point at an SMTP server")
        return
    except OSError as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"{where}: connection lost {_STAGE_TEXT.get(st.stage, st.stage)} "
                                f"({exc.strerror or type(exc).__name__})")
        return

    via = "without TLS (insecure)" if conn.security == "None" else (
        f"using {conn.security} ({st.tls_version}, {st.cipher})")
    st.connection = Outcome(True, reasons.SUCCEEDED, f"connected to {where} {via}")

    if authenticate and creds is not None:
        st.begin("auth")
        try:
            st.authentication = await _polite_authenticate(st, account, creds)
            if st.authentication.ok:
                st.identity = creds.identity
        except TimeoutError:
            raise
        except _Violation as exc:
            st.authentication = _violation(where, exc, st.stage)
        except (_Closed, OSError) as exc:
            st.authentication = Outcome(False, reasons.AUTHENTICATION_TEMPORARY_FAILURE,
                                        f"the connection to {where} was lost during "
                                        f"authentication ({type(exc).__name__}): retry later")
        st.done("auth")
    method_none = account.smtp.authentication.method == "None"
    auth_ready = method_none or (st.authentication is not None and st.authentication.ok)
    if transaction is not None and auth_ready:
        st.begin("transaction")
        try:
            st.transaction = await transaction(client)
        except TimeoutError:
            raise
        except (_Closed, OSError) as exc:
            client.usable = False
            st.transaction = Outcome(False, reasons.CONNECT_FAILED,
                                     f"the connection to {where} was lost while sending "
                                     f"({type(exc).__name__}): retry later")
    elif (transaction is None and account.probe.envelope_check and auth_ready
          and (method_none or authenticate)):
        await _envelope_check(st, account)


async def _envelope_check(st: _State, account: Account) -> None:
    """MAIL FROM:<emailAddress>, then RSET: does the server take this sender? Never RCPT/DATA."""
    assert account.smtp is not None and st.client is not None
    conn = account.smtp.connection
    where = f"{conn.host}:{conn.port}"
    sender = account.smtp.identity.email_address
    st.begin("envelope")
    try:
        reply = await st.client.command(f"MAIL FROM:<{sender}>")
        if 200 <= reply.code < 300:
            await st.client.command("RSET")
            st.done("envelope")
            return
    except TimeoutError:
        raise
    except _Violation as exc:
        _envelope_failed(st, account, _violation(where, exc, "envelope"))
        return
    except (_Closed, OSError) as exc:
        _envelope_failed(st, account, Outcome(
            False, reasons.CONNECT_FAILED, f"the connection to {where} was lost after MAIL FROM "
                                           f"({type(exc).__name__}): retry later"))
        return
    st.done("envelope")
    if reply.code == 421:
        _busy(st, where, reply, "MAIL FROM")
        return
    if reply.code == 530 and conn.security == "None":
        st.connection = Outcome(
            False, reasons.TLS_REQUIRED,
            f"{where} requires TLS before MAIL FROM ({reply.text}): set connection.security "
            "STARTTLS (or SMTPS with the SMTPS port); applications would get this error")
        return
    if reply.code == 503:
        outcome = Outcome(False, reasons.PROTOCOL_VIOLATION,
                          f"{where} answered MAIL FROM:<{sender}> with a bad-sequence error "
                          f"({reply.text}): check authentication.method and the server's "
                          "submission setup")
    else:
        outcome = Outcome(
            False, reasons.SENDER_REJECTED,
            f"{where} refused MAIL FROM:<{sender}> ({reply.text}): the login may not send as "
            "identity.emailAddress; fix emailAddress/userId or the server's sender policy "
            "(probe.envelopeCheck: false turns this check off)")
    _envelope_failed(st, account, outcome)


def _envelope_failed(st: _State, account: Account, outcome: Outcome) -> None:
    """An envelope failure: under Authenticated when AUTH ran, else under Connected."""
    if st.authentication is not None and st.authentication.ok:
        st.authentication = outcome
        st.identity = None
    else:
        st.connection = outcome


def _violation(where: str, exc: _Violation, stage: str) -> Outcome:
    return Outcome(False, reasons.PROTOCOL_VIOLATION,
                   f"{where}: {exc} ({_STAGE_TEXT.get(stage, stage)}); the connection was "
                   "dropped: check that host and port point at an SMTP server")


async def _ehlo(st: _State, account: Account) -> bool:
    assert account.smtp is not None and st.client is not None
    st.begin("ehlo")
    name = ehlo_name(account.smtp.advanced, st.client.local_address())
    reply = await st.client.command(f"EHLO {name}")
    st.done("ehlo")
    conn = account.smtp.connection
    if reply.code == 421:
        _busy(st, f"{conn.host}:{conn.port}", reply, "EHLO")
        return False
    if reply.code != 250:
        hint = (": set advanced mail.smtp.localhost to this host's DNS name"
                if reply.code in (501, 504, 550) else "")
        st.connection = Outcome(False, reasons.SERVER_REJECTED,
                                f"{conn.host}:{conn.port} refused EHLO {name}: {reply.text}{hint}")
        return False
    st.extensions, st.auth_mechanisms = parse_ehlo(reply)
    return True


async def _handshake(st: _State, account: Account, ctx: ssl.SSLContext, truststore: str | None,
                     now: dt.datetime) -> bool:
    """TLS on the open connection; on failure, set st.connection and return False."""
    assert account.smtp is not None and st.client is not None
    conn = account.smtp.connection
    st.begin("tls")
    try:
        await st.client.start_tls(ctx, conn.host)
    except TimeoutError:
        raise
    except ssl.SSLCertVerificationError as exc:
        st.connection = Outcome(False, *tls.classify_verify_error(exc, conn.host, truststore))
        return False
    except (ssl.SSLError, OSError, EOFError, _Closed) as exc:
        detail = (getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                  if isinstance(exc, ssl.SSLError)
                  else "the server closed the connection during the handshake")
        # The diagnostic session takes this session's place (and its slot with the server).
        await st.client.close()
        best = await _diagnose_version(account, st.client.deadline)
        if best is not None and tls.below_floor(best, conn.min_tls_version):
            st.connection = Outcome(
                False, reasons.TLS_VERSION_TOO_LOW,
                f"{conn.host}:{conn.port} supports at most {best} but minTLSVersion is "
                f"{conn.min_tls_version}: upgrade the server, or lower minTLSVersion if you "
                "accept the risk")
        else:
            st.connection = Outcome(
                False, reasons.TLS_HANDSHAKE_FAILED,
                f"TLS handshake with {conn.host}:{conn.port} failed ({detail}): check that "
                f"security {conn.security} matches the port and that the server's TLS works")
        return False
    st.done("tls")
    st.tls_version, st.cipher, der = st.client.tls_facts()
    if der:
        st.certificate = tls.certificate_info(der, now)
    return True


async def _diagnose_version(account: Account, deadline: Deadline) -> str | None:
    """A second handshake without floor or verification, to learn the server's best version.

    Never carries credentials; any failure (the deadline included) means 'unknown'.
    """
    assert account.smtp is not None
    conn = account.smtp.connection
    client: SmtpClient | None = None
    try:
        client = await SmtpClient.connect(conn.host, conn.port, deadline)
        if conn.security == "STARTTLS":
            if (await client.read_reply()).code != 220:
                return None
            name = ehlo_name(account.smtp.advanced, client.local_address())
            if (await client.command(f"EHLO {name}")).code != 250:
                return None
            if (await client.command("STARTTLS")).code != 220:
                return None
        await client.start_tls(tls.diagnostic_context(), conn.host)
        version = client.tls_facts()[0]
        await client.quit()
        return version
    except (ssl.SSLError, OSError, EOFError, _Closed):  # TimeoutError is an OSError
        return None
    finally:
        if client is not None:
            await client.close()


async def _polite_authenticate(st: _State, account: Account, creds: _Credentials) -> Outcome:
    """AUTH in the server's turn: after a failure there, one account at a time."""
    assert account.smtp is not None
    conn = account.smtp.connection
    polite = limits.politeness()
    async with polite.auth_turn(conn.host, conn.port):
        outcome = await _authenticate(
            st, account, creds, patience=lambda: polite.penalized(conn.host, conn.port))
        if outcome.ok:
            polite.auth_result(conn.host, conn.port, ok=True)
        elif outcome.reason == reasons.AUTHENTICATION_FAILED:
            polite.auth_result(conn.host, conn.port, ok=False)
    return outcome


async def _authenticate(st: _State, account: Account, creds: _Credentials,
                        patience: Callable[[], bool] | None = None) -> Outcome:
    """AUTH with the chosen mechanism; the reply code and text go into the message.

    `patience`: while it says the server is penalising us (after a wrong password), a late AUTH
    reply is awaited until the deadline instead of one timeout.
    """
    assert account.smtp is not None and st.client is not None
    client = st.client
    auth = account.smtp.authentication
    mech, why = choose_mechanism(auth.method, st.auth_mechanisms, account.smtp.advanced)
    if mech is None:
        return Outcome(False, reasons.AUTH_MECHANISM_UNAVAILABLE, why)
    st.auth_mechanism = mech
    ident = creds.identity

    async def say(line: str) -> Reply:
        return await client.command(line, patience=patience)

    if mech == "PLAIN":
        blob = base64.b64encode(f"\0{ident}\0{creds.password}".encode()).decode()
        reply = await say(f"AUTH PLAIN {blob}")
    elif mech == "LOGIN":
        reply = await say("AUTH LOGIN")
        if reply.code == 334:
            reply = await say(base64.b64encode(ident.encode()).decode())
        if reply.code == 334:
            reply = await say(base64.b64encode((creds.password or "").encode()).decode())
    else:
        sasl = f"user={ident}\x01auth=Bearer {creds.token}\x01\x01".encode()
        reply = await say(f"AUTH XOAUTH2 {base64.b64encode(sasl).decode()}")
        if reply.code == 334:  # an error challenge: answer empty to get the final reply
            reply = await say("")
    if reply.code == 421:
        conn = account.smtp.connection
        _busy(st, f"{conn.host}:{conn.port}", reply, "AUTH")
    return _auth_outcome(reply, mech, ident, account)


def _auth_outcome(reply: Reply, mech: str, ident: str, account: Account) -> Outcome:
    assert account.smtp is not None
    auth = account.smtp.authentication
    if 200 <= reply.code < 300:
        return Outcome(True, reasons.SUCCEEDED,
                       f"authenticated as {ident} using {mech} ({reply.text})")
    if reply.code == 550 and "5.7.30" in reply.text:  # Exchange Online: Basic auth switched off
        from reconciler.manifest.providers import BASIC_AUTH_FIX

        return Outcome(False, reasons.BASIC_AUTH_DEPRECATED,
                       f"the server no longer accepts basic authentication (password) for "
                       f"{ident}: {reply.text}: {BASIC_AUTH_FIX}")
    if 400 <= reply.code < 500:
        return Outcome(False, reasons.AUTHENTICATION_TEMPORARY_FAILURE,
                       f"the server could not authenticate {ident} using {mech} now: "
                       f"{reply.text}; retry later")
    if reply.code == 503:
        return Outcome(False, reasons.PROTOCOL_VIOLATION,
                       f"the server answered AUTH {mech} with a bad-sequence error "
                       f"({reply.text}): it advertised AUTH but does not take it now; this is "
                       "not a wrong password: check the server's AUTH setup (e.g. AUTH only "
                       "after STARTTLS) and connection.security")
    if reply.code == 504:
        return Outcome(False, reasons.AUTH_MECHANISM_UNAVAILABLE,
                       f"the server does not accept {mech}: {reply.text}: adjust "
                       "mail.smtp.auth.mechanisms in advanced")
    if auth.method == "Password" and auth.password is not None:
        fix = (f"check userId and the password in Secret {account.namespace}/"
               f"{auth.password.name} key {auth.password.key!r}")
    elif auth.method == "AWSAccessKey" and auth.secret_access_key is not None:
        fix = (f"check the access key in Secret {account.namespace}/"
               f"{auth.secret_access_key.name}, that its IAM user may ses:SendRawEmail, and "
               f"that spec.region ({account.region}) is the SES region to send from")
    else:
        fix = "check the OAuth2 subject, scopes and the client's permission to send as it"
    return Outcome(False, reasons.AUTHENTICATION_FAILED,
                   f"the server rejected {mech} authentication for {ident}: {reply.text}: {fix}")
