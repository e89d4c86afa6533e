"""What a real cluster does with our objects besides our own requests (issue 13): other managers'
labels on a published Secret, and deletion of an account by someone else (kubectl, Flux, Argo CD)
with the garbage collector on."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.model import status_condition as condition
from reconciler.run.account_writer import secret_metadata_differs
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_servers
from tests.system import require_executable
from tests.test_kube_store import NS, Cluster, writes


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with loopback_servers() as started:
        yield started


@pytest.fixture
def cluster(servers: Servers, tmp_path: Path) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS,
                                                   "labels": {"email.reconciler.io/credential": "true"}},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        yield Cluster(api, tmp_path, servers)


def _foreign_metadata(cluster: Cluster, name: str) -> None:
    """What Reloader, Argo CD or an admission webhook do: add their own label and annotation
    with their own field manager."""
    from kubernetes import client

    with cluster.api.api_client() as api_client:
        client.CoreV1Api(api_client).patch_namespaced_secret(
            name, NS, {"metadata": {"labels": {"team.example.com/owner": "payments"},
                                    "annotations": {"reloader.stakater.com/match": "true"}}},
            field_manager="someone-else")


def test_foreign_labels_on_the_published_secret_cause_no_write_over_three_runs(
        cluster: Cluster) -> None:
    cluster.account("billing", publish={"labels": {"app": "billing"}})
    assert cluster.reconcile().all_ready
    _foreign_metadata(cluster, "billing-sender")
    before = cluster.api.get_object("secrets", NS, "billing-sender")
    cluster.api.clear_requests()
    for _ in range(3):
        report = cluster.reconcile()
        assert report.all_ready and not report.changed, [a.secret_changes
                                                         for a in report.accounts]
    assert writes(cluster.api) == []
    dry = cluster.reconcile(dry_run=True)
    assert not dry.changed and dry.accounts[0].secret_changes in ({}, {
        "added": [], "changed": [], "removed": []})
    assert cluster.api.get_object("secrets", NS, "billing-sender") == before


def _secret(labels: dict[str, str], owners: list[dict[str, str]] | None = None,
            managed: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "billing-sender", "labels": labels}
    if owners is not None:
        meta["ownerReferences"] = owners
    if managed is not None:
        meta["managedFields"] = [
            {"manager": "email-reconciler", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in managed}}}},
            {"manager": "someone-else", "operation": "Update", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}]
    return {"metadata": meta}


OURS = {"email.reconciler.io/account": "billing", "app": "billing"}
OWNER = {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
         "name": "billing", "uid": "u1", "controller": True, "blockOwnerDeletion": True}
FOREIGN_OWNER = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "name": "x",
                 "uid": "u2"}


@pytest.mark.parametrize(("existing", "desired", "differs"), [
    (_secret({**OURS, "team": "payments"}), _secret(OURS), False),  # a foreign label
    (_secret({**OURS, "team": "payments"}, managed=[*OURS]), _secret(OURS), False),
    (_secret({**OURS, "tier": "mail"}, managed=[*OURS, "tier"]), _secret(OURS), True),  # ours, gone
    (_secret({**OURS, "tier": "mail"}), _secret(OURS), False),  # unknown owner: not ours
    (_secret({**OURS, "email.reconciler.io/old": "x"}), _secret(OURS), True),  # our prefix
    (_secret({**OURS, "app": "other"}), _secret(OURS), True),  # a value we manage changed
    (_secret(OURS, [OWNER, FOREIGN_OWNER]), _secret(OURS, [OWNER]), False),
    (_secret(OURS, [OWNER]), _secret(OURS), True),  # Orphan: our ownerReference must go
    (_secret(OURS), _secret(OURS, [OWNER]), True),
])
def test_secret_metadata_compares_only_what_we_own(existing: dict[str, Any],
                                                   desired: dict[str, Any],
                                                   differs: bool) -> None:
    assert secret_metadata_differs(existing, desired) is differs


def _delete_account(cluster: Cluster, how: str, tmp_path: Path) -> None:
    if how == "client":
        from kubernetes import client

        with cluster.api.api_client() as api_client:
            client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
                "email.reconciler.io", "v1alpha1", NS, "emailaccounts", "billing",
                propagation_policy="Background")
        return
    kubectl = require_executable("kubectl", "install kubectl (https://kubernetes.io/docs/tasks/tools/)")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    subprocess.run([kubectl, "--server", cluster.api.url, "delete", "emailaccount", "billing",
                    "-n", NS, "--wait=false"], check=True, capture_output=True, env=env,
                   timeout=60)


@pytest.mark.parametrize("how", ["client", "kubectl"])
def test_orphan_secret_survives_deletion_of_the_account_by_anyone(
        cluster: Cluster, tmp_path: Path, how: str) -> None:
    cluster.account("billing", publish={"deletionPolicy": "Orphan"})
    assert cluster.reconcile().all_ready
    secret = cluster.api.get_object("secrets", NS, "billing-sender")
    assert secret is not None and not secret["metadata"].get("ownerReferences")
    _delete_account(cluster, how, tmp_path)
    assert cluster.api.get_object("emailaccounts", NS, "billing") is None
    assert cluster.api.get_object("secrets", NS, "billing-sender") is not None


def test_delete_policy_secret_goes_with_the_account(cluster: Cluster, tmp_path: Path) -> None:
    cluster.account("billing")
    assert cluster.reconcile().all_ready
    _delete_account(cluster, "client", tmp_path)
    assert cluster.api.get_object("secrets", NS, "billing-sender") is None


def test_switching_to_orphan_drops_the_owner_reference(cluster: Cluster, tmp_path: Path) -> None:
    doc = cluster.account("billing")
    assert cluster.reconcile().all_ready
    assert cluster.api.get_object("secrets", NS, "billing-sender")["metadata"]["ownerReferences"]
    doc["spec"]["publish"] = {"deletionPolicy": "Orphan"}
    cluster.write(doc)
    report = cluster.reconcile()
    assert condition(report.accounts[0].status, "Ready")["status"] == "True"
    secret = cluster.api.get_object("secrets", NS, "billing-sender")
    assert not secret["metadata"].get("ownerReferences")
    _delete_account(cluster, "client", tmp_path)
    assert cluster.api.get_object("secrets", NS, "billing-sender") is not None


def test_apply_only_applies_git_and_leaves_status_and_secrets_to_the_controller(
        cluster: Cluster) -> None:
    cluster.account("billing")
    cluster.reconcile(apply_only=True)
    obj = cluster.api.get_object("emailaccounts", NS, "billing")
    assert obj is not None and not obj.get("status")
    assert cluster.api.get_object("secrets", NS, "billing-sender") is None
    assert not [r for r in cluster.api.requests if (r.resource, r.subresource) == (
        "emailaccounts", "status") or (r.verb, r.resource) in (("patch", "secrets"),
                                                              ("create", "events"))]
