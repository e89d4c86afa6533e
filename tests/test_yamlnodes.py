"""The loader's one pass over a document's nodes (yamlnodes.check_and_construct) against the two
walks it replaces: check_structure, then the loader's construct_document (bench/README.md, 7).

Same data (and types), the same NodeProblem at the same node, the same constructor error, for
every snippet here and every YAML file in the repository; ``plain`` is exactly json_only's
verdict with no non-finite number.
"""

from __future__ import annotations

import contextlib
import math
import operator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

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


#: Plain scalars whose implicit tag YAML 1.1 decides (bool, int, float, null, timestamp, merge,
#: value) and strings around them.
_SCALARS = ["yes", "No", "ON", "off", "y", "n", "true", "False", "~", "null", "Null", "", "0",
            "-1", "+12", "0x1F", "0o17", "017", "0b101", "1_000", "1:30", "190:20:30", "1.5",
            "-.inf", ".NaN", "1e3", "6.8523015e+5", "685.230_15e+03", "2001-12-14",
            "2001-12-14t21:59:43.10-05:00", "2001-02-30", "<<", "=", "1.2.3", "v1", "a b",
            "mail.example.com", "STARTTLS", "ca.crt", "465"]


@st.composite
def _document_texts(draw: st.DrawFn) -> str:
    """A mapping of keys to scalars (plain, quoted, tagged) and flow lists of them."""
    def scalar() -> str:
        value = draw(st.sampled_from(_SCALARS) | st.text("ab1:.-_ eE+", max_size=8))
        style = draw(st.sampled_from(["", "'", '"', "!!str ", "! "]))
        if style in ("'", '"'):
            return f"{style}{value}{style}"
        if not value.strip() or value != value.strip() or value[0] in "-:?" or ": " in value \
                or value.endswith(":"):
            return f"'{value}'"
        return f"{style}{value}"

    lines = []
    for i in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            lines.append(f"k{i}: [{', '.join(scalar() for _ in range(draw(st.integers(0, 3))))}]")
        else:
            lines.append(f"k{i}: {scalar()}")
    return "\n".join(lines) + "\n"


def _tags_or_error(text: str, loader: Any) -> list[tuple[str, Any]]:
    try:
        return _tags(yaml.compose_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        return [("error", type(exc).__name__)]


@settings(max_examples=300, deadline=None)
@given(_document_texts(), st.booleans())
def test_fast_resolver_tags_as_pyyaml(text: str, large: bool) -> None:
    """The composer's C call-backs and the lru_cache of the resolver (a text of at most
    CACHED_TEXT_MAX) and Loader.resolve (a larger text) tag every node as PyYAML's pure-Python
    safe loader does, the first time and from the caches."""
    if large:  # the same documents, after a comment that makes the text too large to cache
        text = "#" + "x" * yamlnodes.CACHED_TEXT_MAX + "\n" + text
    for _ in range(2):
        assert _tags_or_error(text, yamlnodes.Loader) == _tags_or_error(text, yaml.SafeLoader)


def test_fast_resolver_only_for_small_texts() -> None:
    """Small texts get the C call-backs; a large one keeps Loader.resolve, so the lru_cache never
    holds its scalars (at most 1,024 entries of a 16 KiB text each)."""
    small = yamlnodes.Loader("a: 1\n")
    assert small.resolve is yamlnodes._resolve_cached
    assert small.descend_resolver is operator.is_ and small.ascend_resolver is bool
    yamlnodes._resolve_cached.cache_clear()
    big = "a: " + "x" * yamlnodes.CACHED_TEXT_MAX + "\n"
    large = yamlnodes.Loader(big)
    assert large.resolve.__func__ is yamlnodes.Loader.resolve
    assert large.get_single_node().value[0][1].value == "x" * yamlnodes.CACHED_TEXT_MAX
    assert yamlnodes._resolve_cached.cache_info().currsize == 0
    small.dispose()
    large.dispose()


def _locate_before(root: Any, pointer: str) -> tuple[int, int]:
    """yamlnodes.locate as it was: a generator of unescaped tokens, a call per step."""
    node = root
    tokens = ([t.replace("~1", "/").replace("~0", "~") for t in pointer.lstrip("/").split("/")]
              if pointer else [])
    for token in tokens:
        child = yamlnodes.child(node, token)
        if child is None:
            break
        node = child
    return yamlnodes.mark_of(node)


@pytest.mark.parametrize("pointer", [
    "", "/", "//a", "/a", "/a/b", "/a/b/c", "/a/x", "/l/0", "/l/1/c", "/l/9", "/l/-1", "/l/01",
    "/a~1b", "/a~0b", "/a~01", "/~1", "/m/k~1x/y", "/metadata/name", "/spec/publish/secretName"])
def test_locate_as_before(pointer: str) -> None:
    text = ("a:\n  b:\n    c: 1\nl:\n- x\n- {c: 2}\na/b: 3\na~b: 4\na~1: 5\n/: 6\n"
            "m: {k/x: {y: 7}}\nmetadata: {name: n}\nspec:\n  publish:\n    secretName: s\n")
    root = yaml.compose(text, Loader=yamlnodes.Loader)
    assert yamlnodes.locate(root, pointer) == _locate_before(root, pointer)


@st.composite
def _structures(draw: st.DrawFn) -> str:
    """Flow-style YAML mixing what check_and_construct must refuse or build: anchors and aliases,
    merge keys, duplicate and non-scalar keys, tags, deep nesting."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        kind = draw(st.sampled_from(["scalar", "scalar", "map", "seq", "alias", "deep"])
                    if depth < 4 else st.just("scalar"))
        if kind == "alias" and anchors:
            return "*" + draw(st.sampled_from(anchors))
        if kind == "deep":
            n = draw(st.sampled_from([62, 63, 64, 65]))
            return "[" * n + "1" + "]" * n
        anchor = ""
        if draw(st.integers(0, 5)) == 0:
            anchors.append(f"a{len(anchors)}")
            anchor = f"&{anchors[-1]} "
        if kind == "map":
            pairs = [f"{key(depth)}: {node(depth + 1)}" for _ in range(draw(st.integers(0, 4)))]
            return anchor + draw(st.sampled_from(["", "!!map "])) + "{" + ", ".join(pairs) + "}"
        if kind == "seq":
            items = [node(depth + 1) for _ in range(draw(st.integers(0, 3)))]
            return anchor + "[" + ", ".join(items) + "]"
        return anchor + draw(st.sampled_from(["x", "1", "2.5", "yes", "~", "'<<'", "!!str 3",
                                              ".nan", "2001-12-14", "!!binary aGk=", "a&b"]))

    def key(depth: int) -> str:
        return draw(st.sampled_from(["a", "a", "b", "<<", "1", "'x'", "!!merge m", "[k]",
                                     "{k: v}", "*a0"] if anchors else ["a", "b", "<<", "1", "c"]))

    return "r: " + node(0) + "\n"


@settings(max_examples=400, deadline=None)
@given(_structures())
def test_one_pass_matches_check_then_construct_on_random_structures(text: str) -> None:
    # a syntax error or an undefined alias: refused by the composer, before either pass
    with contextlib.suppress(yaml.YAMLError):
        _compare(text)


def test_keys_are_interned() -> None:
    """Every document's keys are one string each (the code's constants): 125,000 strings fewer
    kept for bench 1's 5,000 files, and look-ups that compare by identity."""
    loader = yamlnodes.Loader("metadata: {name: x}\nspec: {provider: custom}\n")
    data, _plain = yamlnodes.check_and_construct(loader, loader.get_single_node())
    loader.dispose()
    assert [k is c for k, c in zip(data, ("metadata", "spec"), strict=True)] == [True, True]
    assert next(iter(data["metadata"])) is "name"  # noqa: F632 - identity is the point


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    "metadata: {name: n, namespace: ns}", "metadata: {namespace: ns}", "metadata: [a]",
    "metadata: x", "metadata: {name: n, name: m}", "spec: {publish: {secretName: s}}",
    "spec: {publish: {}}", "spec: {publish: [1]}", "spec: {}", "spec: [publish]", "spec: 3",
    "kind: K", "? [metadata]\n: {name: n}", "'metadata': {'name': q}"]), max_size=4))
def test_cross_check_positions_as_locate(lines: list[str]) -> None:
    """The loader's positions for the cross-document checks are locate's, whatever is missing,
    repeated or not a map."""
    from reconciler.manifest.load import _CROSS_CHECK_POINTERS, cross_check_positions

    text = "\n".join(lines) + "\n" if lines else "{}\n"
    try:
        roots = [yaml.compose(text, Loader=yamlnodes.Loader)]
    except yaml.YAMLError:
        roots = []
    roots += [yaml.compose(t, Loader=yamlnodes.Loader) for t in ("- a\n", "x\n", "[metadata]\n")]
    for root in roots:
        assert cross_check_positions(root) == {p: yamlnodes.locate(root, p)
                                               for p in _CROSS_CHECK_POINTERS}
