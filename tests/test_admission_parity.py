"""Admission parity, both ways (issue 13): what `validate` accepts the API server admits with the
generated CRD, and what it rejects for a reason about the object's own fields the API server
refuses too (OpenAPI schema, CEL rules, ObjectMeta), so `kubectl apply` of it fails at once."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.manifest.load import load_paths
from reconciler.manifest.validate import validate_document
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import loopback_account

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "manifests" / "bad"
ACCOUNTS = ROOT / "accounts"

#: Bad manifests whose rule is not about one object's own fields, and why the CRD cannot say it.
#: README "Admission and validate" lists the same.
NOT_AT_ADMISSION = {
    # the file, not the object: the API server only ever sees the parsed object
    "alias": "YAML aliases", "billion-laughs": "YAML aliases", "bad-indent": "YAML syntax",
    "tabs": "YAML syntax", "duplicate-key": "a duplicate YAML key (the parser keeps one)",
    "not-utf8": "the file's encoding", "unknown-tag": "a YAML tag",
    "not-a-mapping": "not an object", "scalar-document": "not an object",
    "merge-key": "YAML merge keys (kubectl's go-yaml merges them, PyYAML differently)",
    "timeout-nan": "NaN is not JSON: kubectl cannot send it",
    # across documents
    "duplicate-name": "two documents", "duplicate-secret-name": "two documents",
    # heuristics about values that look like credentials (the rule cannot name a field)
    "inline-advanced-password": "inline-credential heuristic",
    "inline-aws-key": "inline-credential heuristic", "inline-jwt-token": "inline-credential heuristic",
    "inline-private-key": "inline-credential heuristic",
    "inline-sendgrid-key": "inline-credential heuristic",
    # the request, not the object: the server takes apiVersion and kind from the URL
    "wrong-api-version": "apiVersion (the URL decides)", "wrong-kind": "kind (the URL decides)",
}


@pytest.fixture(scope="module")
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crds=[email_account_crd()],
                       namespaces=(*TEST_NAMESPACES, "demo")) as server:
        yield server


def _create(api: KubeAPIServer, doc: dict[str, Any]) -> tuple[int, str]:
    """POST the object as `kubectl create -f` would; (HTTP status, the Status message)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    namespace = (doc.get("metadata") or {}).get("namespace") or "default"
    with api.api_client() as api_client:
        custom = client.CustomObjectsApi(api_client)
        try:
            custom.create_namespaced_custom_object("email.reconciler.io", "v1alpha1", namespace,
                                                   "emailaccounts", copy.deepcopy(doc))
        except ApiException as exc:
            return int(exc.status), str(json.loads(exc.body or "{}").get("message", ""))
        custom.delete_namespaced_custom_object("email.reconciler.io", "v1alpha1", namespace,
                                               "emailaccounts", doc["metadata"]["name"])
    return 201, ""


def _valid_variants() -> list[tuple[str, dict[str, Any]]]:
    """Accepted manifests at the limits validate allows."""
    base = loopback_account("edge", "demo", 587)
    out = [("loopback", base)]
    longest = copy.deepcopy(base)
    longest["metadata"]["name"] = "n" * 63
    out.append(("name of 63 characters", longest))
    secret = copy.deepcopy(base)
    secret["spec"]["publish"] = {"secretName": ".".join(["s" * 62] * 4)[:250].rstrip(".")}
    out.append(("secretName of 250 characters", secret))
    maps = copy.deepcopy(base)
    maps["metadata"]["labels"] = {f"{'p' * 200}.example.com/{'k' * 63}": "v" * 63, "app": ""}
    maps["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "x"
                                       * 200_000}
    maps["spec"]["publish"] = {
        "labels": {f"team.example.com/l{i:02d}": "v" * 63 for i in range(64)},
        "annotations": {f"reloader.stakater.com/a{i:02d}": "a" * 3500 for i in range(64)},
        "deletionPolicy": "Orphan"}
    out.append(("64 publish labels and annotations at their limits", maps))
    return out


def _accepted() -> list[tuple[str, dict[str, Any]]]:
    loaded = load_paths([str(ACCOUNTS), str(BAD / "second-document-bad.yaml")])
    docs = [(f"{Path(a.source.file).name}#{a.source.document}" if a.source else a.name,
             dict(a.manifest)) for a in loaded.accounts]
    for label, doc in _valid_variants():
        errors = [str(d) for d in validate_document(doc) if d.severity == "error"]
        assert not errors, (label, errors)
        docs.append((label, doc))
    return docs


@pytest.mark.parametrize(("label", "doc"), _accepted(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_every_manifest_validate_accepts_is_admitted(api: KubeAPIServer, label: str,
                                                     doc: dict[str, Any]) -> None:
    code, message = _create(api, doc)
    assert code == 201, f"{label}: {code} {message}"


def test_every_accounts_example_is_among_them() -> None:
    names = {label.split("#")[0] for label, _doc in _accepted()}
    assert {p.name for p in ACCOUNTS.glob("*.yaml")} <= names


BAD_FILES = sorted(p.stem for p in BAD.glob("*.yaml"))


@pytest.mark.parametrize("stem", [s for s in BAD_FILES if s not in NOT_AT_ADMISSION])
def test_every_own_field_rule_of_validate_is_enforced_at_admission(api: KubeAPIServer,
                                                                   stem: str) -> None:
    loaded = load_paths([str(BAD / f"{stem}.yaml")])
    assert loaded.invalid, f"{stem}: validate accepts it"
    for doc in loaded.invalid:
        assert doc.manifest is not None, f"{stem}: no object to send; list it in NOT_AT_ADMISSION"
        code, message = _create(api, doc.manifest)
        # an invalid namespace name cannot exist, so the namespace lookup answers first
        expected = 404 if stem == "bad-namespace" else 422
        assert code == expected, f"{stem} document {doc.source.document}: {code} {message}"


def test_the_exemptions_name_existing_files_that_validate_rejects() -> None:
    assert set(NOT_AT_ADMISSION) <= set(BAD_FILES)
