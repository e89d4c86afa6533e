"""Deletion in the test API server: finalizers, background/foreground/orphan propagation, namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.kube_fixtures import TEST_NAMESPACES, kube_api
from tests.kubeapi import KubeAPIServer

__all__ = ["kube_api"]


@pytest.fixture
def core(kube_api: KubeAPIServer) -> Iterator[client.CoreV1Api]:
    with kube_api.api_client() as api:
        yield client.CoreV1Api(api)


def owner(core: client.CoreV1Api, name: str = "owner", **meta: Any) -> dict[str, str]:
    created = core.create_namespaced_config_map("team", {"metadata": {"name": name, **meta}})
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": created.metadata.uid}


def dependent(core: client.CoreV1Api, name: str, *refs: dict[str, Any], **meta: Any) -> None:
    core.create_namespaced_secret("team", {"metadata": {"name": name, "ownerReferences": list(refs), **meta}})


def names(api: KubeAPIServer, resource: str = "secrets") -> list[str]:
    return [o["metadata"]["name"] for o in api.objects(resource, "team")]


def test_finalizers_keep_an_object_until_an_update_empties_them(kube_api: KubeAPIServer,
                                                                core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team", {"metadata": {"name": "c", "finalizers": ["example.com/hold"]}})
    core.delete_namespaced_config_map("c", "team")
    held = kube_api.get_object("configmaps", "team", "c")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["deletionGracePeriodSeconds"] == 0
    refused = kube_api.http("PATCH", "/api/v1/namespaces/team/configmaps/c",
                            {"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}},
                            content_type="application/merge-patch+json")
    assert refused[0] == 422 and refused[2]["details"]["causes"][0]["field"] == "metadata.finalizers"
    core.patch_namespaced_config_map("c", "team", {"metadata": {"finalizers": None}})
    assert kube_api.get_object("configmaps", "team", "c") is None


def test_delete_with_finalizers_answers_202_with_the_object(kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team", {"metadata": {"name": "c", "finalizers": ["example.com/hold"]}})
    code, _, body = kube_api.http("DELETE", "/api/v1/namespaces/team/configmaps/c")
    assert code == 202 and body["metadata"]["deletionTimestamp"]
    again = kube_api.http("DELETE", "/api/v1/namespaces/team/configmaps/c")
    assert again[0] == 202 and again[2]["metadata"]["resourceVersion"] == body["metadata"]["resourceVersion"]


def test_background_deletes_dependents_after_the_owner(kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    ref = owner(core)
    other = owner(core, "other")
    dependent(core, "only-one-owner", ref)
    dependent(core, "two-owners", ref, other)
    dependent(core, "unowned")
    kube_api.clear_requests()
    start = int(kube_api.resource_version)
    core.delete_namespaced_config_map("owner", "team", propagation_policy="Background")
    assert names(kube_api) == ["two-owners", "unowned"]
    kept = kube_api.get_object("secrets", "team", "two-owners")
    assert kept is not None and [r["name"] for r in kept["metadata"]["ownerReferences"]] == ["other"]
    events = [e for e in kube_api._store.history if e.rv > start]
    assert [(e.type, e.obj["metadata"]["name"]) for e in events][0] == ("DELETED", "owner")  # owner first


def test_foreground_keeps_the_owner_until_blocking_dependents_are_gone(kube_api: KubeAPIServer,
                                                                       core: client.CoreV1Api) -> None:
    ref = owner(core)
    dependent(core, "blocking", {**ref, "blockOwnerDeletion": True}, finalizers=["example.com/slow"])
    dependent(core, "not-blocking", ref)
    code, _, body = kube_api.http("DELETE", "/api/v1/namespaces/team/configmaps/owner",
                                  {"propagationPolicy": "Foreground"})
    assert code == 202
    held = kube_api.get_object("configmaps", "team", "owner")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert names(kube_api) == ["blocking"]  # deleting, held by its own finalizer
    core.patch_namespaced_secret("blocking", "team", {"metadata": {"finalizers": None}})
    assert names(kube_api) == []
    assert kube_api.get_object("configmaps", "team", "owner") is None


def test_orphan_releases_dependents_and_removes_the_owner_reference(kube_api: KubeAPIServer,
                                                                   core: client.CoreV1Api) -> None:
    ref = owner(core)
    dependent(core, "kept", ref)
    core.delete_namespaced_config_map("owner", "team", propagation_policy="Orphan")
    assert kube_api.get_object("configmaps", "team", "owner") is None
    kept = kube_api.get_object("secrets", "team", "kept")
    assert kept is not None and "ownerReferences" not in kept["metadata"]


def test_an_object_whose_owners_are_all_gone_is_collected(kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    ref = owner(core)
    core.delete_namespaced_config_map("owner", "team")
    dependent(core, "late", ref)  # created after its owner went: the collector deletes it
    assert names(kube_api) == []


def test_without_the_collector_dependents_stay() -> None:
    with KubeAPIServer(namespaces=TEST_NAMESPACES, garbage_collection=False) as api, api.api_client() as c:
        core = client.CoreV1Api(c)
        ref = owner(core)
        dependent(core, "stays", ref)
        core.delete_namespaced_config_map("owner", "team")
        assert names(api) == ["stays"]


def test_deleting_a_namespace_terminates_it_then_removes_it_when_empty(kube_api: KubeAPIServer,
                                                                        core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("team", {"metadata": {"name": "plain"}})
    core.create_namespaced_secret("team", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    core.delete_namespace("team")
    namespace = kube_api.get_object("namespaces", None, "team")
    assert namespace is not None and namespace["status"]["phase"] == "Terminating"
    assert names(kube_api) == ["held"]
    code, _, status = kube_api.http("POST", "/api/v1/namespaces/team/configmaps", {"metadata": {"name": "new"}})
    assert code == 403 and status["details"]["causes"][0]["reason"] == "NamespaceTerminating"
    core.patch_namespaced_secret("held", "team", {"metadata": {"finalizers": None}})
    assert kube_api.get_object("namespaces", None, "team") is None
