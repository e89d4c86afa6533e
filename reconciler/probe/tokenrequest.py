"""What a token request is and what it gives back, shared by both identity providers.

A provider module (reconciler.probe.google, reconciler.probe.microsoft) reads the credentials
and prepares a `TokenRequest`: the key that identifies it in the run's cache, the endpoint, the
probe's deadline and the blocking exchange. reconciler.probe.tokencache runs it once per key.
The exchange answers a `Token` or an ``Outcome(ok=False)``; this module owns those outcomes and
their messages (TokenRequestFailed, Timeout, ProtocolViolation), so both providers word a failed
request alike. Every token is registered with reconciler.log.register_secret the moment it arrives.
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from reconciler import reasons
from reconciler.log import get_logger, redact_text, register_secret
from reconciler.model import KeyRef, Outcome, SecretReader
from reconciler.probe.httpclient import Cutoff, ResponseTooLarge
from reconciler.probe.limits import Deadline

_log = get_logger("reconciler.probe.oauth")


@dataclass(frozen=True)
class Token:
    """An access token and its lifetime as the identity provider stated it."""

    access_token: str = field(repr=False)
    expires_in: int | None = None


@dataclass(frozen=True)
class TokenRequest:
    """A prepared token request: its cache key, its endpoint, its deadline and the blocking work."""

    key: Hashable
    url: str
    deadline: Deadline
    work: Callable[[Cutoff], Token | Outcome]


def token_from(url: str, answer: dict[str, Any]) -> Token | Outcome:
    """The Token in an identity provider's JSON answer, or TokenRequestFailed without one."""
    for other in ("refresh_token", "id_token"):  # registered the moment they arrive
        if isinstance(answer.get(other), str):
            register_secret(answer[other])
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        return failed(f"the token endpoint {url} answered without an access_token")
    register_secret(token)
    expires = answer.get("expires_in")
    _log.debug("token acquired", endpoint=url, expires_in=expires)
    try:
        return Token(access_token=token, expires_in=int(expires) if expires else None)
    except (TypeError, ValueError):
        return Token(access_token=token)


def idp_error(url: str, status: int | None, answer: dict[str, Any], advice: str) -> Outcome:
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
    return failed(redact_text(f"token request failed: {where} {text}; {advice}"))


# What a blocking exchange raises when the endpoint is slow, too talkative or unreachable.
EXCHANGE_ERRORS = (OSError, http.client.HTTPException, ValueError, ResponseTooLarge)


def exchange_failure(url: str, timeout: float, exc: BaseException) -> Outcome:
    """The outcome of an exchange that raised one of EXCHANGE_ERRORS: Timeout, ProtocolViolation
    for an answer past the size bound, TokenRequestFailed for an unreachable endpoint."""
    if isinstance(exc, TimeoutError):
        return timed_out(url, timeout)
    if isinstance(exc, ResponseTooLarge):
        return _too_large(url, exc)
    return _unreachable(url, exc)


def _unreachable(url: str, exc: BaseException) -> Outcome:
    reason = getattr(exc, "reason", None) or exc
    return failed(redact_text(f"token request to {url} failed: {type(exc).__name__}: {reason}; "
                              f"check the URL, the network path and the CA bundle "
                              f"(REQUESTS_CA_BUNDLE/SSL_CERT_FILE)"))


def timed_out(url: str, timeout: float) -> Outcome:
    """Timeout: no complete answer within timeoutSeconds or the probe's deadline."""
    return Outcome(ok=False, reason=reasons.TIMEOUT,
                   message=f"token request to {url}: no complete answer within {timeout:g}s "
                           f"(or the probe's deadline): check the URL and the network path, "
                           f"or raise timeoutSeconds")


def _too_large(url: str, exc: ResponseTooLarge) -> Outcome:
    return Outcome(ok=False, reason=reasons.PROTOCOL_VIOLATION,
                   message=f"token request to {url}: {exc}; the connection was dropped: check "
                           f"that the URL points at a token endpoint")


def failed(message: str) -> Outcome:
    """TokenRequestFailed with `message`."""
    return Outcome(ok=False, reason=reasons.TOKEN_REQUEST_FAILED, message=message)


def describe_ref(namespace: str, ref: KeyRef) -> str:
    """Where a credential lives, for messages: ``Secret ns/name key 'k'``."""
    return f"{ref.kind} {namespace}/{ref.name} key {ref.key!r}"


def read_credential(secrets: SecretReader, namespace: str, ref: KeyRef,
                    parse: Callable[[bytes], dict[str, str] | str], advice: str) -> dict[str, str] | Outcome:
    """Read a credential file (a key JSON, a PEM), register it as a secret and parse it; when parse
    says what is wrong with it, TokenRequestFailed naming where it lives and what to put there."""
    raw = secrets.read(namespace, ref)
    register_secret(raw)
    parsed = parse(raw)
    if isinstance(parsed, str):
        return failed(f"{describe_ref(namespace, ref)} {parsed}: {advice}")
    return parsed


def digest(text: str) -> str:
    """A cache key part for a secret: its SHA-256, never the secret itself."""
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["EXCHANGE_ERRORS", "Token", "TokenRequest", "describe_ref", "digest", "exchange_failure",
           "failed", "idp_error", "read_credential", "timed_out", "token_from"]
