"""The test API server at scale: memoized CEL outcomes, the collector's indexes, the watch
history walked from the newest end, the bulk-load bench fixture, request counts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd, kube_api
from tests.kubeapi import KubeAPIServer
from tests.kubeapi.bulk import bulk_load
from tests.kubeapi.celcache import Reads, read_key, reads
from tests.kubeapi.schema import StructuralSchema
from tests.manifests_factory import loopback_account

__all__ = ["kube_api"]


@pytest.mark.parametrize(("expression", "variable", "expected"), [
    ("self.a.size() <= 3", "self", Reads(False, ((("a",), False),))),
    ("has(self.a.b) && self.c == 'x'", "self", Reads(False, ((("a", "b"), True), (("c",), False)))),
    ("!has(self.a) || self.a.b.matches('^x$')", "self", Reads(False, ((("a",), True), (("a", "b"), False)))),
    ("self.all(k, k.size() < 3)", "self", Reads(True, ())),
    ("duration(self) <= duration('1h')", "self", Reads(True, ())),
    ("self == oldSelf", "self", Reads(True, ())),
    ("self.x == oldSelf.x", "oldSelf", Reads(False, ((("x",), False),))),
    ("self.x == oldSelf.x", "self", Reads(False, ((("x",), False),))),
    ("self.m['k'] == 1", "self", Reads(False, ((("m",), False),))),
    ("myself.a == 1 && self.b == 2", "self", Reads(False, ((("b",), False),))),
])
def test_reads_finds_the_chains_an_expression_reads(expression: str, variable: str, expected: Reads) -> None:
    assert reads(expression, variable) == expected


@pytest.mark.parametrize(("expression", "a", "b", "same"), [
    ("self.a.size() <= 3", {"a": "xy", "z": 1}, {"a": "xy", "z": 2}, True),  # z is not read
    ("self.a.size() <= 3", {"a": "xy"}, {"a": "xyzw"}, False),
    ("has(self.a)", {"a": {"deep": 1}}, {"a": {"deep": 2}}, True),  # only presence is read
    ("has(self.a)", {"a": 1}, {}, False),
    ("self.a.b == 1", {"a": {"b": 1}}, {"a": "text"}, False),  # a map vs a string: an error vs a value
    ("self.a.b == 1", {"a": {"b": 1, "c": 1}}, {"a": {"b": 1, "c": 2}}, True),
    ("self.all(k, k != 'x')", {"a": 1}, {"a": 2}, False),  # a whole-value read
])
def test_read_key_is_equal_exactly_when_what_is_read_is_equal(expression: str, a: Any, b: Any, same: bool) -> None:
    assert (read_key(expression, "self", a) == read_key(expression, "self", b)) is same


SCHEMA = {
    "type": "object",
    "properties": {"spec": {
        "type": "object",
        "properties": {"a": {"type": "string"}, "z": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.a.size() <= 3", "message": "a is too long"}],
    }},
}


def test_a_memoized_outcome_is_reused_only_for_an_equal_read() -> None:
    schema = StructuralSchema(SCHEMA)
    assert schema.admit({"spec": {"a": "xy", "z": 1}}, None).errors == []
    assert schema.admit({"spec": {"a": "xy", "z": 2}}, None).errors == []  # z is not read: a hit
    assert (schema._outcomes.hits, schema._outcomes.misses) == (1, 1)
    refused = schema.admit({"spec": {"a": "xyzw", "z": 2}}, None).errors
    assert [e.detail for e in refused] == ["a is too long"]
    assert schema._outcomes.misses == 2


def test_similar_accounts_evaluate_each_rule_about_once() -> None:
    """30 accounts differing in name and address: the spec rules that do not read them are
    evaluated once, not 30 times (cel-python costs about 0.3 ms a rule)."""
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        for i in range(30):
            api.add_object("emailaccounts", loopback_account(f"a{i}", "team", 2525))
        outcomes = next(iter(api._schemas.values()))._outcomes
        assert len(api.objects("emailaccounts", "team")) == 30
        assert outcomes.hits > 10 * outcomes.misses / 3
        assert outcomes.misses < 30 * 3  # the root rule reads metadata.name; a few read the address


def test_the_collector_indexes_match_the_store_after_deletions(kube_api: KubeAPIServer) -> None:
    with kube_api.api_client() as api:
        core = client.CoreV1Api(api)
        owner = core.create_namespaced_config_map("team", {"metadata": {"name": "owner"}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
               "blockOwnerDeletion": True}
        core.create_namespaced_secret("team", {"metadata": {"name": "held", "ownerReferences": [ref],
                                                            "finalizers": ["example.com/slow"]}})
        core.delete_namespaced_config_map("owner", "team", propagation_policy="Foreground")
        store = kube_api._store
        assert store.deleting == 2  # the owner waits for its blocking dependent, which waits for its finalizer
        core.patch_namespaced_secret("held", "team", {"metadata": {"finalizers": None}})
        everything = [o for bucket in store.objects.values() for o in bucket.values()]
        assert store.deleting == sum(1 for o in everything if o["metadata"].get("deletionTimestamp")) == 0
        assert set(store.uids) == {o["metadata"]["uid"] for o in everything}
        assert kube_api.get_object("configmaps", "team", "owner") is None


def test_a_watch_from_an_old_version_gets_every_later_event_in_order(kube_api: KubeAPIServer) -> None:
    start = int(kube_api.resource_version)
    for i in range(5):
        kube_api.add_object("configmaps", {"metadata": {"name": f"c{i}", "namespace": "team"}})
    store = kube_api._store
    assert [e.obj["metadata"]["name"] for e in store.since(start + 2)] == ["c2", "c3", "c4"]
    assert store.since(store.rv) == []


def test_bulk_load_admits_and_a_running_watch_sees_the_objects(kube_api: KubeAPIServer) -> None:
    rv = kube_api.resource_version
    account = loopback_account("bulk", "team", 2525)
    bad = copy.deepcopy(account)
    bad["metadata"]["name"] = "bad"
    bad["spec"]["smtp"]["connection"]["port"] = "not a port"
    with pytest.raises(Exception, match="Invalid"):
        bulk_load(kube_api, "emailaccounts", [bad])
    assert bulk_load(kube_api, "emailaccounts", [account], history_limit=10_000) == 1
    assert bulk_load(kube_api, "secrets", [{"metadata": {"name": "s", "namespace": "team"},
                                            "stringData": {"k": "v"}}]) == 1
    stored = kube_api.get_object("secrets", "team", "s")
    assert stored is not None and stored["data"] == {"k": "dg=="} and stored["metadata"]["uid"]
    with kube_api.api_client() as api:
        custom = client.CustomObjectsApi(api)
        listed = custom.list_namespaced_custom_object("email.reconciler.io", "v1alpha1", "team", "emailaccounts")
        assert [o["metadata"]["name"] for o in listed["items"]] == ["bulk"]
        assert listed["items"][0]["metadata"]["generation"] == 1
    events = list(kube_api._watch_events(kube_api._type_by_plural("emailaccounts"), "team",
                                         {"resourceVersion": rv, "timeoutSeconds": "1"}, 0))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "bulk")]


def test_request_counts_by_verb_without_a_log(kube_api: KubeAPIServer) -> None:
    kube_api.keep_request_log = False
    with kube_api.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_config_map("team", {"metadata": {"name": "c"}})
        core.read_namespaced_config_map("c", "team")
        core.read_namespaced_config_map("c", "team")
    assert kube_api.requests == []
    assert kube_api.request_counts[("get", "configmaps")] == 2
    assert kube_api.request_counts[("create", "configmaps")] == 1


def test_pages_of_a_selected_list_together_are_the_whole_list(kube_api: KubeAPIServer) -> None:
    """A paged LIST (only the page copied) returns, page after page, exactly the unpaged list."""
    for ns in ("team", "shop"):
        for i in range(7):
            kube_api.add_object("configmaps", {"metadata": {"name": f"c{i}", "namespace": ns,
                                                            "labels": {"odd": str(i % 2)}}})
    with kube_api.api_client() as api:
        core = client.CoreV1Api(api)
        for namespace, selector in ((None, "odd=1"), ("team", ""), ("shop", "odd=0")):
            def page(token: str | None, ns: str | None = namespace, sel: str = selector) -> Any:
                if ns is None:
                    return core.list_config_map_for_all_namespaces(label_selector=sel, limit=2,
                                                                   _continue=token)
                return core.list_namespaced_config_map(ns, label_selector=sel, limit=2, _continue=token)

            whole = [(o.metadata.namespace, o.metadata.name)
                     for o in (core.list_config_map_for_all_namespaces(label_selector=selector).items
                               if namespace is None else
                               core.list_namespaced_config_map(namespace, label_selector=selector).items)]
            seen, token = [], None
            while True:
                answer = page(token)
                assert len(answer.items) <= 2
                seen += [(o.metadata.namespace, o.metadata.name) for o in answer.items]
                token = answer.metadata._continue
                if not token:
                    break
            assert seen == whole and len(whole) in (4, 6, 7)
