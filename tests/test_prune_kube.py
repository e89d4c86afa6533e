"""Prune and deletion safety in a cluster (issues 22 item 2, 23 items 3 and 10): the CLI with
`--store=kube` through the official client against tests/kubeapi over real HTTP, garbage
collector on, probing real SMTP servers on loopback. The same on the local store:
tests/test_prune.py."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.model import status_condition as condition
from reconciler.store.kube import INVENTORY_LABEL, inventory_configmap
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_account, loopback_servers
from tests.test_kube_store import CREDENTIAL, NS, PASSWORD, Cluster


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with loopback_servers() as started:
        yield started


@pytest.fixture
def cluster(servers: Servers, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS,
                                                   "labels": CREDENTIAL},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", NS)))
        yield Cluster(api, tmp_path, servers)


def run(cluster: Cluster, *args: str) -> int:
    paths = [a for a in args if not a.startswith("-")] or [str(cluster.manifests)]
    return main(["reconcile", *paths, "--store=kube",
                 *[a for a in args if a.startswith("-")]])


def exists(cluster: Cluster, resource: str, name: str) -> bool:
    return cluster.api.get_object(resource, NS, name) is not None


def ready(cluster: Cluster, name: str) -> bool:
    return condition(cluster.status(name), "Ready")["status"] == "True"


def deletes(cluster: Cluster) -> list[tuple[str | None, str | None]]:
    return [(r.resource, r.name) for r in cluster.api.requests if r.verb == "delete"]


def user(cluster: Cluster, name: str) -> None:
    cluster.servers.users[f"{name}@example.com"] = PASSWORD
    cluster.secret(f"{name}-smtp", "password", PASSWORD)


def test_a_subset_run_prunes_nothing_and_the_same_source_prunes_what_left_it(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.account("billing")
    cluster.account("alerts")
    assert run(cluster) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "; inventory " in x)
    assert re.search(rf"cluster context kubeapi at {re.escape(cluster.api.url)} "
                     r"\(all namespaces\); inventory [-a-z0-9]*accounts-[0-9a-f]{8}$", line), line
    source = line.rsplit(" ", 1)[1]
    inventory = cluster.api.get_object("configmaps", NS, inventory_configmap(source))
    assert inventory is not None and inventory["metadata"]["labels"][INVENTORY_LABEL] == source
    assert json.loads(inventory["data"]["entries"]) == [
        {"name": "alerts", "secretName": "alerts-sender"},
        {"name": "billing", "secretName": "billing-sender"}]

    cluster.api.clear_requests()
    assert run(cluster, str(cluster.manifests / "billing.yaml"), f"--namespace={NS}") == 0
    assert "(namespace shop)" in capsys.readouterr().err
    assert deletes(cluster) == []
    assert exists(cluster, "emailaccounts", "alerts") and exists(cluster, "secrets", "alerts-sender")

    (cluster.manifests / "alerts.yaml").unlink()
    assert run(cluster) == 0
    assert f"pruned {NS}/alerts" in capsys.readouterr().out
    assert not exists(cluster, "emailaccounts", "alerts")
    assert not exists(cluster, "secrets", "alerts-sender")
    assert ready(cluster, "billing") and exists(cluster, "secrets", "billing-sender")


def test_an_account_moved_to_another_source_is_not_pruned_by_the_first(cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.account("alerts")
    assert run(cluster, "--inventory=team-a") == 0
    moved = cluster.root / "team-b"
    moved.mkdir()
    shutil.move(cluster.manifests / "alerts.yaml", moved / "alerts.yaml")
    assert run(cluster, str(moved), "--inventory=team-b") == 0
    cluster.api.clear_requests()
    assert run(cluster, "--inventory=team-a") == 0
    assert deletes(cluster) == []
    assert ready(cluster, "alerts") and exists(cluster, "secrets", "alerts-sender")


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_a_hijacking_manifest_is_blamed_and_removing_it_keeps_the_victims_secret(
        cluster: Cluster, policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.account("victim")
    assert run(cluster) == 0
    before = cluster.api.get_object("secrets", NS, "victim-sender")
    user(cluster, "mallory")
    hijack = loopback_account("mallory", NS, cluster.servers.starttls.port, publish={
        "secretName": "victim-sender", "deletionPolicy": policy})
    first = cluster.manifests / "0-first.yaml"  # sorts before victim.yaml
    first.write_text(yaml.safe_dump(hijack))
    capsys.readouterr()
    assert run(cluster) == 1
    err = capsys.readouterr().err
    assert re.search(r"0-first\.yaml:\d+:\d+: .*Secret shop/victim-sender is already published "
                     r"by account victim .*owns it now", err), err
    assert ready(cluster, "victim") and not exists(cluster, "emailaccounts", "mallory")

    # mallory in a source of its own: applied, SecretConflict; removed, pruned alone
    other = cluster.root / "team-m"
    other.mkdir()
    shutil.move(first, other / "mallory.yaml")
    assert run(cluster, str(other)) == 1
    assert condition(cluster.status("mallory"), "Ready")["reason"] == "SecretConflict"
    (other / "mallory.yaml").unlink()
    user(cluster, "keep")
    (other / "keep.yaml").write_text(yaml.safe_dump(
        loopback_account("keep", NS, cluster.servers.starttls.port)))
    cluster.api.clear_requests()
    assert run(cluster, str(other)) == 0
    assert not exists(cluster, "emailaccounts", "mallory")
    assert ("secrets", "victim-sender") not in deletes(cluster)
    assert not [r for r in cluster.api.requests
                if r.resource == "secrets" and r.name == "victim-sender" and r.verb != "get"]
    assert cluster.api.get_object("secrets", NS, "victim-sender") == before
    assert run(cluster) == 0
    assert ready(cluster, "victim")


@pytest.mark.parametrize("field,value", [("name", "Victim"), ("name", "victim "),
                                         ("namespace", "Shop")])
def test_an_identity_the_api_server_cannot_hold_deletes_nothing(
        cluster: Cluster, field: str, value: str) -> None:
    doc: dict[str, Any] = cluster.account("victim")
    cluster.account("other")
    assert run(cluster) == 0
    doc["metadata"][field] = value
    (cluster.manifests / "victim.yaml").write_text(yaml.safe_dump(doc))
    cluster.api.clear_requests()
    assert run(cluster) == 1
    assert deletes(cluster) == []
    assert ready(cluster, "victim") and exists(cluster, "secrets", "victim-sender")


def test_an_upgrade_from_the_single_inventory_adopts_and_prunes_nothing_at_first(
        cluster: Cluster) -> None:
    """Accounts applied before inventories were per source (one ConfigMap
    email-reconciler-inventory listing every account) are not pruned by the first run of a
    source: it records what it applied; its next runs prune what leaves it."""
    for name in ("billing", "alerts", "legacy"):
        cluster.account(name)
    assert run(cluster, "--inventory=git") == 0
    from kubernetes import client

    with cluster.api.api_client() as api_client:  # as a store written by the older version
        client.CoreV1Api(api_client).delete_namespaced_config_map(inventory_configmap("git"), NS)
    cluster.api.add_object("configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "email-reconciler-inventory", "namespace": NS,
                     "labels": {"email.reconciler.io/inventory": "true"}},
        "data": {"entries": json.dumps(["alerts", "billing", "legacy"])}})
    (cluster.manifests / "legacy.yaml").unlink()
    cluster.api.clear_requests()
    assert run(cluster, str(cluster.manifests / "billing.yaml")) == 0
    assert run(cluster, "--inventory=git") == 0
    assert deletes(cluster) == []
    assert cluster.inventory("git") == {"alerts": "alerts-sender", "billing": "billing-sender"}
    (cluster.manifests / "alerts.yaml").unlink()
    assert run(cluster, "--inventory=git") == 0
    assert sorted(deletes(cluster), key=str) == [("emailaccounts", "alerts"),
                                                 ("secrets", "alerts-sender")]
    assert not exists(cluster, "secrets", "alerts-sender")
    assert exists(cluster, "emailaccounts", "legacy") and ready(cluster, "legacy")
