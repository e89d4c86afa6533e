"""Safe YAML with positions: compose nodes, refuse aliases, merge keys and duplicate keys,
locate pointers.

PyYAML silently accepts duplicate keys and expands aliases (billion laughs), so both are checked
on the composed node tree before anything is constructed. Merge keys (`<<:`) are refused too:
PyYAML lets an explicit key win over a merged one, while kubectl (go-yaml) sends the merged one
to the API server, so `validate` and the cluster would see different objects.
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from typing import Any

import yaml

_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 64
MERGE_TAG = "tag:yaml.org,2002:merge"
_STR, _MAP, _SEQ = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
#: Scalar tags built here by the loader's own constructor functions (others: construct_document).
_SCALARS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                      "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"})


#: Implicit tags of short plain scalars, (value, implicit) -> tag: keys and most values repeat
#: from document to document, and the resolver's regular expressions are run from Python for
#: every scalar the C parser meets (a sixth of composing, bench/README.md, 7).
_RESOLVED: dict[tuple[str, Any], str] = {}
_RESOLVED_MAX, _RESOLVED_LEN = 4096, 64
#: Texts up to this size resolve every node through _resolve_cached, whose entries then hold at
#: most 1,024 x 16 KiB of scalars however many files are loaded (a larger file, such as a
#: ConfigMap of another kind with a big block, goes through Loader.resolve's bounded cache).
CACHED_TEXT_MAX = 16 * 1024
_PLAIN_RESOLVER = yaml.resolver.Resolver()


@functools.lru_cache(maxsize=1024)
def _resolve_cached(kind: Any, value: Any, implicit: Any) -> Any:
    """The tag PyYAML's resolver gives (kind, value, implicit) with no path resolver."""
    return _PLAIN_RESOLVER.resolve(kind, value, implicit)


class Loader(_SafeLoader):  # type: ignore[misc]
    """PyYAML's safe loader (the C one when built), with the composer's call-backs made cheap.

    For every node the C composer calls three methods back in Python: descend_resolver,
    ascend_resolver and resolve (bench/README.md, benchmark 1, issue 25). With no path resolver
    registered (none is, on the safe loader) the first two do nothing and resolving is a pure
    function of (kind, value, implicit), so they are replaced on the instance by C callables that
    do nothing (operator.is_ takes the two arguments, bool none) and by an lru_cache of the
    resolver, whose hits run no Python code. The same tags (tests/test_yamlnodes.py).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        #: Whether the text may hold an anchor: without an `&` no node can be met twice, and
        #: check_and_construct skips its alias check (a set of every node's id).
        self.may_alias = ("&" in stream if isinstance(stream, str)
                          else b"&" in stream if isinstance(stream, bytes) else True)
        if self.yaml_path_resolvers:
            return
        self.descend_resolver = operator.is_
        self.ascend_resolver = bool
        if (isinstance(stream, str | bytes) and len(stream) <= CACHED_TEXT_MAX
                and self.yaml_implicit_resolvers is _PLAIN_RESOLVER.yaml_implicit_resolvers
                and not _PLAIN_RESOLVER.yaml_path_resolvers):
            self.resolve = _resolve_cached  # type: ignore[method-assign]

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is not yaml.ScalarNode or len(value) > _RESOLVED_LEN or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        key = (value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(_RESOLVED) >= _RESOLVED_MAX:
                _RESOLVED.clear()
            _RESOLVED[key] = tag
        return tag


class NodeProblem(Exception):
    """A structural problem in a composed document, with the node where it was found."""

    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node, self.message = node, message


def mark_of(node: yaml.Node) -> tuple[int, int]:
    """1-based (line, column) where a node starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def is_empty(node: yaml.Node | None) -> bool:
    """An empty document (nothing, or a bare `---`)."""
    return node is None or (isinstance(node, yaml.ScalarNode)
                            and node.tag == "tag:yaml.org,2002:null" and node.value == "")


def check_structure(root: yaml.Node) -> None:
    """Raise NodeProblem on aliases, merge keys, duplicate keys or nesting deeper than MAX_DEPTH.

    Depth first in document order, so the first problem in the file is the one reported.
    """
    seen: set[int] = {id(root)}
    _check_children(root, 0, seen)


def _check_children(node: yaml.Node, depth: int, seen: set[int]) -> None:
    """Check node's children (node itself is checked); recursion is bounded by MAX_DEPTH.

    Recursive rather than with an explicit stack: a quarter faster, and this runs for every
    document (bench/README.md).
    """
    if isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(node)
        for key, value in node.value:
            if _is_merge(key):
                raise NodeProblem(key, "YAML merge keys (<<) are not allowed in manifests "
                                       "(kubectl and validate would read different values); "
                                       "write the keys out in full")
            _check_child(key, depth + 1, key, seen)
            _check_child(value, depth + 1, key, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_child(item, depth + 1, node, seen)


def _is_merge(key: yaml.Node) -> bool:
    """A merge key: plain `<<`, quoted `"<<"` (refused too: no reader need guess) or `!!merge`."""
    return isinstance(key, yaml.ScalarNode) and (key.tag == MERGE_TAG or key.value == "<<")


def _check_child(node: yaml.Node, depth: int, where: yaml.Node, seen: set[int]) -> None:
    """An alias is a node met twice (reported at ``where``, the key or list naming it)."""
    if id(node) in seen:
        raise NodeProblem(where, "YAML aliases (*name) are not allowed in manifests; "
                                 "write the value out in full")
    seen.add(id(node))
    if depth > MAX_DEPTH:
        raise NodeProblem(node, f"nesting deeper than {MAX_DEPTH} levels is not allowed")
    if not isinstance(node, yaml.ScalarNode):
        _check_children(node, depth, seen)


class _Build:
    """One pass's state: the alias check's ids (None: the text has no anchor), whether the data
    is plain JSON, the loader."""

    __slots__ = ("loader", "seen", "plain", "fallback")

    def __init__(self, loader: Any, root: yaml.Node) -> None:
        self.loader = loader
        self.seen: set[int] | None = {id(root)} if getattr(loader, "may_alias", True) else None
        self.plain, self.fallback = True, False


def check_and_construct(loader: Any, root: yaml.Node) -> tuple[Any, bool]:
    """check_structure(root), then (loader.construct_document(root), plain) in one pass.

    The same NodeProblem, in the same order, as check_structure; the same data as the loader's
    constructor (maps, lists, strings, numbers, booleans and nulls are built while checking; any
    other tag, or a value the constructor refuses, falls back to construct_document after the
    check, which then raises what it raised before). ``plain``: the data holds only dicts with
    string keys, lists, strings, finite numbers, booleans and None (compiled_schema.json_only
    holds and validate.non_finite finds nothing). One walk instead of two: bench/README.md, 7.
    """
    state = _Build(loader, root)
    data = _build(root, 0, state)
    if state.fallback:
        return loader.construct_document(root), False
    return data, state.plain


_MERGE_PROBLEM = ("YAML merge keys (<<) are not allowed in manifests (kubectl and validate would "
                  "read different values); write the keys out in full")
_ALIAS_PROBLEM = "YAML aliases (*name) are not allowed in manifests; write the value out in full"
_DEPTH_PROBLEM = f"nesting deeper than {MAX_DEPTH} levels is not allowed"


def _no_duplicate_keys(node: yaml.MappingNode) -> None:
    """Refuse a mapping that names a key twice (merge keys aside); the message points at the
    second occurrence and names the line of the first."""
    pairs = node.value
    try:  # distinct key values (the usual case): nothing to find, without a call per key
        if len({key.value for key, _value in pairs}) == len(pairs):
            return
    except TypeError:  # a key that is a map or a list: its value is a list
        pass
    keys: dict[str, yaml.Node] = {}
    for key, _value in pairs:
        if isinstance(key, yaml.ScalarNode):
            if key.value in keys and not _is_merge(key):
                line, _ = mark_of(keys[key.value])
                raise NodeProblem(key, f"duplicate key {key.value!r} (first defined on "
                                       f"line {line}); remove one of them")
            keys[key.value] = key


def _build(node: yaml.Node, depth: int, state: _Build) -> Any:
    """_check_children(node) that also builds node's value while state.fallback is False.

    _check_child and _scalar's string case are written out for each child: a call per node was
    a third of this walk (bench/README.md, issue 25). The checks run in _check_child's order.
    """
    seen = state.seen
    child_depth = depth + 1
    if isinstance(node, yaml.MappingNode):
        _no_duplicate_keys(node)
        if node.tag != _MAP:
            state.fallback = True
        out: dict[Any, Any] = {}
        for key, value in node.value:
            scalar_key = isinstance(key, yaml.ScalarNode)
            if scalar_key and (key.tag == MERGE_TAG or key.value == "<<"):
                raise NodeProblem(key, _MERGE_PROBLEM)
            if seen is not None:
                if id(key) in seen:
                    raise NodeProblem(key, _ALIAS_PROBLEM)
                seen.add(id(key))
            if child_depth > MAX_DEPTH:
                raise NodeProblem(key, _DEPTH_PROBLEM)
            if scalar_key:
                # interned: a key repeats in every document (one string kept for all of
                # them, 125,000 fewer for bench 1's files), and is then the very object of the
                # code's constants, so the checks' look-ups compare by identity
                k = sys.intern(key.value) if key.tag == _STR else _scalar(key, state)
            else:
                k = _build(key, child_depth, state)
            if seen is not None:
                if id(value) in seen:
                    raise NodeProblem(key, _ALIAS_PROBLEM)
                seen.add(id(value))
            if child_depth > MAX_DEPTH:
                raise NodeProblem(value, _DEPTH_PROBLEM)
            if isinstance(value, yaml.ScalarNode):
                v = value.value if value.tag == _STR else _scalar(value, state)
            else:
                v = _build(value, child_depth, state)
            if not state.fallback:
                if not scalar_key:
                    state.fallback = True  # unhashable: the constructor's error
                else:
                    if type(k) is not str:
                        state.plain = False
                    out[k] = v
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            state.fallback = True
        items = []
        for item in node.value:
            if seen is not None:
                if id(item) in seen:
                    raise NodeProblem(node, _ALIAS_PROBLEM)
                seen.add(id(item))
            if child_depth > MAX_DEPTH:
                raise NodeProblem(item, _DEPTH_PROBLEM)
            if isinstance(item, yaml.ScalarNode):
                items.append(item.value if item.tag == _STR else _scalar(item, state))
            else:
                items.append(_build(item, child_depth, state))
        return items
    return _scalar(node, state)


def _scalar(node: yaml.Node, state: _Build) -> Any:
    tag = node.tag
    if tag == _STR:
        return node.value
    if state.fallback or tag not in _SCALARS or not isinstance(node, yaml.ScalarNode):
        state.fallback = True
        return None
    try:
        value = state.loader.yaml_constructors[tag](state.loader, node)
    except Exception:  # noqa: BLE001 - e.g. `!!int x`: construct_document reports it
        state.fallback = True
        return None
    if type(value) is float and not math.isfinite(value):
        state.plain = False
    return value


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def locate(root: yaml.Node, pointer: str) -> tuple[int, int]:
    """(line, column) of the value a JSON pointer names, or of its deepest existing ancestor.

    Run three times for every document (load.py keeps the positions the cross-document checks
    may report), so without a generator or a call per token.
    """
    node = root
    if pointer:
        for token in pointer.lstrip("/").split("/"):
            found = child(node, _unescape(token) if "~" in token else token)
            if found is None:
                break
            node = found
    mark = node.start_mark
    return mark.line + 1, mark.column + 1


def child(node: yaml.Node, token: str) -> yaml.Node | None:
    """The value of a mapping's first key `token`, or a list's item at that index, or None."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == token:
                return value
    elif isinstance(node, yaml.SequenceNode) and token.isdigit() and int(token) < len(node.value):
        item: yaml.Node = node.value[int(token)]
        return item
    return None
