# ruff: noqa: F811  (pytest fixtures imported from tests.test_controller are used as arguments)
"""Sharded replicas (issue 26 item 6): membership Leases, assignment by rendezvous hashing, hand-over.

Three controllers in this process, each on its own client, against tests/kubeapi over real HTTP,
with real SMTP stand-ins on loopback; short Leases so that hand-overs take seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.demo.smtp_servers import ServerLoop, SessionRecord, SmtpServerOptions
from reconciler.run.controller import Controller
from reconciler.run.membership import ShardConfig
from reconciler.run.sharding import GROUP_LABEL, owner
from tests.manifests_factory import LoopbackServers as Servers
from tests.test_controller import NS, PATIENCE, ROOT, Cluster, cluster, servers, wait_for  # noqa: F401

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


# --------------------------------------------------------------------------- no two at once


def overlapping_sessions(sessions: list[SessionRecord]) -> list[tuple[str, float, float]]:
    """Pairs of connections that logged in as the same account and were open at the same time."""
    by_login: dict[str, list[SessionRecord]] = {}
    for s in sessions:
        for login in set(s.logins):
            by_login.setdefault(login, []).append(s)
    bad = []
    for login, group in by_login.items():
        group.sort(key=lambda s: s.opened)
        for first, second in zip(group, group[1:], strict=False):
            if first.closed is None or first.closed > second.opened:
                bad.append((login, first.opened, second.opened))
    return bad


def writers_taking_turns(requests: list[Any], names: list[str],
                         agents: str = "replica-") -> dict[str, list[str]]:
    """Per account, the replicas (User-Agents starting with `agents`) that wrote it (status,
    published Secret) in the order they took turns; one that wrote, stopped, and wrote again
    after another is a violation."""
    turns: dict[str, list[str]] = {}
    for r in sorted(requests, key=lambda r: r.started):
        if (r.verb in ("create", "update", "patch", "delete") and r.name in names
                and r.resource in ("emailaccounts", "secrets") and r.user_agent.startswith(agents)):
            seq = turns.setdefault(r.name, [])
            if not seq or seq[-1] != r.user_agent:
                seq.append(r.user_agent)
    return turns


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
    # the writers, from the API server's log: each account written by one replica, its owner
    turns = writers_taking_turns(cluster.api.requests, NAMES)
    assert set(turns) == set(NAMES)
    assert {name: seq for name, seq in turns.items()
            if seq != [f"replica-{owner((NS, name), ('a', 'b', 'c'))}"]} == {}
    assert {seq[0] for seq in turns.values()} == {"replica-a", "replica-b", "replica-c"}
    wait_for(lambda: [c.metrics.registry.get_sample_value("email_reconciler_shard_members")
                      for c in three] == [3.0, 3.0, 3.0], PATIENCE, "every replica sees three")
    # each replica's account cache holds its own accounts only (about a third each)

    def own_cache() -> bool:
        return all(c.shard is not None and set(c.accounts.cached_keys()) == {
            (NS, n) for n in NAMES if owner((NS, n), ("a", "b", "c")) == c.shard.me} for c in three)

    wait_for(own_cache, PATIENCE, "each cache holds its replica's accounts only")
    def summed(metric: str) -> float:
        return sum(c.metrics.registry.get_sample_value(metric) or 0 for c in three)

    # the per-replica gauges add up to the whole, as a sum() across replicas reads them
    wait_for(lambda: summed("email_reconciler_accounts_ready") == len(NAMES), PATIENCE,
             "the Ready gauges sum to the accounts")
    wait_for(lambda: summed("email_reconciler_accounts") == len(NAMES), PATIENCE,
             "the account gauges sum to the accounts")
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
    c_names = [n for n, seq in writers_taking_turns(cluster.api.requests, NAMES).items()
               if seq == ["replica-c"]]
    assert c_names
    for name in NAMES:
        rename(cluster, name, "After the kill")
    wait_for(lambda: converged([a, b]), PATIENCE, "a and b drop c from their view")
    moved = time.monotonic() - killed
    wait_for(lambda: generation_done(cluster, NAMES, 2), PATIENCE, "every account re-probed")
    # The API server stores a write before it logs the request, so a status read can see
    # generation 2 a moment before the write that set it is in the log: wait for the log too.
    wait_for(lambda: all(len(writers_taking_turns(cluster.api.requests, c_names).get(n, [])) >= 2
                         for n in c_names), PATIENCE, "a new writer of each of c's accounts logged")
    turns = writers_taking_turns(cluster.api.requests, NAMES)
    assert {n: turns[n] for n in c_names if turns[n][0] != "replica-c" or len(turns[n]) != 2} == {}
    wait_for(lambda: set(a.accounts.cached_keys()) | set(b.accounts.cached_keys()) == {
        (NS, n) for n in NAMES}, PATIENCE, "a and b cache c's accounts too")
    assert all(turns[n] in (["replica-a"], ["replica-b"]) for n in NAMES if n not in c_names)
    # one lease duration (c's silence) plus a few renew periods; generous for a loaded machine
    assert moved < LEASE + 5.0, moved
    # c's Lease, expired, is deleted by a survivor
    wait_for(lambda: cluster.api.get_object("leases", NS, f"{PREFIX}-c") is None, PATIENCE,
             "the dead replica's Lease swept")


def test_a_replica_that_stops_releases_its_lease_and_one_that_joins_is_taken_in_at_once(
        cluster: Cluster, three: list[Controller]) -> None:
    a, b, c = three
    c.stop()  # graceful: finishes its work, deletes its Lease
    assert cluster.api.get_object("leases", NS, f"{PREFIX}-c") is None
    stopped = time.monotonic()
    wait_for(lambda: converged([a, b]), PATIENCE, "a and b drop c from their view")
    assert time.monotonic() - stopped < LEASE  # not waiting for c's Lease to expire
    # a replica that joins is in everyone's view within a few renew periods too
    joined = time.monotonic()
    d = replica(cluster, "d")
    wait_for(lambda: converged([a, b, d]), PATIENCE, "d joins a and b")
    assert time.monotonic() - joined < LEASE + 5.0  # the stated bound, generous under load


def test_hand_overs_under_load_never_let_two_replicas_probe_or_write_one_account(
        cluster: Cluster, servers: Servers) -> None:
    """Probes last a while (a slow banner), accounts change all the time, and the member set
    changes three times: c joins, b leaves, a dies and d joins. Recorded: the stand-in's
    connections per login, and the API server's writes per account with each replica's
    User-Agent."""
    def check(mechanism: str, login: str, secret: str) -> bool:
        return servers.users.get(login) == secret

    with ServerLoop() as loop:
        slow = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=servers.ca.server_context(),
                                           checker=check, banner_delay=0.15))
        a, b = replica(cluster, "a"), replica(cluster, "b")
        wait_for(lambda: converged([a, b]), PATIENCE, "a and b agree")
        names = NAMES[:12]
        for name in names:
            cluster.account(name, port=slow.port)
        wait_for(lambda: all(cluster.ready(n) for n in names), PATIENCE, "every account Ready")

        stop = threading.Event()
        generation = {"n": 1}

        def churn() -> None:  # every account changes again as soon as the last change is done
            while not stop.is_set():
                if generation_done(cluster, names, generation["n"]):
                    generation["n"] += 1
                    for name in names:
                        rename(cluster, name, f"Generation {generation['n']}")
                stop.wait(0.05)

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()
        try:
            def rounds_after(at_least: int) -> Any:
                target = generation["n"] + at_least
                return lambda: generation["n"] >= target

            wait_for(rounds_after(2), PATIENCE, "two rounds of changes")
            c = replica(cluster, "c")  # joins: takes about a third from a and b
            wait_for(lambda: converged([a, b, c]), PATIENCE, "c joined")
            wait_for(rounds_after(2), PATIENCE, "two rounds with three replicas")
            b.stop()  # leaves, releasing its Lease
            wait_for(lambda: converged([a, c]), PATIENCE, "b left")
            wait_for(rounds_after(2), PATIENCE, "two rounds without b")
            a.stop(release=False)  # dies
            d = replica(cluster, "d")
            wait_for(lambda: converged([c, d]), PATIENCE, "a gone, d joined")
            wait_for(rounds_after(2), PATIENCE, "two rounds with c and d")
        finally:
            stop.set()
            churner.join(10)
        final = generation["n"]
        wait_for(lambda: generation_done(cluster, names, final), PATIENCE, "the last change done")

    assert overlapping_sessions(slow.sessions) == []
    turns = writers_taking_turns(cluster.api.requests, names)
    assert set(turns) == set(names)
    for name, seq in turns.items():
        assert len(seq) == len(set(seq)), (name, seq)  # nobody came back after another
    # the hand-overs happened: every replica wrote some account, and some accounts changed hands
    assert {w for seq in turns.values() for w in seq} == {f"replica-{x}" for x in "abcd"}
    assert sum(len(seq) > 1 for seq in turns.values()) >= len(names) // 2



def test_a_replica_that_cannot_renew_stops_acting_and_lists_again_before_it_resumes(
        cluster: Cluster) -> None:
    """Rule 3 (c): past its renew deadline a replica starts no reconcile; when renewals succeed
    again, it acts only after a LIST made after such a renewal (the others may have judged it
    gone meanwhile and taken its accounts)."""
    a = replica(cluster, "a")
    wait_for(lambda: converged([a]), PATIENCE, "a alone")
    cluster.account("solo")
    wait_for(lambda: cluster.ready("solo"), PATIENCE, "solo Ready")
    assert a.shard is not None
    cluster.api.inject(503, 10_000, verb="update", resource="leases")  # renewals fail
    wait_for(lambda: not a.shard.acting, PATIENCE, "a stops acting")
    cluster.api.clear_requests()
    rename(cluster, "solo", "During the outage")
    wait_for(lambda: (NS, "solo") in a.shard._deferred, PATIENCE, "solo deferred, not reconciled")
    assert writers_taking_turns(cluster.api.requests, ["solo"]) == {}
    assert cluster.status("solo").get("observedGeneration") == 1
    lists_before = sum(r.verb == "list" and r.resource == "leases" for r in cluster.api.requests)
    cluster.api.clear_faults()
    wait_for(lambda: generation_done(cluster, ["solo"], 2), PATIENCE, "solo reconciled after")
    # the first write after the outage came after a successful renewal and a LIST after it
    log = list(cluster.api.requests)
    first_write = min(r.started for r in log if r.user_agent == "replica-a"
                      and r.resource == "emailaccounts" and r.verb == "patch")
    renewed = min(r.answered for r in log if r.resource == "leases" and r.verb == "update"
                  and r.status == 200)
    assert any(r.resource == "leases" and r.verb == "list" and renewed < r.started < first_write
               for r in log)
    assert sum(r.verb == "list" and r.resource == "leases" for r in log) > lists_before


# --------------------------------------------------------------------------- the command


def shard_leases(c: Cluster) -> list[dict[str, Any]]:
    return [lease for lease in c.api.objects("leases", NS)
            if (lease["metadata"].get("labels") or {}).get(GROUP_LABEL) == PREFIX]


def test_two_controller_processes_divide_the_accounts_and_a_sigkilled_ones_move(
        cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.api.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for host in ("pod-one", "pod-two"):
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT),
               "HOSTNAME": host}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        procs[host] = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "controller", "--namespace", NS, "--shards", "auto",
             "--lease-namespace", NS, "--lease-duration", str(LEASE), "--renew-deadline", "2",
             "--retry-period", "0.3", "--metrics-addr", "", "--health-addr", ""],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def alive(predicate: Any) -> Any:
        def check() -> Any:
            for host, proc in procs.items():
                if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                    pytest.fail(f"{host} exited {proc.returncode}: "
                                f"{proc.communicate()[1].decode()[-2000:]}")
            return predicate()
        return check

    def views() -> dict[str, str]:  # identity -> the members it published
        return {lease["spec"]["holderIdentity"]: lease["metadata"]["annotations"][
            "email.reconciler.io/shard-members"] for lease in shard_leases(cluster)}

    def both_agree() -> bool:
        v = views()
        return len(v) == 2 and all(members == ",".join(sorted(v)) for members in v.values())

    names = NAMES[:10]
    try:
        wait_for(alive(both_agree), PATIENCE, "both processes in one view")
        ids = sorted(views())
        assert [i.rsplit("-", 1)[0] for i in ids] == ["pod-one", "pod-two"]
        for name in names:
            cluster.account(name)
        wait_for(alive(lambda: all(cluster.ready(n) for n in names)), PATIENCE, "every account Ready")
        writers = {n: [w.split("(shard ")[-1].rstrip(")") for w in seq]
                   for n, seq in writers_taking_turns(cluster.api.requests, names, "email-reconciler/").items()}
        assert {n: seq for n, seq in writers.items() if seq != [owner((NS, n), ids)]} == {}
        gone = ids[1]
        survivor = "pod-one" if gone.startswith("pod-two") else "pod-two"
        procs["pod-two" if survivor == "pod-one" else "pod-one"].kill()
        for name in names:
            rename(cluster, name, "After SIGKILL")
        wait_for(alive(lambda: generation_done(cluster, names, 2)), PATIENCE, "all re-probed")
        wait_for(alive(lambda: list(views()) == [ids[0]]), PATIENCE, "the dead one's Lease swept")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=PATIENCE)  # also closes its stderr pipe
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    writers = {n: [w.split("(shard ")[-1].rstrip(")") for w in seq]
               for n, seq in writers_taking_turns(cluster.api.requests, names, "email-reconciler/").items()}
    assert procs[survivor].returncode == 0  # SIGTERM: finished its work, deleted its Lease
    assert shard_leases(cluster) == []
    assert {n: seq for n, seq in writers.items()
            if seq != ([gone, ids[0]] if owner((NS, n), ids) == gone else [ids[0]])} == {}


def test_shards_auto_and_leader_elect_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    assert main(["controller", "--shards", "auto", "--leader-elect"]) == 2
    assert "--shards auto and --leader-elect exclude each other" in capsys.readouterr().err
    assert main(["controller", "--shards", "auto", "--shard-lease-prefix", "Bad_Prefix"]) == 2
    assert "--shard-lease-prefix" in capsys.readouterr().err


def test_shard_selector_watches_only_the_labelled_accounts(cluster: Cluster) -> None:
    from tests.manifests_factory import loopback_account

    for name, labels in (("blue", {"shard": "blue"}), ("green", {"shard": "green"}), ("plain", {})):
        cluster.servers.users[f"{name}@example.com"] = "pw-" + name
        cluster.secret(f"{name}-smtp", "password", "pw-" + name)
        account = loopback_account(name, NS, cluster.servers.starttls.port, timeout=2)
        account["metadata"]["labels"] = labels
        cluster.api.add_object("emailaccounts", account)
    ctl = cluster.controller(shard_selector="shard=blue")
    wait_for(lambda: cluster.ready("blue"), PATIENCE, "blue Ready")
    assert ctl.accounts.cached_keys() == [(NS, "blue")]
    assert cluster.status("green") == {} and cluster.status("plain") == {}
    watches = [r for r in cluster.api.requests
               if r.resource == "emailaccounts" and r.verb in ("list", "watch")]
    assert watches and all(r.query.get("labelSelector") == "shard=blue" for r in watches)
