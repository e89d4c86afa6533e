"""The controller's HTTP endpoints (reconciler/run/metrics.py): stopping one leaves no socket open."""

from __future__ import annotations

import gc
import socket
import warnings

from reconciler.run.metrics import HealthServer


def test_stop_closes_every_connection_even_those_not_yet_served() -> None:
    # Half-sent requests (well below the listen backlog), the clients gone, then stop: the
    # connections accepted but not yet served, and the sessions ending as the loop stops, must
    # all have closed their sockets. asyncio drops a connection whose transport is made after
    # Server.close() and leaves its socket to the garbage collector. Before the fix some of 30
    # stops always leaked (8 runs of 8).
    for _ in range(30):
        health = HealthServer("127.0.0.1:0", lambda: True, max_connections=16, read_timeout=30)
        health.start()
        clients = [socket.create_connection(health.address, timeout=5) for _ in range(60)]
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            client.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            health.stop()
            del health
            gc.collect()
        leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaked, leaked[:3]


def test_oldest_probe_age_per_namespace() -> None:
    """Freshness is a metric (DESIGN §5): the status's lastProbeTime is written only with
    another change, so the gauge takes the newest probe time seen for each account and reports
    per namespace the age of the least recent one."""
    from prometheus_client.parser import text_string_to_metric_families

    from reconciler.run.metrics import Metrics

    metrics = Metrics()
    metrics.clock = lambda: 1764057600.0 + 100  # 2025-11-25T08:01:40Z

    def ages() -> dict[str, float]:
        return {s.labels["namespace"]: s.value
                for f in text_string_to_metric_families(metrics.render().decode())
                if f.name == "email_reconciler_oldest_probe_age_seconds" for s in f.samples}

    metrics.observe_account(("shop", "a"), {"lastProbeTime": "2025-11-25T08:00:00Z"})
    metrics.observe_account(("shop", "b"), {"lastProbeTime": "2025-11-25T08:01:00Z"})
    metrics.observe_account(("mail", "c"), {"lastProbeTime": "2025-11-25T08:01:30Z"})
    metrics.observe_account(("mail", "d"), {})  # never probed: no age yet
    assert ages() == {"shop": 100.0, "mail": 10.0}
    # an older stored time (not rewritten) does not undo a newer one seen
    metrics.observe_account(("shop", "a"), {"lastProbeTime": "2025-11-25T07:00:00Z"})
    metrics.observe_account(("shop", "a"), {"lastProbeTime": "2025-11-25T08:01:20Z"})
    assert ages() == {"shop": 40.0, "mail": 10.0}
    metrics.observe_account(("mail", "c"), None)  # deleted
    assert ages() == {"shop": 40.0}


def test_certificate_days_remaining_computed_when_scraped() -> None:
    """The status keeps notAfter only (daysRemaining changed every day: a write per account per
    day); the gauge counts whole days from it at scrape time, so it moves without a write."""
    from prometheus_client.parser import text_string_to_metric_families

    from reconciler.run.metrics import Metrics

    metrics = Metrics()
    now = [1764057600.0]  # 2025-11-25T08:00:00Z
    metrics.clock = lambda: now[0]

    def days() -> dict[str, float]:
        return {s.labels["name"]: s.value
                for f in text_string_to_metric_families(metrics.render().decode())
                if f.name == "email_reconciler_certificate_days_remaining" for s in f.samples}

    metrics.observe_account(("shop", "a"), {"certificate": {"notAfter": "2025-12-25T08:00:00Z"}})
    metrics.observe_account(("shop", "b"), {"certificate": {"notAfter": "2025-11-26T07:59:59Z"}})
    metrics.observe_account(("shop", "c"), {"certificate": {"notAfter": "2025-11-24T08:00:00Z"}})
    metrics.observe_account(("shop", "d"), {"certificate": {"notAfter": "soon"}})
    metrics.observe_account(("shop", "e"), {})
    assert days() == {"a": 30.0, "b": 0.0, "c": -1.0}
    now[0] += 86400 * 10  # ten days on, nothing observed again
    assert days() == {"a": 20.0, "b": -10.0, "c": -11.0}
    metrics.observe_account(("shop", "a"), None)  # deleted
    metrics.observe_account(("shop", "b"), {"connectivity": "x"})  # no certificate any more
    assert days() == {"c": -11.0}
