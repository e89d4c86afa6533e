"""The SMTP probe (DESIGN §4): connect, TLS, EHLO, AUTH, QUIT — no message is sent.

A small asyncio SMTP client, because smtplib hides what we must report (the negotiated TLS
version, the exact step that failed) and blocks a thread per probe. The whole conversation runs
under one `asyncio.timeout(timeoutSeconds)`. Expected failures become `Outcome`s with a reason
from `reconciler.reasons`; credentials never appear in a message (server text is redacted too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
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
from reconciler.probe import tls
from reconciler.secretrefs import secret_versions

if TYPE_CHECKING:
    from reconciler.probe import TokenProvider

CONNECTIVITY = {
    "STARTTLS": "SMTP (Connect using STARTTLS)",
    "SMTPS": "SMTP (Connect using SMTPS)",
    "None": "SMTP (Connect using default) \u2013 insecure",
}
_MAX_LINE = 8192


def secret_not_found(exc: SecretNotFound, ref: KeyRef | None = None) -> Outcome:
    """The SecretNotFound outcome, naming the object and key and what to do."""
    where = f" (referenced by {ref.field})" if ref is not None and ref.field else ""
    return Outcome(False, reasons.SECRET_NOT_FOUND,
                   f"{exc}{where}: create it or correct the reference")


# --------------------------------------------------------------------------- the wire


class _Closed(Exception):
    """The server closed the connection or sent something that is not SMTP."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line, redacted: '535 5.7.8 Authentication credentials invalid'."""
        return redact_text(f"{self.code} {' '.join(x for x in self.lines if x)}".strip())


class SmtpClient:
    """Line-level SMTP over asyncio streams, with STARTTLS upgrade."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> SmtpClient:
        reader, writer = await asyncio.open_connection(host, port, limit=_MAX_LINE * 4)
        return cls(reader, writer)

    async def read_reply(self) -> Reply:
        lines: list[str] = []
        while True:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                raise _Closed("the server closed the connection")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise _Closed(f"the server sent a line that is not SMTP: {line[:60]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), tuple(lines))

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        return await self.read_reply()

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        await self.writer.start_tls(ctx, server_hostname=server_hostname)

    def tls_facts(self) -> tuple[str | None, str | None, bytes | None]:
        """(version, cipher, DER leaf certificate) of the TLS session, if any."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None, None, None
        cipher = obj.cipher()
        return obj.version(), cipher[0] if cipher else None, obj.getpeercert(binary_form=True)

    async def close(self) -> None:
        """Drop the connection at once (no TLS close_notify wait) and release the transport."""
        self.writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


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
            ca_pem = secrets.read(account.namespace, conn.truststore).decode("utf-8", "replace")
        except SecretNotFound as exc:
            return ProbeResult(connection=secret_not_found(exc, conn.truststore), **base), None
    truststore = (f"{conn.truststore.kind} {account.namespace}/{conn.truststore.name} key "
                  f"{conn.truststore.key!r}" if conn.truststore else None)
    try:
        ctx = tls.client_context(conn.min_tls_version, ca_pem)
    except ssl.SSLError as exc:
        return ProbeResult(connection=Outcome(
            False, reasons.CERTIFICATE_UNTRUSTED,
            f"the truststore {truststore} holds no usable PEM certificate ({exc.reason or exc}): "
            "put the CA certificates in PEM form there"), ca_pem=ca_pem, **base), None

    st = _State()
    creds: _Credentials | None = None
    credentials: dict[str, str] = {}
    identity = account.smtp.identity.user_id or account.smtp.identity.email_address
    if authenticate and auth.method != "None":
        pre = await _resolve_credentials(account, secrets, identity, tokens, conn.security)
        if isinstance(pre, Outcome):
            st.authentication = pre
        else:
            creds = pre
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

    try:
        async with asyncio.timeout(conn.timeout_seconds):
            await _converse(st, account, ctx, truststore, creds, authenticate, now, transaction)
    except TimeoutError:
        where = _STAGE_TEXT.get(st.stage, st.stage)
        msg = (f"no answer from {conn.host}:{conn.port} within {conn.timeout_seconds:g}s "
               f"({where}): check host, port and firewall, or raise timeoutSeconds")
        if st.connection is None:
            st.connection = Outcome(False, reasons.TIMEOUT, msg)
        elif st.stage == "auth" and st.authentication is None:
            st.authentication = Outcome(False, reasons.TIMEOUT, msg)
        elif st.stage == "transaction" and st.transaction is None:
            st.transaction = Outcome(False, reasons.TIMEOUT, msg)
    finally:
        if st.client is not None:
            await st.client.close()
    st.timings["total"] = round(time.monotonic() - started, 4)

    connection = st.connection or Outcome(False, reasons.CONNECT_FAILED, "no result")
    authentication: Outcome | None = None
    if authenticate:
        if auth.method == "None":
            authentication = (Outcome(True, reasons.NOT_REQUIRED, "authentication.method is None")
                              if connection.ok else None)
        elif connection.ok or (st.authentication is not None
                               and st.authentication.reason == reasons.SECRET_NOT_FOUND):
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


async def _converse(st: _State, account: Account, ctx: ssl.SSLContext, truststore: str | None,
                    creds: _Credentials | None, authenticate: bool, now: dt.datetime,
                    transaction: Transaction | None = None) -> None:
    """Steps 1-5 of DESIGN §4; fills st. Returns early on the first failure."""
    assert account.smtp is not None
    conn = account.smtp.connection
    where = f"{conn.host}:{conn.port}"
    st.begin("connect")
    try:
        st.client = client = await SmtpClient.connect(conn.host, conn.port)
    except socket.gaierror as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"cannot resolve {conn.host} ({exc.strerror}): check connection.host")
        return
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
            if reply.code != 220:
                st.connection = Outcome(False, reasons.SERVER_REJECTED,
                                        f"{where} refused STARTTLS: {reply.text}")
                return
            st.done("starttls", "tls")
            if not await _handshake(st, account, ctx, truststore, now):
                return
            if not await _ehlo(st, account):
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
            st.authentication = await _authenticate(st, account, creds)
            if st.authentication.ok:
                st.identity = creds.identity
        except (_Closed, OSError) as exc:
            st.authentication = Outcome(False, reasons.AUTHENTICATION_TEMPORARY_FAILURE,
                                        f"the connection to {where} was lost during "
                                        f"authentication ({type(exc).__name__}): retry later")
        st.done("auth")
    auth_ready = (account.smtp.authentication.method == "None"
                  or (st.authentication is not None and st.authentication.ok))
    if transaction is not None and auth_ready:
        st.begin("transaction")
        try:
            st.transaction = await transaction(client)
        except (_Closed, OSError) as exc:
            st.transaction = Outcome(False, reasons.CONNECT_FAILED,
                                     f"the connection to {where} was lost while sending "
                                     f"({type(exc).__name__}): retry later")
    st.begin("quit")
    with contextlib.suppress(_Closed, OSError):
        await client.command("QUIT")


async def _ehlo(st: _State, account: Account) -> bool:
    assert account.smtp is not None and st.client is not None
    st.begin("ehlo")
    name = account.smtp.advanced.get("mail.smtp.localhost") or socket.gethostname() or "localhost"
    reply = await st.client.command(f"EHLO {name}")
    st.done("ehlo")
    if reply.code != 250:
        conn = account.smtp.connection
        st.connection = Outcome(False, reasons.SERVER_REJECTED,
                                f"{conn.host}:{conn.port} refused EHLO: {reply.text}")
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
    except ssl.SSLCertVerificationError as exc:
        st.connection = Outcome(False, *tls.classify_verify_error(exc, conn.host, truststore))
        return False
    except (ssl.SSLError, OSError, EOFError, _Closed) as exc:
        detail = (getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                  if isinstance(exc, ssl.SSLError)
                  else "the server closed the connection during the handshake")
        best = await _diagnose_version(account)
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


async def _diagnose_version(account: Account) -> str | None:
    """A second handshake without floor or verification, to learn the server's best version.

    Never carries credentials; any failure means 'unknown'.
    """
    assert account.smtp is not None
    conn = account.smtp.connection
    client: SmtpClient | None = None
    try:
        client = await SmtpClient.connect(conn.host, conn.port)
        if conn.security == "STARTTLS":
            if (await client.read_reply()).code != 220:
                return None
            if (await client.command("EHLO probe.invalid")).code != 250:
                return None
            if (await client.command("STARTTLS")).code != 220:
                return None
        await client.start_tls(tls.diagnostic_context(), conn.host)
        return client.tls_facts()[0]
    except (ssl.SSLError, OSError, EOFError, _Closed):
        return None
    finally:
        if client is not None:
            await client.close()


async def _authenticate(st: _State, account: Account, creds: _Credentials) -> Outcome:
    """AUTH with the chosen mechanism; the reply code and text go into the message."""
    assert account.smtp is not None and st.client is not None
    client = st.client
    auth = account.smtp.authentication
    mech, why = choose_mechanism(auth.method, st.auth_mechanisms, account.smtp.advanced)
    if mech is None:
        return Outcome(False, reasons.AUTH_MECHANISM_UNAVAILABLE, why)
    st.auth_mechanism = mech
    ident = creds.identity
    if mech == "PLAIN":
        blob = base64.b64encode(f"\0{ident}\0{creds.password}".encode()).decode()
        reply = await client.command(f"AUTH PLAIN {blob}")
    elif mech == "LOGIN":
        reply = await client.command("AUTH LOGIN")
        if reply.code == 334:
            reply = await client.command(base64.b64encode(ident.encode()).decode())
        if reply.code == 334:
            reply = await client.command(base64.b64encode((creds.password or "").encode())
                                         .decode())
    else:
        sasl = f"user={ident}\x01auth=Bearer {creds.token}\x01\x01".encode()
        reply = await client.command(f"AUTH XOAUTH2 {base64.b64encode(sasl).decode()}")
        if reply.code == 334:  # an error challenge: answer empty to get the final reply
            reply = await client.command("")
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
