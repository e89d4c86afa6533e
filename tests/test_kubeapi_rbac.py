"""RBAC in the test API server: ServiceAccount tokens, deploy/rbac.yaml's Roles, 401 and 403 as a real server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd, kube_api, service_account_client, valid_spec
from tests.kubeapi import KubeAPIServer

__all__ = ["kube_api", "service_account_client"]

GROUP, VERSION, PLURAL = "email.reconciler.io", "v1alpha1", "emailaccounts"
CONTROLLER, GITOPS = "email-reconciler-controller", "email-reconciler-gitops"


def refused(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    body: dict[str, Any] = json.loads(caught.value.body)
    assert body["kind"] == "Status" and body["code"] == caught.value.status
    return body


def account(name: str = "a") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EmailAccount",
        "metadata": {"name": name, "namespace": "mail"},
        "spec": valid_spec(),
    }


def test_the_controller_service_account_gets_what_its_role_allows_and_403_for_the_rest(
    kube_api: KubeAPIServer, service_account_client: Callable[..., Any]
) -> None:
    kube_api.add_object(PLURAL, account())
    as_controller = service_account_client(CONTROLLER)
    custom, core = client.CustomObjectsApi(as_controller), client.CoreV1Api(as_controller)
    assert [
        o["metadata"]["name"] for o in custom.list_namespaced_custom_object(GROUP, VERSION, "mail", PLURAL)["items"]
    ] == ["a"]
    assert custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "mail", PLURAL, "a", {"status": {"observedGeneration": 1}}
    )["status"]
    denied = refused(custom.delete_namespaced_custom_object, GROUP, VERSION, "mail", PLURAL, "a")
    assert (denied["code"], denied["reason"]) == (403, "Forbidden")
    assert denied["message"] == (
        'emailaccounts.email.reconciler.io "a" is forbidden: User "system:serviceaccount:email-reconciler:'
        'email-reconciler-controller" cannot delete resource "emailaccounts" in API group "email.reconciler.io" '
        'in the namespace "mail"'
    )
    assert denied["details"] == {"name": "a", "group": GROUP, "kind": PLURAL}
    # only patch on the status subresource, no update; no update of Secrets; nothing outside mail
    status = custom.get_namespaced_custom_object(GROUP, VERSION, "mail", PLURAL, "a")
    refused(custom.replace_namespaced_custom_object_status, GROUP, VERSION, "mail", PLURAL, "a", status)
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="x"))
    assert "cannot update resource" in refused(core.replace_namespaced_secret, "x", "mail", secret)["message"]
    assert 'in the namespace "team"' in refused(core.list_namespaced_secret, "team")["message"]
    assert "at the cluster scope" in refused(core.list_secret_for_all_namespaces)["message"]
    assert core.list_namespaced_secret("mail").items == []


def test_subresources_and_resource_names_are_matched_exactly(kube_api: KubeAPIServer) -> None:
    kube_api.apply_manifests(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "narrow", "namespace": "team"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "narrow", "namespace": "team"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "verbs": ["get", "list", "update"],
                        "resourceNames": ["mine"],
                    },
                    {"apiGroups": [GROUP], "resources": ["emailaccounts/status"], "verbs": ["*"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "narrow", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "narrow"},
                "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": "team"}],
            },
        ]
    )
    kube_api.add_object("configmaps", {"metadata": {"name": "mine", "namespace": "team"}})
    kube_api.add_object("configmaps", {"metadata": {"name": "theirs", "namespace": "team"}})
    kube_api.add_object(PLURAL, {**account(), "metadata": {"name": "a", "namespace": "team"}})
    with kube_api.api_client_as("team", "narrow") as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        assert core.read_namespaced_config_map("mine", "team").metadata.name == "mine"
        assert refused(core.read_namespaced_config_map, "theirs", "team")["code"] == 403
        assert refused(core.list_namespaced_config_map, "team")["code"] == 403  # resourceNames never grant list
        assert core.list_namespaced_config_map("team", field_selector="metadata.name=mine").items
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, "team", PLURAL, "a", {"status": {"x": "y"}})
        assert refused(custom.get_namespaced_custom_object, GROUP, VERSION, "team", PLURAL, "a")["code"] == 403


def test_apply_that_creates_needs_create_as_well_as_patch(kube_api: KubeAPIServer) -> None:
    kube_api.apply_manifests(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "patcher", "namespace": "team"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "patcher"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "patcher", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "patcher"},
                "subjects": [{"kind": "ServiceAccount", "name": "patcher", "namespace": "team"}],
            },
        ]
    )
    token = kube_api.token_for("team", "patcher")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    path = "/api/v1/namespaces/team/configmaps/c?fieldManager=t"
    code, _, status = kube_api.http("PATCH", path, body, content_type="application/apply-patch+yaml", token=token)
    assert code == 403 and "cannot create resource" in status["message"]
    kube_api.add_object("configmaps", {"metadata": {"name": "c", "namespace": "team"}})
    code, _, _ = kube_api.http("PATCH", path, body, content_type="application/apply-patch+yaml", token=token)
    assert code == 200


def test_tokens_unknown_or_of_a_deleted_service_account_are_401(kube_api: KubeAPIServer) -> None:
    code, _, status = kube_api.http("GET", "/api/v1/namespaces/team/secrets", token="forged")
    assert (code, status["reason"]) == (401, "Unauthorized")
    kube_api.add_object("serviceaccounts", {"metadata": {"name": "gone", "namespace": "team"}})
    token = kube_api.token_for("team", "gone")
    assert kube_api.http("GET", "/api", token=token)[0] == 200  # discovery: any authenticated user
    assert kube_api.http("GET", "/api/v1/namespaces/team/secrets", token=token)[0] == 403
    with kube_api.api_client() as api:
        client.CoreV1Api(api).delete_namespaced_service_account("gone", "team")
    assert kube_api.http("GET", "/api", token=token)[0] == 401


def test_without_credentials_a_strict_server_treats_the_request_as_anonymous() -> None:
    with KubeAPIServer(anonymous_is_admin=False) as api:
        assert api.http("GET", "/version", token=None)[0] == 200
        assert api.http("GET", "/api", token=None)[0] == 403
        code, _, status = api.http("GET", "/api/v1/namespaces/default/secrets", token=None)
        assert code == 403 and 'User "system:anonymous"' in status["message"]
        assert api.http("GET", "/api/v1/namespaces/default/secrets")[0] == 200  # the admin token


OWNER_ROLE: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "owner", "namespace": "mail"}},
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "owner", "namespace": "mail"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch", "delete"]}],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "owner", "namespace": "mail"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "owner"},
        "subjects": [{"kind": "ServiceAccount", "name": "owner", "namespace": "mail"}],
    },
]


@pytest.fixture(params=[True, False], ids=["enforced", "plugin-off"])
def owner_api(request: pytest.FixtureRequest) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(
        crds=[email_account_crd()], namespaces=TEST_NAMESPACES, owner_references_permission_enforcement=request.param
    ) as api:
        api.apply_manifests(OWNER_ROLE)
        yield api


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(owner_api: KubeAPIServer) -> None:
    owner = owner_api.add_object(PLURAL, account())
    ref = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EmailAccount",
        "name": "a",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    secret = {"metadata": {"name": "a-sender", "ownerReferences": [ref]}, "type": "Opaque"}
    with owner_api.api_client_as("mail", "owner") as api:
        core = client.CoreV1Api(api)
        if not owner_api.owner_references_permission_enforcement:
            assert core.create_namespaced_secret("mail", secret).metadata.name == "a-sender"
            return
        status = refused(core.create_namespaced_secret, "mail", secret)
        assert status["code"] == 403
        assert "cannot set blockOwnerDeletion" in status["message"]
        assert 'cannot update resource "emailaccounts/finalizers"' in status["message"]
        core.create_namespaced_secret(
            "mail",
            {**secret, "metadata": {"name": "a-sender", "ownerReferences": [{**ref, "blockOwnerDeletion": False}]}},
        )
        owner_api.add_object(
            "roles",
            {
                "metadata": {"name": "fin", "namespace": "mail"},
                "rules": [{"apiGroups": [GROUP], "resources": ["emailaccounts/finalizers"], "verbs": ["update"]}],
            },
        )
        owner_api.add_object(
            "rolebindings",
            {
                "metadata": {"name": "fin", "namespace": "mail"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fin"},
                "subjects": [{"kind": "ServiceAccount", "name": "owner", "namespace": "mail"}],
            },
        )
        patched = core.patch_namespaced_secret("a-sender", "mail", {"metadata": {"ownerReferences": [ref]}})
        assert patched.metadata.owner_references[0].block_owner_deletion is True


def test_admin_token_bypasses_rbac(kube_api: KubeAPIServer, service_account_client: Callable[..., Any]) -> None:
    service_account_client(GITOPS)  # loads deploy/'s Roles
    with kube_api.api_client() as api:
        assert client.CoreV1Api(api).list_secret_for_all_namespaces().items is not None
    roles = {r["metadata"]["name"] for r in kube_api.objects("clusterroles")}
    assert {"email-reconciler-controller", "email-reconciler-gitops"} <= roles
