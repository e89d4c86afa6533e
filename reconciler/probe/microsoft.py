"""Microsoft identity platform access tokens through msal, and Office 365's basic-auth warning.

Client credentials with a client secret or a certificate, or the password grant, for Office 365
SMTP XOAUTH2 (scope https://outlook.office365.com/.default) and Microsoft Graph (scope
https://graph.microsoft.com/.default). This module reads the credentials and prepares the request;
reconciler.probe.tokencache runs it once per run. msal is imported only when a request runs (it
costs 0.1 s, and validate must stay fast); it talks HTTP through the bounded MsalHttpClient.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from reconciler.log import redact_text, register_secret
from reconciler.manifest.providers import basic_auth_warning
from reconciler.model import GraphSpec, KeyRef, OAuth2, Outcome, SecretReader
from reconciler.policy import Policy
from reconciler.probe import tokenrequest
from reconciler.probe.google import GOOGLE_SCOPE
from reconciler.probe.httpclient import (
    Cutoff,
    MsalHttpClient,
    RequestRefused,
    current_policy,
    https_context,
)
from reconciler.probe.limits import current_deadline
from reconciler.probe.tokenrequest import Token, TokenRequest

OFFICE365_SMTP_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
PUBLIC_CLOUD_HOST = "login.microsoftonline.com"


def microsoft_smtp_request(secrets: SecretReader, namespace: str, oauth2: OAuth2,
                           timeout: float) -> TokenRequest | Outcome:
    """The client-credentials request for SMTP XOAUTH2, or TokenRequestFailed."""
    if not oauth2.tenant_id or not oauth2.client_id:
        return tokenrequest.failed("oauth2.grantType ClientCredentials needs tenantId and clientId")
    scope = oauth2.scope if oauth2.scope != GOOGLE_SCOPE else OFFICE365_SMTP_SCOPE
    cred = _client_credential(secrets, namespace, oauth2.client_secret,
                              oauth2.client_certificate)
    if isinstance(cred, Outcome):
        return cred
    req = _MsalRequest(authority=oauth2.authority, tenant_id=oauth2.tenant_id,
                       client_id=oauth2.client_id, scope=scope, credential=cred,
                       timeout=timeout, policy=current_policy())
    return _token_request(req, timeout)


def microsoft_graph_request(secrets: SecretReader, namespace: str,
                            g: GraphSpec) -> TokenRequest | Outcome:
    """The Microsoft Graph token request (client credentials or password grant), or
    TokenRequestFailed."""
    cred = _client_credential(secrets, namespace, g.client_secret, g.client_certificate,
                              required=g.grant_type == "ClientCredentials")
    if isinstance(cred, Outcome):
        return cred
    username = password = None
    if g.grant_type == "Password":
        if g.username is None or g.password is None:
            return tokenrequest.failed("graph.authentication.grantType Password needs "
                                       "usernameSecretRef and passwordSecretRef")
        username = secrets.read(namespace, g.username).decode().strip()
        password = secrets.read(namespace, g.password).decode().rstrip("\r\n")
        register_secret(password)
    req = _MsalRequest(authority=g.authority, tenant_id=g.tenant_id, client_id=g.client_id,
                       scope=GRAPH_SCOPE, credential=cred, timeout=g.timeout_seconds,
                       username=username, password=password, policy=current_policy())
    return _token_request(req, g.timeout_seconds)


def _token_request(req: _MsalRequest, timeout: float) -> TokenRequest:
    return TokenRequest(key=req.cache_key(), url=req.authority_url,
                        deadline=current_deadline(timeout),
                        work=lambda cutoff: _msal_exchange(cutoff, req))


def _client_credential(secrets: SecretReader, namespace: str, secret_ref: KeyRef | None,
                       cert_ref: KeyRef | None, required: bool = True
                       ) -> str | dict[str, str] | None | Outcome:
    """The msal client_credential: a secret string, a certificate dict, or None."""
    if secret_ref is not None:
        secret = secrets.read(namespace, secret_ref).decode().strip()
        register_secret(secret)
        return secret
    if cert_ref is not None:
        return tokenrequest.read_credential(secrets, namespace, cert_ref, _certificate_credential,
                                            "put a PEM with the private key and its certificate "
                                            "there")
    if required:
        return tokenrequest.failed("grantType ClientCredentials needs clientSecretSecretRef or "
                                   "clientCertificateSecretRef")
    return None


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
    policy: Policy | None = None  # besides the authority's host, where msal may send anything

    @property
    def authority_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}"

    def cache_key(self) -> Hashable:
        cred = self.credential
        cred_text = json.dumps(cred, sort_keys=True) if isinstance(cred, dict) else (cred or "")
        return ("microsoft", self.authority_url, self.client_id, self.scope, self.username,
                tokenrequest.digest(cred_text + "\0" + (self.password or "")))


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


def _msal_exchange(cutoff: Cutoff, req: _MsalRequest) -> Token | Outcome:
    """Acquire a token with msal (blocking; run in a thread by the token cache).

    msal talks HTTP through MsalHttpClient: every request bounded in time and size.
    """
    import msal

    client = MsalHttpClient(cutoff, req.authority, req.timeout, https_context(), req.policy)
    try:
        common: dict[str, Any] = {
            "authority": req.authority_url,
            "http_client": client,
            "instance_discovery": _is_public_cloud(req.authority),
            "validate_authority": _is_public_cloud(req.authority),
        }
        app: Any
        try:  # msal reads the OpenID discovery document here
            if req.credential is not None:
                app = msal.ConfidentialClientApplication(
                    req.client_id, client_credential=req.credential, **common)
            else:
                app = msal.PublicClientApplication(req.client_id, **common)
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            return tokenrequest.failed(
                f"token request failed: the OpenID discovery document of {req.authority_url} "
                f"is not usable ({type(exc).__name__}): check the authority")
        if req.username is not None:
            result = app.acquire_token_by_username_password(
                req.username, req.password or "", scopes=[req.scope])
        else:
            result = app.acquire_token_for_client(scopes=[req.scope])
    except RequestRefused as exc:
        return tokenrequest.failed(redact_text(f"token request failed: {exc}"))
    except tokenrequest.EXCHANGE_ERRORS as exc:
        return tokenrequest.exchange_failure(req.authority_url, req.timeout, exc)
    if not isinstance(result, dict):
        return tokenrequest.failed(f"the identity platform at {req.authority_url} gave no answer")
    if "access_token" not in result:
        who = (f"user {req.username} of client {req.client_id}" if req.username
               else f"client {req.client_id}")
        return tokenrequest.idp_error(req.authority_url, None, result,
                                      f"check the credentials of {who} in tenant {req.tenant_id}")
    return tokenrequest.token_from(req.authority_url, result)


def _is_public_cloud(authority: str) -> bool:
    return (urllib.parse.urlsplit(authority).hostname or "").lower() == PUBLIC_CLOUD_HOST


__all__ = ["GRAPH_SCOPE", "OFFICE365_SMTP_SCOPE", "basic_auth_warning", "microsoft_graph_request",
           "microsoft_smtp_request"]
