"""The run's OAuth 2.0 access tokens for SMTP XOAUTH2 and Microsoft Graph: one request per client.

`TokenCache` picks the identity provider (reconciler.probe.google for the JWT bearer grant,
reconciler.probe.microsoft for msal), and runs each prepared request once per client and scope
per run: accounts sharing a client share the request, concurrent callers wait for the same
in-flight request, each until its own probe's deadline. Tokens and the secrets that obtain them are
registered with reconciler.log.register_secret, never logged and never put into a message.
Expected failures (bad key, wrong secret, unreachable endpoint) come back as ``Outcome(ok=False)``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.model import Account, Outcome, SecretReader

if TYPE_CHECKING:
    from reconciler.probe.httpclient import Cutoff
    from reconciler.probe.limits import Deadline
    from reconciler.probe.tokenrequest import Token, TokenRequest

# The identity providers' modules (and with them the HTTP client, http.client and the email
# parser) are imported at the first token request, not with this module: every run makes a
# TokenCache, and a run without an OAuth2 or Graph account never asks it for a token
# (tests/test_startup.py; bench/README.md, benchmark 7).


@dataclass(frozen=True)
class GraphToken:
    """An access token with the permission claims read from it (unverified: we are its client)."""

    access_token: str = field(repr=False)
    roles: tuple[str, ...] = ()  # application permissions
    scopes: tuple[str, ...] = ()  # delegated permissions (scp)
    delegated: bool = False  # True for the password grant (user token)
    expires_in: int | None = None


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


class TokenCache:
    """Access tokens for one run; implements the SMTP probe's TokenProvider protocol.

    `remember=False` (the controller's, which lives as long as the process and is used from its
    one probe loop): only requests in flight are shared; a probe that starts after a request
    ended sends its own, as a run of its own would, so a revoked credential shows at its next
    probe and no token outlives its expiry in here.
    """

    def __init__(self, *, remember: bool = True) -> None:
        self.remember = remember
        self._done: dict[Hashable, Token | Outcome] = {}
        self._pending: dict[Hashable, asyncio.Task[Token | Outcome]] = {}
        self.requests_sent = 0  # token requests that went to an identity provider

    async def smtp_token(self, account: Account, secrets: SecretReader) -> str | Outcome:
        """The access token for SMTP AUTH XOAUTH2 (authentication.method OAuth2)."""
        from reconciler.probe.google import google_request
        from reconciler.probe.microsoft import microsoft_smtp_request
        from reconciler.probe.tokenrequest import failed

        smtp = account.smtp
        oauth2 = smtp.authentication.oauth2 if smtp is not None else None
        if smtp is None or oauth2 is None:
            return failed(f"{account.namespace}/{account.name} has no "
                          f"spec.smtp.authentication.oauth2: add it or change the method")
        timeout = smtp.connection.timeout_seconds
        try:
            if oauth2.grant_type == "JWTBearer":
                req = google_request(secrets, account.namespace, oauth2, timeout)
            else:
                req = microsoft_smtp_request(secrets, account.namespace, oauth2, timeout)
            got = req if isinstance(req, Outcome) else await self._run(req)
        except SecretNotFound as exc:
            return _secret_missing(exc)
        return got if isinstance(got, Outcome) else got.access_token

    async def graph_token(self, account: Account, secrets: SecretReader) -> GraphToken | Outcome:
        """The Microsoft Graph token (sendUsing MicrosoftGraph) with its permission claims."""
        from reconciler.probe.microsoft import microsoft_graph_request
        from reconciler.probe.tokenrequest import failed

        g = account.graph
        if g is None:
            return failed(f"{account.namespace}/{account.name} has no spec.graph: add it")
        try:
            req = microsoft_graph_request(secrets, account.namespace, g)
            got = req if isinstance(req, Outcome) else await self._run(req)
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

    async def _run(self, req: TokenRequest) -> Token | Outcome:
        return await self._once(req.key, lambda: _bounded(req.work, req.deadline, req.url),
                                req.deadline, req.url)

    async def _once(self, key: Hashable, fetch: Callable[[], Awaitable[Token | Outcome]],
                    deadline: Deadline, url: str) -> Token | Outcome:
        """Run fetch once per key; concurrent callers await the same task, each until its own
        deadline (the task itself is bounded by the deadline of the probe that started it)."""
        if key in self._done:
            return self._done[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._count(fetch))
            self._pending[key] = task
            if not self.remember:  # shared while in flight, forgotten as it ends
                task.add_done_callback(functools.partial(self._forget, key))
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline.remaining()))
        if not done:
            from reconciler.probe.tokenrequest import timed_out

            return timed_out(url, deadline.timeout)
        result = task.result()
        if self.remember:
            self._pending.pop(key, None)
            self._done[key] = result
        return result

    def _forget(self, key: Hashable, task: asyncio.Task[Token | Outcome]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]

    async def _count(self, fetch: Callable[[], Awaitable[Token | Outcome]]) -> Token | Outcome:
        self.requests_sent += 1
        return await fetch()


async def _bounded(work: Callable[[Cutoff], Token | Outcome], deadline: Deadline,
                   url: str) -> Token | Outcome:
    """Run a blocking token exchange bounded by the probe's deadline."""
    from reconciler.probe.httpclient import run_bounded
    from reconciler.probe.tokenrequest import timed_out

    try:
        return await run_bounded(work, end=deadline.end)
    except TimeoutError:
        return timed_out(url, deadline.timeout)


def _secret_missing(exc: SecretNotFound) -> Outcome:
    if exc.reason != reasons.SECRET_NOT_FOUND:  # SecretNotAllowed: the message says what to do
        return Outcome(ok=False, reason=exc.reason, message=str(exc))
    return Outcome(ok=False, reason=reasons.SECRET_NOT_FOUND,
                   message=f"{exc}: create it or fix the …SecretRef that names it")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = ["GraphToken", "TokenCache", "jwt_claims"]
