"""The compiled validator's (jsonschema-rs) errors, as the Python validator would give them.

`validate` words every schema error from a `jsonschema.ValidationError` (validate._schema_messages
reads its path, subschema, keyword, keyword value and instance). For a document jsonschema-rs
calls invalid, running the Python validator only for those words cost 0.3 ms a document and its
45 ms import (bench/README.md, 1b). This module builds the same attributes from jsonschema-rs's
errors and puts them in the order the Python validator yields them, so the words and their order
stay exactly as before. Whenever that cannot be told for sure (a keyword or a path this module
does not know, an error that could come from two places), `translate` returns None and the caller
runs the Python validator, as before.

The Python validator walks the schema with `$ref`s inlined (validate._inline_refs), keyword by
keyword in the schema's order, `properties` in their order, array items and extra properties in
the document's order, `then`/`else` where their `if` stands; errors come out in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: Keywords whose errors this module words (with validate._schema_messages); any other: None.
KEYWORDS = frozenset({
    "required", "additionalProperties", "type", "enum", "const", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
    "uniqueItems", "format", "maxProperties", "minProperties", "not", "anyOf", "oneOf",
    "pattern"})
#: The compiled schema's name for `pattern` (compiled_schema.python_patterns).
PY_PATTERN = "x-python-pattern"


class SchemaError:
    """The attributes of a jsonschema.ValidationError that validate._schema_messages reads."""

    __slots__ = ("absolute_path", "schema", "validator", "validator_value", "instance", "message")

    def __init__(self, path: list[Any], schema: dict[str, Any], keyword: str, instance: Any,
                 missing: str | None) -> None:
        self.absolute_path, self.schema, self.instance = path, schema, instance
        self.validator = "pattern" if keyword == PY_PATTERN else keyword
        self.validator_value = schema[keyword]
        # the Python validator's text for `required`, the one message _schema_messages parses
        self.message = f"{missing!r} is a required property" if missing is not None else ""


class Translator:
    """`translate(errors, doc)` over one schema: ``inlined``, the compiled schema (its patterns
    renamed) with its `$ref`s inlined as the Python validator has them; ``formats``, those both
    validators check (jsonschema-rs knows more, which the Python validator does not check)."""

    def __init__(self, inlined: dict[str, Any], formats: Iterable[str]) -> None:
        self.schema, self.formats = inlined, frozenset(formats)

    def translate(self, errors: Iterable[Any], doc: Any) -> list[SchemaError] | None:
        """The errors in the Python validator's order, or None when that is not certain."""
        ranked: list[tuple[list[int], SchemaError]] = []
        for err in errors:
            found = self._one(err, doc)
            if found is None:
                return None
            ranked.append(found)
        ranked.sort(key=lambda pair: pair[0])
        keys = [key for key, _ in ranked]
        if any(a == b for a, b in zip(keys, keys[1:], strict=False)):
            return None  # two errors from one place: their order is not certain
        return [err for _, err in ranked]

    def _one(self, err: Any, doc: Any) -> tuple[list[int], SchemaError] | None:
        instance_path = list(err.instance_path)
        keyword = err.schema_path[-1] if err.schema_path else None
        if keyword not in KEYWORDS and keyword != PY_PATTERN:
            return None
        if keyword == "pattern" and getattr(err.kind, "name", None) != "pattern":
            return None  # e.g. the regex engine gave up: the Python validator decides
        path: list[Any] | None = [t for t in err.evaluation_path if t != "$ref"]
        if path and path[0] == "$defs":  # a custom keyword's path lacks how it got there
            path = self._find(list(err.schema_path), instance_path)
        if path is None:
            return None
        walked = _walk(self.schema, path, instance_path, doc)
        if walked is None:
            return None
        key, node, instance = walked
        if keyword == "format" and node["format"] not in self.formats:
            return None
        missing = getattr(err.kind, "property", None) if keyword == "required" else None
        if keyword == "required":
            if not isinstance(missing, str) or missing not in node["required"]:
                return None
            key.append(node["required"].index(missing))
        return key, SchemaError(instance_path, node, keyword, instance, missing)

    def _find(self, schema_path: list[Any], instance_path: list[Any]) -> list[Any] | None:
        """The one path in the inlined schema that checks the definition schema_path names at
        instance_path, else None (none, or several: which one failed is not known)."""
        target: Any = self.schema
        for token in schema_path[:-1]:
            if not isinstance(target, dict) or token not in target:
                return None
            target = target[token]
        found: list[list[Any]] = []
        _search(self.schema, instance_path, target, [], found)
        return [*found[0], schema_path[-1]] if len(found) == 1 else None


def _position(node: dict[str, Any], key: Any) -> int:
    return list(node).index(key)


def _walk(schema: dict[str, Any], path: Sequence[Any], instance_path: Sequence[Any], doc: Any
          ) -> tuple[list[int], dict[str, Any], Any] | None:
    """(the Python validator's order key, the subschema holding the keyword, the instance) for
    the keyword path[-1] reached by path, or None if the path is not one this module knows."""
    node: Any = schema
    key: list[int] = []
    rest = list(instance_path)
    instance = doc
    i = 0
    while i < len(path) - 1:
        token = path[i]
        if not isinstance(node, dict) or token not in node:
            return None
        if token in ("then", "else"):
            if "if" not in node:
                return None
            key.append(_position(node, "if"))
            node = node[token]
            i += 1
            continue
        key.append(_position(node, token))
        if token == "properties":
            name = path[i + 1] if i + 1 < len(path) else None
            if not rest or rest[0] != name or name not in node[token]:
                return None
            key.append(_position(node[token], name))
            node, instance, rest, i = node[token][name], instance[name], rest[1:], i + 2
        elif token == "allOf":
            index = path[i + 1] if i + 1 < len(path) else None
            if not isinstance(index, int) or not 0 <= index < len(node[token]):
                return None
            key.append(index)
            node, i = node[token][index], i + 2
        elif token == "items" and isinstance(node[token], dict):
            if not rest or type(rest[0]) is not int or not isinstance(instance, list):
                return None
            key.append(rest[0])
            node, instance, rest, i = node[token], instance[rest[0]], rest[1:], i + 1
        elif token == "additionalProperties" and isinstance(node[token], dict):
            if not rest or not isinstance(instance, dict) or rest[0] not in instance:
                return None
            key.append(list(instance).index(rest[0]))
            node, instance, rest, i = node[token], instance[rest[0]], rest[1:], i + 1
        else:
            return None
    keyword = path[-1] if path else None
    if rest or not isinstance(node, dict) or keyword not in node:
        return None
    key.append(_position(node, keyword))
    return key, node, instance


def _search(node: Any, rest: list[Any], target: Any, path: list[Any],
            found: list[list[Any]]) -> None:
    """Every path from node that reaches target with the whole instance path consumed."""
    if not isinstance(node, dict) or len(found) > 1:
        return
    if not rest and node == target:
        found.append(path)
    props = node.get("properties")
    if rest and isinstance(props, dict) and rest[0] in props:
        _search(props[rest[0]], rest[1:], target, [*path, "properties", rest[0]], found)
    items = node.get("items")
    if rest and type(rest[0]) is int and isinstance(items, dict):
        _search(items, rest[1:], target, [*path, "items"], found)
    extra = node.get("additionalProperties")
    if (rest and isinstance(rest[0], str) and isinstance(extra, dict)
            and rest[0] not in (props or {})):
        _search(extra, rest[1:], target, [*path, "additionalProperties"], found)
    for index, sub in enumerate(node.get("allOf") or ()):
        _search(sub, rest, target, [*path, "allOf", index], found)
    for branch in ("then", "else"):
        if branch in node:
            _search(node[branch], rest, target, [*path, branch], found)
