"""Bounds every probe obeys: its deadline, and politeness towards each mail server.

- `Deadline`: one per probe. `timeoutSeconds` is the connect timeout and the per-operation
  timeout (one SMTP command and its reply, one HTTP request and its response), as JavaMail's
  `mail.smtp.timeout`, Django's `EMAIL_TIMEOUT` and smtplib's `timeout=` use it; the deadline
  (`overall_deadline`: 4 x timeoutSeconds, at most `MAX_DEADLINE_SECONDS`) bounds the whole probe,
  token requests, Graph calls, retries after a 421 and the TLS diagnostic session included.
  The current probe's deadline is a context variable, so the token requests find it without every
  TokenProvider growing a parameter.
- `Politeness`: process-wide, shared by every run and every controller worker (usable from any
  thread's event loop; the controller's probes share one, run/probeloop.py). It limits what gets a
  client banned, per MTA: a server is its host name (an address literal in its canonical form),
  whatever the port, since a provider's 587 and 465 are one MTA that counts our sessions and
  failures together (issue 26 item 3: per (host, port), accounts on the other ports of one Exim
  flipped verdicts under load). At most `max_sessions_per_server` sessions at once (the provider
  preset's default, else 4; TLS diagnostic sessions included); failed AUTHs at most
  `max_auth_failures_per_minute` (a bucket holding one minute's worth: once it is spent, the
  server's next AUTH waits for a refill); and after a failure the server's next AUTHs go one at a
  time until one succeeds, so the other accounts do not race the penalty delay servers such as
  Dovecot add after a wrong password. Successful AUTHs of different accounts are not rate-limited
  beyond the session bound: 100,000 accounts on one provider are not one AUTH a second. Waiting
  for a turn is not part of a probe's deadline: the deadline bounds what a server can do to us,
  the waiting is our own politeness.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import ipaddress
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from reconciler.model import MAX_AUTH_FAILURES_PER_MINUTE, MAX_SESSIONS_PER_SERVER

#: The overall deadline of one probe is this many times its timeoutSeconds ...
DEADLINE_FACTOR = 4
#: ... but never more than this. With the schema's maximum timeoutSeconds (120) a probe ends
#: within 120 x 4 = 480 s > 300 s cap; the CronJob's activeDeadlineSeconds is 540 (README).
MAX_DEADLINE_SECONDS = 300.0

# The defaults live in reconciler.model, so the CLI can show them in --help without importing
# this package (asyncio and all: a fifth of `validate`'s start-up, bench/README.md).
DEFAULT_MAX_SESSIONS_PER_SERVER = MAX_SESSIONS_PER_SERVER
DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE = MAX_AUTH_FAILURES_PER_MINUTE


def overall_deadline(timeout_seconds: float) -> float:
    """Seconds one probe may take end to end for a given timeoutSeconds."""
    return min(DEADLINE_FACTOR * timeout_seconds, MAX_DEADLINE_SECONDS)


class DeadlineExceeded(TimeoutError):
    """The probe's overall deadline passed (a TimeoutError, so callers treat it as one)."""


@dataclass
class Deadline:
    """A per-operation timeout and an end (time.monotonic) for everything together."""

    timeout: float
    end: float

    @classmethod
    def start(cls, timeout_seconds: float, total: float | None = None) -> Deadline:
        total = overall_deadline(timeout_seconds) if total is None else total
        return cls(timeout=timeout_seconds, end=time.monotonic() + total)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def budget(self, timeout: float | None = None) -> float:
        """Seconds the next operation may take: its timeout, cut by what is left overall."""
        op = self.timeout if timeout is None else timeout
        return max(0.0, min(op, self.remaining()))

    @property
    def total(self) -> float:
        return self.remaining()


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "reconciler_probe_deadline", default=None)


def current_deadline(timeout_seconds: float) -> Deadline:
    """The running probe's deadline, or a fresh one when called outside a probe."""
    found = _current.get()
    return found if found is not None else Deadline.start(timeout_seconds)


def deadline_scope(deadline: Deadline) -> _DeadlineScope:
    """Make `deadline` the current one for the code (and the tasks it starts) inside:
    `with deadline_scope(deadline):`."""
    return _DeadlineScope(deadline)


class _DeadlineScope:
    """deadline_scope's context manager: a class, not a @contextmanager generator (a probe
    enters two or three; the generator and its wrapper cost more than setting the variable)."""

    __slots__ = ("_deadline", "_token")

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline
        self._token: contextvars.Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        self._token = _current.set(self._deadline)
        return self._deadline

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


# --------------------------------------------------------------------------- politeness


class _Turns:
    """A counting gate usable from any thread's event loop, first come first served."""

    def __init__(self) -> None:
        self.active = 0
        self.waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()


@dataclass
class _Server:
    sessions: _Turns = field(default_factory=_Turns)
    auth_turn: _Turns = field(default_factory=_Turns)
    failures: float | None = None  # failed-AUTH bucket (tokens left; None: not started)
    refilled: float = 0.0
    penalized: bool = False  # an AUTH failed; the next ones go one at a time
    busy_until: float = 0.0  # after a 421: no new session before this (monotonic)
    #: The session bound: the lowest asked for (accounts of several providers, or of a preset
    #: and custom, may name one MTA; the stricter bound holds for all of them).
    limit: int = 0


@functools.lru_cache(maxsize=4096)
def mta_key(host: str) -> str:
    """The politeness key of a server: its host name, case and trailing dot aside, or its
    address in canonical form (`::FFFF:127.0.0.1` and `::ffff:127.0.0.1` are one server); the
    port does not count."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name


def preset_sessions(provider: str | None) -> int | None:
    """The provider preset's concurrent sessions per MTA; None for custom or no provider."""
    if not provider:
        return None
    from reconciler.manifest.providers import preset

    found = preset(provider)
    return found.max_sessions if found is not None else None


class Politeness:
    """Per-MTA session limit, failed-AUTH budget and penalty serialisation; thread-safe."""

    def __init__(self, max_sessions_per_server: int | None = None,
                 max_auth_failures_per_minute: int = DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE
                 ) -> None:
        #: The operator's bound for every server (--max-sessions-per-server); None: the
        #: provider preset's, else DEFAULT_MAX_SESSIONS_PER_SERVER.
        self.sessions_override = (max(1, max_sessions_per_server)
                                  if max_sessions_per_server is not None else None)
        self.max_auth_failures_per_minute = max(1, max_auth_failures_per_minute)
        self._lock = threading.Lock()
        self._servers: dict[str, _Server] = {}
        self.peak_sessions: dict[str, int] = {}  # for tests and benchmarks

    def _server(self, host: str) -> _Server:
        key = mta_key(host)
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Server()
        return server

    def max_sessions(self, provider: str | None = None) -> int:
        """Concurrent sessions allowed per MTA for an account of `provider`."""
        if self.sessions_override is not None:
            return self.sessions_override
        return preset_sessions(provider) or DEFAULT_MAX_SESSIONS_PER_SERVER

    # ---------------------------------------------------------------- generic gate
    async def _acquire(self, turns: _Turns, limit: int) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if turns.active < limit and not turns.waiters:
                turns.active += 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            entry = (loop, fut)
            turns.waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if entry in turns.waiters:
                    turns.waiters.remove(entry)
                    raise
            # Granted (or being granted) when cancelled: hand the turn on.
            if fut.done() and not fut.cancelled():
                self._release(turns, limit)
            raise

    def _release(self, turns: _Turns, limit: int) -> None:
        with self._lock:
            if not turns.waiters or turns.active > limit:  # (a limit lowered meanwhile)
                turns.active -= 1
                return
            loop, fut = turns.waiters.popleft()  # the turn passes on, active unchanged

        def grant() -> None:
            if fut.cancelled():
                self._release(turns, limit)
            else:
                fut.set_result(None)

        try:
            loop.call_soon_threadsafe(grant)
        except RuntimeError:  # that loop is closed: give the turn to the next one
            self._release(turns, limit)

    # ---------------------------------------------------------------- sessions
    def session(self, host: str, provider: str | None = None) -> _SessionSlot:
        """Hold one of the MTA's session slots (the TLS diagnostic session uses it too):
        `async with politeness.session(host, provider):`."""
        return _SessionSlot(self, host, provider)

    async def _enter_session(self, host: str, provider: str | None) -> _Server:
        key = mta_key(host)
        with self._lock:
            server = self._server(host)
            wanted = self.max_sessions(provider)
            server.limit = min(server.limit, wanted) if server.limit else wanted
            limit = server.limit
        await self._acquire(server.sessions, limit)
        with self._lock:
            self.peak_sessions[key] = max(self.peak_sessions.get(key, 0),
                                          server.sessions.active)
        return server

    # ---------------------------------------------------------------- AUTH
    def _refill(self, server: _Server, now: float) -> None:
        budget = float(self.max_auth_failures_per_minute)
        if server.failures is None:
            server.failures, server.refilled = budget, now
        server.failures = min(budget, server.failures + (now - server.refilled) * budget / 60.0)
        server.refilled = now

    async def auth_allowance(self, host: str) -> None:
        """Wait while the MTA's failed-AUTH budget is spent (an AUTH may fail too); successful
        AUTHs take nothing from it."""
        rate = self.max_auth_failures_per_minute / 60.0
        while True:
            with self._lock:
                server = self._server(host)
                self._refill(server, time.monotonic())
                left = server.failures or 0.0
                if left >= 1.0:
                    return
                wait = (1.0 - left) / rate
            await asyncio.sleep(wait)

    def penalized(self, host: str) -> bool:
        with self._lock:
            return self._server(host).penalized

    @contextlib.asynccontextmanager
    async def auth_turn(self, host: str) -> AsyncIterator[bool]:
        """After an AUTH failure on the MTA, AUTHs there go one at a time until one succeeds.

        Yields whether the server is penalised (the caller then allows the AUTH reply the
        remaining deadline rather than one timeout, since the server delays it on purpose).
        """
        with self._lock:
            server = self._server(host)
            serial = server.penalized
        if not serial:
            yield False
            return
        await self._acquire(server.auth_turn, 1)
        try:
            yield True
        finally:
            self._release(server.auth_turn, 1)

    def auth_result(self, host: str, *, ok: bool) -> None:
        """Record an AUTH outcome: a failure spends the budget and starts the penalty mode, a
        success ends it."""
        with self._lock:
            server = self._server(host)
            if not ok:
                self._refill(server, time.monotonic())
                server.failures = (server.failures or 0.0) - 1.0
            server.penalized = not ok


class _SessionSlot:
    """`Politeness.session`: a class rather than an asynccontextmanager, whose generator and
    wrappers were a tenth of the Python around a probe's session (bench/README.md, benchmark
    7); the slot is released whatever ends the session."""

    __slots__ = ("_polite", "_host", "_provider", "_server")

    def __init__(self, polite: Politeness, host: str, provider: str | None) -> None:
        self._polite, self._host, self._provider = polite, host, provider
        self._server: _Server | None = None

    async def __aenter__(self) -> None:
        self._server = await self._polite._enter_session(self._host, self._provider)

    async def __aexit__(self, *exc: object) -> None:
        server = self._server
        if server is not None:
            self._server = None
            self._polite._release(server.sessions, server.limit)


_politeness = Politeness()


def politeness() -> Politeness:
    """The process-wide politeness limits (one per process, shared by all runs and workers)."""
    return _politeness


def configure(max_sessions_per_server: int | None = None,
              max_auth_failures_per_minute: int = DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE
              ) -> Politeness:
    """Replace the process-wide limits (the CLI calls this once, from its flags)."""
    global _politeness
    _politeness = Politeness(max_sessions_per_server, max_auth_failures_per_minute)
    return _politeness


__all__ = ["DEADLINE_FACTOR", "DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE",
           "DEFAULT_MAX_SESSIONS_PER_SERVER",
           "MAX_DEADLINE_SECONDS", "Deadline", "DeadlineExceeded", "Politeness", "configure",
           "current_deadline", "deadline_scope", "mta_key", "overall_deadline", "politeness"]
