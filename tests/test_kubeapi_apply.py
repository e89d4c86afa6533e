"""managedFields and server-side apply between field managers: ownership, 409 conflicts, force, no-ops."""

from __future__ import annotations

from typing import Any

from tests.kube_fixtures import kube_api
from tests.kubeapi import KubeAPIServer

__all__ = ["kube_api"]

PATH = "/api/v1/namespaces/team/configmaps/c"
APPLY = "application/apply-patch+yaml"


def config_map(**data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data}


def apply(api: KubeAPIServer, manager: str, body: dict[str, Any], force: bool = False) -> tuple[int, Any]:
    query = f"?fieldManager={manager}" + ("&force=true" if force else "")
    code, _, result = api.http("PATCH", PATH + query, body, content_type=APPLY)
    return code, result


def owners(obj: dict[str, Any]) -> dict[str, tuple[str, set[str]]]:
    """manager -> (operation, the data keys it owns)."""
    out = {}
    for entry in obj["metadata"].get("managedFields") or []:
        keys = {k[2:] for k in entry["fieldsV1"].get("f:data", {})}
        out[entry["manager"]] = (entry["operation"], keys)
    return out


def test_apply_records_ownership_and_a_no_op_apply_stores_nothing(kube_api: KubeAPIServer) -> None:
    code, created = apply(kube_api, "alice", config_map(a="1", b="2"))
    assert code == 201 and owners(created) == {"alice": ("Apply", {"a", "b"})}
    entry = created["metadata"]["managedFields"][0]
    assert entry["apiVersion"] == "v1" and entry["fieldsType"] == "FieldsV1" and entry["time"]
    code, again = apply(kube_api, "alice", config_map(a="1", b="2"))
    assert code == 200 and again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_another_manager_changing_an_owned_field_is_409_unless_forced(kube_api: KubeAPIServer) -> None:
    apply(kube_api, "alice", config_map(a="1", b="2"))
    code, status = apply(kube_api, "bob", config_map(a="changed"))
    assert code == 409 and status["reason"] == "Conflict"
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "alice" using v1: .data.a'
    assert status["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "alice" using v1', "field": ".data.a"}]
    code, same = apply(kube_api, "bob", config_map(a="1"))  # the same value: shared, no conflict
    assert code == 200 and owners(same)["bob"] == ("Apply", {"a"})
    code, forced = apply(kube_api, "bob", config_map(a="changed"), force=True)
    assert code == 200 and forced["data"]["a"] == "changed"
    assert owners(forced) == {"alice": ("Apply", {"b"}), "bob": ("Apply", {"a"})}


def test_fields_a_manager_stops_applying_go_unless_someone_else_owns_them(kube_api: KubeAPIServer) -> None:
    apply(kube_api, "alice", config_map(a="1", b="2"))
    apply(kube_api, "bob", config_map(b="2"))  # shares b
    code, result = apply(kube_api, "alice", config_map())
    assert code == 200 and result["data"] == {"b": "2"}  # a went, b stayed: bob owns it
    assert owners(result) == {"bob": ("Apply", {"b"})}


def test_updates_take_ownership_and_then_conflict_with_apply(kube_api: KubeAPIServer) -> None:
    apply(kube_api, "alice", config_map(a="1"))
    code, _, patched = kube_api.http("PATCH", PATH + "?fieldManager=kubectl-edit", {"data": {"a": "2", "c": "3"}},
                                     content_type="application/merge-patch+json")
    assert code == 200
    assert owners(patched) == {"kubectl-edit": ("Update", {"a", "c"})}  # alice lost a: it was changed under her
    code, status = apply(kube_api, "carol", config_map(c="4"))
    assert code == 409 and 'conflict with "kubectl-edit"' in status["message"]


def test_the_default_manager_comes_from_the_user_agent(kube_api: KubeAPIServer) -> None:
    from kubernetes import client

    with kube_api.api_client() as api:
        client.CoreV1Api(api).create_namespaced_config_map("team", {"metadata": {"name": "c"}, "data": {"k": "v"}})
    stored = kube_api.get_object("configmaps", "team", "c")
    assert stored is not None
    (entry,) = stored["metadata"]["managedFields"]
    assert entry["manager"] == "OpenAPI-Generator" and entry["operation"] == "Update"
    assert entry["fieldsV1"]["f:data"] == {"f:k": {}}


def test_status_has_its_own_managers(kube_api: KubeAPIServer) -> None:
    from tests.kube_fixtures import valid_spec

    account = {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
               "metadata": {"name": "a"}, "spec": valid_spec()}
    path = "/apis/email.reconciler.io/v1alpha1/namespaces/team/emailaccounts/a"
    assert kube_api.http("PATCH", path + "?fieldManager=git", account, content_type=APPLY)[0] == 201
    code, _, body = kube_api.http("PATCH", path + "/status?fieldManager=ctl",
                                  {**account, "status": {"observedGeneration": 1}}, content_type=APPLY)
    assert code == 200
    entries = {(e["manager"], e.get("subresource", "")) for e in body["metadata"]["managedFields"]}
    assert entries == {("git", ""), ("ctl", "status")}
    status_entry = next(e for e in body["metadata"]["managedFields"] if e["manager"] == "ctl")
    assert set(status_entry["fieldsV1"]) == {"f:status"}
