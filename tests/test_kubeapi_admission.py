"""Admission in the test API server: CRD pruning, OpenAPI and CEL validation, ObjectMeta, namespaces.

Each case goes through the official client over HTTP and checks the 422 Status as a real server
sends it: reason Invalid, details.causes with field paths.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube_fixtures import TEST_NAMESPACES, kube_api, valid_spec
from tests.kubeapi import KubeAPIServer

__all__ = ["kube_api"]

GROUP, VERSION, PLURAL = "email.reconciler.io", "v1alpha1", "emailaccounts"
ACCOUNTS = Path(__file__).resolve().parent.parent / "accounts"


@pytest.fixture
def custom(kube_api: KubeAPIServer) -> Iterator[client.CustomObjectsApi]:
    with kube_api.api_client() as api:
        yield client.CustomObjectsApi(api)


@pytest.fixture
def core(kube_api: KubeAPIServer) -> Iterator[client.CoreV1Api]:
    with kube_api.api_client() as api:
        yield client.CoreV1Api(api)


def account(name: str = "a", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EmailAccount",
            "metadata": {"name": name}, "spec": {**valid_spec(), **spec}}


def refused(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The Status body of a call that must fail."""
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    body: dict[str, Any] = json.loads(caught.value.body)
    assert body["kind"] == "Status" and body["code"] == caught.value.status
    return body


def causes(body: dict[str, Any]) -> list[tuple[str, str]]:
    assert body["code"] == 422 and body["reason"] == "Invalid", body
    return [(c["field"], c["reason"]) for c in body["details"]["causes"]]


# --------------------------------------------------------------------------- CRD schema


def test_every_accounts_example_is_admitted_with_the_generated_crd(kube_api: KubeAPIServer) -> None:
    admitted = 0
    for path in sorted(ACCOUNTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "EmailAccount":
                kube_api.create_namespace(doc["metadata"].get("namespace", "default"))
                kube_api.add_object(PLURAL, doc)
                admitted += 1
    assert admitted >= 10


def test_unknown_fields_are_pruned_with_a_warning_and_strict_refuses_them(
        kube_api: KubeAPIServer, custom: client.CustomObjectsApi) -> None:
    body = account()
    body["spec"]["smtp"]["connection"]["hots"] = "typo.example.com"
    body["spec"]["extra"] = {"x": 1}
    body["metadata"]["bogus"] = "dropped"
    status, headers, _ = kube_api.http("POST", f"/apis/{GROUP}/{VERSION}/namespaces/team/{PLURAL}", body)
    assert status == 201
    warnings = headers.get_all("Warning")
    assert any('unknown field \\"spec.extra\\"' in w for w in warnings), warnings
    stored = kube_api.get_object(PLURAL, "team", "a")
    assert stored is not None
    assert "hots" not in stored["spec"]["smtp"]["connection"] and "extra" not in stored["spec"]
    assert "bogus" not in stored["metadata"]
    strict = refused(custom.create_namespaced_custom_object, GROUP, VERSION, "team", PLURAL,
                     {**body, "metadata": {"name": "b"}}, field_validation="Strict")
    assert strict["code"] == 400 and 'unknown field "spec.extra"' in strict["message"]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s["smtp"]["connection"].update(port=70000),
     [("spec.smtp.connection.port", "FieldValueInvalid")]),
    (lambda s: s["smtp"]["connection"].update(port="587"),
     [("spec.smtp.connection.port", "FieldValueTypeInvalid"), ("<nil>", "FieldValueInvalid")]),
    (lambda s: s["smtp"]["identity"].pop("emailAddress"),
     [("spec.smtp.identity.emailAddress", "FieldValueRequired")]),
    (lambda s: s.update(provider="carrier-pigeon"), [("spec.provider", "FieldValueNotSupported")]),
    (lambda s: s["smtp"]["identity"].update(emailAddress="not an address"),
     [("spec.smtp.identity.emailAddress", "FieldValueInvalid")]),
    (lambda s: s["smtp"]["connection"].update(host="x" * 300),
     [("spec.smtp.connection.host", "FieldValueTooLong")]),
], ids=["maximum", "type", "required", "enum", "format", "maxLength"])
def test_openapi_validation_is_422_with_one_cause_per_field(
        custom: client.CustomObjectsApi, change: Any, expected: list[tuple[str, str]]) -> None:
    body = account()
    change(body["spec"])
    got = causes(refused(custom.create_namespaced_custom_object, GROUP, VERSION, "team", PLURAL, body))
    assert got == expected


def test_a_pattern_anchored_with_dollar_refuses_a_trailing_newline(custom: client.CustomObjectsApi) -> None:
    """Go's regexp (RE2): '$' is the end of the text; Python's re would let "x\\n" through."""
    body = account()
    body["spec"]["smtp"]["identity"]["displayName"] = "Billing\nBcc: victim@example.com"
    got = causes(refused(custom.create_namespaced_custom_object, GROUP, VERSION, "team", PLURAL, body))
    assert ("spec.smtp.identity.displayName", "FieldValueInvalid") in got


def test_cel_rules_of_the_crd_are_evaluated(custom: client.CustomObjectsApi) -> None:
    body = account(provider="amazon-ses")
    status = refused(custom.create_namespaced_custom_object, GROUP, VERSION, "team", PLURAL, body)
    assert causes(status) == [("spec", "FieldValueInvalid")]
    message = status["details"]["causes"][0]["message"]
    assert message == 'Invalid value: "object": provider: amazon-ses needs spec.region'
    assert 'EmailAccount.email.reconciler.io "a" is invalid: spec: Invalid value' in status["message"]
    body["spec"]["region"] = "eu-west-1"
    assert custom.create_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, body)["spec"]["region"]


def test_updates_are_validated_and_unchanged_invalid_parts_ratchet(kube_api: KubeAPIServer,
                                                                   custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "team", PLURAL, account())
    status = refused(custom.patch_namespaced_custom_object, GROUP, VERSION, "team", PLURAL, "a",
                     {"spec": {"provider": "amazon-ses"}})
    assert causes(status) == [("spec", "FieldValueInvalid")]
    # an object stored before a rule existed: its status can still be written (ratcheting)
    with kube_api._store.lock:
        stored = kube_api._store.bucket(kube_api._type_by_plural(PLURAL))[("team", "a")]
        stored["spec"]["provider"] = "amazon-ses"
    written = custom.patch_namespaced_custom_object_status(GROUP, VERSION, "team", PLURAL, "a",
                                                           {"status": {"observedGeneration": 1}})
    assert written["status"] == {"observedGeneration": 1}


TRANSITION_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                "type": "object",
                "properties": {
                    "size": {"type": "integer", "default": 1,
                             "x-kubernetes-validations": [
                                 {"rule": "self >= oldSelf", "message": "size may not shrink"}]},
                    "mode": {"type": "string", "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "mode is immutable", "reason": "FieldValueForbidden"}]},
                    "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set",
                             "maxItems": 3},
                },
                "x-kubernetes-validations": [
                    {"rule": "!has(self.mode) || self.mode != 'fast' || self.size >= 2",
                     "fieldPath": ".size",
                     "messageExpression": "'fast needs size 2, not ' + string(self.size)"}],
            }}}},
        }],
    },
}


@pytest.fixture
def widgets() -> Iterator[tuple[KubeAPIServer, client.CustomObjectsApi]]:
    with KubeAPIServer(crds=[TRANSITION_CRD], namespaces=TEST_NAMESPACES) as api, api.api_client() as c:
        yield api, client.CustomObjectsApi(c)


def widget(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def test_transition_rules_see_old_self_and_are_skipped_on_create(
        widgets: tuple[KubeAPIServer, client.CustomObjectsApi]) -> None:
    _, custom = widgets
    created = custom.create_namespaced_custom_object("example.com", "v1", "team", "widgets", widget(mode="slow"))
    assert created["spec"]["size"] == 1  # defaulted
    shrink = refused(custom.patch_namespaced_custom_object, "example.com", "v1", "team", "widgets", "w",
                     {"spec": {"size": 0}})
    assert causes(shrink) == [("spec.size", "FieldValueInvalid")]
    assert "size may not shrink" in shrink["message"]
    immutable = refused(custom.patch_namespaced_custom_object, "example.com", "v1", "team", "widgets", "w",
                        {"spec": {"mode": "fast", "size": 5}})
    assert causes(immutable) == [("spec.mode", "FieldValueForbidden")]
    assert custom.patch_namespaced_custom_object("example.com", "v1", "team", "widgets", "w",
                                                 {"spec": {"size": 3}})["spec"]["size"] == 3


def test_message_expression_field_path_and_list_sets(
        widgets: tuple[KubeAPIServer, client.CustomObjectsApi]) -> None:
    _, custom = widgets
    fast = refused(custom.create_namespaced_custom_object, "example.com", "v1", "team", "widgets",
                   widget(mode="fast"))
    assert causes(fast) == [("spec.size", "FieldValueInvalid")]
    assert fast["details"]["causes"][0]["message"] == 'Invalid value: "object": fast needs size 2, not 1'
    dup = refused(custom.create_namespaced_custom_object, "example.com", "v1", "team", "widgets",
                  widget(tags=["a", "b", "a", "c"]))
    assert causes(dup) == [("spec.tags", "FieldValueTooMany"), ("spec.tags[2]", "FieldValueDuplicate")]


# --------------------------------------------------------------------------- ObjectMeta


BAD_META = [
    ({"name": "Upper"}, "metadata.name"),
    ({"name": "a" * 254}, "metadata.name"),
    ({"name": "bad_name"}, "metadata.name"),
    ({"name": "ok", "labels": {"a b": "x"}}, "metadata.labels"),
    ({"name": "ok", "labels": {"x": "v" * 64}}, "metadata.labels"),
    ({"name": "ok", "labels": {"x": "-leading"}}, "metadata.labels"),
    ({"name": "ok", "labels": {"p" * 254 + "/n": "v"}}, "metadata.labels"),
    ({"name": "ok", "labels": {"example.com/" + "n" * 64: "v"}}, "metadata.labels"),
    ({"name": "ok", "annotations": {"bad key!": "v"}}, "metadata.annotations"),
    ({"name": "ok", "annotations": {"big": "x" * (256 * 1024)}}, "metadata.annotations"),
    ({"name": "ok", "finalizers": ["unqualified"]}, "metadata.finalizers[0]"),
]


@pytest.mark.parametrize("resource", ["secrets", "configmaps", "events", PLURAL])
@pytest.mark.parametrize(("meta", "field"), BAD_META, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_META)])
def test_object_meta_is_validated_for_every_kind(kube_api: KubeAPIServer, resource: str,
                                                 meta: dict[str, Any], field: str) -> None:
    if resource == PLURAL:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/team/{PLURAL}"
        body: dict[str, Any] = {**account(), "metadata": meta}
    else:
        path = f"/api/v1/namespaces/team/{resource}"
        body = {"metadata": meta}
    _, _, status = kube_api.http("POST", path, body)
    assert field in [f for f, _ in causes(status)], status


def test_good_meta_is_admitted_and_label_keys_may_have_a_prefix(core: client.CoreV1Api) -> None:
    meta = {"name": "a.b-c", "labels": {"app.kubernetes.io/name": "x", "empty": "", "A_b.c": "Z9"},
            "annotations": {"Example.com/Mixed-Case": "any value\nat all"},
            "finalizers": ["example.com/cleanup"]}
    created = core.create_namespaced_config_map("team", {"metadata": meta})
    assert created.metadata.labels["empty"] == ""


def test_data_keys_and_event_namespaces_are_validated(core: client.CoreV1Api) -> None:
    bad_key = refused(core.create_namespaced_secret, "team",
                      {"metadata": {"name": "s"}, "stringData": {"no spaces": "x"}})
    assert causes(bad_key) == [("data[no spaces]", "FieldValueInvalid")]
    event = {"metadata": {"name": "e"}, "involvedObject": {"kind": "EmailAccount", "namespace": "other", "name": "a"},
             "reason": "Probed", "message": "m", "type": "Normal"}
    assert causes(refused(core.create_namespaced_event, "team", event)) == [
        ("involvedObject.namespace", "FieldValueInvalid")]


def test_meta_rules_apply_to_updates_and_patches_too(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
    status = refused(core.patch_namespaced_config_map, "c", "team", {"metadata": {"labels": {"k": "bad value"}}})
    assert causes(status) == [("metadata.labels", "FieldValueInvalid")]
    assert 'ConfigMap "c" is invalid: metadata.labels: Invalid value: "bad value"' in status["message"]


# --------------------------------------------------------------------------- namespaces


def test_a_namespace_that_does_not_exist_is_404(kube_api: KubeAPIServer, core: client.CoreV1Api,
                                                custom: client.CustomObjectsApi) -> None:
    status = refused(core.create_namespaced_secret, "nowhere", {"metadata": {"name": "s"}})
    assert (status["code"], status["reason"], status["message"]) == (404, "NotFound", 'namespaces "nowhere" not found')
    assert status["details"] == {"name": "nowhere", "kind": "namespaces"}
    assert refused(custom.create_namespaced_custom_object, GROUP, VERSION, "nowhere", PLURAL, account())["code"] == 404
    code, _, applied = kube_api.http("PATCH", "/api/v1/namespaces/nowhere/configmaps/c?fieldManager=t",
                                     {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
                                     content_type="application/apply-patch+yaml")
    assert code == 404 and applied["message"] == 'namespaces "nowhere" not found'
    core.create_namespace({"metadata": {"name": "nowhere"}})
    assert core.create_namespaced_secret("nowhere", {"metadata": {"name": "s"}}).metadata.namespace == "nowhere"
    assert core.read_namespace("nowhere").status.phase == "Active"


def test_namespace_names_are_dns_labels(core: client.CoreV1Api) -> None:
    assert causes(refused(core.create_namespace, {"metadata": {"name": "a.b"}})) == [
        ("metadata.name", "FieldValueInvalid")]


def test_auto_namespaces_is_an_explicit_relaxation() -> None:
    with KubeAPIServer(auto_namespaces=True) as api:
        api.add_object("secrets", {"metadata": {"name": "s", "namespace": "made-up"}})
        assert api.get_object("namespaces", None, "made-up") is not None


def test_the_default_namespaces_exist() -> None:
    with KubeAPIServer() as api:
        names = [n["metadata"]["name"] for n in api.objects("namespaces")]
    assert names == sorted(["default", "kube-system", "kube-public", "kube-node-lease"])


def test_a_copy_of_an_object_is_not_shared_with_the_store(kube_api: KubeAPIServer) -> None:
    body = account()
    kube_api.add_object(PLURAL, {**copy.deepcopy(body), "metadata": {"name": "a", "namespace": "team"}})
    stored = kube_api.get_object(PLURAL, "team", "a")
    assert stored is not None and stored["spec"] == body["spec"]


_SPEC = ("properties", "spec")


@pytest.mark.parametrize(("where", "rule", "refused"), [
    ((*_SPEC, "properties", "tags", "items"), {"rule": "self.all(c, c != '')"},
     "cannot be the range of a comprehension"),
    ((*_SPEC, "properties", "size"), {"rule": "self == 'one'"}, "no matching overload"),
    (_SPEC, {"rule": "self.sise > 0"}, "undefined field 'sise'"),
    (_SPEC, {"rule": "self.size > 0", "messageExpression": "self.size"}, "of type INT, not STRING"),
    (_SPEC, {"rule": "self.size > 0", "messageExpression": "'size ' + string(self.size)"}, None),
])
def test_a_crd_whose_rules_do_not_type_check_is_refused(where: tuple[str, ...], rule: dict[str, str],
                                                         refused: str | None) -> None:
    """As the apiserver compiles every rule against its declared types when a CRD is created (and
    refuses it: the CRD of issue 22 called all() on a string), the test server refuses such a CRD."""
    crd = copy.deepcopy(TRANSITION_CRD)
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in where:
        node = node[key]
    node["x-kubernetes-validations"] = [rule]
    if refused is None:
        KubeAPIServer(crds=[crd], namespaces=TEST_NAMESPACES)
        return
    with pytest.raises(ValueError, match="CustomResourceDefinition widgets.example.com is invalid") as error:
        KubeAPIServer(crds=[crd], namespaces=TEST_NAMESPACES)
    assert refused in str(error.value)
