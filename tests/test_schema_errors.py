"""jsonschema-rs's errors, translated (schema_errors.py), word and order each schema error exactly
as the Python validator did: on every example, the benchmark's mistakes and Hypothesis-made
mutations; and where the translation cannot be sure it gives up, so the Python validator answers.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from reconciler.manifest.compiled_schema import json_only
from reconciler.manifest.schema_errors import SchemaError, Translator
from reconciler.manifest.validate import (
    _compiled,
    _schema_messages,
    _translator,
    _validator,
    schema_errors,
    validate_document,
)
from tests.test_validate_fastpath import EXAMPLES, VALID, mutated

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from generate import MUTATIONS  # noqa: E402

pytestmark = pytest.mark.skipif(not _compiled().available, reason="jsonschema-rs not installed")


def _python(doc: Any) -> list[tuple[str, str]]:
    return [m for e in _validator().iter_errors(doc) for m in _schema_messages(e)]


def _translated(doc: Any) -> list[tuple[str, str]] | None:
    errors = _translator().translate(_compiled().errors(doc) or [], doc)
    return None if errors is None else [m for e in errors for m in _schema_messages(e)]  # type: ignore[arg-type]


def _python_order_is_random(doc: Any) -> bool:
    """Two errors below one schema-valued `additionalProperties`: the Python validator visits
    those extra keys in the order of a set (hash order), so only the set of words is compared."""
    below = [e for e in _compiled().errors(doc) or []
             if "additionalProperties" in list(e.evaluation_path)[:-1]]
    return len(below) > 1


def _same(doc: Any) -> bool:
    translated, python = _translated(doc), _python(doc)
    if translated is not None and _python_order_is_random(doc):
        return sorted(translated) == sorted(python)
    return translated == python


def _invalid_json(doc: Any) -> bool:
    return isinstance(doc, dict) and json_only(doc) and _compiled().verdict(doc) is False


INVALID_EXAMPLES = [(w, d) for w, d in EXAMPLES if _invalid_json(d)]


def test_the_examples_hold_invalid_documents() -> None:
    assert len(INVALID_EXAMPLES) >= 20


@pytest.mark.parametrize(("where", "doc"), INVALID_EXAMPLES, ids=[w for w, _ in INVALID_EXAMPLES])
def test_translated_words_and_order_every_invalid_example(where: str, doc: Any) -> None:
    assert _same(doc)


@pytest.mark.parametrize("mutation", range(len(MUTATIONS)))
def test_translated_words_the_benchmark_mistakes(mutation: int) -> None:
    for base in VALID[:8]:
        doc = copy.deepcopy(base)
        MUTATIONS[mutation](doc)
        if _invalid_json(doc):
            assert _translated(doc) == _python(doc) != []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_translated_words_and_order_mutations(doc: Any) -> None:
    if _invalid_json(doc):
        assert _translated(doc) is None or _same(doc)


def test_several_errors_come_out_in_the_python_validators_order() -> None:
    """Errors from `properties`, `additionalProperties`, `required` (two at once), `then` and
    array items, which jsonschema-rs yields in another order."""
    doc = copy.deepcopy(next(d for d in VALID if d["spec"].get("smtp")))
    doc["colour"] = "blue"
    doc["metadata"]["name"] = "Not_A_Name"
    doc["spec"]["smtp"]["authentication"] = {"method": "Password", "passwordSecretRef": {"x": 1}}
    doc["spec"]["sendUsing"] = "MicrosoftGraph"
    doc["spec"].setdefault("publish", {})["formats"] = ["a", "a", 3]
    found = _translated(doc)
    assert found is not None and len(found) >= 7
    assert found == _python(doc)
    plain_order = [m for e in _compiled()._validator.iter_errors(doc)  # type: ignore[union-attr]
                   for m in _schema_messages(_translator().translate([e], doc)[0])]  # type: ignore[index, arg-type]
    assert plain_order != found  # the order is this module's doing, not jsonschema-rs's


def test_an_error_it_cannot_place_gives_up() -> None:
    """An error whose keyword or path it does not know: None (the caller asks Python)."""

    class Unknown:
        instance_path = ["spec"]
        schema_path = ["properties", "spec", "patternProperties"]
        evaluation_path = ["properties", "spec", "patternProperties"]
        kind = None

    assert _translator().translate([Unknown()], {"spec": {}}) is None
    # two errors from one place (a wrong path that resolves to the same keyword twice)
    doc = {"apiVersion": 1}
    errors = _compiled().errors(doc) or []
    type_error = next(e for e in errors if list(e.instance_path) == ["apiVersion"])
    assert _translator().translate([type_error, type_error], doc) is None
    # a format jsonschema-rs checks but the Python validator does not
    schema = {"properties": {"host": {"format": "hostname"}}}
    hostname = type("E", (), {"instance_path": ["host"], "kind": None,
                              "schema_path": ["properties", "host", "format"],
                              "evaluation_path": ["properties", "host", "format"]})()
    assert Translator(schema, ["email"]).translate([hostname], {"host": "-"}) is None
    assert isinstance(Translator(schema, ["hostname"]).translate([hostname], {"host": "-"})[0],
                      SchemaError)


def test_validate_imports_no_python_jsonschema_for_the_benchmark_mistakes(tmp_path: Path) -> None:
    """The Python validator (and its 45 ms import) is not needed for the usual mistakes."""
    for index, mutation in enumerate(MUTATIONS):
        doc = copy.deepcopy(VALID[0])
        mutation(doc)
        assert validate_document(doc), index
    code = ("import sys, copy\n"
            "sys.path.insert(0, 'bench')\n"
            "from generate import MUTATIONS, templates\n"
            "from reconciler.manifest.validate import validate_document\n"
            "for i, m in enumerate(MUTATIONS):\n"
            "    doc = copy.deepcopy(templates()[0]); m(doc)\n"
            "    assert validate_document(doc), i\n"
            "print('jsonschema' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "False", proc.stderr


def test_schema_errors_falls_back_to_python_for_non_json_data() -> None:
    """A document holding a YAML timestamp gets no compiled verdict: the Python validator."""
    import datetime

    doc = copy.deepcopy(VALID[0])
    doc["metadata"]["name"] = datetime.date(2026, 1, 1)
    errors = list(schema_errors(doc))
    assert errors and type(errors[0]).__module__.startswith("jsonschema")
