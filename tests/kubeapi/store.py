"""Thread-safe storage: objects, the resourceVersion counter, the watch history."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from tests.kubeapi.model import HISTORY_LIMIT, JSON, ResourceType, _Event


def clone(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists, scalars), several times faster than copy.deepcopy;
    anything else (a datetime YAML produced, say) is immutable here and shared."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


class _Bucket(dict[tuple[str, str], JSON]):
    """One resource's objects by (namespace, name); keeps the store's uid and deletion indexes,
    which let the garbage collector skip a pass that cannot find anything to do."""

    def __init__(self, store: _Store) -> None:
        super().__init__()
        self._store = store

    def __setitem__(self, key: tuple[str, str], obj: JSON) -> None:
        old = super().get(key)
        if old is not None:
            self._store.forget(old)
        super().__setitem__(key, obj)
        self._store.index(obj)

    def pop(self, key: tuple[str, str], *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        obj = super().pop(key)
        self._store.forget(obj)
        return obj


class _Store:
    """Thread-safe objects, resourceVersion counter, event history and managed-field sets."""

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.RLock())
        self.rv = 0
        self.objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}
        self.history: deque[_Event] = deque()
        self.history_limit = HISTORY_LIMIT
        self.floor = 0  # events with rv <= floor are no longer in the history
        self.compacted = 0  # continue tokens of a resourceVersion <= this one are 410 Expired
        self.bookmarks = 0  # bumped to make every watch that allows them send a BOOKMARK now
        self.stopping = False
        self.uids: dict[str, int] = {}  # uid -> how many stored objects carry it (1)
        self.deleting = 0  # stored objects with a deletionTimestamp

    def bucket(self, rtype: ResourceType) -> dict[tuple[str, str], JSON]:
        key = (rtype.group, rtype.plural)
        found = self.objects.get(key)
        if found is None:
            found = self.objects[key] = _Bucket(self)
        return found

    def index(self, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if uid:
            self.uids[uid] = self.uids.get(uid, 0) + 1
        if meta.get("deletionTimestamp"):
            self.deleting += 1

    def forget(self, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if uid and uid in self.uids:
            self.uids[uid] -= 1
            if self.uids[uid] <= 0:
                del self.uids[uid]
        if meta.get("deletionTimestamp"):
            self.deleting -= 1

    def settled_with(self, obj: JSON) -> bool:
        """Whether the collector has nothing to do after storing ``obj``: nothing is being deleted
        and every owner it names exists (the collector ran after every earlier write)."""
        if self.deleting:
            return False
        refs = (obj.get("metadata") or {}).get("ownerReferences") or []
        return all(ref.get("uid") in self.uids for ref in refs)

    def record(self, rtype: ResourceType, kind: str, obj: JSON, prev: JSON | None) -> None:
        self.history.append(_Event(self.rv, kind, (rtype.group, rtype.plural), clone(obj), clone(prev)))
        while len(self.history) > self.history_limit:
            self.floor = self.history.popleft().rv
        self.lock.notify_all()

    def since(self, cursor: int) -> list[_Event]:
        """The events after ``cursor``, oldest first (walks back from the newest: O(new events))."""
        pending: list[_Event] = []
        for event in reversed(self.history):
            if event.rv <= cursor:
                break
            pending.append(event)
        pending.reverse()
        return pending

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)
