"""Controller mode (issue 8): informers, work queue, backoff, leader election, metrics, SIGTERM.

Against tests/kubeapi/ over real HTTP through the official client, with real SMTP servers on
loopback; nothing of the controller is patched.
"""

from __future__ import annotations

import base64
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.errors import UsageError
from reconciler.model import status_condition as condition
from reconciler.run.controller import Controller, parse_duration
from reconciler.run.leader import LeaderConfig
from reconciler.state.schedule import days_until
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_account, loopback_servers

# Credentials opt in to e-mail use (README "Security model").
CREDENTIAL = {"email.reconciler.io/credential": "true"}
NS = "shop"
PASSWORD = "ctl-s3cret-p4ss!"
NEW_PASSWORD = "ctl-r0tated-p4ss?"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """A STARTTLS and an SMTPS server for the module; logins checked against `users`."""
    with loopback_servers() as started:
        yield started


#: Upper bound of a wait for something that must happen (not a speed target: with both cores
#: busy a probe or the subprocess's imports take seconds; a wait ends as soon as its condition
#: holds, so a generous bound costs nothing on a quiet machine).
PATIENCE = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float = PATIENCE,
             what: str = "condition") -> Any:
    """Poll until predicate() is truthy; its value, or fail naming `what`."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_for_or_none(predicate: Callable[[], Any], timeout: float) -> Any:
    """Poll until predicate() is truthy; its value, or None after timeout."""
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            return None
        time.sleep(0.05)
    return value


@dataclass
class Cluster:
    api: KubeAPIServer
    servers: Servers
    controllers: list[tuple[Controller, Any]] = field(default_factory=list)

    def secret(self, name: str, key: str, value: str) -> None:
        data = {key: base64.b64encode(value.encode()).decode()}
        if self.api.get_object("secrets", NS, name) is None:
            self.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                            "metadata": {"name": name, "namespace": NS,
                                                         "labels": CREDENTIAL},
                                            "data": data})
            return
        self.patch("secrets", name, {"data": data})

    def patch(self, resource: str, name: str, body: dict[str, Any]) -> None:
        from kubernetes import client

        with self.api.api_client() as api_client:
            if resource == "secrets":
                client.CoreV1Api(api_client).patch_namespaced_secret(name, NS, body)
            else:
                client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
                    "email.reconciler.io", "v1alpha1", NS, "emailaccounts", name, body)

    def delete(self, resource: str, name: str) -> None:
        from kubernetes import client

        with self.api.api_client() as api_client:
            if resource == "secrets":
                client.CoreV1Api(api_client).delete_namespaced_secret(name, NS)
            else:
                client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
                    "email.reconciler.io", "v1alpha1", NS, "emailaccounts", name)

    def account(self, name: str, *, port: int | None = None, password: str = PASSWORD,
                **spec_extra: Any) -> None:
        self.servers.users[f"{name}@example.com"] = PASSWORD
        self.secret(f"{name}-smtp", "password", password)
        self.api.add_object("emailaccounts", loopback_account(
            name, NS, port or self.servers.starttls.port, timeout=2, **spec_extra))

    def status(self, name: str) -> dict[str, Any]:
        obj = self.api.get_object("emailaccounts", NS, name)
        return (obj or {}).get("status") or {}

    def ready(self, name: str) -> bool:
        return condition(self.status(name), "Ready").get("status") == "True"

    def published(self, name: str) -> dict[str, str] | None:
        obj = self.api.get_object("secrets", NS, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}

    def controller(self, **kwargs: Any) -> Controller:
        """A started in-process controller on its own client; stopped at teardown."""
        api_client = self.api.api_client()
        kwargs.setdefault("namespace", NS)
        kwargs.setdefault("workers", 2)
        kwargs.setdefault("interval", 600.0)
        kwargs.setdefault("watch_seconds", 5)
        ctl = Controller(api_client, **kwargs)
        self.controllers.append((ctl, api_client))
        ctl.start()
        return ctl




def settled(ctl: Controller, *secrets: str) -> bool:
    """The controller has seen these Secrets and has no key queued or being worked on."""
    cached = ctl.secrets.cached_keys()
    if not all((NS, name) in cached for name in secrets):
        return False
    queue = ctl.queue
    with queue._cv:  # the queue's own lock: no key between "taken" and "processing"
        return queue.idle()


@pytest.fixture
def cluster(servers: Servers) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS, "labels": CREDENTIAL},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        c = Cluster(api, servers)
        try:
            yield c
        finally:
            for ctl, api_client in c.controllers:
                ctl.stop()
                api_client.close()


# --------------------------------------------------------------------------- reconcile on change


def test_create_becomes_ready_and_publishes_the_secret(cluster: Cluster) -> None:
    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    secret = wait_for(lambda: cluster.published("billing-sender"), PATIENCE, "published Secret")
    assert secret["SMTP_PASSWORD"] == PASSWORD
    assert secret["SMTP_PORT"] == str(cluster.servers.starttls.port)
    status = cluster.status("billing")
    assert status["observedGeneration"] == 1
    assert status["protocol"] == "STARTTLS"
    # our own status writes do not trigger more reconciles (the Secret's ADDED may add one)
    time.sleep(0.5)
    assert ctl.reconciles[(NS, "billing")] <= 2


def test_our_own_writes_are_not_kept_once_the_watch_shows_them(cluster: Cluster) -> None:
    """The worker keeps its last write of an account only until the informer holds it: a copy
    of every written account (with its managedFields) doubled the memory per account."""
    ctl = cluster.controller()
    names = [f"acct-{i}" for i in range(5)]
    for name in names:
        cluster.account(name)
    wait_for(lambda: all(cluster.ready(n) for n in names), PATIENCE, "all Ready")
    wait_for(lambda: not ctl.worker._written, PATIENCE, "no write kept once watched")


def test_spec_change_reprobes_and_rerenders(cluster: Cluster) -> None:
    ctl = cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    before = cluster.servers.starttls.connections
    # Let the credential Secret's own ADDED event settle: it may queue billing once more. A fixed
    # 0.3 s was sometimes too short on a loaded machine (that reconcile then counted below).
    wait_for(lambda: settled(ctl, "billing-smtp", "billing-sender"), PATIENCE, "a settled queue")
    reconciles = ctl.reconciles[(NS, "billing")]
    cluster.patch("emailaccounts", "billing",
                  {"spec": {"smtp": {"identity": {"emailAddress": "billing@example.com",
                                                  "displayName": "Billing Team"}}}})
    wait_for(lambda: cluster.status("billing").get("observedGeneration") == 2, PATIENCE,
             "observedGeneration 2")
    assert cluster.servers.starttls.connections > before
    secret = wait_for(lambda: (cluster.published("billing-sender") or {}).get("SMTP_FROM_NAME"),
                      PATIENCE, "re-rendered Secret")
    assert secret == "Billing Team"
    time.sleep(0.3)
    assert ctl.reconciles[(NS, "billing")] == reconciles + 1  # not again for our status write


def test_changed_password_secret_rerenders_the_published_secret(cluster: Cluster) -> None:
    cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    cluster.servers.users["billing@example.com"] = NEW_PASSWORD
    cluster.secret("billing-smtp", "password", NEW_PASSWORD)
    wait_for(lambda: (cluster.published("billing-sender") or {}).get("SMTP_PASSWORD")
             == NEW_PASSWORD, PATIENCE, "new password published")
    assert cluster.ready("billing")


def test_deleted_published_secret_is_recreated(cluster: Cluster) -> None:
    cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.published("billing-sender"), PATIENCE, "published Secret")
    uid = (cluster.api.get_object("secrets", NS, "billing-sender") or {})["metadata"]["uid"]
    cluster.delete("secrets", "billing-sender")
    # (not "gone now": the controller may put it back before the next line runs)
    wait_for(lambda: ((cluster.api.get_object("secrets", NS, "billing-sender") or {}).get(
        "metadata") or {}).get("uid") not in (None, uid), PATIENCE, "recreated Secret")
    secret = cluster.published("billing-sender")
    assert secret is not None and secret["SMTP_PASSWORD"] == PASSWORD


def test_a_suspended_account_waits_for_the_resync_not_its_stale_next_probe_time(
        cluster: Cluster) -> None:
    """A suspended account is never probed, so its nextProbeTime stays where the last probe put
    it; once that time has passed, requeueing for it would reconcile the account in a loop."""
    from reconciler.state.schedule import parse_rfc3339

    ctl = cluster.controller()
    cluster.account("billing", probe={"interval": "2s"})
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    cluster.patch("emailaccounts", "billing", {"spec": {"probe": {"interval": "2s",
                                                                 "suspend": True}}})
    status = wait_for(lambda: (s := cluster.status("billing")).get("suspended") and s,
                      PATIENCE, "suspended")
    stale = parse_rfc3339(status["nextProbeTime"])
    key = (NS, "billing")

    def waiting_for_the_resync() -> bool:
        # once the stale nextProbeTime has passed, the key's next turn is the resync (600 s)
        if datetime.now(UTC) <= stale:
            return False
        with ctl.queue._cv:
            due = ctl.queue._due.get(key)
            return due is not None and due - time.monotonic() > 60 and not ctl.queue.queued(key)

    wait_for(waiting_for_the_resync, PATIENCE, "the resync as billing's next turn")
    assert cluster.ready("billing")


def test_probes_that_find_nothing_changed_write_nothing(cluster: Cluster) -> None:
    """Issue 26 item 5: no heartbeat. The account is probed every 2 s; after its first status
    no probe writes again (lastProbeTime moves only in memory and in the freshness metric), and
    the probe times kept in memory pace it: the stored nextProbeTime, long past, does not make
    the worker reconcile it in a loop."""
    ctl = cluster.controller()
    cluster.account("billing", probe={"interval": "2s"})
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    key = (NS, "billing")
    first = cluster.status("billing")
    probes = ctl.metrics.probes.labels(reason="Ready")
    seen = probes._value.get()
    wait_for(lambda: probes._value.get() >= seen + 3, PATIENCE, "three more probes")
    status_writes = [r for r in cluster.api.requests
                     if r.resource == "emailaccounts" and r.subresource == "status"
                     and r.verb == "patch"]
    assert len(status_writes) == 1, status_writes
    assert cluster.status("billing") == first
    assert ctl.reconciles[key] <= probes._value.get() + 3  # one turn per probe, no loop
    ages = {s.labels["namespace"]: s.value
            for family in text_string_to_metric_families(ctl.metrics.render().decode())
            if family.name == "email_reconciler_oldest_probe_age_seconds"
            for s in family.samples}
    assert 0 <= ages[NS] < 60  # fresh, though the stored lastProbeTime is not


def test_informers_list_in_pages(cluster: Cluster) -> None:
    """A relist reads pages of 500 objects (client-go's reflector does): at 10,000 accounts one
    answer holding every object broke the size bound or the deadline of one call, and the
    informer relisted forever, never synced (issue 26 item 7, found by bench/controller_cpu.py)."""
    for i in range(1100):
        cluster.api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": f"trust-{i:04d}",
                                                           "namespace": NS,
                                                           "labels": CREDENTIAL},
                                              "data": {"ca.crt": "x"}})
    cluster.api.clear_requests()
    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    assert len(ctl.configmaps) == 1101  # and "ca"
    pages = [r for r in cluster.api.requests
             if (r.verb, r.resource) == ("list", "configmaps")]
    assert [r.query.get("limit") for r in pages] == ["500"] * 3
    assert [bool(r.query.get("continue")) for r in pages] == [False, True, True]


# --------------------------------------------------------------------------- which Secrets (issue 18)


def test_only_labelled_and_published_secrets_are_watched_and_a_rotation_still_reprobes(
        cluster: Cluster) -> None:
    from reconciler.store.informers import SECRET_SELECTORS

    for n in range(200):  # Helm releases and the like: never cached
        cluster.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": f"release-{n}", "namespace": NS},
                                           "data": {"release": "aGVsbQ=="}})
    ctl = cluster.controller()
    assert ctl.wait_synced(5)
    cluster.account("billing")
    wait_for(lambda: cluster.published("billing-sender"), 5, "published Secret")
    wait_for(lambda: (NS, "billing-sender") in ctl.secrets.cached_keys(), 5, "ours cached")
    assert ctl.secrets.cached_keys() == [(NS, "billing-sender"), (NS, "billing-smtp")]
    reads = [r for r in cluster.api.requests
             if r.resource == "secrets" and r.verb in ("list", "watch")]
    assert {r.query.get("labelSelector") for r in reads} == set(SECRET_SELECTORS)
    # the labelled credential changes: seen, probed again, published again
    before = cluster.servers.starttls.connections
    cluster.servers.users["billing@example.com"] = NEW_PASSWORD
    cluster.secret("billing-smtp", "password", NEW_PASSWORD)
    wait_for(lambda: (cluster.published("billing-sender") or {}).get("SMTP_PASSWORD")
             == NEW_PASSWORD, 5, "new password published")
    assert cluster.servers.starttls.connections > before
    assert len(ctl.secrets.cached_keys()) == 2


def test_an_unlabelled_secret_at_the_publish_name_is_a_conflict_and_left_alone(
        cluster: Cluster) -> None:
    foreign = {"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "billing-sender", "namespace": NS},
               "data": {"mine": base64.b64encode(b"not yours").decode()}}
    cluster.api.add_object("secrets", foreign)
    ctl = cluster.controller()
    assert ctl.wait_synced(5)
    cluster.account("billing")
    wait_for(lambda: condition(cluster.status("billing"), "SecretPublished").get("reason")
             == "SecretConflict", 5, "SecretConflict")
    assert (NS, "billing-sender") not in ctl.secrets.cached_keys()
    kept = cluster.api.get_object("secrets", NS, "billing-sender") or {}
    assert kept["data"] == foreign["data"] and not (kept["metadata"].get("labels") or {})
    writes = [r for r in cluster.api.requests if r.resource == "secrets"
              and r.name == "billing-sender" and r.verb not in ("get", "list", "watch")]
    assert writes == []
    assert any(r.verb == "get" and r.name == "billing-sender" for r in cluster.api.requests)


# --------------------------------------------------------------------------- truststores (issue 13 item 6)


def configmap(cluster: Cluster, name: str, pem: str, labels: dict[str, str] | None = None) -> None:
    from kubernetes import client

    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "data": {"ca.crt": pem}}
    if cluster.api.get_object("configmaps", NS, name) is None:
        cluster.api.add_object("configmaps", body)
        return
    with cluster.api.api_client() as api_client:
        client.CoreV1Api(api_client).patch_namespaced_config_map(name, NS, {"data": body["data"]})


def test_truststores_come_from_a_label_selected_watch_and_a_change_reprobes(
        cluster: Cluster) -> None:
    from reconciler.demo.certificates import ThrowawayCA
    from reconciler.store.informers import CONFIGMAP_SELECTOR

    for n in range(50):  # other ConfigMaps of the namespace: never listed, never cached
        cluster.api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": f"app-{n}", "namespace": NS},
                                              "data": {"x": "y"}})
    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    assert ctl.configmaps.cached_keys() == [(NS, "ca")]
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    wait_for(lambda: settled(ctl, "billing-smtp", "billing-sender"), PATIENCE, "a settled queue")
    # Several reconciles (probe requests): not one ConfigMap request among them.
    cluster.api.clear_requests()
    for n in range(3):
        done = ctl.reconciles[(NS, "billing")]
        cluster.patch("emailaccounts", "billing", {"metadata": {"annotations": {
            "email.reconciler.io/requested-at": f"2026-01-01T00:00:0{n}Z"}}})
        wait_for(lambda done=done: ctl.reconciles[(NS, "billing")] > done, PATIENCE, "a reconcile")
    assert [r for r in cluster.api.requests if r.resource == "configmaps"
            and r.verb != "watch"] == []
    reads = [r for r in cluster.api.requests if r.resource == "configmaps"]
    assert all(r.query.get("labelSelector") == CONFIGMAP_SELECTOR for r in reads)
    # The truststore changes to a CA that did not sign the server: probed again, not Ready.
    before = cluster.servers.starttls.connections
    configmap(cluster, "ca", ThrowawayCA("another CA").ca_pem)
    wait_for(lambda: not cluster.ready("billing"), PATIENCE, "billing not Ready with a wrong CA")
    assert cluster.servers.starttls.connections > before
    # and back to one that did (a bundle: the rotation's new CA and the server's): Ready again
    configmap(cluster, "ca", ThrowawayCA("next CA").ca_pem + cluster.servers.ca.ca_pem)
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready with the new CA bundle")
    assert ctl.configmaps.cached_keys() == [(NS, "ca")]


def test_an_unlabelled_truststore_configmap_is_refused_not_missing(cluster: Cluster) -> None:
    configmap(cluster, "plain-ca", cluster.servers.ca.ca_pem)  # no opt-in label
    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    cluster.secret("billing-smtp", "password", PASSWORD)
    account = loopback_account("billing", NS, cluster.servers.starttls.port, timeout=2)
    account["spec"]["smtp"]["connection"]["truststore"] = {
        "configMapRef": {"name": "plain-ca", "key": "ca.crt"}}
    cluster.api.add_object("emailaccounts", account)
    wait_for(lambda: condition(cluster.status("billing"), "Ready").get("reason")
             == "SecretNotAllowed", PATIENCE, "SecretNotAllowed")
    assert (NS, "plain-ca") not in ctl.configmaps.cached_keys()
    assert any(r.verb == "get" and r.resource == "configmaps" and r.name == "plain-ca"
               for r in cluster.api.requests)


def test_deleted_account_leaves_nothing_behind(cluster: Cluster) -> None:
    ctl = cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.published("billing-sender"), PATIENCE, "published Secret")
    cluster.delete("emailaccounts", "billing")
    wait_for(lambda: (NS, "billing") not in ctl.accounts.cached_keys(), PATIENCE, "account gone from cache")
    wait_for(lambda: cluster.api.get_object("secrets", NS, "billing-sender") is None, PATIENCE,
             "published Secret deleted with its account")
    time.sleep(0.3)
    assert cluster.api.get_object("secrets", NS, "billing-sender") is None
    assert cluster.api.get_object("emailaccounts", NS, "billing") is None
    assert ctl.queue.depth() == 0


# --------------------------------------------------------------------------- backoff


def test_failing_account_backs_off_while_others_stay_fast(cluster: Cluster) -> None:
    from reconciler.demo.smtp_servers import unused_port

    # The account and its Secret exist before the controller starts, so its first list sees both
    # (a Secret that shows up after the account would rightly trigger one more probe at once).
    cluster.account("broken", port=unused_port(), probe={"retryInterval": "1s", "interval": "1m"})
    ctl = cluster.controller()
    seen: dict[int, float] = {}
    start = time.monotonic()

    def failed_probes() -> bool:
        n = int(cluster.status("broken").get("failedProbes") or 0)
        seen.setdefault(n, time.monotonic() - start)
        return n >= 4

    watcher = threading.Thread(target=wait_for, args=(failed_probes, PATIENCE,
                                                      "four failed probes"))
    watcher.start()
    time.sleep(1.5)
    cluster.account("billing")  # created while "broken" backs off: served at once
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready despite a failing account")
    # at once: within broken's backoff, not after it (its 4th attempt comes 1+2+4 s after the 1st)
    assert max(seen.copy()) < 4, seen
    watcher.join()
    assert set(seen) >= {1, 2, 3, 4}, seen
    gaps = [seen[n + 1] - seen[n] for n in (1, 2, 3)]
    # Attempt times grow (nominally 1, 2, 4 s; nextProbeTime has whole seconds and the queue
    # jitters, so neighbours may be close but the series cannot stay flat).
    assert gaps[2] > gaps[0] * 1.5 and seen[4] - seen[1] > 4.0, gaps
    status = cluster.status("broken")
    assert condition(status, "Ready")["reason"] == "ConnectFailed"
    assert condition(status, "Stalled").get("status") != "True"
    assert ctl.queue.failures((NS, "broken")) >= 3
    assert ctl.queue.failures((NS, "billing")) == 0


# --------------------------------------------------------------------------- watch


def test_watch_relists_after_410_gone_and_misses_nothing(cluster: Cluster) -> None:
    ctl = cluster.controller(watch_seconds=1)  # watches end every second and are resumed
    assert ctl.wait_synced(PATIENCE)
    assert ctl.accounts.relists == 1
    # Unrelated writes move the server on; the history our resourceVersion points into is gone.
    # A watch that (re)starts between the write and the compaction is told the new
    # resourceVersion (its first BOOKMARK) and is not expired: compact again until each informer
    # relisted (a loaded machine widens that window; with three informers one often hit it).
    informers = (ctl.accounts, ctl.secrets, ctl.configmaps)
    end = time.monotonic() + PATIENCE
    for n in itertools.count():
        cluster.api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": f"other-{n}", "namespace": NS}})
        cluster.api.expire_history()
        if wait_for_or_none(lambda: all(i.relists >= 2 for i in informers), 3.0):
            break
        assert time.monotonic() < end, "timed out waiting for relists after 410 Gone"
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready after the relist")
    watches = [r for r in cluster.api.requests
               if r.verb == "watch" and r.resource == "emailaccounts"]
    assert len(watches) >= 2 and all(r.query.get("resourceVersion") for r in watches)


# --------------------------------------------------------------------------- leader election


def lease(cluster: Cluster) -> dict[str, Any]:
    obj = cluster.api.get_object("leases", NS, "email-reconciler") or {}
    return obj.get("spec") or {}


def leader_config(identity: str, lease_duration: float = 1.0) -> LeaderConfig:
    return LeaderConfig(name="email-reconciler", namespace=NS, identity=identity,
                        lease_duration=lease_duration, renew_deadline=lease_duration * 0.7,
                        retry_period=0.2)


def test_only_the_leader_reconciles_and_the_standby_takes_over(cluster: Cluster) -> None:
    # A long lease: with 1 s (renew deadline 0.7 s) a loaded machine can make "one" miss its
    # renew deadline and hand over before the test stops it. A standby that waited for the
    # released lease to expire would take over only a lease duration after one's last renewal.
    duration = 20.0
    one = cluster.controller(leader=leader_config("one", duration))
    wait_for(lambda: lease(cluster).get("holderIdentity") == "one", PATIENCE, "one leads")
    two = cluster.controller(leader=leader_config("two", duration))
    assert two.wait_synced(PATIENCE)
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    time.sleep(0.5)
    assert one.is_leader and not two.is_leader
    assert sum(two.reconciles.values()) == 0
    assert sum(one.reconciles.values()) >= 1
    one.stop()
    stopped = time.monotonic()
    # released on the way out: empty, unless two (polling every 0.2 s) took it already; that
    # two leads long before a 20 s lease could expire (below) says it was released either way
    assert lease(cluster).get("holderIdentity") in ("", "two")
    wait_for(lambda: two.is_leader, PATIENCE, "two takes over")
    assert time.monotonic() - stopped < duration / 2  # the released lease, not its expiry
    cluster.patch("emailaccounts", "billing",
                  {"spec": {"smtp": {"identity": {"emailAddress": "billing@example.com",
                                                  "displayName": "After Failover"}}}})
    wait_for(lambda: cluster.status("billing").get("observedGeneration") == 2, PATIENCE,
             "the new leader reconciles")
    assert two.reconciles[(NS, "billing")] >= 1
    assert lease(cluster)["leaseTransitions"] == 1


def test_standby_waits_for_an_unreleased_lease_to_expire(cluster: Cluster) -> None:
    from reconciler.run.leader import micro_time

    cluster.api.add_object("leases", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "email-reconciler", "namespace": NS},
        "spec": {"holderIdentity": "crashed", "leaseDurationSeconds": 1,
                 "renewTime": micro_time(), "acquireTime": micro_time(), "leaseTransitions": 0}})
    start = time.monotonic()
    ctl = cluster.controller(leader=leader_config("standby"))
    time.sleep(0.6)
    assert not ctl.is_leader  # the holder's lease has not run out on our clock yet
    wait_for(lambda: ctl.is_leader, PATIENCE, "takeover after the lease duration")
    assert time.monotonic() - start >= 1.0
    assert lease(cluster)["holderIdentity"] == "standby"


# --------------------------------------------------------------------------- metrics


def scrape(ctl: Controller, path: str = "/metrics") -> tuple[int, str]:
    """GET a path of the health port (/healthz, /readyz) or, else, of the metrics port."""
    server = ctl.health if path in ("/healthz", "/readyz") else ctl.metrics_server
    assert server is not None
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_health_readiness_and_metrics(cluster: Cluster) -> None:
    cluster.api.inject(503, count=1, verb="list", resource="secrets")  # one failed LIST, retried
    ctl = cluster.controller(metrics_addr="127.0.0.1:0", health_addr="127.0.0.1:0")
    assert scrape(ctl, "/healthz") == (200, "ok\n")
    assert ctl.wait_synced(PATIENCE)
    assert scrape(ctl, "/readyz")[0] == 200
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    # The worker records its metrics after the status write that made billing Ready: wait for
    # them rather than reading them in the gap (the KeyError of a loaded machine).
    # The same for the informers' watch requests, counted when their responses start.
    ready_metric = ("email_reconciler_reconciles_total", (("result", "ready"),))
    watches = ("email_reconciler_api_requests_total", (("code", "200"), ("verb", "watch")))

    def recorded() -> tuple[int, str] | None:
        code, text = scrape(ctl)
        m = samples(text) if code == 200 else {}
        return (code, text) if ready_metric in m and m.get(watches, 0) >= 2 else None

    code, text = wait_for(recorded, PATIENCE, "the reconcile's metrics")
    m = samples(text)
    assert m[("email_reconciler_reconciles_total", (("result", "ready"),))] >= 1
    assert m[("email_reconciler_reconcile_duration_seconds_count", ())] >= 1
    assert m[("email_reconciler_probes_total", (("reason", "Ready"),))] >= 1
    assert m[("email_reconciler_accounts_ready", ())] == 1
    days = m[("email_reconciler_certificate_days_remaining", (("name", "billing"),
                                                               ("namespace", NS)))]
    # Computed when scraped from notAfter: the status keeps no daysRemaining (a daily write).
    cert = cluster.status("billing")["certificate"]
    assert "daysRemaining" not in cert
    assert days - days_until(cert["notAfter"], datetime.now(UTC)) in (0, 1)
    assert ("email_reconciler_queue_depth", ()) in m
    assert m[("email_reconciler_api_requests_total", (("code", "503"), ("verb", "list")))] == 1
    assert m[("email_reconciler_api_requests_total", (("code", "200"), ("verb", "watch")))] >= 2
    assert m[("email_reconciler_api_requests_total", (("code", "200"), ("verb", "patch")))] >= 1
    assert PASSWORD not in text
    assert scrape(ctl, "/nope")[0] == 404


def test_readyz_is_503_until_the_informers_synced(cluster: Cluster) -> None:
    cluster.api.inject(500, count=1000, verb="list", resource="emailaccounts")
    ctl = cluster.controller(metrics_addr="127.0.0.1:0", health_addr="127.0.0.1:0")
    time.sleep(0.3)
    assert scrape(ctl, "/healthz")[0] == 200
    assert scrape(ctl, "/readyz") == (503, "not ready\n")
    assert not ctl.synced


# --------------------------------------------------------------------------- the process


def test_sigterm_exits_0_and_releases_the_lease(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = cluster.api.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    cluster.account("billing")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "controller", "--namespace", NS, "--leader-elect",
         "--lease-namespace", NS, "--lease-duration", "15", "--renew-deadline", "10",
         "--retry-period", "0.3", "--metrics-addr", "127.0.0.1:0", "--interval", "10m"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def alive(predicate: Callable[[], Any]) -> Callable[[], Any]:
        def check() -> Any:  # fail at once (with its stderr) if the subprocess died
            if proc.poll() is not None:
                pytest.fail(f"the controller exited {proc.returncode}: "
                            f"{proc.communicate()[1].decode()[-2000:]}")
            return predicate()
        return check

    try:
        # Its imports alone take seconds with both cores busy: wait for the lease, not a clock.
        wait_for(alive(lambda: lease(cluster).get("holderIdentity")), PATIENCE,
                 "the subprocess leads")
        wait_for(alive(lambda: cluster.ready("billing")), PATIENCE,
                 "billing Ready by the subprocess")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    spec = lease(cluster)
    assert spec["holderIdentity"] == "" and spec.get("renewTime") is None
    assert PASSWORD.encode() not in out + err


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25), ("45", 45.0),
    ("2h", 7200.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "m10", "1h 5m", "ten"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(UsageError, match="30s, 10m or 1h30m"):
        parse_duration(text)


def test_leader_config_rejects_inconsistent_timings() -> None:
    with pytest.raises(ValueError, match="lease-duration > --renew-deadline"):
        LeaderConfig(lease_duration=1.0, renew_deadline=2.0, retry_period=0.5).check()


def test_request_makes_the_controller_probe_now_with_auth(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`email-reconciler request NAME` (issue 22 item 8): the annotation it writes through the
    API makes the running controller probe at once, AUTH included."""
    from reconciler.cli import main

    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), PATIENCE, "billing Ready")
    wait_for(lambda: settled(ctl, "billing-smtp", "billing-sender"), PATIENCE, "a settled queue")
    before = cluster.servers.starttls.connections
    cluster.servers.users["billing@example.com"] = "changed on the server"  # AUTH now fails
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.api.kubeconfig(tmp_path / "kubeconfig")))
    assert main(["request", "billing", "--store", "kube"]) == 0
    requested = cluster.api.get_object("emailaccounts", NS, "billing")["metadata"][
        "annotations"]["email.reconciler.io/requested-at"]
    wait_for(lambda: condition(cluster.status("billing"), "Authenticated").get("reason")
             == "AuthenticationFailed", PATIENCE, "a probe with AUTH")
    assert cluster.servers.starttls.connections > before
    assert cluster.status("billing")["lastRequestedAt"] == requested

def test_edited_published_secret_is_repaired(cluster: Cluster) -> None:
    """Someone else edits one key of the published Secret (not its hash annotation): the
    controller sees it and puts the key back (issue 26: cached as digests, compared as such)."""
    ctl = cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.published("billing-sender"), PATIENCE, "published Secret")
    wait_for(lambda: settled(ctl, "billing-smtp", "billing-sender"), PATIENCE, "a settled queue")
    before = cluster.published("billing-sender") or {}
    cluster.patch("secrets", "billing-sender",
                  {"data": {"SMTP_HOST": base64.b64encode(b"evil.example").decode()}})
    assert (cluster.published("billing-sender") or {}).get("SMTP_HOST") == "evil.example"
    wait_for(lambda: (cluster.published("billing-sender") or {}).get("SMTP_HOST")
             == before["SMTP_HOST"], PATIENCE, "the edited key put back")
    assert cluster.published("billing-sender") == before
