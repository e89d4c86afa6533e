"""OAuth 2.0 access tokens for SMTP XOAUTH2 and Microsoft Graph, cached for one run.

Two identity providers:
- Google: a service-account key signs an RS256 JWT (RFC 7523) that is exchanged for a token at
  ``oauth2.tokenUrl`` (Gmail SMTP, scope https://mail.google.com/).
- Microsoft identity platform, through msal: client credentials with a client secret or a
  certificate, or the password grant (Office 365 SMTP and Microsoft Graph).

One token request per client and scope per run: accounts sharing a client share the request,
concurrent callers wait for the same in-flight request. Tokens and the secrets that obtain them are
registered with reconciler.log.register_secret, never logged and never put into a message.
Expected failures (bad key, wrong secret, unreachable endpoint) come back as ``Outcome(ok=False)``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import get_logger, redact_text, register_secret
from reconciler.model import Account, GraphSpec, KeyRef, OAuth2, Outcome, SecretReader
from reconciler.probe.httpclient import (
    Cutoff,
    MsalHttpClient,
    ResponseTooLarge,
    fetch,
    run_bounded,
)
from reconciler.probe.limits import Deadline, current_deadline

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_SCOPE = "https://mail.google.com/"
OFFICE365_SMTP_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
PUBLIC_CLOUD_HOST = "login.microsoftonline.com"
JWT_LIFETIME_SECONDS = 3600  # Google's maximum

_log = get_logger("reconciler.probe.oauth")


@dataclass(frozen=True)
class GraphToken:
    """An access token with the permission claims read from it (unverified: we are its client)."""

    access_token: str = field(repr=False)
    roles: tuple[str, ...] = ()  # application permissions
    scopes: tuple[str, ...] = ()  # delegated permissions (scp)
    delegated: bool = False  # True for the password grant (user token)
    expires_in: int | None = None


@dataclass(frozen=True)
class _Token:
    access_token: str = field(repr=False)
    expires_in: int | None = None


def https_context() -> ssl.SSLContext:
    """A verifying client context honouring REQUESTS_CA_BUNDLE / SSL_CERT_FILE, as requests does."""
    return ssl.create_default_context(cafile=ca_bundle())


def ca_bundle() -> str | None:
    """The CA bundle named by the environment, if any."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None


def jwt_claims(token: str) -> dict[str, Any]:
    """Decode a JWT's payload without verifying it; {} when the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def basic_auth_warning(account: Account, now: dt.datetime | None = None) -> Outcome | None:
    """BasicAuthDeprecated for Office 365 SMTP with a password, worded for `now` by Microsoft's
    schedule (reconciler.manifest.providers.BASIC_AUTH_SCHEDULE); None for every other account."""
    smtp = account.smtp
    if account.send_using != "SMTP" or smtp is None or smtp.authentication.method != "Password":
        return None
    host = smtp.connection.host.lower().rstrip(".")
    if account.provider != "office365" and not host.endswith("office365.com"):
        return None
    from reconciler.manifest.providers import basic_auth_message

    return Outcome(ok=False, reason=reasons.BASIC_AUTH_DEPRECATED,
                   message=basic_auth_message(smtp.connection.host,
                                              now or dt.datetime.now(dt.UTC)))


class TokenCache:
    """Access tokens for one run; implements the SMTP probe's TokenProvider protocol."""

    def __init__(self) -> None:
        self._done: dict[Hashable, _Token | Outcome] = {}
        self._pending: dict[Hashable, asyncio.Task[_Token | Outcome]] = {}
        self.requests_sent = 0  # token requests that went to an identity provider

    async def smtp_token(self, account: Account, secrets: SecretReader) -> str | Outcome:
        """The access token for SMTP AUTH XOAUTH2 (authentication.method OAuth2)."""
        smtp = account.smtp
        oauth2 = smtp.authentication.oauth2 if smtp is not None else None
        if smtp is None or oauth2 is None:
            return _failed(f"{account.namespace}/{account.name} has no "
                           f"spec.smtp.authentication.oauth2: add it or change the method")
        timeout = smtp.connection.timeout_seconds
        try:
            if oauth2.grant_type == "JWTBearer":
                got = await self._google(secrets, account.namespace, oauth2, timeout)
            else:
                got = await self._microsoft_smtp(secrets, account.namespace, oauth2, timeout)
        except SecretNotFound as exc:
            return _secret_missing(exc)
        return got if isinstance(got, Outcome) else got.access_token

    async def graph_token(self, account: Account, secrets: SecretReader) -> GraphToken | Outcome:
        """The Microsoft Graph token (sendUsing MicrosoftGraph) with its permission claims."""
        g = account.graph
        if g is None:
            return _failed(f"{account.namespace}/{account.name} has no spec.graph: add it")
        try:
            got = await self._microsoft_graph(secrets, account.namespace, g)
        except SecretNotFound as exc:
            return _secret_missing(exc)
        if isinstance(got, Outcome):
            return got
        claims = jwt_claims(got.access_token)
        roles = claims.get("roles") or []
        return GraphToken(
            access_token=got.access_token,
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
            scopes=tuple(str(claims.get("scp") or "").split()),
            delegated=g.grant_type == "Password",
            expires_in=got.expires_in,
        )

    # ------------------------------------------------------------------ sharing one request

    async def _once(self, key: Hashable, fetch: Callable[[], Awaitable[_Token | Outcome]],
                    deadline: Deadline, url: str) -> _Token | Outcome:
        """Run fetch once per key; concurrent callers await the same task, each until its own
        deadline (the task itself is bounded by the deadline of the probe that started it)."""
        if key in self._done:
            return self._done[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._count(fetch))
            self._pending[key] = task
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline.remaining()))
        if not done:
            return _timed_out(url, deadline.timeout)
        self._pending.pop(key, None)
        result = task.result()
        self._done[key] = result
        return result

    async def _count(self, fetch: Callable[[], Awaitable[_Token | Outcome]]) -> _Token | Outcome:
        self.requests_sent += 1
        return await fetch()

    # ------------------------------------------------------------------ Google (JWT bearer)

    async def _google(self, secrets: SecretReader, namespace: str, oauth2: OAuth2,
                      timeout: float) -> _Token | Outcome:
        ref = oauth2.service_account_key
        if ref is None:
            return _failed("oauth2.grantType JWTBearer needs serviceAccountKeySecretRef "
                           "(the Google service-account key JSON)")
        raw = secrets.read(namespace, ref)
        register_secret(raw)
        key = _service_account_key(raw)
        if isinstance(key, str):
            return _failed(f"{_where(namespace, ref)} {key}: put the service-account key JSON "
                           f"downloaded from Google Cloud there")
        register_secret(key["private_key"])
        subject = oauth2.subject or ""
        if not subject:
            return _failed("oauth2.subject is empty: set it to the mailbox to send as")
        cache_key = ("google", oauth2.token_url, key["client_email"], subject, oauth2.scope,
                     _digest(key["private_key"]))
        deadline = current_deadline(timeout)
        where = _where(namespace, ref)
        return await self._once(cache_key, lambda: _bounded(
            lambda cutoff: _google_exchange(cutoff, key, subject, oauth2, timeout, where),
            deadline, oauth2.token_url), deadline, oauth2.token_url)

    # ------------------------------------------------------------------ Microsoft (msal)

    async def _microsoft_smtp(self, secrets: SecretReader, namespace: str, oauth2: OAuth2,
                              timeout: float) -> _Token | Outcome:
        if not oauth2.tenant_id or not oauth2.client_id:
            return _failed("oauth2.grantType ClientCredentials needs tenantId and clientId")
        scope = oauth2.scope if oauth2.scope != GOOGLE_SCOPE else OFFICE365_SMTP_SCOPE
        cred = _client_credential(secrets, namespace, oauth2.client_secret,
                                  oauth2.client_certificate)
        if isinstance(cred, Outcome):
            return cred
        req = _MsalRequest(authority=oauth2.authority, tenant_id=oauth2.tenant_id,
                           client_id=oauth2.client_id, scope=scope, credential=cred,
                           timeout=timeout)
        return await self._msal(req, current_deadline(timeout))

    async def _microsoft_graph(self, secrets: SecretReader, namespace: str,
                               g: GraphSpec) -> _Token | Outcome:
        cred = _client_credential(secrets, namespace, g.client_secret, g.client_certificate,
                                  required=g.grant_type == "ClientCredentials")
        if isinstance(cred, Outcome):
            return cred
        username = password = None
        if g.grant_type == "Password":
            if g.username is None or g.password is None:
                return _failed("graph.authentication.grantType Password needs usernameSecretRef "
                               "and passwordSecretRef")
            username = secrets.read(namespace, g.username).decode().strip()
            password = secrets.read(namespace, g.password).decode().rstrip("\r\n")
            register_secret(password)
        req = _MsalRequest(authority=g.authority, tenant_id=g.tenant_id, client_id=g.client_id,
                           scope=GRAPH_SCOPE, credential=cred, timeout=g.timeout_seconds,
                           username=username, password=password)
        return await self._msal(req, current_deadline(g.timeout_seconds))

    async def _msal(self, req: _MsalRequest, deadline: Deadline) -> _Token | Outcome:
        url = req.authority_url
        return await self._once(req.cache_key(), lambda: _bounded(
            lambda cutoff: _msal_exchange(cutoff, req), deadline, url), deadline, url)


async def _bounded(work: Callable[[Cutoff], _Token | Outcome], deadline: Deadline,
                   url: str) -> _Token | Outcome:
    """Run a blocking token exchange bounded by the probe's deadline."""
    try:
        return await run_bounded(work, end=deadline.end)
    except TimeoutError:
        return _timed_out(url, deadline.timeout)


# ---------------------------------------------------------------------- Google helpers


def _client_credential(secrets: SecretReader, namespace: str, secret_ref: KeyRef | None,
                       cert_ref: KeyRef | None, required: bool = True
                       ) -> str | dict[str, str] | None | Outcome:
    """The msal client_credential: a secret string, a certificate dict, or None."""
    if secret_ref is not None:
        secret = secrets.read(namespace, secret_ref).decode().strip()
        register_secret(secret)
        return secret
    if cert_ref is not None:
        pem = secrets.read(namespace, cert_ref)
        register_secret(pem)
        cred = _certificate_credential(pem)
        if isinstance(cred, str):
            return _failed(f"{_where(namespace, cert_ref)} {cred}: put a PEM with the "
                           f"private key and its certificate there")
        return cred
    if required:
        return _failed("grantType ClientCredentials needs clientSecretSecretRef or "
                       "clientCertificateSecretRef")
    return None


def _service_account_key(raw: bytes) -> dict[str, str] | str:
    """The fields we need from a service-account JSON, or what is wrong with it."""
    try:
        data = json.loads(raw)
    except ValueError:
        return "is not JSON"
    if not isinstance(data, dict):
        return "is not a JSON object"
    missing = [k for k in ("client_email", "private_key") if not data.get(k)]
    if missing:
        return f"has no {' or '.join(missing)}"
    return {"client_email": str(data["client_email"]), "private_key": str(data["private_key"]),
            "private_key_id": str(data.get("private_key_id") or "")}


def google_assertion(key: dict[str, str], subject: str, scope: str, audience: str,
                     now: float | None = None) -> str:
    """The RS256-signed JWT a service account presents to Google's token endpoint."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    iat = int(time.time() if now is None else now)
    header = {"alg": "RS256", "typ": "JWT"}
    if key.get("private_key_id"):
        header["kid"] = key["private_key_id"]
    claims = {"iss": key["client_email"], "sub": subject, "scope": scope, "aud": audience,
              "iat": iat, "exp": iat + JWT_LIFETIME_SECONDS}
    signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}".encode()
    private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError("the service-account private key is not an RSA key")
    signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64url(signature)}"


def _google_exchange(cutoff: Cutoff, key: dict[str, str], subject: str, oauth2: OAuth2,
                     timeout: float, where: str) -> _Token | Outcome:
    """POST the JWT assertion to the token URL (blocking; run in a thread by _bounded)."""
    try:
        assertion = google_assertion(key, subject, oauth2.scope, oauth2.token_url)
    except ValueError:
        return _failed(f"the private_key in {where} cannot be loaded as an unencrypted RSA PEM "
                       f"key: download a new JSON key for {key['client_email']}")
    register_secret(assertion)
    body = urllib.parse.urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})
    try:
        resp = fetch(cutoff, "POST", oauth2.token_url, timeout=timeout, body=body.encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded",
                              "Accept": "application/json"}, context=https_context())
    except TimeoutError:
        return _timed_out(oauth2.token_url, timeout)
    except ResponseTooLarge as exc:
        return _too_large(oauth2.token_url, exc)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _unreachable(oauth2.token_url, exc)
    if resp.status >= 400:
        return _idp_error(oauth2.token_url, resp.status, _json_or_empty(resp.body),
                          f"check the service-account key in {where}, that "
                          f"{key['client_email']} has domain-wide delegation for scope "
                          f"{oauth2.scope}, and oauth2.subject {subject}")
    return _token_from(oauth2.token_url, _json_or_empty(resp.body))


# ---------------------------------------------------------------------- Microsoft helpers


@dataclass(frozen=True)
class _MsalRequest:
    authority: str
    tenant_id: str
    client_id: str
    scope: str
    credential: str | dict[str, str] | None = field(repr=False)
    timeout: float
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def authority_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}"

    def cache_key(self) -> Hashable:
        cred = self.credential
        cred_text = json.dumps(cred, sort_keys=True) if isinstance(cred, dict) else (cred or "")
        return ("microsoft", self.authority_url, self.client_id, self.scope, self.username,
                _digest(cred_text + "\0" + (self.password or "")))


def _certificate_credential(pem: bytes) -> dict[str, str] | str:
    """msal's certificate credential from a PEM holding a private key and its certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return "holds no PEM certificate"
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return "holds no unencrypted PEM private key"
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(key, rsa.RSAPrivateKey):
        return "holds a non-RSA private key (Microsoft Entra accepts RSA certificates only)"
    leaf = certs[0]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    register_secret(key_pem)
    # No SHA-1 "thumbprint": from the certificate msal derives x5t#S256 and signs PS256.
    return {"private_key": key_pem,
            "public_certificate": leaf.public_bytes(serialization.Encoding.PEM).decode()}


def _msal_exchange(cutoff: Cutoff, req: _MsalRequest) -> _Token | Outcome:
    """Acquire a token with msal (blocking; run in a thread by _bounded).

    msal talks HTTP through MsalHttpClient: every request bounded in time and size.
    """
    import msal

    client = MsalHttpClient(cutoff, req.authority, req.timeout, https_context())
    try:
        common: dict[str, Any] = {
            "authority": req.authority_url,
            "http_client": client,
            "instance_discovery": _is_public_cloud(req.authority),
            "validate_authority": _is_public_cloud(req.authority),
        }
        app: Any
        if req.credential is not None:
            app = msal.ConfidentialClientApplication(
                req.client_id, client_credential=req.credential, **common)
        else:
            app = msal.PublicClientApplication(req.client_id, **common)
        if req.username is not None:
            result = app.acquire_token_by_username_password(
                req.username, req.password or "", scopes=[req.scope])
        else:
            result = app.acquire_token_for_client(scopes=[req.scope])
    except TimeoutError:
        return _timed_out(req.authority_url, req.timeout)
    except ResponseTooLarge as exc:
        return _too_large(req.authority_url, exc)
    except (http.client.HTTPException, ValueError, OSError) as exc:
        return _unreachable(req.authority_url, exc)
    if not isinstance(result, dict):
        return _failed(f"the identity platform at {req.authority_url} gave no answer")
    if "access_token" not in result:
        who = (f"user {req.username} of client {req.client_id}" if req.username
               else f"client {req.client_id}")
        return _idp_error(req.authority_url, None, result,
                          f"check the credentials of {who} in tenant {req.tenant_id}")
    return _token_from(req.authority_url, result)


def _is_public_cloud(authority: str) -> bool:
    return (urllib.parse.urlsplit(authority).hostname or "").lower() == PUBLIC_CLOUD_HOST


# ---------------------------------------------------------------------- results and messages


def _token_from(url: str, answer: dict[str, Any]) -> _Token | Outcome:
    for other in ("refresh_token", "id_token"):  # registered the moment they arrive
        if isinstance(answer.get(other), str):
            register_secret(answer[other])
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        return _failed(f"the token endpoint {url} answered without an access_token")
    register_secret(token)
    expires = answer.get("expires_in")
    _log.debug("token acquired", endpoint=url, expires_in=expires)
    try:
        return _Token(access_token=token, expires_in=int(expires) if expires else None)
    except (TypeError, ValueError):
        return _Token(access_token=token)


def _idp_error(url: str, status: int | None, answer: dict[str, Any], advice: str) -> Outcome:
    """TokenRequestFailed with the identity provider's error code and description."""
    error = str(answer.get("error") or (f"HTTP {status}" if status else "error"))
    description = str(answer.get("error_description") or "").strip()
    # AADSTS descriptions carry trace and correlation ids on further lines; keep the first.
    description = description.splitlines()[0].split(" Trace ID:")[0].strip() if description else ""
    codes = answer.get("error_codes")
    if (isinstance(codes, list) and codes and "AADSTS" not in description):
        description = f"AADSTS{codes[0]}: {description}".rstrip(": ")
    text = f"{error}: {description}" if description else error
    where = f"{url} answered HTTP {status}" if status else f"{url} answered"
    return _failed(redact_text(f"token request failed: {where} {text}; {advice}"))


def _unreachable(url: str, exc: BaseException) -> Outcome:
    reason = getattr(exc, "reason", None) or exc
    return _failed(redact_text(f"token request to {url} failed: {type(exc).__name__}: {reason}; "
                               f"check the URL, the network path and the CA bundle "
                               f"(REQUESTS_CA_BUNDLE/SSL_CERT_FILE)"))


def _timed_out(url: str, timeout: float) -> Outcome:
    return Outcome(ok=False, reason=reasons.TIMEOUT,
                   message=f"token request to {url}: no complete answer within {timeout:g}s "
                           f"(or the probe's deadline): check the URL and the network path, "
                           f"or raise timeoutSeconds")


def _too_large(url: str, exc: ResponseTooLarge) -> Outcome:
    return Outcome(ok=False, reason=reasons.PROTOCOL_VIOLATION,
                   message=f"token request to {url}: {exc}; the connection was dropped: check "
                           f"that the URL points at a token endpoint")


def _failed(message: str) -> Outcome:
    return Outcome(ok=False, reason=reasons.TOKEN_REQUEST_FAILED, message=message)


def _secret_missing(exc: SecretNotFound) -> Outcome:
    if exc.reason != reasons.SECRET_NOT_FOUND:  # SecretNotAllowed: the message says what to do
        return Outcome(ok=False, reason=exc.reason, message=str(exc))
    return Outcome(ok=False, reason=reasons.SECRET_NOT_FOUND,
                   message=f"{exc}: create it or fix the …SecretRef that names it")


def _where(namespace: str, ref: KeyRef) -> str:
    return f"{ref.kind} {namespace}/{ref.name} key {ref.key!r}"


def _json_or_empty(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = ["GraphToken", "TokenCache", "basic_auth_warning", "google_assertion", "https_context",
           "jwt_claims", "ca_bundle"]
