"""The Kubernetes store through the official client, against tests/kubeapi/ over real HTTP,
with the real reconcile run probing real SMTP servers on loopback (issue 5)."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.errors import SecretNotFound, StoreForbidden, StoreUnavailable
from reconciler.manifest.load import load_paths
from reconciler.model import KeyRef
from reconciler.model import status_condition as condition
from reconciler.probe.credentials import DirSecretReader
from reconciler.run.reconcile import Reconciler, RunOptions
from reconciler.run.report import RunReport
from reconciler.store import open_store
from reconciler.store.kube import (
    INVENTORY_LABEL,
    KubeStore,
    inventory_configmap,
    merge_patch_for,
    same_as_applied,
)
from reconciler.store.kubeclient import RetryPolicy
from reconciler.store.local import LocalStore
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd, valid_spec
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_account, loopback_servers

# Credentials opt in to e-mail use (README "Security model").
CREDENTIAL = {"email.reconciler.io/credential": "true"}
NS = "shop"
PASSWORD = "kube-s3cr3t p@ss:w/rd%"
FAST = RetryPolicy(base_delay=0.005, max_delay=0.02)
WRITES = ("create", "update", "patch", "delete", "deletecollection")


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """A STARTTLS and an SMTPS server for the module; logins checked against `users`."""
    with loopback_servers() as started:
        yield started


@dataclass
class Cluster:
    """A fake API server, a folder of manifests, and helpers to run the real reconcile."""

    api: KubeAPIServer
    root: Path
    servers: Servers
    retry: RetryPolicy = FAST

    @property
    def manifests(self) -> Path:
        return self.root / "accounts"

    def secret(self, name: str, key: str, value: str, namespace: str = NS) -> None:
        """Create or replace a Secret in the cluster (as `kubectl apply` would)."""
        data = {key: base64.b64encode(value.encode()).decode()}
        if self.api.get_object("secrets", namespace, name) is None:
            self.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                            "metadata": {"name": name, "namespace": namespace,
                                                         "labels": CREDENTIAL},
                                            "data": data})
            return
        from kubernetes import client

        with self.api.api_client() as api_client:
            client.CoreV1Api(api_client).patch_namespaced_secret(name, namespace, {"data": data})

    def account(self, name: str, *, smtps: bool = False, **spec_extra: Any) -> dict[str, Any]:
        server = self.servers.smtps if smtps else self.servers.starttls
        doc = loopback_account(name, NS, server.port, security="SMTPS" if smtps else "STARTTLS",
                               display_name=name.title(), **spec_extra)
        self.servers.users[f"{name}@example.com"] = PASSWORD
        self.secret(f"{name}-smtp", "password", PASSWORD)
        self.write(doc)
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        self.manifests.mkdir(parents=True, exist_ok=True)
        (self.manifests / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))

    def reconcile(self, **options: Any) -> RunReport:
        """One real reconcile run with a fresh KubeStore; credentials from the cluster."""
        options.setdefault("inventory", "git")
        with KubeStore(self.api.api_client(), retry=self.retry) as store:
            return Reconciler(store, store.secret_reader(), RunOptions(**options)).run(
                load_paths([str(self.manifests)]))

    def inventory(self, name: str = "git", namespace: str = NS) -> dict[str, str] | None:
        """Source `name`'s inventory ConfigMap in the namespace: account -> Secret name."""
        obj = self.api.get_object("configmaps", namespace, inventory_configmap(name))
        if obj is None:
            return None
        assert obj["metadata"]["labels"][INVENTORY_LABEL] == name
        return {e["name"]: e["secretName"] for e in yaml.safe_load(obj["data"]["entries"])}

    def status(self, name: str) -> dict[str, Any]:
        obj = self.api.get_object("emailaccounts", NS, name)
        assert obj is not None, f"EmailAccount {name} missing"
        return obj.get("status") or {}

    def published(self, name: str) -> dict[str, str]:
        obj = self.api.get_object("secrets", NS, name)
        assert obj is not None, f"Secret {name} missing"
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in obj["data"].items()}




def writes(api: KubeAPIServer) -> list[tuple[str, str | None, str | None]]:
    return [(r.verb, r.resource, r.name) for r in api.requests
            if r.resource is not None and r.verb in WRITES]


@pytest.fixture
def cluster(servers: Servers, tmp_path: Path) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        c = Cluster(api, tmp_path, servers)
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS, "labels": CREDENTIAL},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        yield c


# --------------------------------------------------------------------------- the run


def test_first_run_creates_accounts_status_secrets_events_and_inventory(cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.account("alerts", smtps=True)
    report = cluster.reconcile()
    assert report.all_ready, [a.status for a in report.accounts]

    obj = cluster.api.get_object("emailaccounts", NS, "billing")
    assert obj is not None
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "email-reconciler"
    assert obj["metadata"]["generation"] == 1
    status = obj["status"]
    assert condition(status, "Ready")["status"] == "True"
    assert (status["protocol"], status["connectivity"]) == ("STARTTLS",
                                                            "SMTP (Connect using STARTTLS)")
    assert status["tlsVersion"].startswith("TLSv1.")
    assert status["observedGeneration"] == 1
    assert cluster.status("alerts")["protocol"] == "SMTPS"

    secret = cluster.api.get_object("secrets", NS, "billing-sender")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "email-reconciler"
    assert secret["metadata"]["annotations"]["email.reconciler.io/data-hash"].startswith("sha256:")
    data = cluster.published("billing-sender")
    assert data["SMTP_PASSWORD"] == PASSWORD
    assert data["ca.crt"] == cluster.servers.ca.ca_pem

    # a new account that came up fine gets no event: its status says so
    assert cluster.api.objects("events", NS) == []
    assert cluster.inventory() == {"alerts": "alerts-sender", "billing": "billing-sender"}
    # status went through the status subresource, applies through server-side apply
    patches = [r for r in cluster.api.requests if r.verb == "patch"]
    assert {(r.resource, r.subresource) for r in patches} >= {
        ("emailaccounts", None), ("emailaccounts", "status"), ("secrets", None)}


def _second_run_requests(servers: Servers, tmp_path: Path, n: int) -> dict[str, int]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        c = Cluster(api, tmp_path / f"n{n}", servers)
        api.add_object("configmaps", {"metadata": {"name": "ca", "namespace": NS, "labels": CREDENTIAL},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        for i in range(n):
            c.account(f"acct-{i:02d}")
        assert c.reconcile().all_ready
        api.clear_requests()
        report = c.reconcile()
        assert not report.changed
        assert writes(api) == []
        return api.count_by_verb()


def test_second_run_writes_nothing_and_reads_do_not_grow_with_accounts(
        servers: Servers, tmp_path: Path) -> None:
    three = _second_run_requests(servers, tmp_path, 3)
    twelve = _second_run_requests(servers, tmp_path, 12)
    assert three == twelve
    # one LIST of accounts, of Secrets (credentials and published alike), of ConfigMaps (the
    # truststore) and of inventories
    assert three == {"list": 4}


def test_spec_change_bumps_generation_and_reprobes(cluster: Cluster) -> None:
    doc = cluster.account("billing")
    cluster.reconcile()
    connections = cluster.servers.starttls.connections
    doc["spec"]["smtp"]["identity"]["displayName"] = "Billing Department"
    cluster.write(doc)
    report = cluster.reconcile()
    assert report.accounts[0].probed
    assert cluster.servers.starttls.connections > connections
    obj = cluster.api.get_object("emailaccounts", NS, "billing")
    assert obj is not None and obj["metadata"]["generation"] == 2
    assert obj["status"]["observedGeneration"] == 2
    assert condition(obj["status"], "Ready")["observedGeneration"] == 2
    assert cluster.published("billing-sender")["SMTP_FROM_NAME"] == "Billing Department"


def test_changed_password_secret_updates_published_secret(cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.reconcile()
    before = cluster.api.get_object("secrets", NS, "billing-sender")
    cluster.servers.users["billing@example.com"] = "a brand new one"
    cluster.secret("billing-smtp", "password", "a brand new one")
    cluster.api.clear_requests()
    report = cluster.reconcile()
    assert report.accounts[0].probed and report.all_ready
    assert cluster.published("billing-sender")["SMTP_PASSWORD"] == "a brand new one"
    after = cluster.api.get_object("secrets", NS, "billing-sender")
    assert before is not None and after is not None
    assert after["metadata"]["annotations"] != before["metadata"]["annotations"]
    # the account object was not rewritten: only the Secret (and status/events) changed
    assert not [r for r in cluster.api.requests
                if (r.verb, r.resource, r.subresource) == ("patch", "emailaccounts", None)]


def test_removed_manifest_prunes_object_and_secret_but_not_unmanaged(cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.account("alerts")
    hand_made = {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
                 "metadata": {"name": "by-hand", "namespace": NS}, "spec": valid_spec()}
    cluster.api.add_object("emailaccounts", hand_made)
    cluster.secret("unrelated", "token", "keep me")
    cluster.reconcile()
    assert cluster.api.get_object("secrets", NS, "alerts-sender") is not None

    (cluster.manifests / "alerts.yaml").unlink()
    report = cluster.reconcile()
    assert report.pruned == [(NS, "alerts")]
    assert cluster.api.get_object("emailaccounts", NS, "alerts") is None
    assert cluster.api.get_object("secrets", NS, "alerts-sender") is None
    assert cluster.api.get_object("emailaccounts", NS, "by-hand") is not None
    assert cluster.api.get_object("secrets", NS, "unrelated") is not None
    assert cluster.api.get_object("secrets", NS, "billing-sender") is not None
    assert cluster.inventory() == {"billing": "billing-sender"}


def test_foreign_secret_is_never_taken_over(cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.secret("billing-sender", "SMTP_HOST", "theirs.example.com")
    before = cluster.api.get_object("secrets", NS, "billing-sender")
    cluster.reconcile()
    status = cluster.status("billing")
    assert condition(status, "SecretPublished")["reason"] == "SecretConflict"
    assert condition(status, "Stalled")["status"] == "True"
    assert cluster.api.get_object("secrets", NS, "billing-sender") == before
    obj = cluster.api.get_object("emailaccounts", NS, "billing")
    assert obj is not None
    events = [e for e in cluster.api.objects("events", NS) if e["reason"] == "SecretConflict"]
    assert events, cluster.api.objects("events", NS)
    assert events[0]["type"] == "Warning"
    assert events[0]["involvedObject"] == {
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount", "name": "billing",
        "namespace": NS, "uid": obj["metadata"]["uid"]}
    assert events[0]["source"]["component"] == "email-reconciler"
    assert events[0]["reportingComponent"] == "email-reconciler"
    assert events[0]["count"] == 1


def test_a_gitops_run_lists_the_configmaps_of_a_namespace_once(cluster: Cluster) -> None:
    """Three accounts trusting the same ConfigMap: one LIST of the namespace's ConfigMaps per
    run (issue 13 item 6: per run, not per reconcile), plus the label-selected inventory LIST."""
    for name in ("billing", "alerts", "news"):
        cluster.account(name)
    assert cluster.reconcile().all_ready
    lists = [r.query.get("labelSelector") for r in cluster.api.requests
             if r.resource == "configmaps" and r.verb == "list"]
    assert sorted(lists, key=str) == sorted([None, INVENTORY_LABEL], key=str)
    assert not [r for r in cluster.api.requests if r.resource == "configmaps" and r.verb == "get"]


@pytest.mark.parametrize("fault", [409, 500, 429, "drop"])
def test_injected_faults_are_retried_and_nothing_is_lost(cluster: Cluster,
                                                         fault: int | str) -> None:
    cluster.account("billing")
    cluster.account("alerts", smtps=True)
    for verb, resource in [("list", "emailaccounts"), ("patch", "emailaccounts"),
                           ("list", "secrets"), ("patch", "secrets"),
                           ("list", "configmaps"), ("patch", "configmaps")]:
        cluster.api.inject(fault, 2, verb=verb, resource=resource)  # type: ignore[arg-type]
    report = cluster.reconcile()
    assert report.all_ready, [a.status for a in report.accounts]
    failed = [r for r in cluster.api.requests if r.status == (0 if fault == "drop" else fault)]
    assert len(failed) == 12
    for name in ("billing", "alerts"):
        assert condition(cluster.status(name), "Ready")["status"] == "True"
        assert cluster.published(f"{name}-sender")["SMTP_PASSWORD"] == PASSWORD
    assert cluster.inventory() == {"alerts": "alerts-sender", "billing": "billing-sender"}
    cluster.api.clear_requests()
    assert not cluster.reconcile().changed
    assert writes(cluster.api) == []


def test_forbidden_secret_writes_name_verb_resource_and_namespace_in_status(
        cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.api.inject(403, 10, verb="patch", resource="secrets")
    report = cluster.reconcile()
    assert not report.all_ready
    published = condition(cluster.status("billing"), "SecretPublished")
    assert published["status"] == "False"
    assert published["reason"] == "Forbidden"
    assert ('forbidden: cannot patch secrets in namespace "shop" (check the RBAC Role of the '
            'service account)') in published["message"]
    assert cluster.api.get_object("secrets", NS, "billing-sender") is None
    assert PASSWORD not in str(cluster.status("billing"))


def test_api_unavailable_after_backoff_marks_the_account_and_the_run_goes_on(
        cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.account("alerts")
    cluster.api.inject(503, 1000, verb="patch", resource="secrets")
    report = cluster.reconcile()
    assert len(report.accounts) == 2
    for name in ("billing", "alerts"):
        published = condition(cluster.status(name), "SecretPublished")
        assert published["reason"] == "ApiUnavailable"
        assert "patch secrets" in published["message"] and "5 times" in published["message"]
    patches = [r for r in cluster.api.requests if (r.verb, r.resource) == ("patch", "secrets")]
    assert len(patches) == 2 * FAST.attempts


def test_kubectl_get_shows_protocol_tls_and_ready(cluster: Cluster, tmp_path: Path) -> None:
    cluster.account("billing")
    cluster.account("alerts", smtps=True)
    assert cluster.reconcile().all_ready
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    base = ["kubectl", "--server", cluster.api.url, "get", "emailaccounts", "-A"]
    for extra in ([], ["-o", "wide"]):
        out = subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=60,
                             check=True).stdout
        print(out)
        header, *lines = out.splitlines()
        for column in ("PROTOCOL", "TLS", "READY"):
            assert f" {column} " in f" {header} ", header
        rows = {row["NAME"]: row for row in _table(header, lines)}
        assert set(rows) == {"alerts", "billing"}
        assert (rows["billing"]["PROTOCOL"], rows["billing"]["READY"]) == ("STARTTLS", "True")
        assert rows["billing"]["TLS"].startswith("TLSv1.")
        assert (rows["alerts"]["PROTOCOL"], rows["alerts"]["READY"]) == ("SMTPS", "True")


def _table(header: str, lines: list[str]) -> list[dict[str, str]]:
    """kubectl's table, cut at the header's column starts (empty cells stay empty)."""
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{name: line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)}
            for line in lines]


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    """A status without the fields that differ by store: times (uid-jittered) and uids, and the
    secretVersions values (a keyed digest locally, uid/resourceVersion in the cluster)."""
    out = copy.deepcopy(status)
    for key in ("lastProbeTime", "nextProbeTime", "lastAuthTime"):
        out.pop(key, None)
    out["secretVersions"] = sorted(out.get("secretVersions") or {})
    for cond in out.get("conditions") or []:
        cond.pop("lastTransitionTime", None)
    return out


def test_local_and_kubernetes_stores_agree(cluster: Cluster, tmp_path: Path) -> None:
    cluster.account("billing")
    cluster.account("alerts", smtps=True)
    secrets_dir = tmp_path / "secrets"
    for name in ("billing", "alerts"):
        (secrets_dir / NS / f"{name}-smtp").mkdir(parents=True)
        (secrets_dir / NS / f"{name}-smtp" / "password").write_text(PASSWORD)
    (secrets_dir / NS / "ca").mkdir()
    (secrets_dir / NS / "ca" / "ca.crt").write_text(cluster.servers.ca.ca_pem)
    now = datetime.now(UTC).replace(microsecond=0)
    options = RunOptions(clock=lambda: now)

    local = LocalStore(tmp_path / "store")
    Reconciler(local, DirSecretReader(secrets_dir), options).run(
        load_paths([str(cluster.manifests)]))
    cluster.reconcile(clock=lambda: now)

    for name in ("billing", "alerts"):
        local_obj = local.get_account(NS, name)
        assert local_obj is not None
        assert _comparable(local_obj["status"]) == _comparable(cluster.status(name))
        local_secret = local.get_secret(NS, f"{name}-sender")
        kube_secret = cluster.api.get_object("secrets", NS, f"{name}-sender")
        assert local_secret is not None and kube_secret is not None
        assert local_secret["data"] == kube_secret["data"]
        assert local_secret["metadata"]["labels"] == kube_secret["metadata"]["labels"]
        assert (local_secret["metadata"]["annotations"]
                == kube_secret["metadata"]["annotations"])


# --------------------------------------------------------------------------- the store alone


def test_secret_reader_uses_one_list_per_kind_and_namespace(cluster: Cluster) -> None:
    cluster.secret("app", "password", "pw-1")
    cluster.secret("other", "token", "t")
    with KubeStore(cluster.api.api_client(), retry=FAST) as store:
        store.list_accounts()
        reader = store.secret_reader()
        cluster.api.clear_requests()
        assert reader.read(NS, KeyRef("app", "password")) == b"pw-1"
        assert reader.read(NS, KeyRef("ca", "ca.crt", kind="ConfigMap")).startswith(b"-----BEGIN")
        version = reader.version(NS, KeyRef("app", "password"))
        meta = cluster.api.get_object("secrets", NS, "app")["metadata"]
        assert version == f"{meta['uid']}/{meta['resourceVersion']}"  # nothing of the value
        assert store.get_secret(NS, "other")["metadata"]["name"] == "other"  # the same LIST
        with pytest.raises(SecretNotFound, match="shop/app has no key 'user'"):
            reader.read(NS, KeyRef("app", "user"))
        with pytest.raises(SecretNotFound, match="Secret shop/missing not found"):
            reader.read(NS, KeyRef("missing", "password"))
        assert cluster.api.count_by_verb() == {"list": 2}


def test_second_apply_with_same_manifest_sends_nothing(cluster: Cluster) -> None:
    manifest: dict[str, Any] = {
                "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
                "metadata": {"name": "a", "namespace": NS, "labels": {"team": "x"}},
                "spec": valid_spec()}
    with KubeStore(cluster.api.api_client(), retry=FAST) as store:
        store.list_accounts()
        first = store.apply_account(manifest)
        store.list_accounts()
        cluster.api.clear_requests()
        assert store.apply_account(manifest)["metadata"]["uid"] == first["metadata"]["uid"]
        assert writes(cluster.api) == []
        changed = copy.deepcopy(manifest)
        changed["spec"]["description"] = "now described"
        assert store.apply_account(changed)["metadata"]["generation"] == 2


def test_status_patch_removes_vanished_fields(cluster: Cluster) -> None:
    manifest = {"metadata": {"name": "a", "namespace": NS}, "spec": valid_spec()}
    with KubeStore(cluster.api.api_client(), retry=FAST) as store:
        store.list_accounts()
        store.apply_account(manifest)
        store.write_status(NS, "a", {"protocol": "STARTTLS", "tlsVersion": "TLSv1.3",
                                     "certificate": {"subject": "CN=x", "serial": "01"}})
        store.write_status(NS, "a", {"protocol": "None", "certificate": {"subject": "CN=y"}})
    obj = cluster.api.get_object("emailaccounts", NS, "a")
    assert obj is not None
    assert obj["status"] == {"protocol": "None", "certificate": {"subject": "CN=y"}}
    assert obj["spec"] == valid_spec() and obj["metadata"]["generation"] == 1


def test_forbidden_list_names_the_cluster_scope(cluster: Cluster) -> None:
    cluster.api.inject(403, 1, verb="list", resource="emailaccounts")
    with KubeStore(cluster.api.api_client(), retry=FAST) as store, \
            pytest.raises(StoreForbidden, match="cannot list emailaccounts.email.reconciler.io "
                                                "at the cluster scope"):
        store.list_accounts()


def test_unreachable_server_gives_store_unavailable(tmp_path: Path) -> None:
    api = KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES).start()
    url_client = api.api_client()
    api.stop()  # nothing listens on that port any more
    sleeps: list[float] = []
    with KubeStore(url_client, retry=FAST, sleep=sleeps.append) as store, \
            pytest.raises(StoreUnavailable, match="failed 5 times"):
        store.list_accounts()
    assert len(sleeps) == FAST.attempts - 1
    assert all(0 < s <= FAST.max_delay for s in sleeps)


def test_open_store_kube_reads_the_kubeconfig_context(cluster: Cluster, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.api.kubeconfig(tmp_path / "kubeconfig")))
    cluster.api.add_object("emailaccounts", {"metadata": {"name": "a", "namespace": NS},
                                             "spec": valid_spec()})
    cluster.api.add_object("emailaccounts", {"metadata": {"name": "b", "namespace": "other"},
                                             "spec": valid_spec()})
    store = open_store("kube", context="kubeapi")
    try:
        assert isinstance(store, KubeStore)
        assert {o["metadata"]["name"] for o in store.list_accounts()} == {"a", "b"}
    finally:
        store.close()
    with KubeStore.from_config(namespace="other") as scoped:
        assert [o["metadata"]["name"] for o in scoped.list_accounts()] == ["b"]


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({}, {"a": 1}, {"a": 1}),
    ({"a": 1, "b": 2}, {"a": 1}, {"a": 1, "b": None}),
    ({"c": {"x": 1, "y": 2}}, {"c": {"x": 1}}, {"c": {"x": 1, "y": None}}),
    ({"l": [1, 2]}, {"l": [3]}, {"l": [3]}),
    ({"c": {"x": 1}}, {"c": "flat"}, {"c": "flat"}),
])
def test_merge_patch_for(old: dict[str, Any], new: dict[str, Any],
                         patch: dict[str, Any]) -> None:
    assert merge_patch_for(old, new) == patch


@pytest.mark.parametrize(("stored_labels", "managed", "same"), [
    ({"app.kubernetes.io/managed-by": "email-reconciler"}, None, True),
    ({"app.kubernetes.io/managed-by": "email-reconciler", "added-by-kubectl": "x"}, None, True),
    ({}, None, False),
    ({"app.kubernetes.io/managed-by": "email-reconciler", "gone": "x"}, ["gone"], False),
    ({"app.kubernetes.io/managed-by": "email-reconciler", "theirs": "x"}, [], True),
])
def test_same_as_applied(stored_labels: dict[str, str], managed: list[str] | None,
                         same: bool) -> None:
    desired = {"metadata": {"name": "a", "labels": {
        "app.kubernetes.io/managed-by": "email-reconciler"}}, "spec": valid_spec()}
    stored: dict[str, Any] = {"metadata": {"name": "a", "labels": stored_labels},
                              "spec": valid_spec()}
    if managed is not None:
        fields: dict[str, Any] = {f"f:{k}": {} for k in ["app.kubernetes.io/managed-by", *managed]}
        stored["metadata"]["managedFields"] = [{
            "manager": "email-reconciler", "operation": "Apply",
            "fieldsV1": {"f:metadata": {"f:labels": fields}}}]
    assert same_as_applied(stored, desired) is same


def test_retry_delay_is_capped_exponential_with_jitter() -> None:
    policy = RetryPolicy(base_delay=0.05, max_delay=1.0)
    for failures, ceiling in [(1, 0.05), (2, 0.1), (3, 0.2), (6, 1.0), (20, 1.0)]:
        delays = [policy.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert policy.delay(1, retry_after=30) == 1.0


def test_probe_reads_credentials_from_the_cluster(cluster: Cluster, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.api.kubeconfig(tmp_path / "kubeconfig")))
    cluster.account("billing")
    cluster.api.clear_requests()
    assert main(["probe", str(cluster.manifests), "--secrets-from-cluster", "-o", "json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    ready = next(c for c in entry["status"]["conditions"] if c["type"] == "Ready")
    assert (entry["name"], ready["status"]) == ("billing", "True")
    assert set(cluster.api.count_by_verb()) == {"list"}  # reads Secrets/ConfigMaps, writes nothing
    assert main(["probe", str(cluster.manifests), "--secrets-from-cluster",
                 "--secrets-dir", str(tmp_path)]) == 2


def test_a_primed_store_reads_only_the_names_it_needs(cluster: Cluster) -> None:
    """Controller mode: the informers' caches are looked up by name, never copied whole, and a
    name they miss (an unlabelled Secret) costs one GET, remembered for the run (issue 26 item 4:
    a reconcile's cost does not grow with the Secrets of its namespace)."""
    cached = {(NS, f"s-{i}"): {"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": f"s-{i}", "namespace": NS},
                               "data": {"password": "cHc="}} for i in range(1000)}
    asked: list[tuple[str, str]] = []

    def lookup(namespace: str, name: str) -> dict[str, Any] | None:
        asked.append((namespace, name))
        return cached.get((namespace, name))

    cluster.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "unlabelled", "namespace": NS}})
    with KubeStore(cluster.api.api_client(), retry=FAST) as store:
        store.prime([{"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
                      "metadata": {"name": "a", "namespace": NS}}], lookup)
        cluster.api.clear_requests()
        got = store.get_secret(NS, "s-7")
        assert got == cached[(NS, "s-7")] and got is not cached[(NS, "s-7")]  # a copy
        got["data"]["password"] = "changed"
        assert cached[(NS, "s-7")]["data"]["password"] == "cHc="  # the cache is untouched
        assert store.get_secret(NS, "s-7")["data"]["password"] == "cHc="
        assert cluster.api.count_by_verb() == {}
        assert (store.get_secret(NS, "unlabelled") or {})["metadata"]["name"] == "unlabelled"
        assert store.get_secret(NS, "missing") is None
        assert store.get_secret(NS, "missing") is None  # the 404 is remembered
        assert cluster.api.count_by_verb() == {"get": 2}
        assert store.get_configmap(NS, "ca") is not None  # no ConfigMap source: a GET
    assert asked == [(NS, "s-7"), (NS, "unlabelled"), (NS, "missing")]


def test_a_primed_store_does_not_send_a_failed_read_again(cluster: Cluster) -> None:
    """A reconcile reads its credentials twice (their versions, then the probe, which in the
    controller runs on the one probe loop every worker shares): a GET the API server failed is
    not sent again in the same reconcile, so no probe waits out its timeouts a second time."""
    from reconciler.errors import StoreUnavailable

    with KubeStore(cluster.api.api_client(), retry=FAST) as store:
        store.prime([{"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
                      "metadata": {"name": "a", "namespace": NS}}], lambda ns, name: None)
        cluster.api.inject(500, 100, verb="get", resource="secrets")
        cluster.api.clear_requests()
        with pytest.raises(StoreUnavailable):
            store.get_secret(NS, "creds")
        sent = cluster.api.count_by_verb()
        assert sent.get("get", 0) >= 1
        with pytest.raises(StoreUnavailable):
            store.get_secret(NS, "creds")
        assert cluster.api.count_by_verb() == sent
        cluster.api.clear_faults()


def test_informers_keep_only_our_label_and_annotation_ownership() -> None:
    from reconciler.store.watch import slim

    obj = {"metadata": {"name": "s", "namespace": NS, "managedFields": [
        {"manager": "email-reconciler", "operation": "Apply", "fieldsV1": {
            "f:data": {"f:SMTP_PASSWORD": {}, "f:SMTP_HOST": {}},
            "f:metadata": {"f:labels": {"f:a": {}}, "f:annotations": {"f:b": {}},
                           "f:ownerReferences": {}}}},
        {"manager": "email-reconciler", "operation": "Update", "subresource": "status",
         "fieldsV1": {"f:status": {}}},
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {
            "f:labels": {"f:c": {}}}}}]}, "data": {"x": "eQ=="}}
    before = copy.deepcopy(obj)
    slimmed = slim(obj)
    assert obj == before  # the informer's input is not modified
    assert slimmed["metadata"]["managedFields"] == [
        {"manager": "email-reconciler", "operation": "Apply",
         "fieldsV1": {"f:metadata": {"f:labels": {"f:a": {}}, "f:annotations": {"f:b": {}}}}}]
    assert slimmed["data"] == obj["data"]
    from reconciler.store.base import owned_keys

    assert owned_keys(slimmed, "labels") == owned_keys(obj, "labels") == {"a"}
    assert owned_keys(slimmed, "annotations") == {"b"}
    kubectl_only = {"metadata": {"name": "t", "managedFields": [
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {}}]}}
    assert "managedFields" not in slim(kubectl_only)["metadata"]


def test_describe_and_request_through_the_cluster(cluster: Cluster, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main
    from reconciler.model import REQUESTED_AT_ANNOTATION

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.api.kubeconfig(tmp_path / "kubeconfig")))
    cluster.account("billing")
    cluster.account("relay")
    doc = yaml.safe_load((cluster.manifests / "relay.yaml").read_text())
    doc["spec"]["smtp"]["connection"]["security"] = "None"  # an insecure account: an Event
    doc["spec"]["smtp"]["connection"]["allowInsecureAuth"] = True
    cluster.write(doc)
    cluster.reconcile()
    capsys.readouterr()
    assert main(["describe", "billing", "--store", "kube"]) == 0
    out = capsys.readouterr().out
    assert "Name:         billing" in out and "SMTP_PASSWORD" in out and PASSWORD not in out
    assert main(["describe", "relay", "--store", "kube"]) == 0
    assert "InsecureConnection" in capsys.readouterr().out.split("Events:")[1]

    assert main(["request", "billing", "--store", "kube"]) == 0
    annotations = cluster.api.get_object("emailaccounts", NS, "billing")["metadata"]["annotations"]
    requested = annotations[REQUESTED_AT_ANNOTATION]
    cluster.reconcile()  # applying git again keeps the request: another field manager owns it
    kept = cluster.api.get_object("emailaccounts", NS, "billing")["metadata"]["annotations"]
    assert kept[REQUESTED_AT_ANNOTATION] == requested


def test_a_run_that_probes_and_finds_nothing_changed_writes_nothing(cluster: Cluster) -> None:
    """Issue 26 item 5: no heartbeat. Every account is due again (the interval passed), each is
    probed (AUTH is not due) and found as before: the run writes nothing, and the stored
    lastProbeTime stays at the last change."""
    cluster.account("billing")
    cluster.account("alerts")
    t0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert cluster.reconcile(clock=lambda: t0).all_ready
    before = cluster.status("billing")
    cluster.api.clear_requests()
    connections = cluster.servers.starttls.connections
    report = cluster.reconcile(clock=lambda: t0 + timedelta(minutes=11))
    assert [a.probed for a in report.accounts] == [True, True]
    # one endpoint check serves both (issue 26 item 2: no AUTH due, the same endpoint)
    assert cluster.servers.starttls.connections == connections + 1
    assert not report.changed
    assert writes(cluster.api) == []
    assert cluster.status("billing") == before

def test_informers_share_one_copy_of_repeated_keys_and_short_values_but_not_of_data() -> None:
    """Issue 26: two objects decoded from two watch events (as json.loads gives them, each with
    its own strings) come out of `slim` sharing their keys and short values; a long value and
    the values of `data` (a Secret's) are neither shared nor changed."""
    import json

    from reconciler.store.watch import INTERN_UP_TO, slim

    def decoded(name: str) -> dict[str, Any]:
        long = "m" * (INTERN_UP_TO + 1)
        return json.loads(json.dumps({
            "metadata": {"name": name, "namespace": "tenant-" + "a" * 3},
            "status": {"conditions": [{"type": "Ready", "reason": "Ready" + "!", "message": long}]},
            "data": {"SMTP_PASSWORD": "c2VjcmV0" + "LXZhbHVl"}}))

    a, b = decoded("one"), decoded("two")
    assert a["metadata"]["namespace"] is not b["metadata"]["namespace"]  # json.loads does not share
    sa, sb = slim(a), slim(b)
    assert sa == a and sb == b  # same content
    key_a = next(k for k in sa["status"]["conditions"][0] if k == "reason")
    key_b = next(k for k in sb["status"]["conditions"][0] if k == "reason")
    assert key_a is key_b
    assert sa["metadata"]["namespace"] is sb["metadata"]["namespace"]
    assert sa["status"]["conditions"][0]["reason"] is sb["status"]["conditions"][0]["reason"]
    assert sa["status"]["conditions"][0]["message"] is not sb["status"]["conditions"][0]["message"]
    assert next(iter(sa["data"])) is next(iter(sb["data"]))  # data keys are shared
    assert sa["data"]["SMTP_PASSWORD"] is not sb["data"]["SMTP_PASSWORD"]  # data values are not


def test_a_run_writes_last_auth_time_when_it_authenticated(cluster: Cluster) -> None:
    """Issue 26 item 5, the CronJob's side: a run is a short-lived process, so the stored
    lastAuthTime is how the next run knows when AUTH is due. A run after authInterval AUTHs and
    writes that (one write per account per authInterval in this mode only); the run after it
    finds AUTH not due and writes nothing."""
    cluster.account("billing")
    t0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert cluster.reconcile(clock=lambda: t0).all_ready
    logins = len(cluster.servers.starttls.auth_attempts)
    cluster.api.clear_requests()
    assert cluster.reconcile(clock=lambda: t0 + timedelta(hours=25)).all_ready
    assert len(cluster.servers.starttls.auth_attempts) == logins + 1
    assert [w[:2] for w in writes(cluster.api)] == [("patch", "emailaccounts")]
    assert cluster.status("billing")["lastAuthTime"] == "2026-11-26T09:00:00Z"
    cluster.api.clear_requests()
    assert cluster.reconcile(clock=lambda: t0 + timedelta(hours=25, minutes=11)).all_ready
    assert len(cluster.servers.starttls.auth_attempts) == logins + 1
    assert writes(cluster.api) == []
