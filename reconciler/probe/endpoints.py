"""Endpoint checks shared by the accounts of one endpoint (DESIGN §4, "Work keyed by what it checks").

A probe is two checks. The *endpoint check* (connect, TLS, EHLO: steps 1-3) says nothing about
one account: its verdict depends only on the `EndpointKey` (host, port, security, the truststore
and a digest of its content, the TLS floor, the EHLO name, the timeout), so every account with
that key may take the same result. The *credential check* (AUTH and the envelope check) is the
account's own and needs its own session. Without it (a clock-driven probe between two
`authInterval`s), an account takes the endpoint's latest result from the `EndpointCache` instead
of opening a session: 100,000 accounts on smtp.office365.com are then about one TLS handshake
per interval, not 100,000.

- Freshness (`usable`): a shared result serves an account when it was taken after that
  account's last probe (in whole seconds, as `lastProbeTime` is written) and is younger than its
  `interval`. An account alone on its endpoint still gets a session every interval (its own last
  result is never newer than its last probe); many accounts share about one.
- Single flight: while one account's check of an endpoint runs, the others asking for that
  endpoint wait for it rather than open sessions of their own, across threads and event loops
  (a run's probe thread and the controller's probe loop, run/probeloop.py).
- A full session (AUTH wanted: a changed spec or credential, a forced probe, `authInterval`)
  always runs for its account alone, and its endpoint part refreshes the cache (`endpoint_facts`:
  only what the session found before the account's own steps).
Warnings stay per account (the result is assembled per account from the facts by the caller);
politeness (reconciler.probe.limits) applies to the sessions that do run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from reconciler.log import get_logger
from reconciler.model import Account, CertificateInfo, Outcome
from reconciler.probe.smtpsession import SessionState, host_hint

log = get_logger("reconciler.probe.endpoints")

#: Stages of a session that belong to one account: once one ran, the session's connection
#: outcome may be that account's own (an envelope refused without AUTH, a 421 during AUTH).
CREDENTIAL_STAGES = frozenset({"auth", "envelope", "transaction"})
#: Results older than this are dropped from the cache when it is swept (no interval is longer
#: in practice; an account with a longer one simply runs its own check).
KEEP_SECONDS = 86400.0


@dataclass(frozen=True)
class EndpointKey:
    """What an endpoint check's verdict, and every word of its messages, depends on."""

    host: str
    port: int
    security: str
    min_tls_version: str
    truststore: str | None  # the object the messages name (namespace included), None: system CAs
    truststore_digest: str | None  # sha256 of its certificates
    ehlo_name: str | None  # advanced mail.smtp.localhost; None: this host's own name or address
    timeout_seconds: float
    hint: tuple[str, str]  # a provider preset's host is named differently in messages


def endpoint_key(account: Account, ca_pem: str | None, truststore: str | None) -> EndpointKey:
    """The endpoint key of an SMTP account, given its truststore's certificates (as read)."""
    assert account.smtp is not None
    conn = account.smtp.connection
    digest = hashlib.sha256(ca_pem.encode()).hexdigest() if ca_pem is not None else None
    ehlo = account.smtp.advanced.get("mail.smtp.localhost", "").strip() or None
    # The host as written: messages name it so (a case or a trailing dot apart is another key).
    return EndpointKey(host=conn.host, port=conn.port,
                       security=conn.security, min_tls_version=conn.min_tls_version,
                       truststore=truststore, truststore_digest=digest, ehlo_name=ehlo,
                       timeout_seconds=conn.timeout_seconds, hint=host_hint(account))


@dataclass(frozen=True)
class EndpointFacts:
    """What an endpoint check found (steps 1-3 of DESIGN §4), and when."""

    taken_at: dt.datetime
    connection: Outcome
    tls_version: str | None = None
    cipher: str | None = None
    certificate: CertificateInfo | None = None
    extensions: tuple[str, ...] = ()
    auth_mechanisms: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def session_state(self, now: dt.datetime) -> SessionState:
        """A session state as if this account's own session had found these facts (the
        certificate's days left counted from `now`)."""
        return SessionState(stage="quit", connection=self.connection,
                            tls_version=self.tls_version, cipher=self.cipher,
                            certificate=_days_from(self.certificate, now),
                            extensions=self.extensions, auth_mechanisms=self.auth_mechanisms,
                            timings=dict(self.timings))


def _days_from(info: CertificateInfo | None, now: dt.datetime) -> CertificateInfo | None:
    if info is None:
        return None
    try:
        not_after = dt.datetime.strptime(info.not_after, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC)
    except ValueError:
        return info
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    return dataclasses.replace(info, days_remaining=int((not_after - now).total_seconds()
                                                        // 86400))


def endpoint_facts(st: SessionState, now: dt.datetime) -> EndpointFacts | None:
    """The endpoint part of a finished session, or None when it cannot be told apart from the
    account's own (a credential step ran and the connection outcome is a failure)."""
    if st.connection is None:
        return None
    if CREDENTIAL_STAGES & st.marks.keys() and not st.connection.ok:
        return None
    timings = {k: v for k, v in st.timings.items() if k in ("connect", "tls", "ehlo")}
    return EndpointFacts(taken_at=now, connection=st.connection, tls_version=st.tls_version,
                         cipher=st.cipher, certificate=st.certificate,
                         extensions=st.extensions, auth_mechanisms=st.auth_mechanisms,
                         timings=timings)


def usable(taken_at: dt.datetime, *, after: dt.datetime | None, now: dt.datetime,
           max_age_seconds: float) -> bool:
    """Whether an endpoint result taken at `taken_at` may serve an account whose last probe
    was at `after` (None: never, or not known), at `now`, with its interval as the age limit.

    Compared in whole seconds, as lastProbeTime is written: an account's own last result is
    never newer than its last probe, so an account alone on its endpoint is checked afresh.
    """
    if after is not None and taken_at.replace(microsecond=0) <= after.replace(microsecond=0):
        return False
    return (now - taken_at).total_seconds() < max_age_seconds


def endpoint_only(account: Account, authenticate: bool, transaction: object | None) -> bool:
    """Whether the account's session this run would be an endpoint check and nothing else:
    no AUTH, no transaction, no envelope check (without AUTH it runs only for method None)."""
    assert account.smtp is not None
    if authenticate or transaction is not None:
        return False
    method_none = account.smtp.authentication.method == "None"
    return not (method_none and account.probe.envelope_check)


class EndpointCache:
    """The latest endpoint result per `EndpointKey`, and the checks in flight; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[EndpointKey, EndpointFacts] = {}
        self._flights: dict[EndpointKey, concurrent.futures.Future[EndpointFacts]] = {}
        self._swept_at = 0
        #: Endpoint checks run through the cache, results served from it: for tests and benches.
        self.checks = 0
        self.served = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)

    def offer(self, key: EndpointKey, facts: EndpointFacts) -> None:
        """Record a session's endpoint result (a full session refreshes its endpoint)."""
        with self._lock:
            old = self._results.get(key)
            if old is None or old.taken_at <= facts.taken_at:
                self._results[key] = facts
            self._sweep(facts.taken_at)

    def _sweep(self, now: dt.datetime) -> None:
        if len(self._results) < 2 * self._swept_at + 64:
            return
        limit = dt.timedelta(seconds=KEEP_SECONDS)
        for key in [k for k, f in self._results.items() if now - f.taken_at > limit]:
            del self._results[key]
        self._swept_at = len(self._results)

    async def check(self, key: EndpointKey, *, now: dt.datetime, after: dt.datetime | None,
                    max_age_seconds: float,
                    run: Callable[[], Awaitable[EndpointFacts | None]]) -> EndpointFacts | None:
        """The endpoint's result: a usable cached one, the one in flight, or `run()`'s.

        `run` is this account's own endpoint check; None from it (or a failed flight being
        joined) is passed on, and the caller falls back to its own session.
        """
        with self._lock:
            cached = self._results.get(key)
            if cached is not None and usable(cached.taken_at, after=after, now=now,
                                             max_age_seconds=max_age_seconds):
                self.served += 1
                return cached
            flight = self._flights.get(key)
            owner = flight is None
            if flight is None:
                flight = self._flights[key] = concurrent.futures.Future()
                self.checks += 1
        if not owner:
            try:
                # shield: one waiter cancelled must not cancel the check the others wait for
                facts = await asyncio.shield(asyncio.wrap_future(flight))
            except Exception:  # the owner's check failed unexpectedly: the caller runs its own
                return None
            with self._lock:
                self.served += 1
            return facts
        fresh: EndpointFacts | None = None
        try:
            fresh = await run()
        finally:
            with self._lock:
                del self._flights[key]
                if fresh is not None:
                    self._results[key] = fresh
                    self._sweep(fresh.taken_at)
            if fresh is not None:
                flight.set_result(fresh)
            else:
                flight.set_exception(RuntimeError("the endpoint check ended without a result"))
        return fresh


@dataclass(frozen=True)
class Sharing:
    """How one account's probe may use the run's endpoint cache: results taken after `after`
    (its last probe; None: any younger than its interval)."""

    cache: EndpointCache
    after: dt.datetime | None = None


async def shared_session(sharing: Sharing, account: Account, *, ca_pem: str | None,
                         truststore: str | None, now: dt.datetime, authenticate: bool,
                         transaction: object | None,
                         session: Callable[[], Awaitable[SessionState]]) -> SessionState:
    """The account's session state: from the endpoint's shared check when the session would be
    an endpoint check alone, else from its own `session()` (whose endpoint part is offered)."""
    assert account.smtp is not None
    key = endpoint_key(account, ca_pem, truststore)
    if not endpoint_only(account, authenticate, transaction):
        st = await session()
        facts = endpoint_facts(st, now)
        if facts is not None:
            sharing.cache.offer(key, facts)
        return st
    own: list[SessionState] = []

    async def run() -> EndpointFacts | None:
        own.append(await session())
        return endpoint_facts(own[0], now)

    interval = max(account.probe.interval_seconds, 1.0)
    facts = await sharing.cache.check(key, now=now, after=sharing.after,
                                      max_age_seconds=interval, run=run)
    if own:
        return own[0]
    if facts is None:
        return await session()
    log.debug("endpoint result shared", namespace=account.namespace, name=account.name,
              endpoint=f"{key.host}:{key.port}", taken_at=facts.taken_at.isoformat())
    return facts.session_state(now)


__all__ = ["EndpointCache", "EndpointFacts", "EndpointKey", "Sharing", "endpoint_facts",
           "endpoint_key", "endpoint_only", "shared_session", "usable"]
