"""Label and field selectors, the JSONPath of printer columns, and Accept header parsing."""

from __future__ import annotations

import re
from typing import Any

from tests.kubeapi.model import JSON, ApiError

_REQUIREMENT = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Evaluate a label selector (=, ==, !=, in, notin, exists, !exists) against labels."""
    for requirement in _split_selector(selector):
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise ApiError(400, f"unable to parse requirement {requirement.strip()!r} in labelSelector")
        negate, key, op, value, set_op, values = match.groups()
        if negate and (op or set_op):
            raise ApiError(400, f"unable to parse requirement {requirement.strip()!r} in labelSelector")
        present = key in labels
        if op in ("=", "=="):
            ok = present and labels[key] == value
        elif op == "!=":
            ok = not present or labels[key] != value
        elif set_op:
            members = {v.strip() for v in values.split(",")}
            ok = present and labels[key] in members
            ok = ok if set_op == "in" else not ok
        else:
            ok = present != bool(negate)
        if not ok:
            return False
    return True


def field_selector_matches(selector: str, obj: JSON) -> bool:
    """Evaluate a field selector (``metadata.name=x,type!=y``) on dotted paths of the object."""
    for requirement in _split_selector(selector):
        match = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", requirement)
        if not match:
            raise ApiError(400, f"invalid field selector requirement {requirement.strip()!r}")
        path, op, expected = match.groups()
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        actual = "" if value is None else str(value)
        if (actual == expected) != (op != "!="):
            return False
    return True


_JSONPATH_TOKEN = re.compile(
    r"""\.(?P<key>[\w-]+)|\[(?P<index>\d+)\]|\[\*\]|\[\?\(@\.(?P<fkey>[\w.-]+)\s*==\s*["'](?P<fval>[^"']*)["']\)\]"""
)


def jsonpath_first(obj: Any, path: str) -> Any:
    """The first value of a simple JSONPath (``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``)."""
    path = path.strip().removeprefix("{").removesuffix("}").removeprefix("$")
    values, pos = [obj], 0
    while pos < len(path):
        token = _JSONPATH_TOKEN.match(path, pos)
        if not token:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        pos = token.end()
        found: list[Any] = []
        for value in values:
            if token["key"] is not None:
                if isinstance(value, dict) and token["key"] in value:
                    found.append(value[token["key"]])
            elif token["index"] is not None:
                if isinstance(value, list) and int(token["index"]) < len(value):
                    found.append(value[int(token["index"])])
            elif isinstance(value, list):
                for item in value:
                    key = token["fkey"]
                    if key is None or str(jsonpath_first(item, "." + key)) == token["fval"]:
                        found.append(item)
        values = found
    return values[0] if values else None


def accepts_table(accept: str) -> bool:
    for media in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in media.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return True
    return False
