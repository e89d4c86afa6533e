"""managedFields and server-side apply: which field manager owns which field, and conflicts.

As structured-merge-diff does, simplified: a field is a path of map keys; lists are atomic (a
list is one field, owned whole); ``metadata.name`` and the other server-set metadata are no
one's. Apply (``application/apply-patch+yaml``) makes its manager own exactly the fields it
sent; a field another manager owns with a different value is a 409 Conflict unless ``force``,
which takes it over; a field the manager applied before and omits now is removed unless someone
else owns it too. Any other write (create, PUT, patch) is an ``Update``: its manager comes to own
what it changed, and the others lose it. ``managedFields`` entries change only when their fields
do, so a no-op apply stores nothing and bumps no resourceVersion.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from tests.kubeapi.model import JSON, ApiError

Path = tuple[str, ...]
SERVER_METADATA = frozenset({
    "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
})


def leaf_paths(doc: Any, prefix: Path = ()) -> set[Path]:
    """Every field of a document: map keys down to a non-map value (or an empty map)."""
    if not isinstance(doc, dict):
        return {prefix} if prefix else set()
    paths: set[Path] = set()
    for key, value in doc.items():
        paths |= leaf_paths(value, (*prefix, key))
    return paths


def owned_paths(doc: JSON, status_subresource: bool, subresource: str | None) -> set[Path]:
    """The fields of a write that a manager can own (not apiVersion/kind/server metadata; status apart)."""
    paths = set()
    for path in leaf_paths(doc):
        server_set = path[0] == "metadata" and len(path) > 1 and path[1] in SERVER_METADATA
        if path[0] in ("apiVersion", "kind") or server_set:
            continue
        if status_subresource and (path[0] == "status") != (subresource == "status"):
            continue
        paths.add(path)
    return paths


def value_at(doc: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return _ABSENT
        doc = doc[key]
    return doc


_ABSENT = object()


def _overlaps(a: Path, b: Path) -> bool:
    return a[: len(b)] == b or b[: len(a)] == a


# --------------------------------------------------------------------------- FieldsV1


def to_fields_v1(paths: set[Path]) -> JSON:
    root: JSON = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def from_fields_v1(fields: JSON, prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for key, sub in (fields or {}).items():
        if key == ".":
            continue
        if not key.startswith("f:"):  # a list element (k:/v:/i:): this model owns the list whole
            return {prefix} if prefix else set()
        child = (*prefix, key[2:])
        paths |= from_fields_v1(sub, child) if sub else {child}
    return paths


class Managers:
    """The managedFields of one object, keyed by (manager, operation, subresource)."""

    def __init__(self, entries: list[JSON] | None) -> None:
        self.entries: dict[tuple[str, str, str], JSON] = {}
        self.fields: dict[tuple[str, str, str], set[Path]] = {}
        for entry in entries or []:
            key = (entry.get("manager", ""), entry.get("operation", "Update"), entry.get("subresource", ""))
            self.entries[key] = copy.deepcopy(entry)
            self.fields[key] = from_fields_v1(entry.get("fieldsV1") or {})

    def as_list(self, api_version: str) -> list[JSON]:
        out = []
        for key, paths in self.fields.items():
            if not paths:
                continue
            entry = self.entries.get(key) or {}
            fields_v1 = to_fields_v1(paths)
            if entry.get("fieldsV1") != fields_v1 or not entry:
                manager, operation, subresource = key
                entry = {
                    "manager": manager,
                    "operation": operation,
                    "apiVersion": api_version,
                    "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1,
                }
                if subresource:
                    entry["subresource"] = subresource
            out.append(entry)
        return out

    def update(self, manager: str, subresource: str, changed: set[Path], removed: set[Path]) -> None:
        """An Update by ``manager``: it owns what it changed; nobody owns what is gone or changed."""
        for key, paths in self.fields.items():
            self.fields[key] = {p for p in paths if not any(_overlaps(p, c) for c in changed | removed)}
        key = (manager, "Update", subresource)
        self.fields[key] = self.fields.get(key, set()) | changed

    def apply(self, manager: str, subresource: str, applied: JSON, paths: set[Path], current: JSON | None,
              force: bool, api_version: str) -> set[Path]:
        """An Apply by ``manager`` of ``paths``: 409 on conflicts unless forced; returns fields to remove."""
        conflicts: dict[str, list[Path]] = {}
        if current is not None:
            for key, owned in self.fields.items():
                if key[0] == manager:
                    continue
                for path in sorted(paths):
                    if any(_overlaps(path, o) for o in owned) and value_at(current, path) != value_at(applied, path):
                        conflicts.setdefault(key[0], []).append(path)
        if conflicts and not force:
            raise _conflict_error(conflicts, api_version)
        for key, owned in self.fields.items():
            if key[0] != manager and conflicts.get(key[0]):
                self.fields[key] = {o for o in owned if not any(_overlaps(o, p) for p in conflicts[key[0]])}
        mine = (manager, "Apply", subresource)
        dropped = self.fields.get(mine, set()) - paths
        self.fields[mine] = set(paths)
        others = set().union(*(v for k, v in self.fields.items() if k != mine)) if len(self.fields) > 1 else set()
        return {p for p in dropped if not any(_overlaps(p, o) for o in others)}


def _conflict_error(conflicts: dict[str, list[Path]], api_version: str) -> ApiError:
    count = sum(len(v) for v in conflicts.values())
    causes, parts = [], []
    for manager, paths in conflicts.items():
        dotted = ["." + ".".join(p) for p in paths]
        head = f'conflict with "{manager}" using {api_version}'
        causes += [{"reason": "FieldManagerConflict", "message": head, "field": d} for d in dotted]
        if len(dotted) == 1:
            parts.append(f"{head}: {dotted[0]}")
        else:
            parts.append(f'conflicts with "{manager}" using {api_version}:\n' + "\n".join(f"- {d}" for d in dotted))
    noun = "conflict" if count == 1 else "conflicts"
    return ApiError(409, f"Apply failed with {count} {noun}: " + "\n".join(parts), "Conflict", {"causes": causes})


def default_manager(user_agent: str) -> str:
    """The field manager of a write that names none: the User-Agent's product token, as the server does."""
    return (user_agent.split("/", 1)[0] or "unknown").strip() or "unknown"
