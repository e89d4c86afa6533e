"""One SMTP probe session, step by step, and where each failure lands (DESIGN §4 steps 1-5).

Connect, TLS (SMTPS, or STARTTLS after EHLO), EHLO, AUTH, then the envelope check or a caller's
transaction: each step fills a `SessionState` with what it found, and an expected failure
becomes an Outcome with a reason from `reconciler.reasons` under Connected or Authenticated. A
421 marks the session busy (the probe retries it: reconciler.probe.smtp). AUTH waits for the
server's turn (limits.Politeness) and, while the server penalises us, for a late reply up to
the deadline. After AUTH, `MAIL FROM:<emailAddress>` then `RSET` checks that the server takes
this sender (SenderRejected, TLSRequired); RCPT and DATA are never sent. A failed TLS handshake
is followed by a diagnostic one (no credentials, no floor) to tell TLSVersionTooLow apart.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from reconciler import reasons
from reconciler.model import Account, CertificateInfo, Outcome
from reconciler.probe import limits, tls
from reconciler.probe.limits import Deadline
from reconciler.probe.smtpauth import Credentials, auth_outcome, choose_mechanism
from reconciler.probe.smtpclient import (
    Reply,
    SmtpClient,
    SmtpClosed,
    SmtpInjection,
    SmtpViolation,
    ehlo_name,
    parse_ehlo,
)


@dataclass
class SessionState:
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


STAGE_TEXT = {
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


#: A mail transaction run after a successful AUTH, before QUIT (used by send.py).
Transaction = Callable[[SmtpClient], Awaitable[Outcome]]


def _ready_220(st: SessionState, where: str, reply: Reply, step: str, refused: str) -> bool:
    """Whether `reply` is the 220 the step waits for (the greeting, the go-ahead for STARTTLS);
    otherwise the session's outcome: busy on a 421, refused on anything else."""
    if reply.code == 421:
        _busy(st, where, reply, step)
        return False
    if reply.code != 220:
        st.connection = Outcome(False, reasons.SERVER_REJECTED,
                                f"{where} refused {refused}: {reply.text}")
        return False
    return True


def _busy(st: SessionState, where: str, reply: Reply, step: str) -> None:
    """A 421 (service not available, closing): retry later, within the deadline."""
    st.busy = True
    if st.client is not None:
        st.client.usable = False  # 421 closes the session; nothing more to say
    st.connection = Outcome(False, reasons.SERVER_BUSY,
                            f"{where} is busy ({step}: {reply.text}); retried with backoff within "
                            "the probe's deadline: retry later, or lower "
                            "--max-sessions-per-server")


def host_hint(account: Account) -> tuple[str, str]:
    """(", the host of provider X", what to check) when the host is the provider's preset, not
    a field of the manifest (then the message must not send the reader to connection.host)."""
    assert account.smtp is not None
    spec = account.manifest.get("spec") if isinstance(account.manifest, Mapping) else None
    written = (((spec or {}).get("smtp") or {}).get("connection") or {}).get("host")
    if written or account.provider == "custom":
        return "", ""
    return (f", the host of provider {account.provider}",
            "check this network's DNS and egress to it (a firewall or NetworkPolicy)")


async def converse(st: SessionState, account: Account, ctx: tls.ClientContext, truststore: str | None,
                    creds: Credentials | None, authenticate: bool, now: dt.datetime,
                    transaction: Transaction | None, deadline: Deadline) -> None:
    """Steps 1-5 of DESIGN §4; fills st. Returns early on the first failure."""
    assert account.smtp is not None
    conn = account.smtp.connection
    where = f"{conn.host}:{conn.port}"
    st.begin("connect")
    try:
        st.client = client = await SmtpClient.connect(conn.host, conn.port, deadline)
    except socket.gaierror as exc:
        what, fix = host_hint(account)
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"cannot resolve {conn.host}{what} ({exc.strerror}): "
                                f"{fix or 'check connection.host'}")
        return
    except TimeoutError:
        raise
    except OSError as exc:
        what, fix = host_hint(account)
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"cannot connect to {where}{what}: {exc.strerror or exc}: "
                                f"{fix or 'check connection.host and port, and that the server is reachable'}")
        return
    st.done("connect")

    try:
        if conn.security == "SMTPS" and not await _handshake(st, account, ctx, truststore, now):
            return
        st.begin("greeting")
        greeting = await client.read_reply()
        if not _ready_220(st, where, greeting, "greeting", "the session"):
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
            if not _ready_220(st, where, reply, "STARTTLS", "STARTTLS"):
                return
            st.done("starttls", "tls")
            if not await _handshake(st, account, ctx, truststore, now):
                return
            if not await _ehlo(st, account):
                return
    except TimeoutError:
        raise
    except SmtpViolation as exc:
        st.connection = _violation(where, exc, st.stage)
        return
    except SmtpClosed as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"{where}: {exc} ({STAGE_TEXT.get(st.stage, st.stage)}): "
                                "check that host and port point at an SMTP server")
        return
    except OSError as exc:
        st.connection = Outcome(False, reasons.CONNECT_FAILED,
                                f"{where}: connection lost {STAGE_TEXT.get(st.stage, st.stage)} "
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
                st.identity = creds.named
        except TimeoutError:
            raise
        except SmtpViolation as exc:
            st.authentication = _violation(where, exc, st.stage)
        except (SmtpClosed, OSError) as exc:
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
        except (SmtpClosed, OSError) as exc:
            client.usable = False
            st.transaction = Outcome(False, reasons.CONNECT_FAILED,
                                     f"the connection to {where} was lost while sending "
                                     f"({type(exc).__name__}): retry later")
    elif (transaction is None and account.probe.envelope_check and auth_ready
          and (method_none or authenticate)):
        await _envelope_check(st, account)


async def _envelope_check(st: SessionState, account: Account) -> None:
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
    except SmtpViolation as exc:
        envelope_failed(st, account, _violation(where, exc, "envelope"))
        return
    except (SmtpClosed, OSError) as exc:
        envelope_failed(st, account, Outcome(
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
    envelope_failed(st, account, outcome)


def envelope_failed(st: SessionState, account: Account, outcome: Outcome) -> None:
    """An envelope failure: under Authenticated when AUTH ran, else under Connected."""
    if st.authentication is not None and st.authentication.ok:
        st.authentication = outcome
        st.identity = None
    else:
        st.connection = outcome


def _violation(where: str, exc: SmtpViolation, stage: str) -> Outcome:
    return Outcome(False, reasons.PROTOCOL_VIOLATION,
                   f"{where}: {exc} ({STAGE_TEXT.get(stage, stage)}); the connection was "
                   "dropped: check that host and port point at an SMTP server")


async def _ehlo(st: SessionState, account: Account) -> bool:
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


async def _handshake(st: SessionState, account: Account, ctx: tls.ClientContext, truststore: str | None,
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
    except SmtpInjection as exc:
        st.connection = Outcome(
            False, reasons.PROTOCOL_VIOLATION,
            f"{conn.host}:{conn.port}: {exc}, which would be read as replies inside TLS "
            "(STARTTLS reply injection, CVE-2011-0411): the connection was dropped before the "
            "handshake and no credentials were sent; the server, or something on the path to "
            "it, is broken or hostile")
        return False
    except (ssl.SSLError, OSError, EOFError, SmtpClosed) as exc:
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
    except (ssl.SSLError, OSError, EOFError, SmtpClosed):  # TimeoutError is an OSError
        return None
    finally:
        if client is not None:
            await client.close()


async def _polite_authenticate(st: SessionState, account: Account, creds: Credentials) -> Outcome:
    """AUTH in the server's turn: after a failure there, one account at a time."""
    assert account.smtp is not None
    conn = account.smtp.connection
    polite = limits.politeness()
    async with polite.auth_turn(conn.host):
        outcome = await _authenticate(
            st, account, creds, patience=lambda: polite.penalized(conn.host))
        if outcome.ok:
            polite.auth_result(conn.host, ok=True)
        elif outcome.reason == reasons.AUTHENTICATION_FAILED:
            polite.auth_result(conn.host, ok=False)
    return outcome


async def _authenticate(st: SessionState, account: Account, creds: Credentials,
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
    return auth_outcome(reply, mech, creds.named, account)
