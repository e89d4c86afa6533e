"""Shard membership: this replica's Lease, the LIST of the others', and the gate the workers ask.

The protocol (views, claims, why at most one replica acts on an account) is in
`reconciler.run.sharding`; this module runs it. A thread renews this replica's Lease every
`retry_period` with the view it acts under, then LISTs the group's Leases; from that LIST come the
next view (the live members) and the claims of the others. Workers call `begin(key)` before a
reconcile and `end(key)` after: `begin` answers ACT, LATER (ours, or soon ours, but not yet
safe: the key is queued again when the state changes) or ELSEWHERE (another replica's).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from reconciler.errors import StoreError
from reconciler.log import get_logger
from reconciler.run.leader import LeaseTimings, micro_time
from reconciler.run.sharding import (
    GROUP_LABEL,
    MEMBERS_ANNOTATION,
    Liveness,
    View,
    claims,
    encode_view,
    expired,
    live_others,
    lost,
    may_act,
    member_of,
    view_of,
)
from reconciler.store.base import Key, object_key
from reconciler.store.lease import LeaseClient

log = get_logger("reconciler.shards")

ACT, LATER, ELSEWHERE = "act", "later", "elsewhere"


@dataclass(frozen=True)
class ShardConfig(LeaseTimings):
    """Leader election's timings; `prefix` names the group's Leases."""

    prefix: str = "email-reconciler-shard"

    def check(self) -> None:
        """Raise ValueError on inconsistent timings or names."""
        super().check()
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.prefix):
            raise ValueError(f"--shard-lease-prefix {self.prefix!r} is not a valid label value "
                             "(lower-case letters, digits and '-', at most 63)")

    @property
    def lease_name(self) -> str:
        return f"{self.prefix}-{self.identity}"[:253]


def replica_identity(hostname: str, suffix: str) -> str:
    """A Lease-name-safe identity: the pod's name (lower-cased, odd characters as '-') and a
    random suffix, so a restarted container never mistakes its predecessor's Lease for its own."""
    base = re.sub(r"[^a-z0-9-]+", "-", hostname.lower()).strip("-")[:180] or "replica"
    return f"{base}-{suffix}"


class ShardMember:
    """One replica's membership: the renew/LIST thread and the gate (`begin`/`end`)."""

    def __init__(self, api_client: Any, config: ShardConfig, *,
                 keys: Callable[[], Iterable[Key]], requeue: Callable[[Iterable[Key]], None],
                 on_view: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`keys`: the accounts known; `requeue`: queue these again; `on_view`: a new view
        was published (the account cache, which `keeps` only what is ours, must relist)."""
        config.check()
        self.config = config
        self.me = config.identity
        self._api_client = api_client
        self._mine = LeaseClient(api_client, config.namespace, config.lease_name)
        self._keys, self._requeue, self._clock = keys, requeue, clock
        self._on_view = on_view
        self.listed = threading.Event()  # the first LIST is in: `target` counts the others
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: dict[str, Any] | None = None  # my Lease as last written
        self._acquired = micro_time()
        self._liveness = Liveness()
        # The state the gate reads (under _lock); see the protocol in run/sharding.py.
        self.published: View = ()  # the view in my Lease
        self.confirmed: View = ()  # the view a LIST made after its write confirmed
        self.others: dict[str, View] = {}  # live others and the views they published
        self.target: View = (self.me,)  # the view the last LIST asks for
        self._valid_until = 0.0  # the last successful renewal's start + renew_deadline
        self._in_flight: set[Key] = set()
        self._deferred: set[Key] = set()
        self.handovers = 0  # views published after the first

    # ------------------------------------------------------------------ the gate
    def begin(self, key: Key) -> str:
        """ACT (call `end(key)` when done), LATER or ELSEWHERE; see the module docstring."""
        with self._lock:
            if not claims(self.me, self.published, key) or not claims(self.me, self.target, key):
                if claims(self.me, self.target, key) or claims(self.me, self.published, key):
                    self._deferred.add(key)
                    return LATER
                return ELSEWHERE
            if self._clock() >= self._valid_until or not may_act(
                    self.me, key, self.published, self.confirmed, self.others):
                self._deferred.add(key)
                return LATER
            self._in_flight.add(key)
            return ACT

    def end(self, key: Key) -> None:
        with self._lock:
            self._in_flight.discard(key)

    def keeps(self, obj: dict[str, Any]) -> bool:
        """Whether the account cache should hold `obj`: ours now or under the next view (so
        a replica holds, and watches the changes of, about 1/n of the accounts)."""
        key = object_key(obj)
        with self._lock:
            return claims(self.me, self.published, key) or claims(self.me, self.target, key)

    def owns(self, key: Key) -> bool:
        """Whether this replica claims `key` under the view it published."""
        with self._lock:
            return claims(self.me, self.published, key)

    @property
    def acting(self) -> bool:
        """Renewed within the renew deadline and confirmed by a LIST since."""
        with self._lock:
            return self._clock() < self._valid_until and self.confirmed == self.published != ()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shard-membership", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with `release` (the caller finished its in-flight work) delete the
        Lease so the others take the accounts over at their next LIST, not after it expires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.retry_period * 3 + 10)
        with self._lock:
            self._valid_until = 0.0
        if release:
            try:
                if self._mine.delete(self._current):
                    log.info("released the shard lease", lease=self.config.lease_name)
            except StoreError as exc:
                log.warning("could not release the shard lease", error=str(exc))

    def _run(self) -> None:
        self._list()  # the first view counts the members already there
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(self.config.retry_period)

    def _tick(self) -> None:
        started = self._clock()
        with self._lock:
            view = self.published
            # Rule 2: finish what the new view takes away before publishing it.
            if (self.target != self.published and self.published == self.confirmed
                    and not lost(self.me, self.published, self.target, self._in_flight)):
                view = self.target
        if self._write(view, started):
            self._list()

    def _write(self, view: View, started: float) -> bool:
        cfg = self.config
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": max(1, math.ceil(cfg.lease_duration)),
                "acquireTime": self._acquired, "renewTime": micro_time()}
        meta = {"labels": {GROUP_LABEL: cfg.prefix},
                "annotations": {MEMBERS_ANNOTATION: encode_view(view)}}
        try:
            current = self._current or self._mine.get()
            self._current = (self._mine.create(spec, meta) if current is None
                             else self._mine.replace(current, spec, meta))
        except StoreError as exc:
            self._current = None  # read it again next time (deleted by a sweep, or changed)
            log.info("shard lease not renewed", lease=cfg.lease_name, error=str(exc))
            return False
        with self._lock:
            if self._clock() >= self._valid_until:
                self.confirmed = ()  # a lapse: the last LIST proves nothing any more
            self._valid_until = started + cfg.renew_deadline
            old, self.published = self.published, view
        if view != old:
            self.handovers += bool(old)
            # Outside the lock (a hash per account and member): the gained ones wait for the
            # next LIST (rule 3), which queues them again.
            gained = [k for k in self._keys() if claims(self.me, view, k)
                      and not claims(self.me, old, k)]
            with self._lock:
                self._deferred.update(gained)
            log.info("shard view published", members=list(view), identity=self.me,
                     accounts_gained=len(gained))
            self._on_view()
        return True

    def _list(self) -> None:
        started = self._clock()
        try:
            items = self._mine.list(f"{GROUP_LABEL}={self.config.prefix}")
        except StoreError as exc:
            log.info("shard leases not listed", error=str(exc))
            return
        members = [member_of(i) for i in items]
        with self._lock:
            before = (dict(self.others), self.confirmed, self.published)
            self._liveness.observe(members, started)
            self.others = live_others(self.me, members, self._liveness, started)
            self.target = view_of([*self.others, self.me])
            if started < self._valid_until:
                self.confirmed = self.published
            requeue: list[Key] = []
            if (dict(self.others), self.confirmed, self.published) != before:
                requeue, self._deferred = list(self._deferred), set()
            stale = expired(members, self._liveness, started, self.me)
        self.listed.set()
        if requeue:
            self._requeue(requeue)
        for member in stale:
            self._sweep(member.lease, items)

    def _sweep(self, name: str, items: list[dict[str, Any]]) -> None:
        """Delete an expired Lease (a killed replica's), if it has not changed since."""
        current = next((i for i in items if (i.get("metadata") or {}).get("name") == name), None)
        try:
            if LeaseClient(self._api_client, self.config.namespace, name).delete(current):
                log.info("deleted an expired shard lease", lease=name)
        except StoreError as exc:
            log.info("expired shard lease not deleted", lease=name, error=str(exc))
