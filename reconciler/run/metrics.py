"""Prometheus metrics and the /healthz /readyz /metrics endpoints of the controller.

Each controller owns its `CollectorRegistry` (not the process-global one), so tests can run
several controllers in one process and scrape each separately.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
        self.cert_days = Gauge(f"{PREFIX}_certificate_days_remaining",
                               "Days until the server certificate of the account expires",
                               ["namespace", "name"], registry=r)
        self.queue = Gauge(f"{PREFIX}_queue_depth", "Keys waiting in the work queue", registry=r)
        self.queue.set_function(queue_depth)
        self.api_requests = Counter(f"{PREFIX}_api_requests", "Kubernetes API requests by verb "
                                    "and HTTP code", ["verb", "code"], registry=r)
        self.leader = Gauge(f"{PREFIX}_leader", "1 while this replica is the leader", registry=r)
        self._lock = threading.Lock()
        self._ready_keys: set[tuple[str, str]] = set()

    def api_request(self, verb: str, code: str) -> None:
        self.api_requests.labels(verb=verb, code=code).inc()

    def observe_account(self, key: tuple[str, str], status: Mapping[str, Any] | None) -> None:
        """Update the per-account gauges from a status (None: the account is gone)."""
        ready = False
        days = None
        if status is not None:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
            days = (status.get("certificate") or {}).get("daysRemaining")
        with self._lock:
            if ready:
                self._ready_keys.add(key)
            else:
                self._ready_keys.discard(key)
            self.ready.set(len(self._ready_keys))
            if isinstance(days, int | float):
                self.cert_days.labels(namespace=key[0], name=key[1]).set(days)
            else:
                with contextlib.suppress(KeyError):
                    self.cert_days.remove(key[0], key[1])

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """/healthz (alive), /readyz (`ready()` is True), /metrics on a ThreadingHTTPServer."""

    def __init__(self, addr: str, metrics: Metrics, ready: Callable[[], bool]) -> None:
        host, _, port = addr.rpartition(":")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    outer._send(self, 200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ok = ready()
                    outer._send(self, 200 if ok else 503, b"ok\n" if ok else b"not ready\n",
                                "text/plain")
                elif path == "/metrics":
                    outer._send(self, 200, metrics.render(), CONTENT_TYPE_LATEST)
                else:
                    outer._send(self, 404, b"not found\n", "text/plain")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._httpd = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health",
                                        daemon=True)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
