"""Namespace scoping with kubectl's rules (issue 13): a manifest without metadata.namespace goes to
--namespace, else to the kubeconfig context's namespace; with --namespace, a manifest naming
another namespace is an error naming the file and nothing is written for it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.store.local import LocalStore
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd, render
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_account, loopback_servers, write_manifests

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "ns-s3cr3t"
WRITES = ("create", "update", "patch", "delete", "deletecollection")


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with loopback_servers() as started:
        yield started


def _manifest(servers: Servers, name: str, namespace: str | None) -> dict[str, Any]:
    doc = loopback_account(name, namespace or "", servers.starttls.port)
    if namespace is None:
        del doc["metadata"]["namespace"]
    servers.users[f"{name}@example.com"] = PASSWORD
    return doc


def _cluster_inputs(api: KubeAPIServer, servers: Servers, namespace: str,
                    names: list[str]) -> None:
    api.create_namespace(namespace)
    api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "ca", "namespace": namespace,
                                               "labels": {"email.reconciler.io/credential": "true"}},
                                  "data": {"ca.crt": servers.ca.ca_pem}})
    for name in names:
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": f"{name}-smtp", "namespace": namespace,
                                                "labels": {"email.reconciler.io/credential": "true"}},
                                   "data": {"password": base64.b64encode(
                                       PASSWORD.encode()).decode()}})


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _cronjob_args() -> list[str]:
    """The reconcile container's arguments, exactly as deploy/ ships them."""
    cronjob = next(d for d in render(ROOT / "deploy" / "gitops") if d.get("kind") == "CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "reconcile")
    return list(container["args"])


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as server:
        yield server


def test_the_cronjob_arguments_write_namespace_less_manifests_only_to_mail(
        api: KubeAPIServer, servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_manifests(tmp_path / "accounts", _manifest(servers, "billing", None),
                    _manifest(servers, "alerts", None))
    _cluster_inputs(api, servers, "mail", ["billing", "alerts"])
    # The kubeconfig's context says `default`: --namespace=mail must win over it.
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = _cronjob_args()
    assert "--namespace=mail" in args and "--store=kube" in args
    argv = [str(folder) if a == "/git/current/accounts" else a for a in args]
    assert str(folder) in argv, args
    api.clear_requests()
    code, out, err = _run(argv)
    assert code == 0, out + err
    writes = [(r.verb, r.namespace, r.resource) for r in api.requests if r.verb in WRITES]
    assert writes and {ns for _v, ns, _r in writes} == {"mail"}, writes
    assert {r for _v, _ns, r in writes} >= {"emailaccounts", "secrets", "configmaps"}
    assert api.get_object("secrets", "mail", "billing-sender") is not None
    assert api.objects("emailaccounts", "default") == []


def test_the_kubeconfig_context_namespace_is_the_default_without_a_flag(
        api: KubeAPIServer, servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_manifests(tmp_path / "accounts", _manifest(servers, "billing", None),
                    _manifest(servers, "alerts", "other"))
    _cluster_inputs(api, servers, "team-a", ["billing"])
    _cluster_inputs(api, servers, "other", ["alerts"])
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig",
                                                       namespace="team-a")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, out, err = _run(["reconcile", str(folder), "--store=kube"])
    assert code == 0, out + err
    assert api.get_object("emailaccounts", "team-a", "billing") is not None
    # without --namespace, a manifest naming its namespace goes there (kubectl apply -f)
    assert api.get_object("emailaccounts", "other", "alerts") is not None
    assert api.objects("emailaccounts", "default") == []


def test_a_manifest_naming_another_namespace_is_an_error_and_nothing_is_written_for_it(
        api: KubeAPIServer, servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_manifests(tmp_path / "accounts", _manifest(servers, "billing", None),
                    _manifest(servers, "intruder", "payments"))
    _cluster_inputs(api, servers, "mail", ["billing"])
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api.clear_requests()
    code, out, err = _run(["reconcile", str(folder), "--store=kube", "--namespace=mail"])
    assert code == 1
    assert f"{folder / 'intruder.yaml'}:" in err and "/metadata/namespace" in err, err
    assert "--namespace=payments" in err
    assert api.get_object("emailaccounts", "mail", "billing") is not None
    assert not [r for r in api.requests if r.verb in WRITES and r.namespace != "mail"]
    assert not [r for r in api.requests if r.name and "intruder" in r.name]


def test_local_mode_follows_the_same_rule(servers: Servers, tmp_path: Path) -> None:
    folder = write_manifests(tmp_path / "accounts", _manifest(servers, "billing", None),
                    _manifest(servers, "intruder", "payments"))
    secrets = tmp_path / "secrets" / "mail" / "billing-smtp"
    secrets.mkdir(parents=True)
    (secrets / "password").write_text(PASSWORD)
    (tmp_path / "secrets" / "mail" / "ca").mkdir()
    (tmp_path / "secrets" / "mail" / "ca" / "ca.crt").write_text(servers.ca.ca_pem)
    store = tmp_path / "store"
    code, out, err = _run(["reconcile", str(folder), f"--store=local:{store}", "--namespace=mail",
                           "--secrets-dir", str(tmp_path / "secrets")])
    assert code == 1, out + err
    assert "intruder.yaml" in err and "/metadata/namespace" in err
    local = LocalStore(store)
    assert [(o["metadata"]["namespace"], o["metadata"]["name"])
            for o in local.list_accounts()] == [("mail", "billing")]
    assert list(local.read_inventories().values()) == [{("mail", "billing"): "billing-sender"}]
    # without --namespace, a namespace-less manifest goes to "default", as with kubectl
    code, out, err = _run(["reconcile", str(folder / "billing.yaml"), f"--store=local:{store}",
                           "--secrets-dir", str(tmp_path / "secrets"), "--no-prune"])
    assert {o["metadata"]["namespace"] for o in local.list_accounts()} == {"mail", "default"}
