"""Google access tokens: a service account's RS256 JWT bearer assertion (RFC 7523).

For SMTP XOAUTH2 with ``oauth2.grantType JWTBearer`` (Gmail, scope https://mail.google.com/):
the service-account key JSON signs a JWT naming the mailbox to send as (``oauth2.subject``,
domain-wide delegation), which is exchanged for a token at ``oauth2.tokenUrl``. This module reads
the key and prepares the request; reconciler.probe.tokencache runs it once per run.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from typing import Any

from reconciler.log import register_secret
from reconciler.model import OAuth2, Outcome, SecretReader
from reconciler.probe import tokenrequest
from reconciler.probe.httpclient import Cutoff, fetch, https_context
from reconciler.probe.limits import current_deadline
from reconciler.probe.tokenrequest import Token, TokenRequest

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_SCOPE = "https://mail.google.com/"
JWT_LIFETIME_SECONDS = 3600  # Google's maximum


def google_request(secrets: SecretReader, namespace: str, oauth2: OAuth2,
                   timeout: float) -> TokenRequest | Outcome:
    """The JWT bearer token request for `oauth2`, or TokenRequestFailed saying what is missing."""
    ref = oauth2.service_account_key
    if ref is None:
        return tokenrequest.failed("oauth2.grantType JWTBearer needs serviceAccountKeySecretRef "
                                   "(the Google service-account key JSON)")
    key = tokenrequest.read_credential(secrets, namespace, ref, _service_account_key,
                                       "put the service-account key JSON downloaded from Google "
                                       "Cloud there")
    if isinstance(key, Outcome):
        return key
    register_secret(key["private_key"])
    subject = oauth2.subject or ""
    if not subject:
        return tokenrequest.failed("oauth2.subject is empty: set it to the mailbox to send as")
    cache_key = ("google", oauth2.token_url, key["client_email"], subject, oauth2.scope,
                 tokenrequest.digest(key["private_key"]))
    deadline = current_deadline(timeout)
    where = tokenrequest.describe_ref(namespace, ref)
    return TokenRequest(
        key=cache_key, url=oauth2.token_url, deadline=deadline,
        work=lambda cutoff: _google_exchange(cutoff, key, subject, oauth2, timeout, where))


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
                     timeout: float, where: str) -> Token | Outcome:
    """POST the JWT assertion to the token URL (blocking; run in a thread by the token cache)."""
    try:
        assertion = google_assertion(key, subject, oauth2.scope, oauth2.token_url)
    except ValueError:
        return tokenrequest.failed(f"the private_key in {where} cannot be loaded as an unencrypted "
                                   f"RSA PEM key: download a new JSON key for {key['client_email']}")
    register_secret(assertion)
    body = urllib.parse.urlencode({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})
    try:
        resp = fetch(cutoff, "POST", oauth2.token_url, timeout=timeout, body=body.encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded",
                              "Accept": "application/json"}, context=https_context())
    except tokenrequest.EXCHANGE_ERRORS as exc:
        return tokenrequest.exchange_failure(oauth2.token_url, timeout, exc)
    if resp.status >= 400:
        return tokenrequest.idp_error(oauth2.token_url, resp.status, _json_or_empty(resp.body),
                                      f"check the service-account key in {where}, that "
                                      f"{key['client_email']} has domain-wide delegation for scope "
                                      f"{oauth2.scope}, and oauth2.subject {subject}")
    return tokenrequest.token_from(oauth2.token_url, _json_or_empty(resp.body))


def _json_or_empty(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


__all__ = ["GOOGLE_SCOPE", "JWT_BEARER_GRANT", "google_assertion", "google_request"]
