"""Sharded replicas (issue 26 item 6): membership Leases, assignment by rendezvous hashing, hand-over.

Three controllers in this process, each on its own client, against tests/kubeapi over real HTTP,
with real SMTP stand-ins on loopback; short Leases so that hand-overs take seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.run.controller import Controller
from reconciler.run.membership import ShardConfig
from reconciler.run.sharding import GROUP_LABEL, owner
from tests.test_controller import NS, PATIENCE, Cluster, cluster, servers, wait_for  # noqa: F401

PREFIX = "email-reconciler-shard"
LEASE = 3.0  # seconds; renew deadline 2 s, renewed every 0.3 s


def shard_config(identity: str) -> ShardConfig:
    return ShardConfig(prefix=PREFIX, namespace=NS, identity=identity, lease_duration=LEASE,
                       renew_deadline=LEASE * 2 / 3, retry_period=0.3)


def replica(c: Cluster, identity: str, **kwargs: Any) -> Controller:
    ctl = c.controller(shards=shard_config(identity), **kwargs)
    ctl.api_client.user_agent = f"replica-{identity}"
    return ctl


def converged(ctls: list[Controller]) -> bool:
    """Every replica publishes, and has confirmed, the same view of exactly these members."""
    want = tuple(sorted(c.shard.me for c in ctls if c.shard))
    return all(c.shard is not None and c.shard.published == c.shard.confirmed == want
               and c.shard.acting and set(c.shard.others) == set(want) - {c.shard.me}
               for c in ctls)


def generation_done(c: Cluster, names: list[str], generation: int) -> bool:
    return all(c.status(n).get("observedGeneration") == generation for n in names)


def rename(c: Cluster, name: str, display: str) -> None:
    c.patch("emailaccounts", name, {"spec": {"smtp": {"identity": {
        "emailAddress": f"{name}@example.com", "displayName": display}}}})


NAMES = [f"acct-{i:02d}" for i in range(18)]


@pytest.fixture
def three(cluster: Cluster) -> Iterator[list[Controller]]:
    ctls = [replica(cluster, x) for x in ("a", "b", "c")]
    wait_for(lambda: converged(ctls), PATIENCE, "the three replicas agree on their view")
    yield ctls


def test_three_replicas_own_disjoint_sets_that_cover_every_account(
        cluster: Cluster, three: list[Controller]) -> None:
    for name in NAMES:
        cluster.account(name)
    wait_for(lambda: all(cluster.ready(n) for n in NAMES), PATIENCE, "every account Ready")
    reconciled = {c.shard.me: {k for k, n in c.reconciles.items() if n} for c in three if c.shard}
    assert set().union(*reconciled.values()) == {(NS, n) for n in NAMES}
    assert sum(len(s) for s in reconciled.values()) == len(NAMES)  # disjoint
    for me, keys in reconciled.items():
        assert keys, f"{me} got no account of {len(NAMES)}"
        assert all(owner(k, ("a", "b", "c")) == me for k in keys)
    leases = cluster.api.objects("leases", NS)
    assert sorted(lease["metadata"]["name"] for lease in leases
                  if lease["metadata"].get("labels", {}).get(GROUP_LABEL) == PREFIX) == [
        f"{PREFIX}-a", f"{PREFIX}-b", f"{PREFIX}-c"]


def test_a_killed_replicas_accounts_move_to_the_others(cluster: Cluster,
                                                      three: list[Controller]) -> None:
    for name in NAMES:
        cluster.account(name)
    wait_for(lambda: all(cluster.ready(n) for n in NAMES), PATIENCE, "every account Ready")
    a, b, c = three
    c.stop(release=False)  # killed: its Lease stays until it expires
    killed = time.monotonic()
    c_keys = [k for k in c.reconciles if c.reconciles[k]]
    assert c_keys
    for name in NAMES:
        rename(cluster, name, "After the kill")
    wait_for(lambda: converged([a, b]), PATIENCE, "a and b drop c from their view")
    moved = time.monotonic() - killed
    wait_for(lambda: generation_done(cluster, NAMES, 2), PATIENCE, "every account re-probed")
    assert all(a.reconciles[k] + b.reconciles[k] >= 1 for k in c_keys)
    # one lease duration (c's silence) plus a few renew periods; generous for a loaded machine
    assert moved < LEASE + 5.0, moved
    # c's Lease, silent for two durations, is deleted by a survivor
    wait_for(lambda: cluster.api.get_object("leases", NS, f"{PREFIX}-c") is None, PATIENCE,
             "the dead replica's Lease swept")


def test_a_replica_that_stops_releases_its_lease_and_its_accounts_move_at_once(
        cluster: Cluster, three: list[Controller]) -> None:
    a, b, c = three
    c.stop()  # graceful: finishes its work, deletes its Lease
    assert cluster.api.get_object("leases", NS, f"{PREFIX}-c") is None
    stopped = time.monotonic()
    wait_for(lambda: converged([a, b]), PATIENCE, "a and b drop c from their view")
    assert time.monotonic() - stopped < LEASE  # not waiting for c's Lease to expire
