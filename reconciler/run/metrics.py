"""Prometheus metrics, and the controller's two HTTP ports: health (/healthz /readyz, for the
kubelet) and metrics (/metrics, for monitoring), kept apart so a NetworkPolicy can admit each
from whom needs it (README "Security model").

Each controller owns its `CollectorRegistry` (not the process-global one), so tests can run
several controllers in one process and scrape each separately.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "email_reconciler"


class Metrics:
    """The controller's metrics, in a registry of their own."""

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter(f"{PREFIX}_reconciles", "Reconciles by result "
                                  "(ready, not_ready, error)", ["result"], registry=r)
        self.duration = Histogram(f"{PREFIX}_reconcile_duration_seconds",
                                  "Time to reconcile one EmailAccount", registry=r,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                           10, 30, 60))
        self.probes = Counter(f"{PREFIX}_probes", "Probe results by Ready reason", ["reason"],
                              registry=r)
        self.ready = Gauge(f"{PREFIX}_accounts_ready", "EmailAccounts whose Ready condition is True",
                           registry=r)
        self.accounts = Gauge(f"{PREFIX}_accounts", "EmailAccounts known to the controller",
                              registry=r)
        self.queue = Gauge(f"{PREFIX}_queue_depth", "Keys waiting in the work queue", registry=r)
        self.queue.set_function(queue_depth)
        self.api_requests = Counter(f"{PREFIX}_api_requests", "Kubernetes API requests by verb "
                                    "and HTTP code", ["verb", "code"], registry=r)
        self.leader = Gauge(f"{PREFIX}_leader", "1 while this replica is the leader", registry=r)
        self.shard_members = Gauge(f"{PREFIX}_shard_members", "Replicas in the member set this "
                                   "replica works by (--shards auto; 0 otherwise)", registry=r)
        self._lock = threading.Lock()
        self._ready_keys: set[tuple[str, str]] = set()
        #: When each account was last probed (the newest lastProbeTime seen, in or out of the
        #: written status: it is written only with another change), for the freshness gauge.
        self._probed: dict[tuple[str, str], float] = {}
        #: When each account's server certificate expires (status.certificate.notAfter, epoch
        #: seconds): the days remaining are computed when scraped, as the status no longer
        #: holds them (they would be a write per account per day).
        self._cert_expiry: dict[tuple[str, str], float] = {}
        self.clock: Callable[[], float] = time.time
        r.register(_OldestProbe(self))
        r.register(_CertificateDays(self))

    def api_request(self, verb: str, code: str) -> None:
        self.api_requests.labels(verb=verb, code=code).inc()

    def observe_account(self, key: tuple[str, str], status: Mapping[str, Any] | None) -> None:
        """Update the per-account gauges from a status (None: the account is gone)."""
        ready = False
        expiry = None
        if status is not None:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
            expiry = _epoch((status.get("certificate") or {}).get("notAfter"))
        probed = _epoch(status.get("lastProbeTime")) if status is not None else None
        with self._lock:
            if status is None:
                self._probed.pop(key, None)
            elif probed is not None and probed > self._probed.get(key, float("-inf")):
                self._probed[key] = probed
            if ready:
                self._ready_keys.add(key)
            else:
                self._ready_keys.discard(key)
            self.ready.set(len(self._ready_keys))
            if expiry is not None:
                self._cert_expiry[key] = expiry
            else:
                self._cert_expiry.pop(key, None)

    def oldest_probes(self) -> dict[str, float]:
        """namespace -> the time (epoch seconds) of its least recent probe."""
        with self._lock:
            probed = list(self._probed.items())
        oldest: dict[str, float] = {}
        for (namespace, _name), at in probed:
            if at < oldest.get(namespace, float("inf")):
                oldest[namespace] = at
        return oldest

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _OldestProbe:
    """`email_reconciler_oldest_probe_age_seconds{namespace}`, computed when scraped: the
    freshness the status no longer shows on every probe (DESIGN §5). Alert when it exceeds two
    intervals: an account of the namespace has not been probed for that long."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return [self._family()]

    def _family(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(f"{PREFIX}_oldest_probe_age_seconds",
                                 "Seconds since the least recently probed EmailAccount of the "
                                 "namespace was probed", labels=["namespace"])

    def collect(self) -> list[Any]:
        family = self._family()
        now = self.metrics.clock()
        for namespace, at in sorted(self.metrics.oldest_probes().items()):
            family.add_metric([namespace], max(0.0, now - at))
        return [family]


class _CertificateDays:
    """`email_reconciler_certificate_days_remaining{namespace,name}`, computed when scraped from
    each account's certificate notAfter: whole days, floored as the probe counts them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return [self._family()]

    def _family(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(f"{PREFIX}_certificate_days_remaining",
                                 "Days until the server certificate of the account expires",
                                 labels=["namespace", "name"])

    def collect(self) -> list[Any]:
        family = self._family()
        now = self.metrics.clock()
        with self.metrics._lock:
            expiries = sorted(self.metrics._cert_expiry.items())
        for (namespace, name), at in expiries:
            family.add_metric([namespace, name], float((at - now) // 86400))
        return [family]


class EndpointChecks:
    """`email_reconciler_endpoint_checks_total{result}`, read from the endpoint cache when
    scraped (probe/endpoints.py): `session`, an endpoint check that opened a session of its own;
    `shared`, a probe served by its endpoint's latest check or the one in flight. Probes with
    AUTH always run their own session and are not counted here."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self.counts = counts  # () -> (sessions, shared)

    def describe(self) -> list[Any]:
        return [self._family()]

    def _family(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        return CounterMetricFamily(f"{PREFIX}_endpoint_checks",
                                   "Endpoint checks (connect, TLS, EHLO) of probes without AUTH, "
                                   "by whether they opened a session or were shared",
                                   labels=["result"])

    def collect(self) -> list[Any]:
        family = self._family()
        sessions, shared = self.counts()
        family.add_metric(["session"], sessions)
        family.add_metric(["shared"], shared)
        return [family]


def _epoch(value: Any) -> float | None:
    """An RFC 3339 status time as epoch seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


Route = Callable[[], tuple[int, bytes, str]]  # -> (HTTP status, body, content type)


class HttpEndpoint:
    """A tiny HTTP/1.1 GET server for probes and scrapes, hardened for a hostile network.

    One thread runs an asyncio loop for every connection (no thread per connection); at most
    `max_connections` are open at once; a request head must arrive
    within `read_timeout` seconds and fit in `max_head` bytes; every answer closes the
    connection, so nothing stays idle. At the bound the oldest connection is closed, so a flood
    of half-sent requests neither grows threads or memory (bench/health_server.py measures
    4,000 of them) nor locks a genuine probe out.
    """

    def __init__(self, addr: str, routes: Mapping[str, Route], *, max_connections: int = 32,
                 read_timeout: float = 5.0, max_head: int = 8192, name: str = "http") -> None:
        import asyncio
        import socket

        host, _, port = addr.rpartition(":")
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.max_head = max_head
        self._open: dict[Any, None] = {}  # writers of open connections, oldest first
        self.evicted = 0  # connections closed because the bound was reached
        self._loop = asyncio.new_event_loop()
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host.strip("[]") or ("::" if family == socket.AF_INET6 else "0.0.0.0"),
                         int(port)))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(5)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._session, sock=self._sock, limit=self.max_head))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            # Stop accepting, but close the server only once every connection already accepted
            # has its transport: asyncio (3.11) silently drops a connection whose transport is
            # made after Server.close(), and leaves its socket to the garbage collector.
            self._loop.remove_reader(self._sock.fileno())
            self._close_connections(deadline=time.monotonic() + 5)
            self._server.close()
            self._loop.close()

    def _close_connections(self, *, deadline: float) -> None:
        """Close every connection before the loop closes, so no socket is left to the garbage
        collector: those whose sessions run, and those still only queued on the loop (accepted
        but without a session yet, or closing on the client's EOF)."""
        import asyncio

        while True:
            # Closing the connections ends their sessions normally (a cancelled session task
            # would be reported by asyncio's streams as an unhandled error).
            for writer in list(self._open):
                writer.transport.abort()
            # One pass of the loop runs what is queued: new sessions start, closed transports
            # release their sockets.
            self._loop.run_until_complete(asyncio.sleep(0))
            pending = asyncio.all_tasks(self._loop)
            if not pending or time.monotonic() >= deadline:
                # and what the last sessions queued as they ended: their transports' closing
                self._loop.run_until_complete(asyncio.sleep(0))
                return
            self._loop.run_until_complete(asyncio.wait(pending, timeout=0.05))

    async def _session(self, reader: Any, writer: Any) -> None:
        import asyncio

        if len(self._open) >= self.max_connections:
            # At the bound, the oldest connection goes (it has had the longest to send its
            # request): a flood of idle connections cannot lock the kubelet's probe out.
            oldest = next(iter(self._open))
            self._open.pop(oldest, None)
            self.evicted += 1
            oldest.transport.abort()
        self._open[writer] = None
        try:
            try:
                async with asyncio.timeout(self.read_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            code, body, ctype = self._answer(head)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (
                             code, _REASONS.get(code, b"OK"), ctype.encode(), len(body)) + body)
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self.read_timeout):
                    await writer.drain()
        finally:
            self._open.pop(writer, None)
            writer.close()

    @property
    def active(self) -> int:
        """Connections open now (never more than max_connections)."""
        return len(self._open)

    def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, b"bad request\n", "text/plain"
        if parts[0] not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", "text/plain"
        route = self.routes.get(parts[1].split(b"?", 1)[0].decode("ascii", "replace"))
        if route is None:
            return 404, b"not found\n", "text/plain"
        return route()


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            503: b"Service Unavailable"}


def health_routes(ready: Callable[[], bool]) -> dict[str, Route]:
    """/healthz (alive) and /readyz (`ready()` is True): what the kubelet probes."""

    def readyz() -> tuple[int, bytes, str]:
        ok = ready()
        return (200 if ok else 503), (b"ok\n" if ok else b"not ready\n"), "text/plain"

    return {"/healthz": lambda: (200, b"ok\n", "text/plain"), "/readyz": readyz}


def metrics_routes(metrics: Metrics) -> dict[str, Route]:
    """/metrics in the Prometheus text format: what a scraper reads."""
    return {"/metrics": lambda: (200, metrics.render(), CONTENT_TYPE_LATEST)}


class HealthServer(HttpEndpoint):
    """/healthz and /readyz on the health port."""

    def __init__(self, addr: str, ready: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(addr, health_routes(ready), name="health", **kwargs)


class MetricsServer(HttpEndpoint):
    """/metrics on the metrics port."""

    def __init__(self, addr: str, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(addr, metrics_routes(metrics), name="metrics", **kwargs)
