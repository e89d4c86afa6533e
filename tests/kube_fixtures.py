"""The ``kube_api`` fixture: a started :class:`tests.kubeapi.KubeAPIServer` serving our CRD.

Import it into a test module or a conftest (``from tests.kube_fixtures import kube_api``). The CRD
is ``deploy/crd.yaml`` when it exists (the generated one), else :data:`MINIMAL_CRD`.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubeapi import SYSTEM_NAMESPACES, KubeAPIServer
from tests.system import require_executable

# The namespaces the tests put objects in: a real server answers 404 for any other.
TEST_NAMESPACES = (*SYSTEM_NAMESPACES, "mail", "email-reconciler", "shop", "team", "other")
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DEPLOYED_CRD = DEPLOY / "crd.yaml"
RBAC_KINDS = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")

MINIMAL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "emailaccounts.email.reconciler.io"},
    "spec": {
        "group": "email.reconciler.io",
        "scope": "Namespaced",
        "names": {"plural": "emailaccounts", "singular": "emailaccount", "kind": "EmailAccount",
                  "listKind": "EmailAccountList", "shortNames": ["ea"]},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object",
                                           "x-kubernetes-preserve-unknown-fields": True}},
            "additionalPrinterColumns": [
                {"name": "Provider", "type": "string", "jsonPath": ".spec.provider"},
                {"name": "Protocol", "type": "string", "jsonPath": ".status.protocol"},
                {"name": "TLS", "type": "string", "jsonPath": ".status.tlsVersion"},
                {"name": "Ready", "type": "string",
                 "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                {"name": "Host", "type": "string", "priority": 1,
                 "jsonPath": ".spec.smtp.connection.host"},
            ],
        }],
    },
}


def valid_spec() -> dict[str, Any]:
    """A small EmailAccount spec the generated CRD admits (for tests about the store, not the spec)."""
    return {"provider": "custom",
            "smtp": {"connection": {"host": "smtp.example.com"}, "identity": {"emailAddress": "a@example.com"}}}


def email_account_crd() -> dict[str, Any]:
    """The generated CRD from ``deploy/crd.yaml`` if present, else the minimal one."""
    if DEPLOYED_CRD.exists():
        return yaml.safe_load(DEPLOYED_CRD.read_text())
    return MINIMAL_CRD


@pytest.fixture
def kube_api() -> Iterator[KubeAPIServer]:
    """A running API server on 127.0.0.1 serving the EmailAccount CRD; stopped afterwards."""
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as server:
        yield server


def render(path: Path = DEPLOY) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`: the objects one kustomization of deploy/ installs (fresh dicts)."""
    kubectl = require_executable("kubectl", "kubectl 1.27 or later (its kustomize has replacements)")
    return [d for d in yaml.safe_load_all(_kustomize(kubectl, str(path))) if d]


@functools.lru_cache(maxsize=32)
def _kustomize(kubectl: str, path: str) -> str:
    # deploy/ does not change during a run; a test's own copy has a path of its own
    return subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True,
                          timeout=60, check=True).stdout


#: The modes whose RBAC ``deployed_rbac`` loads by default: the controller for one namespace
#: (mail) and the GitOps CronJob, so that a request outside mail is refused.
ONE_NAMESPACE_MODES = ("controller-one-namespace", "gitops")


def deployed_rbac(modes: Sequence[str] = ONE_NAMESPACE_MODES) -> list[dict[str, Any]]:
    """The Namespaces, ServiceAccounts, Roles and bindings deploy/ renders for ``modes``, deduplicated."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for mode in modes:
        for doc in render(DEPLOY / mode):
            if doc.get("kind") in RBAC_KINDS:
                meta = doc["metadata"]
                found.setdefault((doc["kind"], meta.get("namespace", ""), meta["name"]), doc)
    return list(found.values())


@pytest.fixture
def service_account_client(kube_api: KubeAPIServer) -> Iterator[Callable[..., Any]]:
    """Factory: ``service_account_client("email-reconciler-controller")`` -> a kubernetes ApiClient.

    It authenticates with a ServiceAccount token, so the Roles and RoleBindings of deploy/ (loaded
    into ``kube_api`` on first use, with its Namespaces and ServiceAccounts) decide each request:
    anything they do not allow is 403 Forbidden. Clients are closed at teardown.
    """
    clients: list[Any] = []
    loaded = False

    def make(name: str, namespace: str = "email-reconciler") -> Any:
        nonlocal loaded
        if not loaded:
            existing = {n["metadata"]["name"] for n in kube_api.objects("namespaces")}
            kube_api.apply_manifests([d for d in deployed_rbac()
                                      if not (d["kind"] == "Namespace" and d["metadata"]["name"] in existing)])
            loaded = True
        api = kube_api.api_client_as(namespace, name)
        clients.append(api)
        return api

    yield make
    for api in clients:
        api.close()
