# ruff: noqa: F811  (pytest fixtures imported from tests.test_controller are used as arguments)
"""Shared endpoint checks in the controller (issue 26 item 2), against tests/kubeapi and a
stand-in that counts connections: many accounts on one endpoint are about one session per
interval, and a changed credential is one full session (AUTH included) of that account alone."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.test_controller import (  # noqa: F401
    NEW_PASSWORD,
    PATIENCE,
    Cluster,
    cluster,
    servers,
    wait_for,
)


def test_the_controller_shares_one_endpoint_check_among_its_accounts(cluster: Cluster) -> None:
    ctl = cluster.controller(workers=4)
    names = [f"e{i}" for i in range(10)]
    for name in names:
        cluster.account(name, probe={"interval": "2s", "authInterval": "1h"})
    wait_for(lambda: all(cluster.ready(n) for n in names), PATIENCE, "all Ready")
    server = cluster.servers.starttls
    probes = ctl.metrics.probes.labels(reason="Ready")
    seen, connections, auths = probes._value.get(), server.connections, len(server.auth_attempts)
    wait_for(lambda: probes._value.get() >= seen + 40, PATIENCE, "forty more probes")
    probed = probes._value.get() - seen
    opened = server.connections - connections
    # each account is probed every 2 s; without sharing every probe is a connection
    assert 1 <= opened * 3 <= probed, (opened, probed)
    assert len(server.auth_attempts) == auths  # no credential check before authInterval
    checks = {s.labels["result"]: s.value
              for family in text_string_to_metric_families(ctl.metrics.render().decode())
              if family.name == "email_reconciler_endpoint_checks" for s in family.samples
              if s.name.endswith("_total")}
    # A probe whose session opened before the window began (at most one a worker) ends inside
    # it: counted in `probed`, its connection not in `opened` (seen as 36 of 42 under load).
    in_flight = 4
    assert checks["shared"] >= probed - opened - in_flight and checks["session"] >= 1, checks

    cluster.servers.users["e3@example.com"] = NEW_PASSWORD
    cluster.secret("e3-smtp", "password", NEW_PASSWORD)
    wait_for(lambda: (cluster.published("e3-sender") or {}).get("SMTP_PASSWORD")
             == NEW_PASSWORD, PATIENCE, "e3's new password published")
    seen = probes._value.get()
    wait_for(lambda: probes._value.get() >= seen + 20, PATIENCE, "twenty more probes")
    assert [a.login for a in server.auth_attempts[auths:]] == ["e3@example.com"]
    assert all(cluster.ready(n) for n in names)
