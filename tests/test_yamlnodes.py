"""The loader's one pass over a document's nodes (yamlnodes.check_and_construct) against the two
walks it replaces: check_structure, then the loader's construct_document (bench/README.md, 7).

Same data (and types), the same NodeProblem at the same node, the same constructor error, for
every snippet here and every YAML file in the repository; ``plain`` is exactly json_only's
verdict with no non-finite number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.manifest import yamlnodes
from reconciler.manifest.compiled_schema import json_only
from reconciler.manifest.validate import non_finite

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = [
    "a: 1\nb: [x, 2, 3.5, true, null, ~, yes, 0x1F, 0o17, 1_000, '7']\n",
    "a: {b: {c: {d: [1, [2, [3]]]}}}\n",
    "n: .nan\n", "i: -.inf\n", "f: 1e3\n", "s: !!str 12\n", "x: !!float 3\n",
    "t: 2001-12-14\n", "t: 2001-02-30\n", "t: !!timestamp nope\n", "b: !!binary aGVsbG8=\n",
    "bad: !!int abc\n", "bad: !!bool maybe\n", "bad: !!null x\n", "c: !custom 1\n",
    "s: !!set {a, b}\n", "o: !!omap [a: 1, b: 2]\n", "p: !!pairs [a: 1, a: 2]\n",
    "1: one\n2: two\n", "1: one\n0x1: again\n", "true: t\n", "? [a, b]\n: v\n", "? {a: 1}\n: v\n",
    "a: !!map {b: 1}\n", "a: !!seq [1]\n", "a: !!str {b: 1}\n", "a: !!map [1]\n",
    "a: 1\na: 2\n", "a: {b: 1, b: 2}\n", "a: &x {b: 1}\nc: *x\n", "l: [&y 1, *y]\n",
    "base: &b {x: 1}\nd: {<<: *b}\n", "d: {'<<': 1}\n", "d: {!!merge m: 1}\n",
    "x: " + "[" * 70 + "]" * 70 + "\n", "x: " + "[" * 64 + "]" * 64 + "\n",
    "x: " + "{a: " * 66 + "1" + "}" * 66 + "\n",
    "just a string\n", "- 1\n- two\n", "42\n", "!!int 42\n", "k: |\n  text\n  more\n",
    "a: {b: 1, b: 2, <<: {c: 3}}\n", "a: [1, {b: 2, c: [3, .NaN]}]\n", "a: {1.5: x, null: y}\n",
]


def _old(loader: Any, root: Any) -> tuple[str, Any]:
    try:
        yamlnodes.check_structure(root)
        return "ok", loader.construct_document(root)
    except yamlnodes.NodeProblem as exc:
        return "problem", (exc.message, yamlnodes.mark_of(exc.node))
    except Exception as exc:  # noqa: BLE001 - compared, not hidden
        return "error", (type(exc).__name__, str(exc))


def _new(loader: Any, root: Any) -> tuple[str, Any, bool | None]:
    try:
        data, plain = yamlnodes.check_and_construct(loader, root)
        return "ok", data, plain
    except yamlnodes.NodeProblem as exc:
        return "problem", (exc.message, yamlnodes.mark_of(exc.node)), None
    except Exception as exc:  # noqa: BLE001
        return "error", (type(exc).__name__, str(exc)), None


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not True), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            type(k) is type(k2) and _same(a[k], b[k2]) for k, k2 in zip(a, b, strict=True))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _compare(text: str) -> int:
    """Check every document of text both ways; the number of documents compared."""
    old_loader, new_loader = yamlnodes.Loader(text), yamlnodes.Loader(text)
    count = 0
    try:
        while old_loader.check_node() and new_loader.check_node():
            old_root, new_root = old_loader.get_node(), new_loader.get_node()
            old, new = _old(old_loader, old_root), _new(new_loader, new_root)
            assert old[0] == new[0], (text, old, new)
            assert _same(old[1], new[1]), (text, old, new)
            if new[0] == "ok":
                assert new[2] is (json_only(new[1]) and not list(non_finite(new[1]))), text
            count += 1
    finally:
        old_loader.dispose()
        new_loader.dispose()
    return count


@pytest.mark.parametrize("text", SNIPPETS)
def test_one_pass_matches_check_then_construct(text: str) -> None:
    assert _compare(text) == 1


def test_plain_only_for_json_types() -> None:
    loader = yamlnodes.Loader("a: [1, 2.5, x, true, null]\nb: {c: d}\n")
    data, plain = yamlnodes.check_and_construct(loader, loader.get_single_node())
    assert plain is True and data == {"a": [1, 2.5, "x", True, None], "b": {"c": "d"}}
    for text in ("a: .nan\n", "1: a\n", "t: 2001-12-14\n", "s: !!set {a}\n"):
        loader = yamlnodes.Loader(text)
        assert yamlnodes.check_and_construct(loader, loader.get_single_node())[1] is False, text


def test_every_yaml_file_in_the_repository() -> None:
    files = [p for p in sorted(ROOT.glob("**/*.y*ml"))
             if ".venv" not in p.parts and ".git" not in p.parts]
    compared = 0
    for path in files:
        try:
            compared += _compare(path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, yaml.YAMLError):
            continue  # not UTF-8 or a syntax error: refused before either pass
    assert compared > 50


@pytest.mark.parametrize("text", [*SNIPPETS, "a: [1, '1', \"1\", !!str 1, ! 1, 1.0, ~, '', yes, No]\n"])
def test_cached_resolver_tags_as_pyyaml(text: str) -> None:
    """Composed twice (the second time from the cache), the tags are PyYAML's safe loader's."""
    for _ in range(2):
        assert _tags(yaml.compose_all(text, Loader=yamlnodes.Loader)) == _tags(
            yaml.compose_all(text, Loader=yaml.SafeLoader))


def _tags(nodes: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    def walk(node: Any) -> None:
        out.append((node.tag, node.value if isinstance(node, yaml.ScalarNode) else None))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                walk(key)
                walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    try:
        for node in nodes:
            walk(node)
    except yaml.YAMLError as exc:
        out.append(("error", type(exc).__name__))
    return out
