# ruff: noqa: F811  (pytest fixtures imported from tests.test_controller are used as arguments)
"""No periodic writes, AUTH included (issue 26 item 5), against tests/kubeapi over real HTTP and
real SMTP servers on loopback.

- Nothing changed over several probe intervals and AUTH intervals: no write and no read but the
  informers' watches (lastProbeTime and lastAuthTime move in the controller's memory only).
- A restart finds every stored lastAuthTime long past (it is written only with another change):
  the overdue AUTHs are spread over authInterval by each account's stable share of it, not sent
  at once; a spec change still authenticates at once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.manifest.account import account_from_manifest
from reconciler.state.schedule import auth_offset, rfc3339
from tests.test_controller import (
    NS,
    PATIENCE,
    Cluster,
    cluster,  # noqa: F401
    servers,  # noqa: F401
    settled,
    wait_for,
)

WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def _auths(cluster: Cluster, names: list[str]) -> dict[str, int]:
    """AUTH attempts the STARTTLS stand-in has seen, per account."""
    counts = dict.fromkeys(names, 0)
    for attempt in list(cluster.servers.starttls.auth_attempts):
        name = attempt.login.partition("@")[0]
        if name in counts:
            counts[name] += 1
    return counts


def _writes(cluster: Cluster) -> list[tuple[str, str | None, str | None]]:
    return [(r.verb, r.resource, r.name) for r in list(cluster.api.requests)
            if r.resource is not None and r.verb in WRITES]


def _set_status(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    """Merge `status` into the stored status, as an earlier controller would have written it."""
    from kubernetes import client

    with cluster.api.api_client() as api_client:
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
            "email.reconciler.io", "v1alpha1", NS, "emailaccounts", name, {"status": status},
            _content_type="application/merge-patch+json")


def _offset(cluster: Cluster, name: str) -> float:
    obj = cluster.api.get_object("emailaccounts", NS, name)
    assert obj is not None
    return auth_offset(account_from_manifest({k: v for k, v in obj.items() if k != "status"}))


def test_nothing_changed_over_probe_and_auth_intervals_writes_nothing(cluster: Cluster) -> None:
    """Three accounts probed every second and authenticated every 3 s: once Ready, two more AUTHs
    of each (more than two AUTH intervals, a dozen probes) make no request but the watches. On
    the old code each AUTH wrote lastAuthTime: a status patch per account per authInterval."""
    names = ["quiet-a", "quiet-b", "quiet-c"]
    ctl = cluster.controller()
    for name in names:
        cluster.account(name, probe={"interval": "1s", "authInterval": "3s"})
    wait_for(lambda: all(cluster.ready(n) for n in names), PATIENCE, "the accounts Ready")
    wait_for(lambda: all(cluster.published(f"{n}-sender") for n in names), PATIENCE,
             "the Secrets published")
    # Each account's first status is written once it is Ready; from its next AUTH on, nothing.
    first = _auths(cluster, names)
    wait_for(lambda: all(v > first[n] for n, v in _auths(cluster, names).items()), PATIENCE,
             "one more AUTH of each account")
    before = {n: cluster.status(n) for n in names}
    cluster.api.clear_requests()
    start = _auths(cluster, names)
    probes = ctl.metrics.probes.labels(reason="Ready")
    probed = probes._value.get()
    wait_for(lambda: all(v >= start[n] + 2 for n, v in _auths(cluster, names).items()),
             PATIENCE, "two more AUTHs of each account")
    wait_for(lambda: probes._value.get() >= probed + 4 * len(names), PATIENCE, "more probes")
    verbs = cluster.api.count_by_verb()
    assert _writes(cluster) == []
    assert set(verbs) <= {"watch"}, verbs  # reads only from the watches
    assert {n: cluster.status(n) for n in names} == before


def _restarted_two_days_after_auth(cluster: Cluster, names: list[str], probe: dict[str, str]
                                   ) -> tuple[dict[str, float], dict[str, int], float, Any]:
    """The accounts made Ready by one controller, which stops; their lastAuthTime set two days
    back; a new controller started. (each account's share of authInterval, its AUTH count
    before the restart, the wall time of the restart, the new controller)"""
    first = cluster.controller()
    for name in names:
        cluster.account(name, probe=probe)
    wait_for(lambda: all(cluster.ready(n) for n in names), PATIENCE, "the accounts Ready")
    first.stop()
    stale = rfc3339(datetime.now(UTC) - timedelta(days=2))
    for name in names:
        _set_status(cluster, name, {"lastAuthTime": stale})
    offsets = {n: _offset(cluster, n) for n in names}
    before = _auths(cluster, names)
    cluster.api.clear_requests()
    return offsets, before, time.time(), cluster.controller()


def test_a_restart_spreads_overdue_auths_and_a_change_still_auths_at_once(
        cluster: Cluster) -> None:
    """The stored lastAuthTime of every account is two days old when a controller starts
    (authInterval 1h, written only with another change). Each account is probed at once but
    authenticates only at the start plus its share of the hour: none before that (on the old
    code all twelve AUTHed in their first probe), and the restart writes nothing. A spec change
    authenticates that account at once, its share of the hour notwithstanding."""
    names = [f"restart-{i:02d}" for i in range(12)]
    offsets, before, started, ctl = _restarted_two_days_after_auth(
        cluster, names, {"interval": "2s", "authInterval": "1h"})
    hour = 3600.0

    def authenticated() -> dict[str, int]:
        return {n: v - before[n] for n, v in _auths(cluster, names).items() if v > before[n]}

    # Every account probed twice by the new controller: each had its chance to AUTH.
    wait_for(lambda: all(ctl.reconciles[(NS, n)] >= 2 for n in names), PATIENCE,
             "two reconciles of each account")
    checked = time.time()  # every AUTH seen below happened before this
    early = [n for n in authenticated() if started + offsets[n] * hour > checked]
    assert early == [], (early, {n: offsets[n] for n in early})
    due = [n for n in names if started + offsets[n] * hour <= checked]
    assert len(authenticated()) <= len(due)  # no more than the share of the slice elapsed
    assert _writes(cluster) == []  # the restart wrote nothing
    # A change of spec authenticates now, whatever the account's share of the hour.
    last = max(names, key=lambda n: offsets[n])
    assert started + offsets[last] * hour > time.time() + 60  # not for a while by the clock
    cluster.patch("emailaccounts", last, {"spec": {"probe": {"interval": "3s"}}})
    wait_for(lambda: authenticated().get(last, 0) >= 1, PATIENCE, f"{last} AUTH after its change")
    assert started + offsets[last] * hour > time.time()


def test_overdue_auths_after_a_restart_arrive_over_the_auth_interval(cluster: Cluster) -> None:
    """The same restart with authInterval 6s: the AUTHs come, each not before the start plus the
    account's share of 6 s, until every account has authenticated, with no write."""
    names = [f"spread-{i:02d}" for i in range(10)]
    offsets, before, started, _ = _restarted_two_days_after_auth(
        cluster, names, {"interval": "1s", "authInterval": "6s"})

    def arrived_in_turn() -> bool:
        seen = [n for n, v in _auths(cluster, names).items() if v > before[n]]
        checked = time.time()
        early = [n for n in seen if started + offsets[n] * 6.0 > checked]
        assert early == [], (early, checked - started, {n: offsets[n] for n in early})
        return len(seen) == len(names)

    wait_for(arrived_in_turn, PATIENCE, "every account's AUTH")
    assert _writes(cluster) == []


def test_accounts_reconciled_together_resync_spread_over_the_interval(cluster: Cluster) -> None:
    """Accounts reconciled in one burst (as the resyncs a long create held back are taken at
    once) have their next turns spread over the resync interval, each at its key's own slot:
    with a +-10 % jitter they stayed within a fifth of it, a herd every cycle (benchmark 9 at
    100,000 accounts: 664 resyncs a second after the create instead of 166)."""
    from reconciler.run.requeue import key_phase

    names = [f"herd-{i:02d}" for i in range(24)]
    for name in names:
        cluster.account(name, probe={"interval": "1h"})  # the resync comes before the probe
    ctl = cluster.controller(interval=600.0)
    wait_for(lambda: all(cluster.published(f"{n}-sender") for n in names), PATIENCE,
             "the Secrets published")
    wait_for(lambda: settled(ctl), PATIENCE, "nothing queued or in progress")
    with ctl.queue._cv:
        offset = time.time() - time.monotonic()  # the queue's clock to the wall clock
        due = {n: ctl.queue._due[(NS, n)] + offset for n in names}
    assert max(due.values()) - min(due.values()) > 300, due
    for name, at in due.items():  # each on its own slot: its phase of the interval
        assert abs((at - key_phase(NS, name) * 600.0 + 300.0) % 600.0 - 300.0) < 1.0, name
