"""Deletion as kube-apiserver and its garbage collector do it: finalizers, propagation, namespaces.

- DELETE of an object with finalizers sets ``deletionTimestamp`` (202 Accepted with the object);
  the object goes when an update empties its finalizers; no finalizer can be added meanwhile;
- ``propagationPolicy``: ``Background`` (the default) deletes the owner now and then each
  dependent whose owners are all gone; ``Foreground`` keeps the owner (``deletionTimestamp`` and
  the ``foregroundDeletion`` finalizer) until its ``blockOwnerDeletion`` dependents are gone;
  ``Orphan`` (or ``orphanDependents``) adds the ``orphan`` finalizer, removes the owner's
  ownerReference from its dependents, then lets the owner go;
- a dependent that still has another owner loses only the dangling ownerReference;
- deleting a Namespace marks it Terminating, deletes what is in it, and removes it once empty.

The collector runs synchronously after each write that can concern it (deterministic tests; a
real one lags a little): a test waits for a condition either way. ``garbage_collection=False``
turns it off (dependents stay, with dangling ownerReferences, as in a cluster without the
kube-controller-manager).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.kubeapi.model import JSON, ResourceType
from tests.kubeapi.store import clone

if TYPE_CHECKING:
    from tests.kubeapi.store import _Store

ORPHAN, FOREGROUND = "orphan", "foregroundDeletion"


class GarbageCollector:
    """The deletion half of KubeAPIServer (a mixin: it uses the server's store and types)."""

    types: list[ResourceType]
    _store: _Store
    garbage_collection: bool

    if TYPE_CHECKING:

        def _current(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON: ...

        def _conflict(self, rtype: ResourceType, name: str) -> Any: ...

        def _now_timestamp(self) -> str: ...

    # ----------------------------------------------------------------- DELETE

    def _delete(self, rtype: ResourceType, namespace: str | None, name: str, options: JSON) -> tuple[JSON, bool]:
        """Delete (or start deleting) one object; returns it and whether it is gone already."""
        with self._store.lock:
            old = self._current(rtype, namespace, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") not in (None, old["metadata"]["uid"]) or pre.get("resourceVersion") not in (
                None,
                old["metadata"]["resourceVersion"],
            ):
                raise self._conflict(rtype, name)
            policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else None)
            obj = clone(old)
            meta = obj["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            if self.garbage_collection and policy == "Orphan" and ORPHAN not in finalizers:
                finalizers.append(ORPHAN)
            if self.garbage_collection and policy == "Foreground" and FOREGROUND not in finalizers:
                finalizers.append(FOREGROUND)
            terminating_namespace = rtype.plural == "namespaces"
            if not finalizers and not terminating_namespace:
                gone = self._remove(rtype, namespace, name)
                self._collect()
                return gone, True
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                return clone(old), False  # already being deleted: nothing new to do
            meta.setdefault("deletionTimestamp", self._now_timestamp())
            meta.setdefault("deletionGracePeriodSeconds", 0)
            if finalizers:
                meta["finalizers"] = finalizers
            if terminating_namespace:
                obj.setdefault("status", {})["phase"] = "Terminating"
            self._store_modified(rtype, namespace, name, obj, old)
            self._collect()
            current = self._store.bucket(rtype).get((namespace or "", name))
            return clone(current if current is not None else obj), current is None

    def _store_modified(self, rtype: ResourceType, namespace: str | None, name: str, new: JSON, old: JSON) -> None:
        new["metadata"]["resourceVersion"] = self._store.next_rv()
        self._store.bucket(rtype)[(namespace or "", name)] = new
        self._store.record(rtype, "MODIFIED", new, old)

    def _remove(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON:
        old = self._store.bucket(rtype).pop((namespace or "", name))
        gone = clone(old)
        gone["metadata"]["resourceVersion"] = self._store.next_rv()
        self._store.record(rtype, "DELETED", gone, None)
        return gone

    # ----------------------------------------------------------------- the collector

    def _everything(self) -> list[tuple[ResourceType, str, str, JSON]]:
        return [(rtype, ns, name, obj) for rtype in self.types for (ns, name), obj in self._store.bucket(rtype).items()]

    def _collect(self) -> None:
        """Run finalization and garbage collection until nothing changes."""
        with self._store.lock:
            for _ in range(10_000):
                if not self._collect_once():
                    return

    def _collect_once(self) -> bool:  # noqa: C901 - one pass of a small state machine
        everything = self._everything()
        uids = {obj["metadata"]["uid"]: obj for _, _, _, obj in everything}
        dependents: dict[str, list[tuple[ResourceType, str, str, JSON]]] = {}
        for entry in everything:
            for ref in entry[3]["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref.get("uid", ""), []).append(entry)
        for rtype, ns, name, obj in everything:
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            finalizers = list(meta.get("finalizers") or [])
            uid = meta["uid"]
            if ORPHAN in finalizers and self.garbage_collection:
                for drtype, dns, dname, dep in dependents.get(uid, []):
                    new = clone(dep)
                    refs = [r for r in new["metadata"]["ownerReferences"] if r.get("uid") != uid]
                    if refs:
                        new["metadata"]["ownerReferences"] = refs
                    else:
                        new["metadata"].pop("ownerReferences")
                    self._store_modified(drtype, dns or None, dname, new, dep)
                return self._drop_finalizer(rtype, ns, name, obj, ORPHAN)
            if FOREGROUND in finalizers and self.garbage_collection:
                waiting = False
                for drtype, dns, dname, dep in dependents.get(uid, []):
                    if not dep["metadata"].get("deletionTimestamp"):
                        self._delete(drtype, dns or None, dname, {"propagationPolicy": "Background"})
                        return True
                    blocking = any(r.get("uid") == uid and r.get("blockOwnerDeletion")
                                   for r in dep["metadata"].get("ownerReferences") or [])
                    waiting = waiting or blocking
                if not waiting:
                    return self._drop_finalizer(rtype, ns, name, obj, FOREGROUND)
                continue
            if rtype.plural == "namespaces":
                inside = [e for e in everything if e[0].namespaced and e[1] == name]
                for irtype, ins, iname, inner in inside:
                    if not inner["metadata"].get("deletionTimestamp"):
                        self._delete(irtype, ins, iname, {})
                        return True
                if not inside and not finalizers:
                    self._remove(rtype, None, name)
                    return True
                continue
            if not finalizers:
                self._remove(rtype, ns or None, name)
                return True
        if not self.garbage_collection:
            return False
        for rtype, ns, name, obj in everything:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if not refs or meta.get("deletionTimestamp"):
                continue
            present = [r for r in refs if r.get("uid") in uids]
            if len(present) == len(refs):
                continue
            if present:  # another owner remains: only the dangling reference goes
                new = clone(obj)
                new["metadata"]["ownerReferences"] = present
                self._store_modified(rtype, ns or None, name, new, obj)
            else:
                self._delete(rtype, ns or None, name, {"propagationPolicy": "Background"})
            return True
        return False

    def _drop_finalizer(self, rtype: ResourceType, ns: str, name: str, obj: JSON, finalizer: str) -> bool:
        new = clone(obj)
        left = [f for f in new["metadata"].get("finalizers") or [] if f != finalizer]
        if left:
            new["metadata"]["finalizers"] = left
        else:
            new["metadata"].pop("finalizers", None)
        self._store_modified(rtype, ns or None, name, new, obj)
        return True
