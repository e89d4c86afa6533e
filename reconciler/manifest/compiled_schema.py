"""A compiled verdict for the JSON schema: jsonschema-rs, used only to say "valid".

The pure-Python jsonschema validator was most of `validate`'s time (bench/README.md). This module
answers one question fast: is a document valid? It never produces messages: when it says
anything but "valid", the caller runs the Python validator, so every error message stays exactly
as the Python path words it. A wrong "valid" would hide an error, so the compiled validator is
made to decide as the Python one does:

- `pattern` is checked with Python's `re.search` (a custom keyword), not Rust's regex syntax,
  whose `$`, `\\s` and classes differ from Python's in corner cases;
- formats are the caller's Python callables, exactly those the Python validator checks;
- documents holding anything but JSON types (YAML timestamps, sets, binary, the tuples of
  `!!omap`/`!!pairs`, non-string keys, `.nan` and `.inf`) get no verdict; jsonschema-rs would read
  a tuple as an array where Python jsonschema does not, and NaN fails its bounds where it passes
  Python's (validate refuses such numbers itself).

Without jsonschema-rs installed every verdict is None and the Python path does all the work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.manifest.patterns import compile_pattern

FormatCheck = Callable[[str], bool]

_PY_PATTERN = "x-python-pattern"
#: Keywords whose value is a map of names to subschemas, one subschema, or a list of them.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions",
                          "dependentSchemas"})
_SCHEMA_ONE = frozenset({"items", "additionalProperties", "additionalItems", "not", "if", "then",
                         "else", "propertyNames", "contains", "unevaluatedItems",
                         "unevaluatedProperties"})
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_JSON_SCALARS = (str, int, float, bool, type(None))


class _PythonPattern:
    """The `pattern` keyword with Python `re.search` semantics (as jsonschema checks it)."""

    def __init__(self, parent_schema: dict[str, Any], value: str, schema_path: list[Any]) -> None:
        self.regex = compile_pattern(value)

    def validate(self, instance: Any) -> None:
        if isinstance(instance, str) and not self.regex.search(instance):
            raise ValueError("does not match the pattern")


#: Escapes that mean one and the same character in Python's `re`, ECMA-262 and Rust's regex.
_PORTABLE_ESCAPES = frozenset(".[]-\\rn")
#: Characters that mean the same in all three outside a class (no `.`: its line terminators
#: differ; no `(?`: extensions differ): literals, anchors, groups, alternation, quantifiers.
_PORTABLE_OUTSIDE = frozenset("^$|()?*+{},-_@:/")


def portable(pattern: str) -> bool:
    """Whether a pattern means the same to Python's `re` (with compile_pattern's end-of-text `$`),
    to ECMA-262 and to jsonschema-rs: ASCII literals and classes, `\\r`, `\\n`, `\\xHH` and
    escaped punctuation only; no `\\s`, `\\d`, `\\w`, `\\b`, `.`, lookarounds or flags.

    jsonschema-rs checks such a pattern itself; any other goes through a Python callback
    (1.7 us a string: bench/README.md, issue 25)."""
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1:i + 2]
            if nxt == "x" and len(pattern[i + 2:i + 4]) == 2 and all(
                    c in "0123456789abcdefABCDEF" for c in pattern[i + 2:i + 4]):
                i += 4
                continue
            if not nxt or nxt not in _PORTABLE_ESCAPES:
                return False
            i += 2
            continue
        if not ch.isascii():
            return False
        if in_class:
            if ch == "]":
                in_class = False
            elif ch == "[" or not (ch.isalnum() or ch in "-_.:@<>/^ "):
                return False
        elif ch == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]" or pattern[i + 1:i + 3] == "^]":
                return False  # a literal "]" first: readers differ
        elif ch == "(" and pattern[i + 1:i + 2] == "?" or not (ch.isalnum() or ch in _PORTABLE_OUTSIDE):
            return False
        i += 1
    return not in_class


def python_patterns(schema: Any) -> Any:
    """The schema with every `pattern` keyword that is not portable() renamed to the Python-`re`
    custom keyword.

    Walks schema positions only, so a property that happens to be named "pattern" keeps its name.
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "pattern" and isinstance(value, str) and not portable(value):
            out[_PY_PATTERN] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: python_patterns(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE:
            out[key] = python_patterns(value)
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [python_patterns(sub) for sub in value]
        else:
            out[key] = value
    return out


def json_only(doc: Any) -> bool:
    """True when doc holds only dicts with string keys, lists, strings, numbers, bools and None."""
    stack = [doc]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    return False
                stack.append(item)
        elif kind is list:
            stack.extend(value)
        elif kind is float and not math.isfinite(value) or kind not in _JSON_SCALARS:
            return False
    return True


class CompiledSchema:
    """`verdict(doc)`: whether a document is valid, or None when it cannot be told here.

    Callers trust only True; anything else goes through the Python validator for its messages.
    """

    def __init__(self, schema: dict[str, Any], formats: Mapping[str, FormatCheck]) -> None:
        try:
            import jsonschema_rs
        except ImportError:  # an optional speed-up at run time; the Python path is complete
            self._validator: Any = None
            return
        self._validator = jsonschema_rs.validator_for(
            python_patterns(schema), formats=dict(formats), validate_formats=True,
            keywords={_PY_PATTERN: _PythonPattern})

    @property
    def available(self) -> bool:
        """Whether jsonschema-rs is installed (else every verdict is None)."""
        return self._validator is not None

    def verdict(self, doc: Any, plain: bool = False) -> bool | None:
        """True if doc is valid, False if not, None without jsonschema-rs or for non-JSON data.

        ``plain``: the caller has checked json_only(doc) already (the loader, while building it).
        """
        if self._validator is None or not (plain or json_only(doc)):
            return None
        try:
            valid: bool = self._validator.is_valid(doc)
        except Exception:  # noqa: BLE001 - e.g. a lone surrogate: let the Python path decide
            return None
        return valid

    def errors(self, doc: Any) -> list[Any] | None:
        """jsonschema-rs's errors for a document verdict() found invalid (None if it fails)."""
        try:
            return list(self._validator.iter_errors(doc))
        except Exception:  # noqa: BLE001 - as verdict(): the Python path decides
            return None
