"""The ``kube_api`` fixture: a started :class:`tests.kubeapi.KubeAPIServer` serving our CRD.

Import it into a test module or a conftest (``from tests.kube_fixtures import kube_api``). The CRD
is ``deploy/crd.yaml`` when it exists (the generated one), else :data:`MINIMAL_CRD`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubeapi import SYSTEM_NAMESPACES, KubeAPIServer

# The namespaces the tests put objects in: a real server answers 404 for any other.
TEST_NAMESPACES = (*SYSTEM_NAMESPACES, "mail", "email-reconciler", "shop", "team", "other")
DEPLOYED_CRD = Path(__file__).resolve().parent.parent / "deploy" / "crd.yaml"

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
