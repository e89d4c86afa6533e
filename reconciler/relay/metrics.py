"""The relay's Prometheus metrics: messages relayed and refused by reason, upstream latency."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.relay.upstream import Delivery


class RelayMetrics:
    """Counters in a registry of their own (served by `--metrics-port`), also readable in tests."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.relayed = Counter("email_reconciler_relay_messages_relayed",
                               "Messages the upstream accepted", registry=self.registry)
        self.refused_total = Counter("email_reconciler_relay_messages_refused",
                                     "Messages or commands refused, by reason", ["reason"],
                                     registry=self.registry)
        self.latency = Histogram("email_reconciler_relay_upstream_seconds",
                                 "Time to hand one message to the upstream, by outcome",
                                 ["outcome"], registry=self.registry,
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def refused(self, reason: str) -> None:
        self.refused_total.labels(reason=reason).inc()

    def forwarded(self, delivery: Delivery, seconds: float) -> None:
        outcome = ("accepted" if delivery.accepted else
                   "deferred" if 400 <= delivery.code < 500 else "refused")
        self.latency.labels(outcome=outcome).observe(seconds)
        if delivery.accepted:
            self.relayed.inc()
        else:
            self.refused(f"Upstream{outcome.title()}")

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never set)."""
        found = self.registry.get_sample_value(name, labels or None)
        return float(found or 0.0)
