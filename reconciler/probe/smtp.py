"""The SMTP probe (DESIGN §4): connect, TLS, EHLO, AUTH, the envelope check, QUIT — no message.

This module prepares and runs the probe: the truststore and TLS context, the credentials (read
or requested before connecting), the server's politeness limits and the deadline, sessions
retried while the server answers 421, and the ProbeResult assembled from the last one. The wire
client is reconciler.probe.smtpclient, one session's conversation reconciler.probe.smtpsession,
AUTH's mechanism choice and reply reading reconciler.probe.smtpauth.

Bounds (issues 12, 14): `timeoutSeconds` is the connect timeout and the per-command timeout (one
command and its whole reply), as the published JavaMail/Django/smtplib settings use it; the
probe's overall deadline (reconciler.probe.limits) bounds the whole session, 421 retries and the
TLS diagnostic session included.

Politeness: the session holds one of its server's slots (limits.Politeness); a 421 greeting or
reply is retried with backoff within the deadline (then ServerBusy); AUTH is rate-limited per
server and, after a failure there, serialised. QUIT is sent whenever the session can still carry
it, after failures too.

Expected failures become `Outcome`s with a reason from `reconciler.reasons`; credentials never
appear in a message (server text is redacted too).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import time
from typing import TYPE_CHECKING, Any

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import register_secret
from reconciler.model import (
    Account,
    KeyRef,
    Outcome,
    ProbeResult,
    SecretReader,
)
from reconciler.policy import certificates_only
from reconciler.probe import limits, tls
from reconciler.probe.limits import Deadline
from reconciler.probe.smtpauth import Credentials
from reconciler.probe.smtpsession import (
    STAGE_TEXT,
    SessionState,
    Transaction,
    converse,
    envelope_failed,
)
from reconciler.secretrefs import secret_versions

if TYPE_CHECKING:
    from reconciler.probe import TokenProvider
    from reconciler.probe.endpoints import Sharing

CONNECTIVITY = {
    "STARTTLS": "SMTP (Connect using STARTTLS)",
    "SMTPS": "SMTP (Connect using SMTPS)",
    "None": "SMTP (Connect using default) \u2013 insecure",
}
#: Backoff before retrying a session answered with 421 (doubling; only within the deadline).
BUSY_BACKOFF_SECONDS = 0.5


def secret_not_found(exc: SecretNotFound, ref: KeyRef | None = None) -> Outcome:
    """The SecretNotFound outcome, naming the object and key and what to do."""
    where = f" (referenced by {ref.field})" if ref is not None and ref.field else ""
    if exc.reason != reasons.SECRET_NOT_FOUND:  # SecretNotAllowed: the message says what to do
        return Outcome(False, exc.reason, f"{exc}{where}")
    return Outcome(False, reasons.SECRET_NOT_FOUND,
                   f"{exc}{where}: create it or correct the reference")



async def probe_smtp(account: Account, secrets: SecretReader, *, now: dt.datetime,
                     authenticate: bool = True, tokens: TokenProvider | None = None,
                     sharing: Sharing | None = None) -> ProbeResult:
    """Test connectivity of one SMTP account (DESIGN §4); with `sharing`, an endpoint check
    alone may be the endpoint's shared one (reconciler.probe.endpoints)."""
    result, _ = await run_session(account, secrets, now=now, authenticate=authenticate,
                                  tokens=tokens, sharing=sharing)
    return result


async def run_session(account: Account, secrets: SecretReader, *, now: dt.datetime,
                      authenticate: bool = True, tokens: TokenProvider | None = None,
                      transaction: Transaction | None = None, sharing: Sharing | None = None
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
    will_auth = authenticate and auth.method != "None"
    try:
        ctx = tls.client_context(conn.min_tls_version, ca_pem, credentials=will_auth)
    except ssl.SSLError as exc:
        return ProbeResult(connection=Outcome(
            False, reasons.CERTIFICATE_UNTRUSTED,
            f"the truststore {truststore} holds no usable PEM certificate ({exc.reason or exc}): "
            "put the CA certificates in PEM form there"), ca_pem=ca_pem, **base), None

    polite = limits.politeness()
    if will_auth:  # wait for the server's AUTH rate before taking one of its session slots
        await polite.auth_allowance(conn.host)
    # Credentials (a token request) first, without holding a session slot; the deadline
    # covers both phases, but not the wait for the slot.
    total = limits.overall_deadline(conn.timeout_seconds)
    deadline = Deadline.start(conn.timeout_seconds, total)
    creds: Credentials | None = None
    pre: Outcome | None = None
    if authenticate and auth.method != "None":  # else there is nothing to read or request
        with limits.deadline_scope(deadline):
            creds, pre = await _credentials(account, secrets, authenticate, tokens)
    left = deadline.remaining()

    async def session() -> SessionState:
        async with polite.session(conn.host, account.provider):
            deadline = Deadline.start(conn.timeout_seconds, max(0.0, left))
            with limits.deadline_scope(deadline):
                return await _attempts(account, ctx, truststore, authenticate, creds, now,
                                       transaction, deadline)

    if sharing is None:
        st = await session()
    else:  # the endpoint's shared check when this session would be no more (probe/endpoints.py)
        from reconciler.probe.endpoints import shared_session

        st = await shared_session(sharing, account, ca_pem=ca_pem, truststore=truststore,
                                  now=now, authenticate=authenticate, transaction=transaction,
                                  session=session)
    credentials: dict[str, str] = {}
    identity = account.smtp.identity.user_id or account.smtp.identity.email_address
    if auth.method == "Password" and auth.password is not None:
        # The renderer needs the username and password even when AUTH is deferred this run.
        with contextlib.suppress(SecretNotFound):
            user = creds.identity if creds else _username(secrets, account, identity)
            password = creds.password if creds else _read_text(secrets, account, auth.password)
            if password is not None:
                credentials = {"username": user, "password": password}
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
                       ) -> tuple[Credentials | None, Outcome | None]:
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


async def _attempts(account: Account, ctx: tls.ClientContext, truststore: str | None,
                    authenticate: bool, creds: Credentials | None, now: dt.datetime,
                    transaction: Transaction | None, deadline: Deadline) -> SessionState:
    """Sessions until one is not answered 421 or the deadline is near; the last one's state."""
    backoff = BUSY_BACKOFF_SECONDS
    while True:
        st = SessionState()
        await _session(st, account, ctx, truststore, creds, authenticate, now, transaction,
                       deadline)
        if not st.busy or deadline.remaining() - backoff < min(deadline.timeout, 1.0):
            return st
        await asyncio.sleep(backoff)
        backoff *= 2


async def _session(st: SessionState, account: Account, ctx: tls.ClientContext, truststore: str | None,
                   creds: Credentials | None, authenticate: bool, now: dt.datetime,
                   transaction: Transaction | None, deadline: Deadline) -> None:
    """One SMTP session; fills st (a timeout becomes the reason of the step it stopped)."""
    assert account.smtp is not None
    conn = account.smtp.connection
    try:
        await converse(st, account, ctx, truststore, creds, authenticate, now, transaction,
                        deadline)
    except TimeoutError:
        where = STAGE_TEXT.get(st.stage, st.stage)
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
            envelope_failed(st, account, Outcome(False, reasons.TIMEOUT, msg))
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


def _username(secrets: SecretReader, account: Account, identity: str) -> str:
    """The SMTP username: from usernameSecretRef (a credential, so redacted), else `identity`."""
    assert account.smtp is not None
    ref = account.smtp.authentication.username
    return identity if ref is None else _read_text(secrets, account, ref)


def username_shown(account: Account) -> str:
    """How messages name a username read from a Secret (never its value); "" otherwise."""
    assert account.smtp is not None
    ref = account.smtp.authentication.username
    return "" if ref is None else (f"the username in Secret {account.namespace}/{ref.name} "
                                   f"key {ref.key!r}")


def _ses(account: Account, secrets: SecretReader) -> tuple[str, str]:
    """(access key id, derived SES SMTP password) of an AWSAccessKey account."""
    from reconciler.probe.aws import ses_credentials

    ses = ses_credentials(account, secrets)
    return ses.username, ses.password


async def _resolve_credentials(account: Account, secrets: SecretReader, identity: str,
                               tokens: TokenProvider | None, security: str
                               ) -> Credentials | Outcome:
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
            user = _username(secrets, account, identity)
        except SecretNotFound as exc:
            return secret_not_found(exc, auth.username)
        try:
            password = _read_text(secrets, account, auth.password)
        except SecretNotFound as exc:
            return secret_not_found(exc, auth.password)
        return Credentials(user, password=password, shown=username_shown(account))
    if auth.method == "AWSAccessKey":
        try:
            key_id, password = _ses(account, secrets)
        except SecretNotFound as exc:
            return secret_not_found(exc)
        return Credentials(key_id, password=password)
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
    return Credentials(identity, token=token)
