"""Controller mode (issue 8): informers, work queue, backoff, leader election, metrics, SIGTERM.

Against tests/kubeapi.py over real HTTP through the official client, with real SMTP servers on
loopback; nothing of the controller is patched.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.run.controller import Controller
from reconciler.run.demo_servers import RunningServer, ServerLoop, SmtpServerOptions, ThrowawayCA
from tests.kube_fixtures import email_account_crd
from tests.kubeapi import KubeAPIServer

NS = "shop"
PASSWORD = "ctl-s3cret-p4ss!"
NEW_PASSWORD = "ctl-r0tated-p4ss?"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Servers:
    ca: ThrowawayCA
    starttls: RunningServer
    users: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """One STARTTLS server for the module; logins checked against `users`."""
    users: dict[str, str] = {}

    def check(mechanism: str, login: str, secret: str) -> bool:
        return users.get(login) == secret

    with ServerLoop() as loop:
        ca = ThrowawayCA()
        starttls = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                               checker=check))
        yield Servers(ca, starttls, users)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; its value, or fail naming `what`."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    api: KubeAPIServer
    servers: Servers
    controllers: list[tuple[Controller, Any]] = field(default_factory=list)

    def secret(self, name: str, key: str, value: str) -> None:
        data = {key: base64.b64encode(value.encode()).decode()}
        if self.api.get_object("secrets", NS, name) is None:
            self.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                            "metadata": {"name": name, "namespace": NS},
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
        self.api.add_object("emailaccounts", {
            "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "provider": "custom",
                "smtp": {
                    "identity": {"emailAddress": f"{name}@example.com"},
                    "connection": {"host": "127.0.0.1", "port": port or self.servers.starttls.port,
                                   "security": "STARTTLS", "timeoutSeconds": 2,
                                   "truststore": {"configMapRef": {"name": "ca", "key": "ca.crt"}}},
                    "authentication": {"method": "Password",
                                       "passwordSecretRef": {"name": f"{name}-smtp",
                                                             "key": "password"}},
                },
                **spec_extra,
            },
        })

    def status(self, name: str) -> dict[str, Any]:
        obj = self.api.get_object("emailaccounts", NS, name)
        return (obj or {}).get("status") or {}

    def ready(self, name: str) -> bool:
        return condition(self.status(name), "Ready").get("status") == "True"

    def published(self, name: str) -> dict[str, str] | None:
        obj = self.api.get_object("secrets", NS, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}

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


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


@pytest.fixture
def cluster(servers: Servers) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()]) as api:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS},
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
    assert ctl.wait_synced(5)
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), 5, "billing Ready")
    secret = wait_for(lambda: cluster.published("billing-sender"), 5, "published Secret")
    assert secret["SMTP_PASSWORD"] == PASSWORD
    assert secret["SMTP_PORT"] == str(cluster.servers.starttls.port)
    status = cluster.status("billing")
    assert status["observedGeneration"] == 1
    assert status["protocol"] == "STARTTLS"
    # our own status writes do not trigger more reconciles (the Secret's ADDED may add one)
    time.sleep(0.5)
    assert ctl.reconciles[(NS, "billing")] <= 2


def test_spec_change_reprobes_and_rerenders(cluster: Cluster) -> None:
    ctl = cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), 5, "billing Ready")
    before = cluster.servers.starttls.connections
    time.sleep(0.3)  # let the Secret's own ADDED event settle
    reconciles = ctl.reconciles[(NS, "billing")]
    cluster.patch("emailaccounts", "billing",
                  {"spec": {"smtp": {"identity": {"emailAddress": "billing@example.com",
                                                  "displayName": "Billing Team"}}}})
    wait_for(lambda: cluster.status("billing").get("observedGeneration") == 2, 5,
             "observedGeneration 2")
    assert cluster.servers.starttls.connections > before
    secret = wait_for(lambda: (cluster.published("billing-sender") or {}).get("SMTP_FROM_NAME"),
                      5, "re-rendered Secret")
    assert secret == "Billing Team"
    time.sleep(0.3)
    assert ctl.reconciles[(NS, "billing")] == reconciles + 1  # not again for our status write


def test_changed_password_secret_rerenders_the_published_secret(cluster: Cluster) -> None:
    cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.ready("billing"), 5, "billing Ready")
    cluster.servers.users["billing@example.com"] = NEW_PASSWORD
    cluster.secret("billing-smtp", "password", NEW_PASSWORD)
    wait_for(lambda: (cluster.published("billing-sender") or {}).get("SMTP_PASSWORD")
             == NEW_PASSWORD, 5, "new password published")
    assert cluster.ready("billing")


def test_deleted_published_secret_is_recreated(cluster: Cluster) -> None:
    cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.published("billing-sender"), 5, "published Secret")
    cluster.delete("secrets", "billing-sender")
    assert cluster.published("billing-sender") is None
    secret = wait_for(lambda: cluster.published("billing-sender"), 5, "recreated Secret")
    assert secret["SMTP_PASSWORD"] == PASSWORD


def test_deleted_account_leaves_nothing_behind(cluster: Cluster) -> None:
    ctl = cluster.controller()
    cluster.account("billing")
    wait_for(lambda: cluster.published("billing-sender"), 5, "published Secret")
    cluster.delete("emailaccounts", "billing")
    wait_for(lambda: (NS, "billing") not in ctl.accounts.cached_keys(), 5, "account gone from cache")
    wait_for(lambda: cluster.api.get_object("secrets", NS, "billing-sender") is None, 5,
             "published Secret deleted with its account")
    time.sleep(0.3)
    assert cluster.api.get_object("secrets", NS, "billing-sender") is None
    assert cluster.api.get_object("emailaccounts", NS, "billing") is None
    assert ctl.queue.depth() == 0
