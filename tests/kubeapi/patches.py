"""Patch formats: RFC 7386 merge patch, RFC 6902 JSON patch, and the map merge of apply."""

from __future__ import annotations

import copy
from typing import Any

from tests.kubeapi.model import JSON, ApiError


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Any, ops: list[JSON]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            doc = _json_patch_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, f"the JSON patch operation {op!r} cannot be applied: {exc!r}") from exc
    return doc


def _json_patch_op(doc: Any, op: JSON) -> Any:
    kind, parts = op["op"], _pointer(op["path"])
    if kind == "test":
        if _container(doc, parts) != op["value"]:
            raise ApiError(422, f"testing value {op['path']} failed")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_container(doc, _pointer(op["from"])))
        if kind == "move":
            doc = _json_patch_op(doc, {"op": "remove", "path": op["from"]})
        return _json_patch_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        return copy.deepcopy(op.get("value"))
    parent, last = _container(doc, parts[:-1]), parts[-1]
    if kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind == "replace":
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            if last not in parent:
                raise KeyError(last)
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            parent.insert(index, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unknown op {kind!r}")
    return doc


def _leaf_paths(doc: JSON, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            paths |= _leaf_paths(value, (*prefix, key))
        else:
            paths.add((*prefix, key))
    return paths


def _apply_merge(target: Any, applied: Any) -> Any:
    """Simplified server-side apply: maps merge recursively, the rest (lists too) replaces."""
    if not (isinstance(target, dict) and isinstance(applied, dict)):
        return copy.deepcopy(applied)
    result = dict(target)
    for key, value in applied.items():
        result[key] = _apply_merge(result.get(key), value)
    return result


def _remove_path(doc: JSON, path: tuple[str, ...]) -> None:
    parents = [doc]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # drop maps this removal emptied
        if not parents[depth]:
            parents[depth - 1].pop(path[depth - 1], None)
