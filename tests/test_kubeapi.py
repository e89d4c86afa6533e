"""The test Kubernetes API server, through the official client and kubectl, over real HTTP."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kube_fixtures import DEPLOYED_CRD, MINIMAL_CRD, email_account_crd, kube_api
from tests.kubeapi import ADMIN_TOKEN, KubeAPIServer, jsonpath_first, label_selector_matches

__all__ = ["kube_api"]  # the fixture, imported for pytest

GROUP, VERSION, PLURAL = "email.reconciler.io", "v1alpha1", "emailaccounts"
KUBECTL = shutil.which("kubectl")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture
def api_client(kube_api: KubeAPIServer) -> Iterator[client.ApiClient]:
    with kube_api.api_client() as api:
        yield api


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def account(name: str, provider: str = "gmail", **labels: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EmailAccount",
            "metadata": {"name": name, "labels": labels},
            "spec": {"provider": provider, "smtp": {"connection": {"host": "smtp.example.com"},
                                                    "identity": {"emailAddress": f"{name}@example.com"}}}}


def create(custom: client.CustomObjectsApi, body: dict[str, Any], ns: str = "team") -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def get(custom: client.CustomObjectsApi, name: str, ns: str = "team") -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


# --------------------------------------------------------------------------- CRUD


def test_create_answers_201_and_the_client_returns_the_object(
        kube_api: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    created = create(custom, account("a"))
    assert created["metadata"]["name"] == "a"
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert created["metadata"]["namespace"] == "team"
    assert kube_api.requests[-1].status == 201
    assert kube_api.requests[-1].verb == "create"
    assert kube_api.get_object(PLURAL, "team", "a") == created
    with pytest.raises(ApiException) as excinfo:
        create(custom, account("a"))
    assert excinfo.value.status == 409
    assert json.loads(excinfo.value.body)["reason"] == "AlreadyExists"


def test_put_with_a_stale_resource_version_is_409_and_put_of_an_absent_object_404(
        custom: client.CustomObjectsApi) -> None:
    first = create(custom, account("a"))
    first["spec"]["provider"] = "yahoo"
    second = custom.replace_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a", first)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert second["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as excinfo:  # first still carries the old resourceVersion
        custom.replace_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a", first)
    assert excinfo.value.status == 409
    status = json.loads(excinfo.value.body)
    assert (status["kind"], status["reason"], status["details"]["name"]) == ("Status", "Conflict", "a")
    with pytest.raises(ApiException) as excinfo:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "b", account("b"))
    assert excinfo.value.status == 404
    assert json.loads(excinfo.value.body)["reason"] == "NotFound"


@pytest.mark.parametrize(("content_type", "patch"), [
    ("application/merge-patch+json", {"data": {"b": "2", "a": None}}),
    ("application/strategic-merge-patch+json", {"data": {"b": "2", "a": None}}),
    ("application/json-patch+json", [{"op": "remove", "path": "/data/a"},
                                     {"op": "add", "path": "/data/b", "value": "2"}]),
])
def test_patch_content_types(core: client.CoreV1Api, content_type: str, patch: Any) -> None:
    core.create_namespaced_config_map("team", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    patched = core.patch_namespaced_config_map("cm", "team", patch, _content_type=content_type)
    assert patched.data == {"b": "2"}
    assert core.read_namespaced_config_map("cm", "team").data == {"b": "2"}


def test_server_side_apply_creates_updates_and_removes_fields_it_no_longer_applies(
        kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    def apply(data: dict[str, str], **kwargs: Any) -> client.V1Secret:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"x": "1"}},
                "data": encoded}
        return core.patch_namespaced_secret("s", "team", body, field_manager="email-reconciler",
                                            _content_type="application/apply-patch+yaml", **kwargs)

    created = apply({"A": "1", "B": "2"})
    assert kube_api.requests[-1].status == 201
    assert created.data == {"A": "MQ==", "B": "Mg=="}
    core.patch_namespaced_secret("s", "team", {"metadata": {"annotations": {"other": "kept"}}})
    updated = apply({"A": "3"}, force=True)
    assert updated.data == {"A": "Mw=="}  # B was ours last time and is not applied now
    assert updated.metadata.annotations == {"other": "kept"}  # another writer's field stays
    assert updated.metadata.labels == {"x": "1"}
    with pytest.raises(ApiException) as excinfo:
        core.patch_namespaced_secret("s", "team", {"metadata": {"name": "s"}},
                                     _content_type="application/apply-patch+yaml")
    assert excinfo.value.status == 422
    assert "fieldManager" in json.loads(excinfo.value.body)["message"]


def test_server_side_apply_accepts_a_yaml_body(kube_api: KubeAPIServer) -> None:
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  k: v\n"
    request = urllib.request.Request(
        f"{kube_api.url}/api/v1/namespaces/team/configmaps/y?fieldManager=me", data=body,
        method="PATCH", headers={"Content-Type": "application/apply-patch+yaml", **AUTH})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
        assert json.load(response)["data"] == {"k": "v"}


def test_status_subresource_isolation_and_generation(custom: client.CustomObjectsApi) -> None:
    body = account("a")
    body["status"] = {"protocol": "ignored on create"}
    created = create(custom, body)
    assert "status" not in created
    status = {"status": {"protocol": "STARTTLS", "observedGeneration": 1}}
    after_status = custom.patch_namespaced_custom_object_status(GROUP, VERSION, "team", PLURAL, "a",
                                                                {**status, "spec": {"provider": "x"}})
    assert after_status["status"]["protocol"] == "STARTTLS"
    assert after_status["spec"]["provider"] == "gmail"  # /status does not write spec
    assert after_status["metadata"]["generation"] == 1  # nor bump generation
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "team", PLURAL, "a",
        {"metadata": {"labels": {"l": "v"}}, "status": {"protocol": "SMTPS"}})
    assert labelled["status"]["protocol"] == "STARTTLS"  # the main resource does not write status
    assert labelled["metadata"]["generation"] == 1  # metadata changes do not bump generation
    respec = custom.patch_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a",
                                                   {"spec": {"provider": "yahoo"}})
    assert respec["metadata"]["generation"] == 2
    same = custom.patch_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a",
                                                 {"spec": {"provider": "yahoo"}})
    assert same["metadata"]["resourceVersion"] == respec["metadata"]["resourceVersion"]


def test_lists_have_kind_api_version_resource_version_and_pages(
        kube_api: KubeAPIServer, custom: client.CustomObjectsApi, core: client.CoreV1Api) -> None:
    for i in range(5):
        create(custom, account(f"a{i}"), ns="team" if i % 2 else "other")
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert everywhere["kind"] == "EmailAccountList"
    assert everywhere["apiVersion"] == f"{GROUP}/{VERSION}"
    assert everywhere["metadata"]["resourceVersion"] == kube_api.resource_version
    assert len(everywhere["items"]) == 5
    assert all(i["kind"] == "EmailAccount" for i in everywhere["items"])
    in_team = custom.list_namespaced_custom_object(GROUP, VERSION, "team", PLURAL)
    assert [i["metadata"]["name"] for i in in_team["items"]] == ["a1", "a3"]
    page = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=2)
    rest = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                             _continue=page["metadata"]["continue"])
    assert len(page["items"]) == 2 and len(rest["items"]) == 3
    namespaces = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "team", "other"} <= namespaces  # created on first use


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=gold", ["a"]),
    ("tier==gold", ["a"]),
    ("tier!=gold", ["b", "c"]),
    ("tier in (gold,silver)", ["a", "b"]),
    ("tier notin (gold)", ["b", "c"]),
    ("tier", ["a", "b"]),
    ("!tier", ["c"]),
    ("tier,env=prod", ["b"]),
])
def test_label_selectors(custom: client.CustomObjectsApi, selector: str,
                         expected: list[str]) -> None:
    create(custom, account("a", tier="gold"))
    create(custom, account("b", tier="silver", env="prod"))
    create(custom, account("c"))
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "team", PLURAL,
                                                  label_selector=selector)
    assert [i["metadata"]["name"] for i in listed["items"]] == expected


def test_field_selectors_and_a_bad_label_selector(core: client.CoreV1Api) -> None:
    for ns, name in (("team", "x"), ("team", "y"), ("other", "x")):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name}})
    by_name = core.list_config_map_for_all_namespaces(field_selector="metadata.name=x")
    assert sorted(c.metadata.namespace for c in by_name.items) == ["other", "team"]
    by_ns = core.list_config_map_for_all_namespaces(field_selector="metadata.namespace!=team")
    assert [c.metadata.name for c in by_ns.items] == ["x"]
    with pytest.raises(ApiException) as excinfo:
        core.list_namespaced_config_map("team", label_selector="a in b")
    assert excinfo.value.status == 400


def test_label_selector_matches_is_the_kubernetes_semantics() -> None:
    assert label_selector_matches("a notin (x)", {})  # absent keys satisfy notin and !=
    assert label_selector_matches("a!=x", {})
    assert not label_selector_matches("a in (x)", {})


def test_secret_string_data_is_folded_into_base64_data(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_secret("team", {
        "metadata": {"name": "s"}, "data": {"raw": base64.b64encode(b"r").decode()},
        "stringData": {"PASSWORD": "p@ss"}})
    assert created.string_data is None
    assert base64.b64decode(created.data["PASSWORD"]) == b"p@ss"
    assert set(created.data) == {"raw", "PASSWORD"}
    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_secret("team", {"metadata": {"name": "bad"}, "data": {"k": "%%%"}})
    assert excinfo.value.status == 400
    assert "%%%" not in excinfo.value.body  # a (would-be) secret value is never echoed


def test_delete_cascades_to_owned_objects(kube_api: KubeAPIServer, custom: client.CustomObjectsApi,
                                          core: client.CoreV1Api) -> None:
    owner = create(custom, account("a"))
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EmailAccount", "name": "a",
           "uid": owner["metadata"]["uid"], "controller": True}
    core.create_namespaced_secret("team", {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    core.create_namespaced_secret("team", {"metadata": {"name": "unowned"}})
    deleted = custom.delete_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a")
    assert deleted["metadata"]["uid"] == owner["metadata"]["uid"]
    assert [s["metadata"]["name"] for s in kube_api.objects("secrets", "team")] == ["unowned"]
    status = core.delete_namespaced_secret("unowned", "team")  # built-in kinds answer a Status
    assert (status["kind"], status["status"]) == ("Status", "Success")
    with pytest.raises(ApiException) as excinfo:
        core.delete_namespaced_secret("unowned", "team")
    assert excinfo.value.status == 404


def test_leases_for_leader_election(api_client: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api_client)
    lease = leases.create_namespaced_lease("kube-system", {
        "metadata": {"name": "email-reconciler"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "pod-b"
    renewed = leases.replace_namespaced_lease("email-reconciler", "kube-system", lease)
    assert renewed.spec.holder_identity == "pod-b"
    with pytest.raises(ApiException) as excinfo:  # the loser of a race holds a stale version
        leases.replace_namespaced_lease("email-reconciler", "kube-system", lease)
    assert excinfo.value.status == 409


def test_leases_for_shard_membership(api_client: client.ApiClient) -> None:
    """What run/membership.py relies on: a label-selected LIST, a delete with a stale
    resourceVersion precondition refused (409), a delete of a missing Lease 404."""
    leases = client.CoordinationV1Api(api_client)
    for name, group in (("shard-a", "g"), ("shard-b", "g"), ("other", "h")):
        leases.create_namespaced_lease("kube-system", {
            "metadata": {"name": name, "labels": {"email.reconciler.io/shard-group": group}},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 3}})
    listed = leases.list_namespaced_lease("kube-system",
                                          label_selector="email.reconciler.io/shard-group=g")
    assert sorted(i.metadata.name for i in listed.items) == ["shard-a", "shard-b"]
    stale = leases.read_namespaced_lease("shard-a", "kube-system")
    renewal = leases.read_namespaced_lease("shard-a", "kube-system")
    renewal.spec.lease_duration_seconds = 4  # (a write that changes nothing keeps the version)
    leases.replace_namespaced_lease("shard-a", "kube-system", renewal)
    precondition = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=stale.metadata.resource_version))
    with pytest.raises(ApiException) as excinfo:
        leases.delete_namespaced_lease("shard-a", "kube-system", body=precondition)
    assert excinfo.value.status == 409
    fresh = leases.read_namespaced_lease("shard-a", "kube-system").metadata.resource_version
    leases.delete_namespaced_lease("shard-a", "kube-system", body=client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=fresh)))
    with pytest.raises(ApiException) as excinfo:
        leases.delete_namespaced_lease("shard-a", "kube-system")
    assert excinfo.value.status == 404


# --------------------------------------------------------------------------- watch


def test_watch_replays_from_a_resource_version_and_ends_after_its_timeout(
        custom: client.CustomObjectsApi) -> None:
    start = create(custom, account("a"))["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a",
                                          {"spec": {"provider": "yahoo"}})
    create(custom, account("b"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a")
    events = list(watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION,
                                       "team", PLURAL, resource_version=start, timeout_seconds=1))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_without_resource_version_lists_then_follows(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team", {"metadata": {"name": "before"}})
    threading.Timer(0.3, core.create_namespaced_config_map,
                    ("team", {"metadata": {"name": "after"}})).start()
    stream = watch.Watch().stream(core.list_namespaced_config_map, "team", timeout_seconds=2)
    seen = []
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            stream.close()
    assert seen == [("ADDED", "before"), ("ADDED", "after")]


def test_namespaced_watch_with_a_selector_does_not_drop_events(
        kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    start = kube_api.resource_version

    def writer() -> None:
        for i in range(40):
            for ns in ("team", "other"):
                core.create_namespaced_config_map(
                    ns, {"metadata": {"name": f"c{i}", "labels": {"n": str(i % 2)}}})

    thread = threading.Thread(target=writer)
    thread.start()
    events = watch.Watch().stream(core.list_namespaced_config_map, "team", label_selector="n=0",
                                  resource_version=start, timeout_seconds=2)
    names = [e["object"].metadata.name for e in events]
    thread.join()
    assert names == [f"c{i}" for i in range(0, 40, 2)]


def test_a_too_old_resource_version_is_410_gone_for_the_client(
        kube_api: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    old = create(custom, account("a"))["metadata"]["resourceVersion"]
    create(custom, account("b"))
    kube_api.expire_history()
    with pytest.raises(ApiException) as excinfo:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, GROUP, VERSION, "team",
                                  PLURAL, resource_version=old, timeout_seconds=1))
    assert excinfo.value.status == 410
    assert "Expired" in str(excinfo.value.reason)


# --------------------------------------------------------------------------- faults and the log


@pytest.mark.parametrize(("code", "reason"), [
    (409, "Conflict"), (500, "InternalError"), (403, "Forbidden"), (503, "ServiceUnavailable"),
])
def test_injected_errors_reach_the_client_as_status_objects(
        kube_api: KubeAPIServer, core: client.CoreV1Api, code: int, reason: str) -> None:
    kube_api.inject(code, verb="list", resource="secrets")
    core.list_namespaced_config_map("team")  # other resources are not affected
    with pytest.raises(ApiException) as excinfo:
        core.list_namespaced_secret("team")
    assert excinfo.value.status == code
    status = json.loads(excinfo.value.body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", reason, code)
    if code == 403:
        assert 'cannot list resource "secrets"' in status["message"]
        assert 'namespace "team"' in status["message"]
    assert core.list_namespaced_secret("team").items == []  # only the next request failed
    assert [r.status for r in kube_api.requests if r.resource == "secrets"] == [code, 200]


def test_429_carries_retry_after_which_urllib3_honours_by_itself(
        kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    """As from a real API server: one 429 costs a second but never reaches the caller."""
    kube_api.inject(429, verb="list", resource="secrets")
    assert core.list_namespaced_secret("team").items == []
    assert [r.status for r in kube_api.requests] == [429, 200]


def test_a_dropped_connection_is_a_connection_error_for_the_client(
        kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    kube_api.inject("drop", count=1, verb="create")
    with pytest.raises(urllib3.exceptions.HTTPError):  # urllib3 does not retry a POST
        core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
    assert kube_api.objects("configmaps", "team") == []
    assert kube_api.requests[-1].status == 0
    core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
    assert len(kube_api.objects("configmaps", "team")) == 1


def test_request_log_counts_by_verb(kube_api: KubeAPIServer, custom: client.CustomObjectsApi,
                                    core: client.CoreV1Api) -> None:
    create(custom, account("a"))
    get(custom, "a")
    custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    custom.patch_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, "a", {"spec": {}})
    core.list_namespaced_secret("team")
    assert kube_api.count_by_verb() == {"create": 1, "get": 1, "list": 2, "patch": 1}
    record = kube_api.requests[1]
    assert (record.method, record.verb, record.resource, record.namespace, record.name) == (
        "GET", "get", PLURAL, "team", "a")
    kube_api.clear_requests()
    assert kube_api.count_by_verb() == {}


# --------------------------------------------------------------------------- discovery and tables


def test_discovery_answers_plain_json_to_aggregated_accept_types(kube_api: KubeAPIServer) -> None:
    accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json")
    request = urllib.request.Request(f"{kube_api.url}/apis", headers={"Accept": accept, **AUTH})
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"] == "application/json"
        groups = {g["name"] for g in json.load(response)["groups"]}
    assert {GROUP, "coordination.k8s.io"} <= groups
    group_url = f"{kube_api.url}/apis/{GROUP}/{VERSION}"
    with urllib.request.urlopen(urllib.request.Request(group_url, headers=AUTH)) as response:
        names = {r["name"] for r in json.load(response)["resources"]}
    assert names == {PLURAL, f"{PLURAL}/status"}
    with urllib.request.urlopen(urllib.request.Request(f"{kube_api.url}/api/v1", headers=AUTH)) as response:
        core = {r["name"]: r for r in json.load(response)["resources"]}
    assert {"secrets", "configmaps", "events", "namespaces"} <= set(core)
    assert core["namespaces"]["namespaced"] is False and "watch" in core["secrets"]["verbs"]


@pytest.mark.parametrize(("path", "expected"), [
    ('.status.conditions[?(@.type=="Ready")].status', "True"),
    (".status.conditions[1].type", "Stalled"),
    (".spec.missing", None),
    (".status.conditions[*].reason", "Ok"),
])
def test_jsonpath_of_printer_columns(path: str, expected: Any) -> None:
    obj = {"spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok"},
                                                 {"type": "Stalled", "status": "False"}]}}
    assert jsonpath_first(obj, path) == expected


def kubectl(kube_api: KubeAPIServer, tmp_path: Path, *args: str) -> str:
    config = kube_api.kubeconfig(tmp_path / "kubeconfig")
    done = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(config), "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def columns(lines: list[str]) -> list[dict[str, str]]:
    """kubectl's table as dicts, cut at the header's column starts (cells may be empty)."""
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    names = [lines[0][a:b].strip() for a, b in bounds]
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)}
            for line in lines[1:]]


@needs_kubectl
def test_kubectl_get_prints_the_printer_columns(kube_api: KubeAPIServer, tmp_path: Path,
                                                custom: client.CustomObjectsApi) -> None:
    create(custom, account("a"))
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, "team", PLURAL, "a", {"status": {
        "protocol": "STARTTLS", "tlsVersion": "TLSv1.3", "host": "smtp.example.com",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}})
    table = kubectl(kube_api, tmp_path, "get", "emailaccounts", "-A").splitlines()
    header = table[0].split()
    assert header[:2] == ["NAMESPACE", "NAME"]
    assert {"PROVIDER", "PROTOCOL", "TLS", "READY", "AGE"} <= set(header)
    assert "HOST" not in header
    row = columns(table)[0]
    assert (row["NAMESPACE"], row["NAME"], row["PROVIDER"], row["PROTOCOL"], row["TLS"],
            row["READY"]) == ("team", "a", "gmail", "STARTTLS", "TLSv1.3", "True")
    assert row["AGE"].endswith("s")
    wide = kubectl(kube_api, tmp_path, "get", "ea", "-n", "team", "-o", "wide")
    assert "HOST" in wide.splitlines()[0] and "smtp.example.com" in wide
    as_yaml = yaml.safe_load(kubectl(kube_api, tmp_path, "get", "ea", "a", "-n", "team", "-o", "yaml"))
    assert as_yaml["status"]["protocol"] == "STARTTLS"


@needs_kubectl
def test_kubectl_apply_and_delete_manifests(kube_api: KubeAPIServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "pw", "namespace": "team"}, "stringData": {"password": "x"}}
    body = {**account("a"), "metadata": {"name": "a", "namespace": "team"}}
    manifest.write_text(yaml.safe_dump_all([body, secret]))
    out = kubectl(kube_api, tmp_path, "apply", "--validate=false", "-f", str(manifest))
    assert "emailaccount.email.reconciler.io/a created" in out
    assert kube_api.get_object("secrets", "team", "pw")["data"] == {"password": "eA=="}
    body["spec"]["provider"] = "yahoo"
    manifest.write_text(yaml.safe_dump(body))
    out = kubectl(kube_api, tmp_path, "apply", "--validate=false", "-f", str(manifest))
    assert "configured" in out
    stored = kube_api.get_object(PLURAL, "team", "a")
    assert stored["spec"]["provider"] == "yahoo" and stored["metadata"]["generation"] == 2
    out = kubectl(kube_api, tmp_path, "delete", "-f", str(manifest))
    assert "deleted" in out and kube_api.objects(PLURAL) == []


@pytest.mark.skipif(not DEPLOYED_CRD.exists(), reason="deploy/crd.yaml is not generated yet")
def test_the_generated_crd_is_served(kube_api: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    crd = email_account_crd()
    assert crd is not MINIMAL_CRD
    names = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    create(custom, account("a"))
    request = urllib.request.Request(
        f"{kube_api.url}/apis/{GROUP}/{VERSION}/emailaccounts",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json", **AUTH})
    with urllib.request.urlopen(request) as response:
        table = json.load(response)
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", *names]
    assert table["rows"][0]["cells"][:2] == ["a", "gmail"]


def test_events_with_generate_name_and_delete_collection(kube_api: KubeAPIServer,
                                                         core: client.CoreV1Api) -> None:
    for reason in ("Ready", "NotReady"):
        core.create_namespaced_event("team", {
            "metadata": {"generateName": "a.", "labels": {"r": reason}},
            "involvedObject": {"kind": "EmailAccount", "name": "a", "namespace": "team"},
            "reason": reason, "type": "Normal", "message": "m"})
    names = [e["metadata"]["name"] for e in kube_api.objects("events", "team")]
    assert len(names) == 2 and all(n.startswith("a.") and len(n) == 7 for n in names)
    by_object = core.list_namespaced_event("team", field_selector="involvedObject.name=a")
    assert len(by_object.items) == 2
    core.delete_collection_namespaced_event("team", label_selector="r=Ready")
    assert [e["reason"] for e in kube_api.objects("events", "team")] == ["NotReady"]
    assert kube_api.count_by_verb()["deletecollection"] == 1


@needs_kubectl
def test_kubectl_server_side_apply_drops_fields_it_no_longer_applies(
        kube_api: KubeAPIServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    body = {**account("a", provider="amazon-ses"), "metadata": {"name": "a", "namespace": "team"}}
    body["spec"]["region"] = "eu-west-1"
    body["spec"]["description"] = "dropped later"
    manifest.write_text(yaml.safe_dump(body))
    apply = ("apply", "--server-side", "--validate=false", "-f", str(manifest))
    assert "serverside-applied" in kubectl(kube_api, tmp_path, *apply)
    del body["spec"]["description"]
    manifest.write_text(yaml.safe_dump(body))
    kubectl(kube_api, tmp_path, *apply)
    assert "description" not in kube_api.get_object(PLURAL, "team", "a")["spec"]
    assert [r.status for r in kube_api.requests if r.verb == "patch"] == [201, 200]
