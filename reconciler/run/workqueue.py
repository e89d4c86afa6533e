"""The controller's work queue and the backoffs that pace it.

`WorkQueue` holds the keys to reconcile (each at most once queued and once in progress, changed
keys before the clock's, delays, per-key exponential backoff); `ApiBackoff` is the one backoff
every worker waits out while the API server fails; `Slots` bounds how many reconciles run at
once, a slow one giving its slot back. They know nothing of Kubernetes or of accounts: a key is
a (namespace, name) pair.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import deque

from reconciler.store.base import Key


class WorkQueue:
    """Keys to reconcile: each key at most once in the queue and at most once in progress.

    A key added while a worker holds it is queued again when the worker is done (so the newest
    state is always reconciled). `add_after` keeps the earliest pending due time of a key.
    `backoff(key)` grows per key: `base * 2**n` capped, with jitter in its upper half, so
    successive delays never shrink; `forget(key)` resets it.

    Every operation costs the same whatever the number of keys queued (issue 26 item 4: 100,000
    accounts): the two lanes are deques of (key, ticket) entries, and a key's entry counts only
    while `_pending` holds that ticket for it, so moving a key to the urgent lane or dropping it
    leaves its old entry behind to be skipped, where a list's pop(0), `in` and remove() went
    over the whole lane (26 us, 3.8 ms and 3.8 ms at 100,000 keys).
    """

    def __init__(self, base: float = 0.5, cap: float = 300.0) -> None:
        self.base, self.cap = base, cap
        self._cv = threading.Condition()
        #: changed by someone: before the clock's and retries' keys
        self._urgent: deque[tuple[Key, int]] = deque()
        self._ready: deque[tuple[Key, int]] = deque()
        #: the keys queued in a lane -> (urgent, the ticket of their live entry)
        self._pending: dict[Key, tuple[bool, int]] = {}
        self._tickets = 0
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []
        self._failures: dict[Key, int] = {}
        self._closed = False

    def add(self, key: Key, *, urgent: bool = False) -> None:
        """Queue a key; `urgent` (a change: spec, credentials, a request) goes before the keys
        the clock and retries queued, so changed accounts are reconciled first."""
        with self._cv:
            self._add(key, urgent)

    def _add(self, key: Key, urgent: bool = False) -> None:
        if self._closed:
            return
        queued = self._pending.get(key)
        if queued is not None:
            if urgent and not queued[0]:
                self._enqueue(key, True)  # moves ahead: its entry in the ready lane is dropped
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        self._enqueue(key, urgent)
        self._cv.notify()

    def _enqueue(self, key: Key, urgent: bool) -> None:
        self._tickets += 1
        self._pending[key] = (urgent, self._tickets)
        (self._urgent if urgent else self._ready).append((key, self._tickets))
        self._compact()

    def _compact(self) -> None:
        """Drop the lanes' dropped entries once they are most of them (a lane holds at most
        twice as many entries as keys queued, plus a few)."""
        if len(self._urgent) + len(self._ready) > 2 * len(self._pending) + 64:
            for lane in (self._urgent, self._ready):
                live = [entry for entry in lane if self._live(entry, lane is self._urgent)]
                lane.clear()
                lane.extend(live)

    def _live(self, entry: tuple[Key, int], urgent: bool) -> bool:
        return self._pending.get(entry[0]) == (urgent, entry[1])

    def _pop(self) -> Key | None:
        """The next queued key, urgent first, or None."""
        for urgent, lane in ((True, self._urgent), (False, self._ready)):
            while lane:
                entry = lane.popleft()
                if self._live(entry, urgent):
                    del self._pending[entry[0]]
                    return entry[0]
        return None

    def queued(self, key: Key) -> bool:
        """Whether `key` waits in the queue (not delayed, not in progress)."""
        with self._cv:
            return key in self._pending

    def idle(self) -> bool:
        """Nothing queued and nothing in progress."""
        with self._cv:
            return not self._pending and not self._processing

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cv:
            due = time.monotonic() + delay
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            self._cv.notify()

    def get(self, timeout: float | None = None) -> Key | None:
        """The next key to work on (the caller must call `done`), or None on timeout/shutdown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                if self._closed:
                    return None
                self._release_due()
                key = self._pop()
                if key is not None:
                    self._processing.add(key)
                    return key
                now = time.monotonic()
                waits = [w for w in (self._heap[0][0] - now if self._heap else None,
                                     None if deadline is None else deadline - now)
                         if w is not None]
                wait = min(waits) if waits else None
                if deadline is not None and now >= deadline:
                    return None
                self._cv.wait(None if wait is None else max(wait, 0.001))

    def _release_due(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                self._add(key)

    def done(self, key: Key) -> None:
        with self._cv:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add(key, urgent=True)  # it changed while being worked on

    def backoff(self, key: Key) -> float:
        """The next delay for a failing key (and count the failure)."""
        with self._cv:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        ceiling = min(self.cap, self.base * 2.0 ** min(n, 64))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def failures(self, key: Key) -> int:
        with self._cv:
            return self._failures.get(key, 0)

    def forget(self, key: Key) -> None:
        with self._cv:
            self._failures.pop(key, None)

    def remove(self, key: Key) -> None:
        """Drop a key entirely (its object is gone)."""
        with self._cv:
            self._failures.pop(key, None)
            self._due.pop(key, None)
            self._pending.pop(key, None)  # its entry in a lane is skipped

    def depth(self) -> int:
        """Keys ready to be worked on now."""
        with self._cv:
            return len(self._pending)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class ApiBackoff:
    """One backoff for the whole controller while the API server fails (429, 5xx, unreachable).

    Per-key backoff alone lets every key retry on its own schedule: in an outage N keys make N
    times the requests. After a failure every worker waits out the shared delay; then one worker
    at a time tries (a circuit breaker's half-open state) while the others wait on: its reconcile
    succeeds (`succeeded`: everyone goes on), fails (`failed`: the delay doubles, capped and
    jittered) or sends nothing conclusive (`done`: the next worker tries). So an outage costs
    about one request per round, whatever the number of keys and workers (issue 23 item 11).
    """

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self._cv = threading.Condition()
        self.failures = 0
        self._until = 0.0
        self._trying: int | None = None  # the thread whose reconcile is this round's try

    def failed(self) -> float:
        """Count a failure; the delay every worker now waits. Failures of reconciles that were
        already under way while a backoff lasts belong to the same round: they do not grow it."""
        with self._cv:
            if self._trying == threading.get_ident():
                self._trying = None
            now = time.monotonic()
            if now < self._until:
                return self._until - now
            self.failures += 1
            ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 32))
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
            self._until = now + delay
            self._cv.notify_all()
            return delay

    def succeeded(self) -> None:
        with self._cv:
            self.failures = 0
            self._until = 0.0
            self._trying = None
            self._cv.notify_all()

    def done(self) -> None:
        """This thread's reconcile is over: if it was the round's try and neither failed nor
        succeeded, the next worker may try."""
        with self._cv:
            if self._trying == threading.get_ident():
                self._trying = None
                self._cv.notify_all()

    def remaining(self) -> float:
        with self._cv:
            return max(0.0, self._until - time.monotonic())

    def wait(self, stopping: threading.Event) -> None:
        """Block while the backoff lasts, then, while the API server is failing, until this
        thread's turn to try (or until `stopping` is set)."""
        me = threading.get_ident()
        with self._cv:
            while not stopping.is_set():
                left = self._until - time.monotonic()
                if left > 0:
                    self._cv.wait(min(left, 0.5))
                elif self.failures == 0 or self._trying in (None, me):
                    if self.failures:
                        self._trying = me
                    return
                else:
                    self._cv.wait(0.5)


class Slots:
    """At most `n` reconciles at once, with a slot per thread that holds one.

    A holder running longer than `slow_after` seconds (a slow server, up to its probe's deadline)
    gives its slot back: its thread goes on with the slow account, another thread takes the next
    key, so a slow account holds only its own thread.
    """

    def __init__(self, n: int, slow_after: float) -> None:
        self.slow_after = slow_after
        self._free = threading.BoundedSemaphore(n)
        self._held: dict[int, float] = {}  # thread ident -> when its reconcile began (has a slot)
        self._lock = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        """Take a slot for this thread (False on timeout); its clock starts now."""
        if not self._free.acquire(timeout=timeout):
            return False
        with self._lock:
            self._held[threading.get_ident()] = time.monotonic()
        return True

    def restart_clock(self) -> None:
        """The reconcile itself begins now: time this thread's slot from here, if it still
        holds one."""
        me = threading.get_ident()
        with self._lock:
            if me in self._held:
                self._held[me] = time.monotonic()

    def release(self) -> None:
        """Give this thread's slot back, unless it was already given back for being slow."""
        with self._lock:
            holds = self._held.pop(threading.get_ident(), None) is not None
        if holds:
            self._free.release()

    def release_slow(self, stopping: threading.Event) -> None:
        """Until `stopping` is set: give back the slot of every holder past `slow_after`."""
        while not stopping.wait(min(0.1, self.slow_after / 4)):
            now = time.monotonic()
            with self._lock:
                slow = [t for t, since in self._held.items() if now - since > self.slow_after]
                for t in slow:
                    del self._held[t]
            for _ in slow:
                self._free.release()
