"""Thread-safe storage: objects, the resourceVersion counter, the watch history."""

from __future__ import annotations

import copy
import threading
from collections import deque

from tests.kubeapi.model import HISTORY_LIMIT, JSON, ResourceType, _Event


class _Store:
    """Thread-safe objects, resourceVersion counter, event history and managed-field sets."""

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.RLock())
        self.rv = 0
        self.objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}
        self.history: deque[_Event] = deque()
        self.floor = 0  # events with rv <= floor are no longer in the history
        self.compacted = 0  # continue tokens of a resourceVersion <= this one are 410 Expired
        self.bookmarks = 0  # bumped to make every watch that allows them send a BOOKMARK now
        self.stopping = False

    def bucket(self, rtype: ResourceType) -> dict[tuple[str, str], JSON]:
        return self.objects.setdefault((rtype.group, rtype.plural), {})

    def record(self, rtype: ResourceType, kind: str, obj: JSON, prev: JSON | None) -> None:
        self.history.append(_Event(self.rv, kind, (rtype.group, rtype.plural), copy.deepcopy(obj), copy.deepcopy(prev)))
        while len(self.history) > HISTORY_LIMIT:
            self.floor = self.history.popleft().rv
        self.lock.notify_all()

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)
