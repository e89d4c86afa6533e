"""A benchmark fixture: load many objects into the store without an HTTP request each.

``bulk_load(api, "secrets", objects)`` stores each object as a create would (admission: pruning,
defaults, OpenAPI and CEL validation; uid, creationTimestamp, resourceVersion, generation;
Secret ``stringData`` folded into ``data``) and records an ADDED event for watchers, in batches
under the store lock. What it leaves out, on purpose: authentication and RBAC (the loader is the
admin), ``managedFields`` (nobody applied these objects), the garbage collector (the objects
must not name owners that are gone). Clients see the objects only through the API as usual:
LIST, or WATCH from an earlier resourceVersion. Not for tests of the server itself; for a
benchmark that needs 100,000 objects in the cluster before a controller starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tests.kubeapi.model import JSON, ApiError
from tests.kubeapi.store import clone

if TYPE_CHECKING:
    from tests.kubeapi.server import KubeAPIServer

BATCH = 500  # objects stored per hold of the lock, so requests are served meanwhile


def bulk_load(api: KubeAPIServer, resource: str, objects: Iterable[JSON], *, history_limit: int | None = None) -> int:
    """Store ``objects`` (of one resource, by plural) as creates would; returns how many.

    ``history_limit``, if given, raises the watch history kept (the default keeps the last 2000
    events, so a watcher behind by more gets 410 Gone and relists, as from a real server whose
    watch cache is smaller than the burst)."""
    rtype = api._type_by_plural(resource)
    version = rtype.versions[0]
    store = api._store
    if history_limit is not None:
        store.history_limit = max(store.history_limit, history_limit)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    checked: set[str] = set()
    batch: list[JSON] = []
    count = 0

    def flush() -> None:
        with store.lock:
            bucket = store.bucket(rtype)
            for obj in batch:
                meta = obj["metadata"]
                key = (meta.get("namespace", ""), meta["name"])
                if key in bucket:
                    raise ApiError(409, f'{rtype.qualified} "{meta["name"]}" already exists', "AlreadyExists")
                meta.update(uid=str(uuid.uuid4()), creationTimestamp=now, resourceVersion=store.next_rv())
                if rtype.custom:
                    meta["generation"] = 1
                bucket[key] = obj
                store.record(rtype, "ADDED", obj, None)
        batch.clear()

    for original in objects:
        body = clone(original)
        meta = body.setdefault("metadata", {})
        meta.pop("managedFields", None)
        namespace = meta.get("namespace", "default") if rtype.namespaced else None
        if namespace is not None:
            if namespace not in checked:
                api._check_namespace(namespace)
                checked.add(namespace)
            meta["namespace"] = namespace
        if rtype.plural == "secrets":
            api._normalize_secret(body)
        if rtype.status_subresource:
            body.pop("status", None)
        body["apiVersion"], body["kind"] = rtype.api_version(version), rtype.kind
        api._admit(rtype, body, None)
        batch.append(body)
        count += 1
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return count
