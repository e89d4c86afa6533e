"""Probes: "Test connectivity" for accounts. The only package that opens sockets.

Entry points:
- `probe_account(account, secrets, now=...)`: one account, SMTP or Microsoft Graph, plus the
  signing check when the account signs.
- `probe_accounts(accounts, secrets, now=..., concurrency=32)`: many at once, bounded; one broken
  server never holds up or breaks the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import get_logger, redact_text
from reconciler.manifest.providers import basic_auth_warning
from reconciler.model import Account, Outcome, ProbeResult, SecretReader, SigningResult
from reconciler.policy import DEFAULT_POLICY, Policy, endpoint_scope, guard, policy_refusal

if TYPE_CHECKING:
    from reconciler.probe.endpoints import EndpointCache, Sharing

__all__ = ["TokenProvider", "probe_account", "probe_accounts"]

log = get_logger("reconciler.probe")


class TokenProvider(Protocol):
    """Gets OAuth2 access tokens for SMTP XOAUTH2 (implemented by reconciler.probe.tokencache)."""

    async def smtp_token(self, account: Account, secrets: SecretReader) -> str | Outcome:
        """An access token, or an Outcome (e.g. TokenRequestFailed) saying why there is none."""
        ...


async def probe_account(account: Account, secrets: SecretReader, *, now: dt.datetime,
                        authenticate: bool = True, tokens: TokenProvider | None = None,
                        policy: Policy = DEFAULT_POLICY, sharing: Sharing | None = None
                        ) -> ProbeResult:
    """Test connectivity of one account; expected failures are outcomes, not exceptions.

    `sharing`: an SMTP probe without AUTH may take its endpoint's shared check
    (reconciler.probe.endpoints); a probe with AUTH refreshes it.

    The security model (reconciler.policy) comes first: a refused endpoint stops the probe
    before any credential is read, and every read goes through the opt-in check.
    """
    refused = policy_refusal(account, policy)
    if refused is not None:
        log.warning("refused by policy", namespace=account.namespace, name=account.name,
                    reason=refused.reason)
        # Authentication stays "not attempted": once an admin allows the endpoint, the next
        # probe authenticates instead of waiting for a changed credential.
        return ProbeResult(connection=refused, authentication=None,
                           connectivity=("Microsoft Graph" if account.send_using == "MicrosoftGraph"
                                         else ""),
                           protocol=("MicrosoftGraph" if account.send_using == "MicrosoftGraph"
                                     else None))
    secrets = guarded = guard(secrets, account)
    with endpoint_scope(policy):  # msal's discovered URLs are checked against it too
        if account.send_using == "MicrosoftGraph":
            result = await _probe_graph(account, secrets, now=now, tokens=tokens)
        else:
            from reconciler.probe.smtp import probe_smtp

            result = await probe_smtp(account, secrets, now=now, authenticate=authenticate,
                                      tokens=tokens, sharing=sharing)
    # Office 365 with a password (beside the provider presets: reconciler.probe.microsoft and
    # the HTTP client it brings are not imported for it)
    deprecated = basic_auth_warning(account, now)
    if deprecated is not None:  # the probe still reports what the server answered
        result = dataclasses.replace(result, warnings=(*result.warnings, deprecated))
    if account.smtp is not None and account.smtp.signing is not None:
        signing = await _check_signing(account, secrets, now=now)
        result = dataclasses.replace(result, signing=signing)
    if account.publish.client_credentials or account.relay.enabled:
        from reconciler.probe.publishable import publishable_credentials

        published, not_copied = publishable_credentials(account, secrets)
        result = dataclasses.replace(result, credentials={**result.credentials, **published},
                                     warnings=(*result.warnings, *not_copied))
    short = guarded.short_warning()
    if short is not None:
        result = dataclasses.replace(result, warnings=(*result.warnings, short))
    log.info("probed", namespace=account.namespace, name=account.name,
             connectivity=result.connectivity, connection=result.connection.reason,
             authentication=result.authentication.reason if result.authentication else None,
             tls_version=result.tls_version, seconds=result.timings.get("total"))
    return result


async def _probe_graph(account: Account, secrets: SecretReader, *, now: dt.datetime,
                       tokens: TokenProvider | None) -> ProbeResult:
    try:
        from reconciler.probe.graph import probe_graph
    except ModuleNotFoundError as exc:
        if exc.name != "reconciler.probe.graph":
            raise
        return ProbeResult(
            connection=Outcome(False, reasons.GRAPH_UNAVAILABLE,
                               "Microsoft Graph probing is not available in this build: "
                               "use sendUsing SMTP or upgrade the reconciler"),
            connectivity="Microsoft Graph", protocol="MicrosoftGraph")
    from reconciler.probe.limits import Deadline, deadline_scope

    timeout = account.graph.timeout_seconds if account.graph is not None else 30.0
    try:
        with deadline_scope(Deadline.start(timeout)):
            result: ProbeResult = await probe_graph(account, secrets, now=now, tokens=tokens)
    except SecretNotFound as exc:
        from reconciler.probe.smtp import secret_not_found

        result = ProbeResult(connection=secret_not_found(exc), connectivity="Microsoft Graph",
                             protocol="MicrosoftGraph")
    return result


async def _check_signing(account: Account, secrets: SecretReader, *, now: dt.datetime
                         ) -> SigningResult:
    try:
        from reconciler.probe.signing import check_signing
    except ModuleNotFoundError as exc:
        if exc.name != "reconciler.probe.signing":
            raise
        return SigningResult(outcome=Outcome(False, reasons.SIGNATURE_FAILED,
                                             "message signing is not available in this build: "
                                             "remove smtp.signing or upgrade the reconciler"))
    from reconciler.probe.limits import Deadline

    # The probe's deadline, afresh: the SMTP session before it has had its own.
    timeout = account.smtp.connection.timeout_seconds if account.smtp is not None else 30.0
    try:
        result: SigningResult = await asyncio.to_thread(check_signing, account, secrets, now=now,
                                                        deadline=Deadline.start(timeout))
    except SecretNotFound as exc:
        from reconciler.probe.smtp import secret_not_found

        result = SigningResult(outcome=secret_not_found(exc))
    return result


async def probe_accounts(accounts: Sequence[Account], secrets: SecretReader, *,
                         now: dt.datetime, concurrency: int = 32,
                         authenticate: Callable[[Account], bool] | bool = True,
                         tokens: TokenProvider | None = None,
                         on_result: Callable[[int, ProbeResult], None] | None = None,
                         policy: Policy = DEFAULT_POLICY, endpoints: EndpointCache | None = None,
                         last_probe: Callable[[Account], dt.datetime | None] | None = None
                         ) -> list[ProbeResult]:
    """Probe every account, at most `concurrency` at a time; results in the same order.

    `on_result(index, result)` is called as each probe ends (in the event loop's thread), so a
    caller can record finished work at once rather than after the slowest probe. With
    `endpoints`, accounts probed without AUTH share their endpoint's check (taken after
    `last_probe(account)`, reconciler.probe.endpoints).
    """
    # `concurrency` workers take the accounts in order, each probing one after another: the
    # same bound and the same order of starting as a task per account behind a semaphore,
    # without 2,000 tasks and a semaphore wait for each (bench/README.md, benchmark 7).
    results: list[ProbeResult | None] = [None] * len(accounts)
    todo = iter(enumerate(accounts))

    async def worker() -> None:
        for index, account in todo:
            result = results[index] = await guarded(account)
            if on_result is not None:
                on_result(index, result)

    async def guarded(account: Account) -> ProbeResult:
        auth = authenticate(account) if callable(authenticate) else authenticate
        sharing = None
        if endpoints is not None:
            from reconciler.probe.endpoints import Sharing

            sharing = Sharing(endpoints, last_probe(account) if last_probe else None)
        try:
            return await probe_account(account, secrets, now=now, authenticate=auth,
                                       tokens=tokens, policy=policy, sharing=sharing)
        except Exception as exc:  # a bug in one probe must not kill the batch
            log.error("probe failed unexpectedly", namespace=account.namespace,
                      name=account.name, exc_info=True)
            text = redact_text(str(exc))[:200]
            return ProbeResult(connection=Outcome(
                False, reasons.PROBE_ERROR,
                f"the probe failed unexpectedly ({type(exc).__name__}: {text}); see the "
                "reconciler log and report it"))

    await asyncio.gather(*(worker() for _ in range(min(max(1, concurrency), len(accounts)))))
    done = [r for r in results if r is not None]
    assert len(done) == len(accounts), "every account has its result"
    return done
