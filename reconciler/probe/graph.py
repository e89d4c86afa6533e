"""Microsoft Graph probe: acquire the token, look up the mailbox, check the Mail.Send permission.

``GET {endpoint}/v1.0/users/{userPrincipalName}`` goes over the bounded HTTPS client
(reconciler.probe.httpclient: timeoutSeconds per request, the probe's deadline, 1 MiB) on a
verifying TLS socket, so that the negotiated version, cipher and server certificate are recorded
like SMTP's. No message is sent.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import redact_text, register_secret
from reconciler.model import (
    Account,
    CertificateInfo,
    GraphSpec,
    Outcome,
    ProbeResult,
    SecretReader,
)
from reconciler.probe.httpclient import Cutoff, ResponseTooLarge, fetch, https_context, run_bounded
from reconciler.probe.limits import current_deadline
from reconciler.probe.tokencache import GraphToken, TokenCache
from reconciler.secretrefs import secret_versions

CONNECTIVITY = "Microsoft Graph"
PROTOCOL = "MicrosoftGraph"
MAIL_SEND = "Mail.Send"


@runtime_checkable
class GraphTokenProvider(Protocol):
    """Gets Microsoft Graph tokens (TokenCache implements it)."""

    async def graph_token(self, account: Account, secrets: SecretReader
                          ) -> GraphToken | Outcome: ...


@dataclass(frozen=True)
class _Answer:
    """The Graph user lookup: HTTP status and error code, plus what the TLS session showed."""

    status: int
    error_code: str = ""
    error_message: str = ""
    tls_version: str | None = None
    cipher: str | None = None
    peer_cert: dict[str, Any] | None = None


async def probe_graph(account: Account, secrets: SecretReader, *, now: datetime,
                      tokens: object | None = None) -> ProbeResult:
    """Test connectivity of a sendUsing: MicrosoftGraph account.

    tokens: the run's TokenCache (any GraphTokenProvider); another provider, or None, gets a
    fresh TokenCache.
    """
    g = account.graph
    if g is None:
        failed = Outcome(False, reasons.INVALID_SPEC,
                         "sendUsing MicrosoftGraph needs spec.graph: add it")
        return ProbeResult(connection=failed, authentication=failed,
                           connectivity=CONNECTIVITY, protocol=PROTOCOL)
    provider = tokens if isinstance(tokens, GraphTokenProvider) else TokenCache()
    timings: dict[str, float] = {}
    versions = secret_versions(account, secrets)
    credentials = _credentials(account, secrets)

    started = time.monotonic()
    token = await provider.graph_token(account, secrets)
    timings["token"] = round(time.monotonic() - started, 6)
    if isinstance(token, Outcome):
        return ProbeResult(connection=token, authentication=token, connectivity=CONNECTIVITY,
                           protocol=PROTOCOL, timings=timings, secret_versions=versions,
                           credentials=credentials)

    started = time.monotonic()
    deadline = current_deadline(g.timeout_seconds)
    try:
        answer = await run_bounded(lambda cutoff: _get_user(cutoff, g, token.access_token),
                                   end=deadline.end)
    except TimeoutError:
        answer = _unavailable(g, f"no complete answer within {g.timeout_seconds:g}s or the "
                                 f"probe's deadline; raise graph.timeoutSeconds or check the "
                                 f"network path")
    timings["mailbox"] = round(time.monotonic() - started, 6)
    connection = answer if isinstance(answer, Outcome) else _mailbox_outcome(g, answer)
    tls = answer if isinstance(answer, _Answer) else _Answer(status=0)
    return ProbeResult(
        connection=connection,
        authentication=_permission_outcome(g, token),
        connectivity=CONNECTIVITY,
        protocol=PROTOCOL,
        tls_version=tls.tls_version,
        cipher=tls.cipher,
        certificate=_certificate_info(tls.peer_cert, now) if tls.peer_cert else None,
        authenticated_identity=g.user_principal_name,
        timings=timings,
        secret_versions=versions,
        credentials=credentials,
    )


def _get_user(cutoff: Cutoff, g: GraphSpec, access_token: str) -> _Answer | Outcome:
    """GET the user over HTTPS (blocking; run in a thread by run_bounded)."""
    base = urllib.parse.urlsplit(g.endpoint)
    if base.scheme != "https" or not base.hostname:
        return Outcome(False, reasons.INVALID_SPEC,
                       f"graph.endpoint {g.endpoint!r} must be an https:// URL")
    path = (f"{base.path.rstrip('/')}/v1.0/users/"
            f"{urllib.parse.quote(g.user_principal_name, safe='@')}")
    url = urllib.parse.urlunsplit(("https", base.netloc, path, "", ""))
    try:
        resp = fetch(cutoff, "GET", url, timeout=g.timeout_seconds, context=https_context(),
                     headers={"Authorization": f"Bearer {access_token}",
                              "Accept": "application/json"})
    except ssl.SSLCertVerificationError as exc:
        return _unavailable(g, f"the certificate of {base.hostname} is not trusted "
                               f"({exc.verify_message}); set REQUESTS_CA_BUNDLE or SSL_CERT_FILE "
                               f"to a CA bundle that trusts it")
    except TimeoutError:
        return _unavailable(g, f"no complete answer from {base.hostname} within "
                               f"{g.timeout_seconds:g}s; raise graph.timeoutSeconds or check "
                               f"the network path")
    except ResponseTooLarge as exc:
        return Outcome(False, reasons.PROTOCOL_VIOLATION,
                       f"{g.endpoint}: {exc}; the connection was dropped: check graph.endpoint")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _unavailable(g, f"cannot reach {base.hostname}: {type(exc).__name__}: {exc}; "
                               f"check graph.endpoint and the network path")
    code, message = _graph_error(resp.body)
    return _Answer(status=resp.status, error_code=code, error_message=message,
                   tls_version=resp.tls_version, cipher=resp.cipher, peer_cert=resp.peer_cert)


def _mailbox_outcome(g: GraphSpec, a: _Answer) -> Outcome:
    upn = g.user_principal_name
    detail = redact_text(f" ({a.error_code}: {a.error_message})") if a.error_code else ""
    if 200 <= a.status < 300:
        return Outcome(True, reasons.SUCCEEDED, f"mailbox {upn} found through Microsoft Graph")
    if a.status == 404:
        return Outcome(False, reasons.MAILBOX_NOT_FOUND,
                       f"Graph has no user {upn} in tenant {g.tenant_id}{detail}: fix "
                       f"graph.userPrincipalName or create the mailbox")
    if a.status in (401, 403):
        return Outcome(False, reasons.INSUFFICIENT_PERMISSIONS,
                       f"Graph answered HTTP {a.status} looking up {upn}{detail}: grant client "
                       f"{g.client_id} the User.Read.All permission (with admin consent) so the "
                       f"mailbox can be checked")
    return _unavailable(g, f"Graph answered HTTP {a.status} looking up {upn}{detail}; "
                           f"retry later")


def _permission_outcome(g: GraphSpec, token: GraphToken) -> Outcome:
    """Mail.Send must be among the token's roles (application) or scp (delegated)."""
    if token.delegated:
        granted, kind, claim = token.scopes, "delegated", "scp"
    else:
        granted, kind, claim = token.roles, "application", "roles"
    if MAIL_SEND in granted:
        return Outcome(True, reasons.SUCCEEDED,
                       f"token acquired; {kind} permission {MAIL_SEND} granted")
    have = ", ".join(granted) or "none"
    return Outcome(False, reasons.INSUFFICIENT_PERMISSIONS,
                   f"the token of client {g.client_id} lacks the {kind} permission {MAIL_SEND} "
                   f"({claim}: {have}): add Microsoft Graph {MAIL_SEND} ({kind}) to the app "
                   f"registration in tenant {g.tenant_id} and grant admin consent")


def _unavailable(g: GraphSpec, text: str) -> Outcome:
    return Outcome(False, reasons.GRAPH_UNAVAILABLE, f"{g.endpoint}: {text}")


def _graph_error(body: bytes) -> tuple[str, str]:
    """Graph's {"error": {"code", "message"}} answer, or empty strings."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return "", ""
    return str(err.get("code") or ""), str(err.get("message") or "")


def _certificate_info(peer: dict[str, Any], now: datetime) -> CertificateInfo | None:
    """CertificateInfo from ssl.getpeercert()'s dictionary."""
    not_after = peer.get("notAfter")
    if not isinstance(not_after, str):
        return None
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), tz=UTC)
    current = now if now.tzinfo else now.replace(tzinfo=UTC)
    return CertificateInfo(
        subject=_name(peer.get("subject", ())),
        issuer=_name(peer.get("issuer", ())),
        not_after=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        days_remaining=(expires - current).days,
        serial=peer.get("serialNumber"),
    )


def _name(rdns: Any) -> str:
    """'CN=graph.microsoft.com, O=...' from getpeercert()'s nested tuples."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L"}
    parts = [f"{short.get(k, k)}={v}" for rdn in rdns for (k, v) in rdn]
    return ", ".join(parts)


def _credentials(account: Account, secrets: SecretReader) -> dict[str, str]:
    """Values the Secret renderer publishes (the password grant's user and password); never
    logged. The client secret or certificate only with publish.clientCredentials, read by
    reconciler.probe.publishable where its owner's consent is checked."""
    g = account.graph
    out: dict[str, str] = {}
    if g is None:
        return out
    for name, ref in (("username", g.username), ("password", g.password)):
        if ref is None:
            continue
        try:
            value = secrets.read(account.namespace, ref).decode()
        except (SecretNotFound, UnicodeDecodeError):
            continue
        out[name] = value.strip() if name != "password" else value.rstrip("\r\n")
        if name != "username":
            register_secret(out[name])
    return out
