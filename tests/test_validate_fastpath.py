"""The compiled schema validator (jsonschema-rs) decides exactly as the Python one does.

`validate` trusts the compiled verdict "valid" and skips the Python validator; a document the
compiled validator wrongly passed would lose its errors. So the two must agree on every example
manifest and on Hypothesis-made mutations of the valid ones.
"""

from __future__ import annotations

import copy
import datetime
import functools
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.manifest import load_schema
from reconciler.manifest.compiled_schema import (
    CompiledSchema,
    json_only,
    portable,
    python_patterns,
)
from reconciler.manifest.load import PARALLEL_MIN_FILES, load_bytes, load_paths
from reconciler.manifest.pool import map_chunks
from reconciler.manifest.report import run_validate
from reconciler.manifest.validate import _compiled, _validator, schema_errors, validate_document

ROOT = Path(__file__).parent.parent
EXAMPLE_FILES = sorted([*(ROOT / "tests" / "manifests").rglob("*.yaml"),
                        *(ROOT / "accounts").glob("*.yaml")])


def _documents(path: Path) -> list[Any]:
    """The documents of a file as `validate` reads them (none with aliases: billion laughs)."""
    docs, _errors = load_bytes(path.read_bytes(), str(path))
    return [d.data for d in docs if d.data is not None]


EXAMPLES = [(f"{p.relative_to(ROOT)}#{i}", d) for p in EXAMPLE_FILES
            for i, d in enumerate(_documents(p), 1)]
VALID = [d for _, d in EXAMPLES if isinstance(d, dict) and json_only(d)
         and _validator().is_valid(d)]


def _property_names(schema: Any) -> set[str]:
    names: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                names |= set(value)
            if key not in ("enum", "const"):
                names |= _property_names(value)
    elif isinstance(schema, list):
        for item in schema:
            names |= _property_names(item)
    return names


def _enum_values(schema: Any) -> set[Any]:
    found: set[Any] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "enum" and isinstance(value, list):
                found |= {v for v in value if isinstance(v, str | int)}
            elif key == "const" and isinstance(value, str | int):
                found.add(value)
            else:
                found |= _enum_values(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _enum_values(item)
    return found


KEYS = sorted(_property_names(load_schema()))
WORDS = sorted(_enum_values(load_schema()), key=repr) + [
    "smtp.example.com", "user@example.com", "not an address", "a@b", "30s", "1h30m", "5x",
    "https://login.example.com/token", "http://x y", "my-secret", "Name\n", "x\x1cy", "é@ü.de",
    "eu-west-1", "UPPER", "-lead", "trail-", "a" * 300, "",
]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-5, max_value=70000)
           | st.integers() | st.floats(allow_nan=False) | st.sampled_from(WORDS)
           | st.text(alphabet=st.sampled_from(list("aZ09-._@ :/\n\r\x00\x1c\u2028é\t")), max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner,
                                        max_size=3), max_leaves=6)


def _seen_values(node: Any, into: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Every value the valid examples give each key: edits that keep a document plausible."""
    if isinstance(node, dict):
        for key, value in node.items():
            into.setdefault(key, []).append(value)
            _seen_values(value, into)
    elif isinstance(node, list):
        for item in node:
            _seen_values(item, into)
    return into


SEEN = _seen_values(VALID, {})


def _containers(node: Any) -> list[Any]:
    """Every dict and list in a document (the places a mutation can act)."""
    found = [node]
    children = node.values() if isinstance(node, dict) else node
    for child in children:
        if isinstance(child, dict | list):
            found += _containers(child)
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid example with one to four random edits: drop, add, swap or retype a field, edit a list.

    "swap" sets a key to a value some valid example gives that key (often valid again, e.g. another
    provider or security mode), so the documents stay near the border between valid and invalid.
    """
    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        target = draw(st.sampled_from(_containers(doc)))
        op = draw(st.sampled_from(["drop", "set", "swap", "swap", "swap", "tweak"]))
        if isinstance(target, dict):
            if op == "drop" and target:
                del target[draw(st.sampled_from(sorted(target)))]
            elif op == "swap":
                key = draw(st.sampled_from(list(target) or KEYS) | st.sampled_from(KEYS))
                target[key] = copy.deepcopy(draw(st.sampled_from(SEEN.get(key) or WORDS)))
            elif op == "tweak" and target:
                key = draw(st.sampled_from(sorted(target)))
                value = target[key]
                if isinstance(value, str):
                    target[key] = value + draw(st.sampled_from(["\n", " ", "\x1c", "x", "@", "/"]))
                elif isinstance(value, bool | int):
                    target[key] = draw(st.sampled_from([-1, 0, 1, 65536, str(value), 1.0 * value]))
                else:
                    target[key] = draw(SCALARS)
            else:
                key = draw(st.sampled_from([*target, *KEYS]))
                target[key] = draw(VALUES)
        elif op == "drop" and target:
            target.pop(draw(st.integers(min_value=0, max_value=len(target) - 1)))
        else:
            target.append(draw(VALUES))
    return doc


def _agree(doc: Any) -> None:
    fast = _compiled().verdict(doc)
    slow = _validator().is_valid(doc)
    assert fast is None or fast == slow, f"compiled says valid={fast}, Python says {slow}"


def test_compiled_validator_is_installed_and_used() -> None:
    assert _compiled().available
    assert VALID, "no valid example manifest found"
    assert all(_compiled().verdict(d) is True for d in VALID)


@pytest.mark.parametrize(("where", "doc"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_verdicts_agree_on_every_example(where: str, doc: Any) -> None:
    _agree(doc)
    if json_only(doc):
        assert _compiled().verdict(doc) is not None


def test_examples_include_schema_invalid_documents() -> None:
    invalid = [d for _, d in EXAMPLES if json_only(d) and not _validator().is_valid(d)]
    assert len(invalid) >= 10
    assert all(_compiled().verdict(d) is False for d in invalid)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_verdicts_agree_on_mutated_documents(doc: Any) -> None:
    _agree(doc)


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_fast_path_reports_the_same_messages(doc: Any) -> None:
    """The words validate prints (schema_errors gives jsonschema-rs's errors, translated)."""
    from reconciler.manifest.validate import _schema_messages

    python = sorted(m for e in _validator().iter_errors(doc) for m in _schema_messages(e))
    assert sorted(m for e in schema_errors(doc) for m in _schema_messages(e)) == python


@pytest.mark.parametrize(("definition", "value"), [
    ("url", "https://login.example.com/\x1ctoken"),  # in Python's \s, not in Rust's
    ("url", "https://login.example.com/token"),
    ("url", "https://login.example.com/\u00a0"),
    ("headerValue", "Alerts\n"),  # our $ is ECMA's: no match before a final newline
    ("headerValue", "Al\nerts"),
    ("hostname", "smtp.example.com\n"),
])
def test_python_regex_semantics_decide(definition: str, value: str) -> None:
    schema = load_schema()["$defs"][definition]
    compiled = CompiledSchema(schema, {})
    import jsonschema

    from reconciler.manifest.patterns import pattern_keyword

    python = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                          {"pattern": pattern_keyword})(schema)
    assert compiled.verdict(value) is python.is_valid(value)


@pytest.mark.parametrize("value", [
    datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, 4), {"a", "b"}, b"bytes",
    ("a", 1), [("key", "value")], {1: "x"}, {None: "x"}, "\ud800",
])
def test_non_json_values_get_no_verdict(value: Any) -> None:
    doc = copy.deepcopy(VALID[0])
    doc["spec"]["extra"] = value
    assert _compiled().verdict(doc) is not True  # None, or False before reaching the value
    assert validate_document(doc), "the Python path still reports the document"


@pytest.mark.parametrize(("doc", "expected"), [
    ({"a": [1, 2.5, True, None, "x"]}, True),
    ({"a": (1, 2)}, False),
    ({1: "a"}, False),
    ([datetime.date(2024, 1, 1)], False),
    ("plain", True),
])
def test_json_only(doc: Any, expected: bool) -> None:
    assert json_only(doc) is expected


def test_python_patterns_renames_keywords_not_property_names() -> None:
    """Patterns that are not portable() go to the Python callback; the portable ones stay."""
    schema = {"properties": {"pattern": {"type": "string", "pattern": r"^\s$"}},
              "items": {"pattern": "b."}, "enum": [{"pattern": "c."}], "allOf": [{"pattern": "^a$"}]}
    assert python_patterns(schema) == {
        "properties": {"pattern": {"type": "string", "x-python-pattern": r"^\s$"}},
        "items": {"x-python-pattern": "b."}, "enum": [{"pattern": "c."}],
        "allOf": [{"pattern": "^a$"}]}


def test_dollar_means_end_of_text_as_in_ecma_and_re2() -> None:
    compiled = CompiledSchema({"type": "string", "pattern": "^[a-z]+$"}, {})
    assert compiled.verdict("abc") is True
    assert compiled.verdict("abc\n") is False  # Python's bare $ would accept it
    assert compiled.verdict("abc\nx") is False


@pytest.mark.parametrize("field", ["displayName", "replyTo", "userId"])
def test_a_trailing_newline_in_a_header_value_is_rejected(field: str) -> None:
    doc = yaml.safe_load((ROOT / "accounts" / "billing.yaml").read_text(encoding="utf-8"))
    doc["spec"]["smtp"]["identity"][field] = "billing@example.com\n"
    diagnostics = validate_document(doc, file="billing.yaml")
    assert [d.pointer for d in diagnostics if d.severity == "error"] == [
        f"/spec/smtp/identity/{field}"]


# --- loading a large folder in parallel -------------------------------------------------------

def _double(items: Sequence[int]) -> list[int]:
    return [2 * i for i in items]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_map_chunks_keeps_the_order(workers: int) -> None:
    assert map_chunks(_double, list(range(1001)), workers) == [2 * i for i in range(1001)]


def _write_folder(folder: Path, count: int) -> None:
    """count files from the example accounts, every 7th invalid, duplicates across the folder."""
    examples = sorted((ROOT / "accounts").glob("*.yaml"))
    for i in range(count):
        text = examples[i % len(examples)].read_text(encoding="utf-8")
        name = "twin" if i in (3, count - 2) else f"acct-{i:04d}"  # first and last chunk
        text = text.replace("\n  name: ", f"\n  name: {name}\n  labels: {{was: ", 1)
        text = text.replace("\n  namespace:", "}\n  namespace:", 1)
        if i % 7 == 0:
            text = text.replace("spec:\n", "spec:\n  colour: blue\n", 1)
        (folder / f"m-{i:04d}.yaml").write_text(text, encoding="utf-8")


def test_parallel_load_equals_sequential(tmp_path: Path) -> None:
    count = PARALLEL_MIN_FILES + 40
    _write_folder(tmp_path, count)
    sequential = load_paths([str(tmp_path)])
    parallel = load_paths([str(tmp_path)], parallel=True)
    assert parallel.files == sequential.files == count
    assert parallel.diagnostics == sequential.diagnostics
    assert parallel.accounts == sequential.accounts
    assert parallel.invalid == sequential.invalid
    messages = [d.message for d in parallel.diagnostics]
    assert sum("unknown field 'colour'" in m for m in messages) == len(range(0, count, 7))
    twin = [d for d in parallel.diagnostics if "is already defined at" in d.message]
    assert len(twin) == 1 and twin[0].file.endswith(f"m-{count - 2:04d}.yaml")
    assert len(parallel.accounts) > count // 2


@pytest.mark.parametrize("jobs", ["2", "0"])
def test_cli_validate_in_processes_equals_sequential_load(tmp_path: Path, jobs: str) -> None:
    """The CLI with --jobs (a process with one thread, so it forks) reports what a sequential
    load finds."""
    count = PARALLEL_MIN_FILES + 40
    _write_folder(tmp_path, count)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(tmp_path),
                           "--output", "json", "--jobs", jobs], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    sequential = load_paths([str(tmp_path)])
    errors = [d for d in sequential.diagnostics if d.severity == "error"]
    assert report["files"] == count
    assert [(e["file"], e["line"], e["pointer"], e["message"]) for e in report["errors"]] == [
        (d.file, d.line, d.pointer, d.message) for d in errors]
    assert [(a["namespace"], a["name"]) for a in report["accounts"]] == [
        (a.namespace, a.name) for a in sequential.accounts]
    assert any("is already defined at" in e["message"] for e in report["errors"])


_FORK_CHECK = """
import io, json, resource, sys
from reconciler.manifest.report import run_validate

def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime

result = {}
for jobs in (1, 2):
    out, before = io.StringIO(), children_cpu()
    code = run_validate([sys.argv[1]], output="json", out=out, jobs=jobs)
    result[jobs] = [code, out.getvalue(), children_cpu() - before]
print(json.dumps(result))
"""


def test_validate_forks_no_worker_unless_asked(tmp_path: Path) -> None:
    """One process by default (the least CPU); --jobs 2 forks a worker and prints the same.

    In a fresh interpreter: the pool forks only from a process running no other thread, and
    the suite's own process may have some (servers of earlier tests).
    """
    _write_folder(tmp_path, PARALLEL_MIN_FILES + 40)
    done = subprocess.run([sys.executable, "-c", _FORK_CHECK, str(tmp_path)], capture_output=True,
                          text=True, check=True, cwd=ROOT, timeout=300)
    outputs = json.loads(done.stdout)
    assert outputs["1"][0] == outputs["2"][0] == 1
    assert outputs["1"][2] == 0  # no child process ran (and was reaped)
    assert outputs["2"][2] > 0
    assert outputs["1"][1] == outputs["2"][1]
    assert run_validate([str(tmp_path)], out=io.StringIO(), jobs=-1) == 2


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@functools.cache
def _as_written() -> Any:
    """The Python validator on the schema as written, every `$ref` resolved by jsonschema."""
    import jsonschema

    from reconciler.manifest.patterns import pattern_keyword

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern_keyword})
    return cls(load_schema(), format_checker=_validator().format_checker)


def _messages(validator: Any, doc: Any) -> list[tuple[str, str]]:
    from reconciler.manifest.validate import _schema_messages

    return [m for e in validator.iter_errors(doc) for m in _schema_messages(e)]


def test_every_ref_beside_a_description_is_inlined() -> None:
    assert _refs(load_schema()), "the schema uses $ref"
    assert _refs(_validator().schema) == []  # none is recursive


@pytest.mark.parametrize(("where", "doc"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_inlined_schema_words_every_example_as_written(where: str, doc: Any) -> None:
    assert _messages(_validator(), doc) == _messages(_as_written(), doc)


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_inlined_schema_words_mutations_as_written(doc: Any) -> None:
    assert _messages(_validator(), doc) == _messages(_as_written(), doc)


def test_prepare_builds_the_compiled_schema_before_workers_fork() -> None:
    from reconciler.manifest.validate import prepare

    _compiled.cache_clear()
    prepare()
    assert _compiled.cache_info().currsize == 1
    assert "reconciler.manifest.semantics" in sys.modules


def _schema_patterns(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        return own.union(*(_schema_patterns(v) for k, v in node.items()
                           if k not in ("enum", "const")))
    if isinstance(node, list):
        return set().union(*(_schema_patterns(v) for v in node))
    return set()


PORTABLE = sorted(p for p in _schema_patterns(load_schema()) if portable(p))
TRICKY = ["", "a", "a\n", "\na", "a\r", "a\x00", "A-1.b_c", "a.b", "a\u2028", "a\x1c", "é", "x.é",
          "\U0001f600", "1h30m", "1.5h", "90s\n", "eu-west-1", "[::1]", "[::1", "-a", "a-", "a" * 300,
          "a b", "a\tb", "a\u00a0b", "A", "a..b", "a.-b", "0" * 20 + "s"]


def test_most_schema_patterns_are_portable() -> None:
    assert len(PORTABLE) >= 8
    assert not portable(r"^https?://[^\s]+$") and not portable("a.b") and not portable("(?i)a")


@pytest.mark.parametrize("pattern", PORTABLE)
def test_portable_patterns_decide_as_python_re(pattern: str) -> None:
    """jsonschema-rs checks these itself: the same verdict as Python's re (end-of-text `$`)."""
    import jsonschema_rs

    from reconciler.manifest.patterns import compile_pattern

    native = jsonschema_rs.validator_for({"pattern": pattern})
    for text in TRICKY:
        assert native.is_valid(text) is bool(compile_pattern(pattern).search(text)), text


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PORTABLE),
       st.text(alphabet=st.sampled_from(list("aZz09-._:[]@/\n\r\x00\u2028 \tésmh")), max_size=12))
def test_portable_patterns_decide_as_python_re_on_random_text(pattern: str, text: str) -> None:
    import jsonschema_rs

    from reconciler.manifest.patterns import compile_pattern

    native = jsonschema_rs.validator_for({"pattern": pattern})
    assert native.is_valid(text) is bool(compile_pattern(pattern).search(text))
