"""The CRD's CEL rules, evaluated with cel-python, agree with `validate` on provider rules:
every example and every valid manifest passes them, and each manifest `validate` rejects for a
provider rule (region, tier, outlook password, AWSAccessKey, TLS floor) fails one of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.manifest.crd import render_crd
from reconciler.manifest.load import load_paths
from reconciler.manifest.validate import validate_document
from tests.test_provider_rules import EXPECTED, _manifest

celpy = pytest.importorskip("celpy")

ROOT = Path(__file__).parent.parent


def _rules() -> list[tuple[tuple[str, ...], str, str]]:
    """(path under the object, rule, message) for every x-kubernetes-validations entry."""
    crd = yaml.safe_load(render_crd())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    out: list[tuple[tuple[str, ...], str, str]] = []

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for r in node.get("x-kubernetes-validations", []):
            out.append((path, r["rule"], r["message"]))
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, (*path, name))

    walk(root, ())
    return out


_ENV = celpy.Environment()
_PROGRAMS: list[tuple[tuple[str, ...], Any, str]] = []
#: Rules cel-python cannot compile (Kubernetes-only CEL functions); never a provider rule.
UNCOMPILED: list[str] = []
for _path, _rule, _msg in _rules():
    try:
        _PROGRAMS.append((_path, _ENV.program(_ENV.compile(_rule)), _msg))
    except Exception:  # celpy's parse errors have no common public base
        UNCOMPILED.append(_msg)


def test_provider_rules_compile() -> None:
    from reconciler.manifest.crd import _provider_rules

    mine = {r["message"] for r in _provider_rules()}
    assert mine and not mine & set(UNCOMPILED)
    assert mine <= {m for _, _, m in _PROGRAMS}


def _at(doc: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(doc, dict) or name not in doc:
            return None
        doc = doc[name]
    return doc


def failing(doc: dict[str, Any]) -> Iterator[str]:
    """The messages of the rules the document breaks."""
    for path, program, message in _PROGRAMS:
        node = _at(doc, path)
        if node is None or not isinstance(node, dict) or not path:
            continue
        if not bool(program.evaluate({"self": celpy.json_to_cel(node)})):
            yield message


def test_examples_pass_every_rule() -> None:
    for account in load_paths([str(ROOT / "accounts")]).accounts:
        assert list(failing(dict(account.manifest))) == [], account.name


@pytest.mark.parametrize(("provider", "region", "tier"), sorted({(p, r, t) for p, r, t, *_
                                                                  in EXPECTED}, key=str))
def test_valid_presets_pass_every_rule(provider: str, region: str | None,
                                       tier: str | None) -> None:
    doc = _manifest(provider, region=region, tier=tier)
    assert list(failing(doc)) == []


@pytest.mark.parametrize("doc", [
    _manifest("outlook"),
    _manifest("custom", method="AWSAccessKey", connection={"host": "mail.example.com"}),
    _manifest("office365", method="None", connection={"minTLSVersion": "1.1"}),
    _manifest("amazon-ses", region="eu-west-1", connection={"minTLSVersion": "1.0"}),
    _manifest("zoho", region="us-east-1"),
    _manifest("mailgun", region="in"),
    _manifest("sparkpost", region="jp"),
    _manifest("gmail", region="eu"),
    _manifest("amazon-ses", region="eu"),
    _manifest("sendgrid", tier="paid"),
])
def test_what_validate_rejects_admission_rejects(doc: dict[str, Any]) -> None:
    assert [d for d in validate_document(doc) if d.severity == "error"], "validate accepts it"
    assert list(failing(doc)), "the CRD would admit it"
