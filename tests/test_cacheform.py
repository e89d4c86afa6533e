"""Objects as the informers keep them (issue 26: memory per account): packing round trips, the
packing dictionary, published Secrets packed with their digests, and an informer over
tests/kubeapi handing out fresh objects and (obj, prev) pairs from its packed cache."""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.model import HASH_ANNOTATION
from reconciler.state.digests import Digest, DigestedData, edited
from reconciler.state.render import data_hash
from reconciler.store.cacheform import Packer
from reconciler.store.informers import account_informer, published_packer, published_secret
from tests.kube_fixtures import email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import loopback_account


def account(name: str, *, conditions: int = 6, message: str = "fine") -> dict[str, Any]:
    doc = loopback_account(name, "mail", 587)
    doc["metadata"].update({"uid": f"uid-{name}", "resourceVersion": "12", "generation": 1})
    if conditions:
        doc["status"] = {"observedGeneration": 1, "conditions": [
            {"type": f"T{i}", "status": "True", "reason": "Succeeded", "message": message,
             "lastTransitionTime": "2026-12-07T10:00:00Z", "observedGeneration": 1}
            for i in range(conditions)]}
    return doc


@pytest.mark.parametrize("obj", [
    {},
    account("billing"),
    account("no-status", conditions=0),
    account("unicode", message="Zertifikat läuft ab — 東京 ✉"),
    {"a": [1, 2.5, None, True, {"b": []}], "c": "\x00\u2028"},
])
@pytest.mark.parametrize("with_dictionary", [False, True])
def test_a_packed_object_unpacks_to_an_equal_fresh_one(obj: dict[str, Any],
                                                       with_dictionary: bool) -> None:
    packer = Packer()
    if with_dictionary:
        packer.pack(account("the-sample"))
        assert packer.zdict is not None
    blob = packer.pack(obj)
    assert isinstance(blob, bytes)
    out = packer.unpack(blob)
    assert out == obj and out is not obj
    assert packer.unpack(blob) is not out  # each read a fresh object


def test_the_dictionary_is_the_first_sample_and_objects_packed_before_it_still_unpack() -> None:
    packer = Packer(sample=lambda obj: bool(obj.get("status")))
    early = packer.pack(account("early", conditions=0))
    assert packer.zdict is None
    packer.pack(account("second"))
    assert packer.zdict is not None
    with_dictionary = packer.pack(account("third"))
    plain_size = len(Packer(sample=lambda obj: False).pack(account("third")))
    assert len(with_dictionary) < plain_size / 3  # the keys, reasons, messages come from it
    assert packer.unpack(early) == account("early", conditions=0)
    assert packer.unpack(with_dictionary) == account("third")
    raw = len(json.dumps(account("third"), separators=(",", ":")))
    assert len(with_dictionary) < raw / 8


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def published(data: dict[str, str], annotation: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "billing-sender", "namespace": "mail", "resourceVersion": "9",
                         "annotations": {HASH_ANNOTATION: annotation or data_hash(data)}},
            "data": data}


DATA = {"SMTP_HOST": b64("smtp.example.com"), "ca.crt": b64("PEM\n" * 200),
        "relay-password": b64("p" * 32)}


@pytest.mark.parametrize("secret", [
    published(DATA),
    published(DATA, annotation=data_hash({**DATA, "SMTP_HOST": b64("x")})),  # edited
    published({}),
    {"metadata": {"name": "no-data", "namespace": "mail"}},
])
def test_a_published_secret_packs_with_its_digests(secret: dict[str, Any]) -> None:
    packer = published_packer()
    cached = published_secret(copy.deepcopy(secret))
    blob = packer.pack(cached)
    out = packer.unpack(blob)
    assert out == cached == secret  # digests equal their values
    assert edited(out) == edited(cached)
    data = out.get("data")
    if isinstance(cached.get("data"), DigestedData):
        assert isinstance(data, DigestedData) and data.intact == cached["data"].intact
        if data:
            assert type(data["relay-password"]) is str
            assert isinstance(data["ca.crt"], Digest)
            assert data["ca.crt"] != b64("PEM\n" * 199)
    assert b"PEM" not in blob and b"smtp.example.com" not in blob
    assert len(blob) < 400


# --------------------------------------------------------------------------- an informer


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def test_a_packed_account_informer_hands_out_fresh_objects_and_the_previous_version() -> None:
    events: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    lock = threading.Lock()

    def handler(etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        with lock:
            events.append((etype, obj, prev))

    with KubeAPIServer(crds=[email_account_crd()], namespaces=("mail",)) as api, \
            api.api_client() as client:
        informer = account_informer(client, "mail", handler, watch_seconds=5)
        assert informer._packer is not None  # the account cache is packed
        informer.start()
        try:
            assert informer.synced.wait(30)
            api.add_object("emailaccounts", loopback_account("billing", "mail", 587))
            first = wait_for(lambda: informer.get(("mail", "billing")), "the account cached")
            assert isinstance(informer._cache[("mail", "billing")], bytes)
            first["spec"]["provider"] = "changed"  # a fresh object: the cache is untouched
            again = informer.get(("mail", "billing"))
            assert again is not None and again["spec"]["provider"] == "custom"
            assert informer.peek("mail", "billing") == again == informer.items()[0]
            from kubernetes import client as k8s

            k8s.CustomObjectsApi(client).patch_namespaced_custom_object(
                "email.reconciler.io", "v1alpha1", "mail", "emailaccounts", "billing",
                {"spec": {"description": "second"}})
            wait_for(lambda: any(e[0] == "MODIFIED" for e in events), "MODIFIED")
            with lock:
                etype, new, prev = next(e for e in events if e[0] == "MODIFIED")
            assert new["spec"]["description"] == "second"
            assert prev is not None and "description" not in prev["spec"]
            assert prev["metadata"]["resourceVersion"] != new["metadata"]["resourceVersion"]
        finally:
            informer.stop()


def test_no_value_of_a_secret_goes_into_the_dictionary() -> None:
    """The dictionary outlives the object it came from: a credential must not stay there after
    its Secret was rotated or deleted."""
    password = b64("the-first-password")
    packer = Packer()
    first = {"metadata": {"name": "smtp", "namespace": "mail"}, "data": {"password": password},
             "stringData": {"other": "plain-value"}}
    blob = packer.pack(first)
    assert packer.zdict is not None and b"password" in packer.zdict
    assert password.encode() not in packer.zdict and b"plain-value" not in packer.zdict
    assert packer.unpack(blob) == first
