"""The controller narrowed to some namespaces (issue 26 item 1): `--namespaces a,b` and
`--namespace-selector`, against tests/kubeapi over real HTTP through the official client, with real
SMTP servers on loopback; nothing of the controller is patched.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.model import status_condition as condition
from reconciler.run.controller import Controller
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_account, loopback_servers
from tests.test_controller import PATIENCE, wait_for

CREDENTIAL = {"email.reconciler.io/credential": "true"}
SERVED = "email.reconciler.io/served"
PASSWORD = "served-s3cret-p4ss"
WRITES = ("create", "update", "patch", "delete", "deletecollection")


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with loopback_servers() as started:
        yield started


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as server:
        yield server


def namespace_with_account(api: KubeAPIServer, servers: Servers, namespace: str,
                           labels: dict[str, str] | None = None) -> None:
    """A Namespace (created through the official client) with one account `app` and its opted-in
    password Secret and truststore."""
    from kubernetes import client

    with api.api_client() as admin:
        client.CoreV1Api(admin).create_namespace(
            {"metadata": {"name": namespace, "labels": labels or {}}})
    servers.users["app@example.com"] = PASSWORD
    api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "ca", "namespace": namespace,
                                               "labels": CREDENTIAL},
                                  "data": {"ca.crt": servers.ca.ca_pem}})
    api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "app-smtp", "namespace": namespace,
                                            "labels": CREDENTIAL},
                               "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
    api.add_object("emailaccounts", loopback_account("app", namespace, servers.starttls.port,
                                                     timeout=5))


def label_namespace(api: KubeAPIServer, namespace: str, value: str | None) -> None:
    from kubernetes import client

    with api.api_client() as admin:
        client.CoreV1Api(admin).patch_namespace(namespace, {"metadata": {"labels": {SERVED: value}}})


def rename_sender(api: KubeAPIServer, namespace: str, display_name: str) -> None:
    """A spec change of `app` (a new generation): a serving controller probes and republishes."""
    from kubernetes import client

    with api.api_client() as admin:
        client.CustomObjectsApi(admin).patch_namespaced_custom_object(
            "email.reconciler.io", "v1alpha1", namespace, "emailaccounts", "app",
            {"spec": {"smtp": {"identity": {"displayName": display_name}}}})


def status(api: KubeAPIServer, namespace: str) -> dict[str, Any]:
    return (api.get_object("emailaccounts", namespace, "app") or {}).get("status") or {}


def ready(api: KubeAPIServer, namespace: str) -> bool:
    return condition(status(api, namespace), "Ready").get("status") == "True"


def published(api: KubeAPIServer, namespace: str) -> dict[str, Any] | None:
    return api.get_object("secrets", namespace, "app-sender")


def served_now(api: KubeAPIServer, namespace: str, generation: int) -> bool:
    """`app` of `namespace` reconciled at `generation`, Ready, its Secret published."""
    return (status(api, namespace).get("observedGeneration") == generation
            and ready(api, namespace) and published(api, namespace) is not None)


@pytest.fixture
def controllers(api: KubeAPIServer) -> Iterator[list[Controller]]:
    started: list[Controller] = []
    yield started
    for ctl in started:
        ctl.stop()
        ctl.api_client.close()


def start(api: KubeAPIServer, controllers: list[Controller], **kwargs: Any) -> Controller:
    ctl = Controller(api.api_client(), workers=2, interval=600.0, watch_seconds=5, **kwargs)
    controllers.append(ctl)
    ctl.start()
    return ctl


def test_namespaces_serves_exactly_the_listed_ones(
        api: KubeAPIServer, servers: Servers, controllers: list[Controller]) -> None:
    for ns in ("ns-a", "ns-b", "ns-c"):
        namespace_with_account(api, servers, ns)
    api.clear_requests()
    start(api, controllers, namespaces=["ns-a,ns-b"])
    for ns in ("ns-a", "ns-b"):
        wait_for(lambda ns=ns: served_now(api, ns, 1), PATIENCE, f"app in {ns} Ready and published")
    assert status(api, "ns-c") == {} and published(api, "ns-c") is None
    # one informer per namespace and kind: nothing of ns-c is asked for, nothing cluster-wide
    touched = {r.namespace for r in api.requests if r.resource is not None}
    assert touched == {"ns-a", "ns-b"}, touched
    watched = {(r.resource, r.namespace) for r in api.requests if r.verb == "watch"}
    assert watched == {(kind, ns) for kind in ("emailaccounts", "secrets", "configmaps")
                       for ns in ("ns-a", "ns-b")}


def test_namespace_selector_follows_the_labels_of_namespaces(
        api: KubeAPIServer, servers: Servers, controllers: list[Controller]) -> None:
    namespace_with_account(api, servers, "sel-a", {SERVED: "true"})
    namespace_with_account(api, servers, "sel-b")
    namespace_with_account(api, servers, "sel-c", {SERVED: "true"})
    ctl = start(api, controllers, namespace_selector=f"{SERVED}=true")
    for ns in ("sel-a", "sel-c"):
        wait_for(lambda ns=ns: served_now(api, ns, 1), PATIENCE, f"app in {ns} Ready and published")
    assert status(api, "sel-b") == {} and published(api, "sel-b") is None
    assert {k[0] for k in ctl.accounts.cached_keys()} == {"sel-a", "sel-c"}  # only served ones held

    # sel-b gains the label: served at once (the interval is 10 minutes)
    label_namespace(api, "sel-b", "true")
    wait_for(lambda: served_now(api, "sel-b", 1), PATIENCE, "app in sel-b Ready once labelled")

    # sel-a loses it: no longer served, its account and Secret left as they are
    before = published(api, "sel-a")
    assert before is not None
    label_namespace(api, "sel-a", None)
    wait_for(lambda: not ctl.served.serves("sel-a")
             and "sel-a" not in {k[0] for k in ctl.accounts.cached_keys()}, PATIENCE,
             "sel-a dropped from the caches")
    api.clear_requests()
    rename_sender(api, "sel-a", "Left Alone")
    # the sentinel: the same change in a served namespace, after it on the same watch, is acted on
    rename_sender(api, "sel-c", "Still Served")
    wait_for(lambda: served_now(api, "sel-c", 2), PATIENCE, "sel-c re-probed at generation 2")
    assert status(api, "sel-a").get("observedGeneration") == 1 and ready(api, "sel-a")
    after = published(api, "sel-a")
    assert after is not None and after["metadata"]["resourceVersion"] == before["metadata"][
        "resourceVersion"]
    writes = [(r.verb, r.resource, r.subresource) for r in api.requests
              if r.namespace == "sel-a" and r.verb in WRITES]
    assert writes == [("patch", "emailaccounts", None)]  # the test's own spec change, nothing else

    # and labelled again, it is served again
    label_namespace(api, "sel-a", "true")
    wait_for(lambda: served_now(api, "sel-a", 2), PATIENCE, "sel-a served again")


def test_a_bad_selector_or_two_scopes_fail_at_start(api: KubeAPIServer) -> None:
    from reconciler.errors import UsageError

    with api.api_client() as client, pytest.raises(UsageError, match="not a label selector"):
        Controller(client, namespace_selector="served in true")
    with api.api_client() as client, pytest.raises(UsageError, match="exclude each other"):
        Controller(client, namespace="mail", namespaces=["a"])
