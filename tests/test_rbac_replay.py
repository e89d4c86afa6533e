"""The RBAC of deploy/ replayed (issue 13 item 4): the product runs as each ServiceAccount deploy/
renders, with the exact arguments its CronJob or Deployment ships, through the official client
over real HTTP, against the fake API server that enforces the rendered Roles and RoleBindings.

A run that does its job must see no 401/403 at all; a Role missing one verb must get a 403 that
surfaces with its documented reason — so the enforcement is live, not vacuous.
"""

from __future__ import annotations

import base64
import copy
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.model import status_condition as condition
from tests.kube_fixtures import RBAC_KINDS, TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_account, loopback_servers
from tests.test_controller import PATIENCE, wait_for
from tests.test_deploy import DEPLOY, render

ROOT = Path(__file__).resolve().parent.parent
NS, OWN = "mail", "email-reconciler"
CONTROLLER, GITOPS = "email-reconciler-controller", "email-reconciler-gitops"
CREDENTIAL = {"email.reconciler.io/credential": "true"}
MANAGED_BY = "app.kubernetes.io/managed-by"
PASSWORD = "rbac-r3play-s3cret"
GIT_ACCOUNTS = "/git/current/accounts"
#: billing: Ready (truststore ConfigMap ca); broken: a wrong password; leaving: pruned with its
#: Secret; kept: pruned with deletionPolicy Orphan, its Secret stays.
ACCOUNTS = ("billing", "broken", "leaving", "kept")


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with loopback_servers() as started:
        yield started


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """`kubectl kustomize` of each mode (the CronJob's arguments differ between gitops and both)."""
    return {mode: render(DEPLOY / mode) for mode in ("gitops", "controller", "controller-one-namespace", "both")}


@pytest.fixture
def api(rendered: dict[str, list[dict[str, Any]]], servers: Servers) -> Iterator[KubeAPIServer]:
    """The fake with deploy/'s ServiceAccounts, Roles and bindings (as rendered for both modes: the
    cluster-wide controller) and the cluster-side inputs: the truststore ConfigMap and each
    account's password Secret."""
    with cluster(rendered["both"], servers) as server:
        yield server


@contextmanager
def cluster(objects: list[dict[str, Any]], servers: Servers) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as server:
        server.apply_manifests([d for d in objects
                                if d["kind"] in RBAC_KINDS and d["kind"] != "Namespace"])
        server.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "ca", "namespace": NS, "labels": CREDENTIAL},
                                         "data": {"ca.crt": servers.ca.ca_pem}})
        for name in ACCOUNTS:
            servers.users[f"{name}@example.com"] = PASSWORD
            password = "not-the-password" if name == "broken" else PASSWORD
            server.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                          "metadata": {"name": f"{name}-smtp", "namespace": NS,
                                                       "labels": CREDENTIAL},
                                          "data": {"password": base64.b64encode(password.encode()).decode()}})
        yield server


def git_checkout(folder: Path, servers: Servers, names: tuple[str, ...]) -> Path:
    """The accounts directory as git-sync leaves it: namespace-less manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for name in names:
        extra: dict[str, Any] = {"publish": {"deletionPolicy": "Orphan"}} if name == "kept" else {}
        doc = loopback_account(name, NS, servers.starttls.port, timeout=5, **extra)
        del doc["metadata"]["namespace"]
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return folder


def kubeconfig_as(api: KubeAPIServer, path: Path, service_account: str, namespace: str = OWN) -> Path:
    """What a Pod of the ServiceAccount has: its token and namespace (as a kubeconfig, since the
    fake is not at the in-cluster address)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "pod",
        "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
        "users": [{"name": service_account, "user": {"token": api.token_for(OWN, service_account)}}],
        "contexts": [{"name": "pod", "context": {"cluster": "fake", "user": service_account,
                                                 "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def container(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    obj = next(o for o in objects if o["kind"] == kind)
    template = obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else obj["spec"]["template"]
    pod = template["spec"]
    assert pod["serviceAccountName"] in (CONTROLLER, GITOPS)
    return {**next(c for c in pod["containers"] if c["name"] == name),
            "serviceAccountName": pod["serviceAccountName"]}


def cronjob_argv(objects: list[dict[str, Any]], folder: Path) -> tuple[str, list[str]]:
    """The CronJob's ServiceAccount and its reconcile container's exact arguments (the checkout
    path swapped for the test's folder)."""
    c = container(objects, "CronJob", "reconcile")
    assert GIT_ACCOUNTS in c["args"]
    return c["serviceAccountName"], [str(folder) if a == GIT_ACCOUNTS else a for a in c["args"]]


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def refusals(api: KubeAPIServer) -> list[tuple[str, str | None, str | None, str | None, int]]:
    return [(r.verb, r.resource, r.subresource, r.namespace, r.status) for r in api.requests
            if r.status in (401, 403)]


def status(api: KubeAPIServer, name: str) -> dict[str, Any]:
    return (api.get_object("emailaccounts", NS, name) or {}).get("status") or {}


def ready(api: KubeAPIServer, name: str) -> str | None:
    return condition(status(api, name), "Ready").get("status")


def gitops_as(api: KubeAPIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
              service_account: str) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_as(api, tmp_path / f"{service_account}.kubeconfig",
                                                       service_account)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


# --------------------------------------------------------------------------- gitops CronJob


def test_the_gitops_cronjob_as_its_service_account_reconciles_publishes_and_prunes_without_a_403(
        api: KubeAPIServer, servers: Servers, rendered: dict[str, list[dict[str, Any]]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = git_checkout(tmp_path / "accounts", servers, ACCOUNTS)
    account, argv = cronjob_argv(rendered["gitops"], folder)
    assert account == GITOPS and "--apply-only" not in argv
    gitops_as(api, monkeypatch, tmp_path, account)

    code, output = run_cli(argv)
    assert refusals(api) == [], output[-3000:]
    assert code != 0  # broken is not Ready: the run says so
    assert ready(api, "billing") == "True" and ready(api, "kept") == "True"
    assert ready(api, "broken") == "False"
    assert status(api, "billing")["observedGeneration"] == 1
    billing = api.get_object("secrets", NS, "billing-sender")
    assert billing is not None and billing["metadata"]["labels"][MANAGED_BY] == OWN
    assert billing["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    assert base64.b64decode(billing["data"]["ca.crt"]).decode() == servers.ca.ca_pem  # the truststore
    assert not api.get_object("secrets", NS, "kept-sender")["metadata"].get("ownerReferences")
    assert api.get_object("secrets", NS, "broken-sender") is None
    assert [e for e in api.objects("events", NS) if e["involvedObject"]["name"] == "broken"]

    # leaving and kept left git: both are pruned; leaving's Secret goes, kept's stays, unmanaged
    git_checkout(folder, servers, ("billing", "broken"))
    api.clear_requests()
    code, output = run_cli(argv)
    assert refusals(api) == [], output[-3000:]
    assert {o["metadata"]["name"] for o in api.objects("emailaccounts", NS)} == {"billing", "broken"}
    assert api.get_object("secrets", NS, "leaving-sender") is None
    kept = api.get_object("secrets", NS, "kept-sender")
    assert kept is not None and MANAGED_BY not in (kept["metadata"].get("labels") or {})
    assert {r.verb for r in api.requests if r.resource == "emailaccounts" and r.subresource is None} >= {
        "list", "delete"}
    assert PASSWORD not in output


def test_a_role_missing_one_verb_gets_a_403_that_surfaces_as_forbidden(
        api: KubeAPIServer, servers: Servers, rendered: dict[str, list[dict[str, Any]]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The negative control: the gitops rules without `patch` on secrets, as a Role of their own."""
    role = copy.deepcopy(next(d for d in rendered["gitops"]
                              if d["kind"] == "ClusterRole" and d["metadata"]["name"] == GITOPS))
    role["kind"] = "Role"
    rules = [r for r in role["rules"] if r.get("apiGroups") == [""] and "secrets" in r["resources"]]
    assert len(rules) == 1 and "patch" in rules[0]["verbs"]
    rules[0]["verbs"] = [v for v in rules[0]["verbs"] if v != "patch"]
    narrow = "gitops-without-secret-patch"
    role["metadata"] = {"name": narrow, "namespace": NS}
    api.apply_manifests([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": narrow, "namespace": OWN}},
        role,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": narrow, "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": narrow},
         "subjects": [{"kind": "ServiceAccount", "name": narrow, "namespace": OWN}]},
    ])
    folder = git_checkout(tmp_path / "accounts", servers, ("billing",))
    _account, argv = cronjob_argv(rendered["gitops"], folder)
    gitops_as(api, monkeypatch, tmp_path, narrow)

    code, output = run_cli(argv)
    assert code != 0
    assert {(v, r, s, ns, c) for v, r, s, ns, c in refusals(api)} == {("patch", "secrets", None, NS, 403)}
    published = condition(status(api, "billing"), "SecretPublished")
    assert (published["status"], published["reason"]) == ("False", "Forbidden")
    assert f'cannot patch secrets in namespace "{NS}"' in published["message"]
    assert ready(api, "billing") == "False"
    assert api.get_object("secrets", NS, "billing-sender") is None
    assert PASSWORD not in output + str(status(api, "billing"))


# --------------------------------------------------------------------------- both: CronJob + controller


def start_controller(api: KubeAPIServer, objects: list[dict[str, Any]], tmp_path: Path,
                     extra: tuple[str, ...] = (),
                     ) -> tuple[subprocess.Popen[bytes], Callable[[Callable[[], Any]], Callable[[], Any]]]:
    """The Deployment's container as a process, as its ServiceAccount, its arguments exactly but
    for the two listen addresses (a fixed port is not ours to take on a shared machine) and any
    `extra` ones; and a wrapper for wait_for predicates that fails at once if it died or was
    refused."""
    c = container(objects, "Deployment", "controller")
    assert c["serviceAccountName"] == CONTROLLER and "--shards=auto" in c["args"]
    args = [a.replace(":8080", "127.0.0.1:0").replace(":8081", "127.0.0.1:0") for a in c["args"]]
    args += extra
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POD_NAMESPACE": OWN,
           "KUBECONFIG": str(kubeconfig_as(api, tmp_path / "controller.kubeconfig", CONTROLLER))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def alive(predicate: Callable[[], Any]) -> Callable[[], Any]:
        def check() -> Any:
            if proc.poll() is not None:
                pytest.fail(f"the controller exited {proc.returncode}: {proc.communicate()[1].decode()[-3000:]}")
            assert refusals(api) == []
            return predicate()
        return check
    return proc, alive


def test_both_modes_apply_only_cronjob_and_the_sharded_controller_without_a_403(
        api: KubeAPIServer, servers: Servers, rendered: dict[str, list[dict[str, Any]]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    both = rendered["both"]
    folder = git_checkout(tmp_path / "accounts", servers, ACCOUNTS)
    account, cron_argv = cronjob_argv(both, folder)
    assert account == GITOPS and cron_argv[-1] == "--apply-only"
    gitops_as(api, monkeypatch, tmp_path, account)
    code, output = run_cli(cron_argv)
    assert (code, refusals(api)) == (0, []), output[-3000:]
    assert {o["metadata"]["name"] for o in api.objects("emailaccounts", NS)} == set(ACCOUNTS)

    proc, alive = start_controller(api, both, tmp_path)
    assert "--namespace" not in " ".join(proc.args)  # the cluster-wide controller

    def shard_leases() -> list[dict[str, Any]]:
        return [lease for lease in api.objects("leases", OWN) if (lease["metadata"].get(
            "labels") or {}).get("email.reconciler.io/shard-group") == "email-reconciler-shard"]

    def events_for(name: str) -> list[dict[str, Any]]:
        return [e for e in api.objects("events", NS) if e["involvedObject"]["name"] == name]

    try:
        wait_for(alive(shard_leases), PATIENCE, "the controller's shard Lease")
        wait_for(alive(lambda: all(ready(api, n) == "True" for n in ("billing", "leaving", "kept"))),
                 PATIENCE, "billing, leaving and kept Ready")
        wait_for(alive(lambda: ready(api, "broken") == "False" and events_for("broken")), PATIENCE,
                 "broken not Ready, with an Event")
        billing = wait_for(alive(lambda: api.get_object("secrets", NS, "billing-sender")), PATIENCE,
                           "billing-sender published")
        assert billing["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
        wait_for(alive(lambda: api.get_object("secrets", NS, "kept-sender")), PATIENCE, "kept-sender")

        # cluster-wide: an account of another namespace, with its own opted-in inputs, as well
        servers.users["tenant@example.com"] = PASSWORD
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "data": {"ca.crt": servers.ca.ca_pem},
                                      "metadata": {"name": "ca", "namespace": "team", "labels": CREDENTIAL}})
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "tenant-smtp", "namespace": "team", "labels": CREDENTIAL},
                                   "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
        api.add_object("emailaccounts", loopback_account("tenant", "team", servers.starttls.port, timeout=5))
        wait_for(alive(lambda: api.get_object("secrets", "team", "tenant-sender")), PATIENCE,
                 "tenant-sender published in team")

        # a deleted published Secret is republished
        old_uid = billing["metadata"]["uid"]
        with api.api_client() as admin:
            from kubernetes import client

            client.CoreV1Api(admin).delete_namespaced_secret("billing-sender", NS)
        wait_for(alive(lambda: (api.get_object("secrets", NS, "billing-sender") or {}).get(
            "metadata", {}).get("uid") not in (None, old_uid)), PATIENCE, "billing-sender republished")

        # leaving and kept leave git: the CronJob prunes them; leaving's Secret goes with it
        # (garbage collection of its owner), kept's (Orphan) stays
        wait_for(alive(lambda: not (api.get_object("secrets", NS, "kept-sender") or {}).get(
            "metadata", {}).get("ownerReferences")), PATIENCE, "kept-sender without ownerReferences")
        git_checkout(folder, servers, ("billing", "broken"))
        code, output = run_cli(cron_argv)
        assert (code, refusals(api)) == (0, []), output[-3000:]
        assert {o["metadata"]["name"] for o in api.objects("emailaccounts", NS)} == {"billing", "broken"}
        wait_for(alive(lambda: api.get_object("secrets", NS, "leaving-sender") is None), PATIENCE,
                 "leaving-sender collected")
        assert api.get_object("secrets", NS, "kept-sender") is not None

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert shard_leases() == []  # released: delete on its Lease is allowed
    assert refusals(api) == []
    seen = {(r.verb, r.resource, r.subresource) for r in api.requests}
    assert {("watch", "emailaccounts", None), ("patch", "emailaccounts", "status"), ("create", "events", None),
            ("create", "leases", None), ("list", "leases", None), ("delete", "leases", None)} <= seen
    assert PASSWORD.encode() not in out + err


# --------------------------------------------------------------------------- the controller for one namespace


def test_the_one_namespace_controller_serves_its_namespace_only_without_a_403(
        rendered: dict[str, list[dict[str, Any]]], servers: Servers, tmp_path: Path) -> None:
    """deploy/controller-one-namespace: its ClusterRole bound in mail only, `--namespace=mail`. It
    reconciles mail's accounts and sends no request outside mail and its own namespace, so the
    RoleBinding's scope is all it needs; an account in another namespace is left alone."""
    objects = rendered["controller-one-namespace"]
    assert not [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    with cluster(objects, servers) as api:
        api.add_object("emailaccounts", loopback_account("billing", NS, servers.starttls.port, timeout=5))
        api.add_object("emailaccounts", loopback_account("elsewhere", "team", servers.starttls.port, timeout=5))
        proc, alive = start_controller(api, objects, tmp_path)
        assert f"--namespace={NS}" in proc.args
        try:
            wait_for(alive(lambda: ready(api, "billing") == "True"), PATIENCE, "billing Ready")
            wait_for(alive(lambda: api.get_object("secrets", NS, "billing-sender")), PATIENCE,
                     "billing-sender published")
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=PATIENCE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()[-3000:]
        assert refusals(api) == []
        assert {r.namespace for r in api.requests if r.resource is not None} == {NS, OWN}
        assert not (api.get_object("emailaccounts", "team", "elsewhere") or {}).get("status")


# --------------------------------------------------------------------------- narrowed by a selector


def test_the_cluster_wide_controller_with_a_namespace_selector_without_a_403(
        rendered: dict[str, list[dict[str, Any]]], servers: Servers, tmp_path: Path) -> None:
    """deploy/controller with `--namespace-selector` (issue 26 item 1): it lists and watches
    Namespaces (the ClusterRole grants exactly that), serves mail, labelled, and team once
    labelled, and never a 403."""
    from kubernetes import client

    objects = rendered["controller"]
    served = "email.reconciler.io/served"
    with cluster(objects, servers) as api:
        servers.users["tenant@example.com"] = PASSWORD
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "data": {"ca.crt": servers.ca.ca_pem},
                                      "metadata": {"name": "ca", "namespace": "team", "labels": CREDENTIAL}})
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "tenant-smtp", "namespace": "team", "labels": CREDENTIAL},
                                   "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
        api.add_object("emailaccounts", loopback_account("billing", NS, servers.starttls.port, timeout=5))
        api.add_object("emailaccounts", loopback_account("tenant", "team", servers.starttls.port, timeout=5))
        with api.api_client() as admin:
            client.CoreV1Api(admin).patch_namespace(NS, {"metadata": {"labels": {served: "true"}}})
        proc, alive = start_controller(api, objects, tmp_path, (f"--namespace-selector={served}=true",))
        try:
            wait_for(alive(lambda: ready(api, "billing") == "True"), PATIENCE, "billing Ready")
            assert not (api.get_object("emailaccounts", "team", "tenant") or {}).get("status")
            with api.api_client() as admin:
                client.CoreV1Api(admin).patch_namespace("team", {"metadata": {"labels": {served: "true"}}})
            wait_for(alive(lambda: api.get_object("secrets", "team", "tenant-sender")), PATIENCE,
                     "tenant-sender published once team is labelled")
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=PATIENCE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()[-3000:]
        assert refusals(api) == []
        assert {("list", "namespaces"), ("watch", "namespaces")} <= {
            (r.verb, r.resource) for r in api.requests}
