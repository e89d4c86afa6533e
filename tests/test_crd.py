"""The generated CRD: committed file up to date, structural by the Kubernetes rules, kustomizable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.manifest.crd import render_crd
from tests.kube_fixtures import kube_api
from tests.kubeapi import KubeAPIServer
from tests.kubeapi.celtypes import TypedSchema, rule_sites
from tests.system import require_executable

__all__ = ["kube_api"]  # the fixture, imported for pytest

ROOT = Path(__file__).parent.parent

#: JSONSchemaProps fields a structural v1 CRD schema may use (no $ref, definitions, const...).
ALLOWED = {"type", "description", "format", "enum", "pattern", "minimum", "maximum",
           "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
           "maxItems", "minProperties", "maxProperties", "required", "properties", "items",
           "additionalProperties", "default", "nullable", "x-kubernetes-preserve-unknown-fields",
           "x-kubernetes-list-type", "x-kubernetes-validations", "x-kubernetes-int-or-string",
           "x-kubernetes-map-type", "oneOf", "anyOf"}


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(render_crd())
    return crd


def test_committed_crd_is_generated() -> None:
    assert (ROOT / "deploy" / "crd.yaml").read_text() == render_crd(), (
        "deploy/crd.yaml is stale: run `email-reconciler crd > deploy/crd.yaml`")


def test_crd_names_and_version() -> None:
    spec = _crd()["spec"]
    assert spec["group"] == "email.reconciler.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {"kind": "EmailAccount", "listKind": "EmailAccountList",
                             "plural": "emailaccounts", "singular": "emailaccount",
                             "shortNames": ["ea"], "categories": ["email"]}
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    cols = _crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [c["name"].upper() for c in cols if not c.get("priority")]
    wide = [c["name"].upper() for c in cols if c.get("priority") == 1]
    assert default == ["PROVIDER", "VIA", "PROTOCOL", "TLS", "READY", "REASON", "SECRET", "AGE"]
    assert wide == ["EMAIL", "HOST", "CERT-EXPIRES", "MESSAGE"]
    by_name = {c["name"].upper(): c for c in cols}
    assert by_name["READY"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert by_name["AGE"]["type"] == "date"


def test_schema_is_structural() -> None:
    root = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        assert set(node) <= ALLOWED, (path, set(node) - ALLOWED)
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        for key in ("oneOf", "anyOf"):
            for branch in node.get(key, []):
                assert not {"type", "default", "description"} & set(branch), path
        if node.get("type") == "array":
            assert "items" in node, path
    # validateStructuralMetadataInvariants: only name/generateName restrictions, not even a
    # description ("must not specify anything other than name and generateName")
    assert root["properties"]["metadata"] == {"type": "object"}
    assert root["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_schema_keeps_constraints_and_adds_cel_rules() -> None:
    spec = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    port = spec["properties"]["smtp"]["properties"]["connection"]["properties"]["port"]
    assert (port["type"], port["minimum"], port["maximum"]) == ("integer", 1, 65535)
    email = spec["properties"]["smtp"]["properties"]["identity"]["properties"]["emailAddress"]
    assert email["format"] == "email"
    rules = [r["message"] for r in spec["x-kubernetes-validations"]]
    assert "sendUsing: MicrosoftGraph is only valid with provider: office365" in rules
    auth = spec["properties"]["smtp"]["properties"]["authentication"]
    assert any("passwordSecretRef" in r["rule"] for r in auth["x-kubernetes-validations"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_kustomize_renders_the_crd() -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert [c["metadata"]["name"] for c in crds] == ["emailaccounts.email.reconciler.io"]
    assert crds[0]["spec"] == _crd()["spec"]


def test_every_field_has_a_description() -> None:
    """`kubectl explain` shows each field's description: every property of the CRD has one."""
    root = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # .metadata: the apiserver documents ObjectMeta and refuses anything more than its type here
    fields = [(path, node) for path, node in rule_sites(root)
              if path not in ("", ".metadata") and not path.endswith(("[]", "{}"))]
    assert len(fields) > 80
    missing = [path for path, node in fields if len(node.get("description", "").strip()) < 10]
    assert not missing, f"fields without a description in schemas/emailaccount.schema.json: {missing}"


# The apiserver type-checks every rule when the CRD is created (issue 22 item 7): cel-python in
# tests/kubeapi is dynamically typed, so it is the C++ CEL's type checker that decides here.
def _rules(root: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    return [(path or ".", node, rule["rule"]) for path, node in rule_sites(root)
            for rule in node.get("x-kubernetes-validations", [])]


def test_every_rule_type_checks_against_its_declared_types() -> None:
    root = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    types = TypedSchema(root)
    rules = _rules(root)
    assert len(rules) > 20
    errors = [f"{path}: {rule}\n  {error}" for path, node, rule in rules
              if (error := types.check(node, rule))]
    assert not errors, "\n".join(errors)


def test_map_key_rules_sit_on_the_map_only() -> None:
    spec = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    publish, smtp = spec["properties"]["publish"], spec["properties"]["smtp"]
    for m in (publish["properties"]["labels"], publish["properties"]["annotations"],
              smtp["properties"]["advanced"]):
        assert m["x-kubernetes-validations"], m
        assert "x-kubernetes-validations" not in m["additionalProperties"]


_OBJ = {"type": "object", "properties": {
    "port": {"type": "integer"}, "host": {"type": "string"}, "namespace": {"type": "string"},
    "tags": {"type": "array", "items": {"type": "string"}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "refs": {"type": "object", "additionalProperties": {
        "type": "object", "properties": {"name": {"type": "string"}}}}}}


@pytest.mark.parametrize(("where", "rule", "fails"), [
    ((), "self.port == 25 && self.host.matches('^a')", False),
    ((), "self.labels.all(k, k.size() < 64) && self.tags.all(t, t != '')", False),
    ((), "self.refs.all(k, self.refs[k].name != '') && self.__namespace__ != ''", False),
    ((), "has(self.port) && self.metadata.name.size() < 10", False),
    ((), "self.port == 'x'", True),                  # int compared with a string
    ((), "self.prot == 25", True),                   # no such field
    ((), "self.port", True),                         # not a bool
    ((), "self.metadata.labels.size() > 0", True),   # the apiserver shows only name, generateName
    (("labels", "additionalProperties"), "self.all(k, k != '')", True),  # all() on a string
    (("labels", "additionalProperties"), "self.size() < 10", False),
    (("tags", "items"), "self.startsWith('a')", False),
    (("tags", "items"), "self.lowerAscii().split('.').size() < 3", False),  # the strings extension
    (("refs", "additionalProperties"), "self.name != ''", False),
])
def test_type_checker_refuses_what_the_apiserver_refuses(where: tuple[str, ...], rule: str,
                                                         fails: bool) -> None:
    root = {"type": "object", "properties": {"metadata": {"type": "object"}, **_OBJ["properties"]}}
    types = TypedSchema(root)
    node = root
    for key in where:
        node = node["properties"][key] if key in node.get("properties", {}) else node[key]
    assert (types.check(node, rule) is not None) == fails, types.check(node, rule)


def test_kubectl_explain_documents_the_served_crd(kube_api: KubeAPIServer, tmp_path: Path) -> None:
    """`kubectl explain` reads the served CRD's OpenAPI v3 document and shows every description."""
    kubectl = require_executable("kubectl", "kubectl 1.27 or later (explain from OpenAPI v3)")
    config = kube_api.kubeconfig(tmp_path / "kubeconfig")
    done = subprocess.run([kubectl, "--kubeconfig", str(config), "--cache-dir", str(tmp_path / "cache"),
                           "explain", "emailaccount.spec.smtp.connection"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # kubectl wraps at 80 columns
    connection = (_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                  ["properties"]["smtp"]["properties"]["connection"])
    assert "KIND: EmailAccount" in out and "FIELD: connection <Object>" in out
    assert " ".join(connection["description"].split()) in out
    for name, field in connection["properties"].items():
        assert f"{name} <{'Object' if field['type'] == 'object' else field['type']}>" in out
        assert " ".join(field["description"].split()) in out, name


_MACROS = ("all", "exists", "exists_one", "map", "filter")


def _reads(root: dict[str, Any], node: dict[str, Any], rule: str) -> list[tuple[str, dict[str, Any]]]:
    """The schema nodes a rule reads through `self.a.b` (and `self` itself), with their paths."""
    found = [("self", node)]
    for chain in re.findall(r"\bself((?:\.\w+)+)", rule):
        current, path = node, "self"
        for name in chain.strip(".").split("."):
            if name in _MACROS or name not in current.get("properties", {}):
                break
            current, path = current["properties"][name], f"{path}.{name}"
            found.append((path, current))
    return found


def test_every_value_a_rule_reads_is_bounded_so_its_estimated_cost_is() -> None:
    """The apiserver refuses a rule whose *estimated* cost exceeds its budget, and estimates an
    unbounded string or collection at the request size (3 MiB). So a rule reads only strings with
    maxLength or enum and iterates only maps and lists with maxProperties or maxItems (map keys
    are estimated at no length). Not the apiserver's estimator, but what keeps it small."""
    root = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert len(_rules(root)) > 20
    unbounded = _unbounded_reads(root)
    assert not unbounded, "\n".join(unbounded)


@pytest.mark.parametrize(("schema", "rule", "flagged"), [
    ({"type": "string"}, "self.x.matches('^a')", True),
    ({"type": "string", "maxLength": 9}, "self.x.matches('^a')", False),
    ({"type": "string", "enum": ["a"]}, "self.x == 'a'", False),
    ({"type": "object", "additionalProperties": {"type": "string", "maxLength": 9}},
     "self.x.all(k, k != '')", True),
    ({"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 9}},
     "self.x.all(i, i != '')", False),
])
def test_unbounded_reads_are_found(schema: dict[str, Any], rule: str, flagged: bool) -> None:
    root = {"type": "object", "properties": {"x": schema}, "x-kubernetes-validations": [{"rule": rule}]}
    assert bool(_unbounded_reads(root)) == flagged


def _unbounded_reads(root: dict[str, Any]) -> list[str]:
    unbounded = []
    for path, node, rule in _rules(root):
        for read, schema in _reads(root, node, rule):
            kind = schema.get("type")
            if kind == "string" and "maxLength" not in schema and "enum" not in schema:
                unbounded.append(f"{path}: {read} (a string without maxLength or enum) in {rule}")
            iterated = re.search(rf"\b{re.escape(read)}\.({'|'.join(_MACROS)})\(", rule)
            if iterated and kind == "object" and "maxProperties" not in schema:
                unbounded.append(f"{path}: {read} (a map without maxProperties) in {rule}")
            if iterated and kind == "array" and "maxItems" not in schema:
                unbounded.append(f"{path}: {read} (a list without maxItems) in {rule}")
    return unbounded


def test_the_crd_fits_kubectl_apply_s_last_applied_annotation() -> None:
    """Client-side `kubectl apply -k deploy/` stores the whole object as JSON in an annotation, and
    the apiserver refuses annotations over 256 KiB in total: the CRD (descriptions and rules
    growing) must stay well under it, or the README's install command fails."""
    size = len(json.dumps(_crd(), separators=(",", ":")).encode())
    assert size < 128 * 1024, f"{size} bytes: use `kubectl apply --server-side` in the README, or trim"
