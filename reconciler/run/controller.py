"""Controller mode: informers feed a de-duplicating work queue, workers reconcile one key at a time.

    EmailAccount informer ──┐                  ┌─ worker ─ Reconciler.reconcile_objects([obj])
    Secret informer ────────┴─> WorkQueue ─────┼─ worker        (a KubeStore primed from the caches)
                                 (dedupe,      └─ ...
                                  delays, backoff)

An account is queued when its spec changes (metadata.generation; our own status writes change
nothing), when a Secret it references changes or appears, when its published Secret is deleted or
edited, and again after each reconcile: on a jittered `--interval` (or its nextProbeTime, when
sooner) while Ready, after a per-key exponential backoff with jitter and a cap while not Ready,
and only on the interval while Stalled (retrying cannot fix it). With leader election, every
replica keeps its caches warm but only the leader's workers reconcile.
"""

from __future__ import annotations

import heapq
import os
import random
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import UsageError
from reconciler.log import get_logger, redact_text
from reconciler.model import (
    ACCOUNT_LABEL,
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    REQUESTED_AT_ANNOTATION,
    status_condition,
)
from reconciler.policy import DEFAULT_POLICY, Policy
from reconciler.run.leader import LeaderConfig, LeaderElector
from reconciler.run.metrics import HealthServer, Metrics, MetricsServer
from reconciler.store.base import Key, object_key

log = get_logger("reconciler.controller")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("10m", "1h30m", "1.5s", "250ms"); a bare number is seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise UsageError(f"invalid duration {text!r}: write it like 30s, 10m or 1h30m")
    return total


# --------------------------------------------------------------------------- the queue


class WorkQueue:
    """Keys to reconcile: each key at most once in the queue and at most once in progress.

    A key added while a worker holds it is queued again when the worker is done (so the newest
    state is always reconciled). `add_after` keeps the earliest pending due time of a key.
    `backoff(key)` grows per key: `base * 2**n` capped, with jitter in its upper half, so
    successive delays never shrink; `forget(key)` resets it.
    """

    def __init__(self, base: float = 0.5, cap: float = 300.0) -> None:
        self.base, self.cap = base, cap
        self._cv = threading.Condition()
        self._urgent: list[Key] = []  # changed by someone: before the clock's and retries' keys
        self._ready: list[Key] = []
        self._pending: set[Key] = set()
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
        if key in self._pending:
            if urgent and key in self._ready:
                self._ready.remove(key)
                self._urgent.append(key)
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        self._pending.add(key)
        (self._urgent if urgent else self._ready).append(key)
        self._cv.notify()

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
                if self._urgent or self._ready:
                    key = (self._urgent or self._ready).pop(0)
                    self._pending.discard(key)
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
            if key in self._pending:
                self._pending.discard(key)
                for lane in (self._urgent, self._ready):
                    if key in lane:
                        lane.remove(key)

    def depth(self) -> int:
        """Keys ready to be worked on now."""
        with self._cv:
            return len(self._urgent) + len(self._ready)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class ApiBackoff:
    """One backoff for the whole controller while the API server fails (429, 5xx, unreachable).

    Per-key backoff alone lets every key retry on its own schedule: in an outage N keys make N
    times the requests. After a failure every worker waits out the shared delay before its next
    reconcile; it doubles with each failure (capped, jittered) and resets on the first success.
    """

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self._lock = threading.Lock()
        self.failures = 0
        self._until = 0.0

    def failed(self) -> float:
        """Count a failure; the delay every worker now waits. Failures of reconciles that were
        already under way while a backoff lasts belong to the same round: they do not grow it."""
        with self._lock:
            now = time.monotonic()
            if now < self._until:
                return self._until - now
            self.failures += 1
            ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 32))
            delay = ceiling / 2 + random.uniform(0, ceiling / 2)
            self._until = now + delay
            return delay

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self._until = 0.0

    def remaining(self) -> float:
        with self._lock:
            return max(0.0, self._until - time.monotonic())

    def wait(self, stopping: threading.Event) -> None:
        """Block while the backoff lasts (or until `stopping` is set)."""
        while (left := self.remaining()) > 0 and not stopping.wait(min(left, 0.5)):
            pass


# --------------------------------------------------------------------------- helpers


def _ref_names(spec: Any, is_ref: Callable[[str], bool]) -> Iterator[str]:
    """Names of the objects a spec references through keys for which `is_ref(key)` holds."""
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if is_ref(key) and isinstance(value, Mapping):
                if value.get("name"):
                    yield str(value["name"])
            else:
                yield from _ref_names(value, is_ref)
    elif isinstance(spec, list):
        for item in spec:
            yield from _ref_names(item, is_ref)


def _secret_names(spec: Any) -> Iterator[str]:
    """Names of the Secrets a spec references (any `...SecretRef`/`secretRef` with a name)."""
    return _ref_names(spec, lambda key: key.endswith("SecretRef") or key == "secretRef")


def _configmap_names(spec: Any) -> Iterator[str]:
    """Names of the ConfigMaps a spec references (any `configMapRef` with a name)."""
    return _ref_names(spec, lambda key: key == "configMapRef")


def _data_hash(secret: Mapping[str, Any]) -> Any:
    return ((secret.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)


def _unpublished(obj: Mapping[str, Any], secrets: Mapping[str, Any]) -> bool:
    """Whether the Secret the account's status names as published is missing from the cache."""
    name = (obj.get("status") or {}).get("secretName")
    return bool(name) and name not in secrets


def _with_remembered(obj: dict[str, Any], unwritten: Mapping[str, Any] | None) -> dict[str, Any]:
    """The object with the status we decided on but could not write, when the API server does
    not have it yet: its lastAuthTime, Authenticated condition and the inputs it was decided
    from, so the retry does not AUTH again. nextProbeTime is dropped: the probe (and the
    Secret, which is rendered from a probe) is due at once; AUTH only if authInterval says so
    or an input changed since."""
    if not unwritten:
        return obj
    status = obj.get("status") or {}
    if status.get("lastAuthTime") == unwritten.get("lastAuthTime") and status.get(
            "observedGeneration") == unwritten.get("observedGeneration"):
        return obj
    out = dict(obj)
    out["status"] = {k: v for k, v in unwritten.items() if k != "nextProbeTime"}
    return out


def _api_unavailable(status: Mapping[str, Any]) -> bool:
    """Whether a reconcile's status says the API server failed it (429/5xx/unreachable)."""
    from reconciler.reasons import API_UNAVAILABLE

    return any(c.get("reason") == API_UNAVAILABLE for c in status.get("conditions") or []
               if isinstance(c, Mapping))


def _seconds_until(timestamp: Any) -> float | None:
    if not isinstance(timestamp, str) or not timestamp:
        return None
    from reconciler.state.schedule import parse_rfc3339

    try:
        return (parse_rfc3339(timestamp) - datetime.now(UTC)).total_seconds()
    except ValueError:
        return None


# --------------------------------------------------------------------------- the controller


class Controller:
    """The controller, usable in-process: `start()`, then `stop()` (finishes in-flight work)."""

    def __init__(self, api_client: Any, *, namespace: str | None = None, workers: int = 4,
                 interval: float = 600.0, metrics_addr: str | None = None,
                 leader: LeaderConfig | None = None, watch_seconds: int = 300,
                 backoff_base: float = 0.5, backoff_cap: float = 300.0,
                 policy: Policy = DEFAULT_POLICY,
                 slow_after: float = 2.0, max_threads: int | None = None,
                 health_addr: str | None = None) -> None:
        """`workers` reconciles run at once; one that takes longer than `slow_after` seconds
        (a slow server, up to its probe's deadline) gives its slot back, so a slow account holds
        only its own thread and the others go on, up to `max_threads` (4 x workers) in all."""
        from reconciler.store.watch import account_informer, configmap_informer, instrument_client, secret_informer

        self.api_client = api_client
        self.namespace = namespace
        self.workers = workers
        self.interval = interval
        self.policy = policy
        self.queue = WorkQueue(base=backoff_base, cap=backoff_cap)
        self.api_backoff = ApiBackoff(base=backoff_base, cap=min(backoff_cap, 30.0))
        self.slow_after = slow_after
        self.max_threads = max(workers, max_threads or 4 * workers)
        self._slots = threading.BoundedSemaphore(workers)
        self._held: dict[int, float] = {}  # thread ident -> when its reconcile began (has a slot)
        self._held_lock = threading.Lock()
        self.metrics = Metrics(queue_depth=lambda: float(self.queue.depth()))
        instrument_client(api_client, self.metrics.api_request)
        self.accounts = account_informer(api_client, namespace, self._on_account,
                                         watch_seconds=watch_seconds)
        self.secrets = secret_informer(api_client, namespace, self._on_secret,
                                       watch_seconds=watch_seconds)
        self.configmaps = configmap_informer(api_client, namespace, self._on_configmap,
                                             watch_seconds=watch_seconds)
        self._lock = threading.Lock()
        self._generations: dict[Key, int] = {}  # generation last reconciled
        self._refs: dict[Key, set[str]] = {}  # account -> names of Secrets it reads
        self._cm_refs: dict[Key, set[str]] = {}  # account -> names of ConfigMaps it reads
        self._written: dict[Key, dict[str, Any]] = {}  # our last status write, until watched
        #: The status a reconcile decided on but could not write (API outage): remembered in
        #: memory so the retry does not AUTH again (DESIGN §3 authInterval; issue 12 item 7).
        self._unwritten: dict[Key, dict[str, Any]] = {}
        self.reconciles: Counter[Key] = Counter()  # per key, for tests and logs
        self._leading = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self.elector: LeaderElector | None = None
        if leader is not None:
            from reconciler.store.lease import LeaseClient

            self.elector = LeaderElector(LeaseClient(api_client, leader.namespace, leader.name),
                                         leader, self._started_leading, self._stopped_leading)
        # Two ports: the kubelet probes health, monitoring scrapes metrics (README "Security
        # model": the NetworkPolicy admits each from whom needs it).
        self.health = (HealthServer(health_addr, lambda: self.synced) if health_addr else None)
        self.metrics_server = (MetricsServer(metrics_addr, self.metrics) if metrics_addr
                               else None)

    # ------------------------------------------------------------------ lifecycle
    @property
    def synced(self) -> bool:
        """True once every informer listed: ready to lead or to stand by."""
        return all(i.synced.is_set() for i in (self.accounts, self.secrets, self.configmaps))

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        for server in (self.health, self.metrics_server):
            if server is not None:
                server.start()
        self.secrets.start()
        self.configmaps.start()
        self.accounts.start()
        for i in range(self.max_threads):
            t = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        watchdog = threading.Thread(target=self._release_slow_slots, name="slots", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)
        if self.elector is not None:
            self.elector.start()
        else:
            self._started_leading()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        return all(informer.synced.wait(max(0.0, end - time.monotonic()))
                   for informer in (self.secrets, self.configmaps, self.accounts))

    def stop(self) -> None:
        """Stop taking work, finish in-flight reconciles, release the Lease, stop watching."""
        self._stopping.set()
        self.queue.shutdown()
        for t in self._threads:
            t.join(60)
        if self.elector is not None:
            self.elector.stop(release=True)
        self._leading.clear()
        self.accounts.stop()
        self.secrets.stop()
        self.configmaps.stop()
        for server in (self.health, self.metrics_server):
            if server is not None:
                server.stop()

    def _started_leading(self) -> None:
        self._leading.set()
        self.metrics.leader.set(1)
        for key in self.accounts.cached_keys():
            self.queue.add(key)

    def _stopped_leading(self) -> None:
        self._leading.clear()
        self.metrics.leader.set(0)

    # ------------------------------------------------------------------ events
    def _on_account(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        key = object_key(obj)
        if etype == "DELETED":
            with self._lock:
                self._generations.pop(key, None)
                self._refs.pop(key, None)
                self._cm_refs.pop(key, None)
                self._written.pop(key, None)
                self._unwritten.pop(key, None)
            self.queue.remove(key)
            self.metrics.observe_account(key, None)
            self.metrics.accounts.set(len(self.accounts.cached_keys()))
            return
        spec = obj.get("spec") or {}
        names = set(_secret_names(spec))
        with self._lock:
            self._refs[key] = names
            self._cm_refs[key] = set(_configmap_names(spec))
            done = self._generations.get(key)
        self.metrics.accounts.set(len(self.accounts.cached_keys()))
        self.metrics.observe_account(key, obj.get("status") or {})
        meta = obj.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        if prev is None:
            if done != generation:
                self.queue.add(key, urgent=True)
            return
        pmeta = prev.get("metadata") or {}
        requested = (meta.get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)
        if (generation != int(pmeta.get("generation") or 0) or done != generation
                or requested != (pmeta.get("annotations") or {}).get(REQUESTED_AT_ANNOTATION)):
            self.queue.add(key, urgent=True)  # a spec change or a probe request (status: ours)

    def _on_secret(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        ns, name = object_key(obj)
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        data_changed = prev is None or etype == "DELETED" or prev.get("data") != obj.get("data")
        owner = labels.get(ACCOUNT_LABEL) if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE else None
        if owner and prev is not None and (etype == "DELETED" or (
                data_changed and _data_hash(prev) == _data_hash(obj))):
            # Our Secret was deleted, or edited by someone else (our writes change data and its
            # hash annotation together): put it back.
            self.queue.add((ns, str(owner)), urgent=True)
        if not data_changed:
            return
        with self._lock:
            readers = [k for k, names in self._refs.items() if k[0] == ns and name in names]
        for key in readers:
            self.queue.add(key, urgent=True)

    def _on_configmap(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        """A truststore ConfigMap changed: probe the accounts that read it again."""
        ns, name = object_key(obj)
        if prev is not None and etype != "DELETED" and (
                prev.get("data"), prev.get("binaryData")) == (obj.get("data"), obj.get("binaryData")):
            return
        with self._lock:
            readers = [k for k, names in self._cm_refs.items() if k[0] == ns and name in names]
        for key in readers:
            self.queue.add(key, urgent=True)

    # ------------------------------------------------------------------ workers
    def _store(self) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            from reconciler.store.kube import KubeStore
            from reconciler.store.kubeclient import RetryPolicy

            # One quick retry for a blip; past it the controller-wide backoff takes over (five
            # tries per request, per key, made an outage cost ten times the requests).
            store = self._local.store = KubeStore(self.api_client, self.namespace,
                                                  retry=RetryPolicy(attempts=2))
        return store

    def _work(self) -> None:
        # Like client-go's WaitForCacheSync: reconciling before the Secret cache is filled would
        # see credentials as missing, then probe again the moment they show up.
        while not self.synced and not self._stopping.wait(0.05):
            pass
        me = threading.get_ident()
        while not self._stopping.is_set():
            self.api_backoff.wait(self._stopping)  # the API server failed: everyone waits
            if not self._slots.acquire(timeout=0.5):
                continue
            with self._held_lock:
                self._held[me] = time.monotonic()
            key = None
            try:
                key = self.queue.get(timeout=0.5)
                if key is None:
                    continue
                self.api_backoff.wait(self._stopping)  # it may have begun while we waited
                with self._held_lock:
                    if me in self._held:
                        self._held[me] = time.monotonic()  # the reconcile's own clock
                if self._leading.is_set() and not self._stopping.is_set():
                    self._reconcile(key)
            except Exception as exc:  # a bug must not kill the worker; back off that key
                if key is not None:
                    log.error("reconcile crashed", account=f"{key[0]}/{key[1]}",
                              error=redact_text(f"{type(exc).__name__}: {exc}"))
                    self.metrics.reconciles.labels(result="error").inc()
                    self.queue.add_after(key, self.queue.backoff(key))
            finally:
                with self._held_lock:
                    holds = self._held.pop(me, None) is not None
                if holds:
                    self._slots.release()
                if key is not None:
                    self.queue.done(key)

    def _release_slow_slots(self) -> None:
        """Give back the slot of a reconcile running longer than `slow_after`: its thread goes
        on with the slow account, another thread takes the next key."""
        while not self._stopping.wait(min(0.1, self.slow_after / 4)):
            now = time.monotonic()
            with self._held_lock:
                slow = [t for t, since in self._held.items() if now - since > self.slow_after]
                for t in slow:
                    del self._held[t]
            for _ in slow:
                self._slots.release()

    def _reconcile(self, key: Key) -> None:
        from reconciler.run.reconcile import Reconciler, RunOptions
        from reconciler.store.watch import newest, prime_store, stored_account

        cached = self.accounts.get(key)
        if cached is None:
            self.queue.remove(key)
            return
        with self._lock:
            obj = newest(cached, self._written.get(key)) or cached
            obj = _with_remembered(obj, self._unwritten.get(key))
        started = time.monotonic()
        store = self._store()
        secrets = self.secrets.by_namespace(key[0])
        prime_store(store, obj, {key[0]: secrets}, {key[0]: self.configmaps.by_namespace(key[0])})
        with self._lock:  # before the status write, whose watch event must not queue it again
            self._generations[key] = int((obj.get("metadata") or {}).get("generation") or 0)
        # A deleted published Secret is put back from a fresh probe: probe_decision's input.
        unpublished = [key] if _unpublished(obj, secrets) else []
        report = Reconciler(store, store.secret_reader(),
                            RunOptions(prune=False, concurrency=1, policy=self.policy)
                            ).reconcile_objects([obj], unpublished=unpublished)
        self.metrics.duration.observe(time.monotonic() - started)
        if self.accounts.get(key) is None:
            self._clean_up_after(key, store, obj)
            return
        written = stored_account(store, key)
        entry = report.accounts[0] if report.accounts else None
        with self._lock:
            if written is not None:
                self._written[key] = written
            if entry is not None and entry.unwritten:
                self._unwritten[key] = entry.unwritten
            elif entry is not None and not entry.error:
                self._unwritten.pop(key, None)
        self.reconciles[key] += 1
        status = entry.status if entry is not None else {}
        if entry is not None and (_api_unavailable(status) or _api_unavailable(
                entry.unwritten or {})):
            pause = self.api_backoff.failed()
            log.warning("API server unavailable: every worker backs off",
                        seconds=round(pause, 3), failures=self.api_backoff.failures)
        elif entry is not None and not entry.error and (entry.status_changed
                                                        or any(entry.secret_changes.values())):
            self.api_backoff.succeeded()  # a write went through
        ready = status_condition(status, "Ready")
        if entry is not None and entry.probed:
            self.metrics.probes.labels(reason=str(ready.get("reason") or "Unknown")).inc()
        if entry is not None and not entry.error:
            self.metrics.observe_account(key, status)
        until_probe = _seconds_until(status.get("nextProbeTime"))
        resync = self.interval * random.uniform(0.9, 1.1)
        if entry is None or entry.error:
            result, delay = "error", self.queue.backoff(key)
            log.warning("reconcile failed", account=f"{key[0]}/{key[1]}",
                        error=redact_text(str(entry.error if entry else "no report")))
        elif entry.ready:
            self.queue.forget(key)
            result = "ready"
            delay = resync if until_probe is None else min(resync, max(until_probe, 0.0) + 0.05)
        elif status_condition(status, "Stalled").get("status") == "True":
            self.queue.forget(key)  # retrying cannot fix it: wait for a change or the interval
            result, delay = "not_ready", resync
        else:
            result = "not_ready"
            delay = max(self.queue.backoff(key), (until_probe or 0.0) + 0.05)
        self.metrics.reconciles.labels(result=result).inc()
        log.info("reconciled", account=f"{key[0]}/{key[1]}", result=result,
                 probed=bool(entry and entry.probed), next_in=round(delay, 3))
        self.queue.add_after(key, delay)


    def _clean_up_after(self, key: Key, store: Any, obj: Mapping[str, Any]) -> None:
        """The account was deleted while we reconciled it: a Secret we published meanwhile
        would outlive it until the garbage collector notices, so delete it now."""
        from reconciler.state.render import is_managed

        spec = obj.get("spec") or {}
        name = ((spec.get("publish") or {}).get("secretName")
                or (obj.get("status") or {}).get("secretName") or f"{key[1]}-sender")
        published = (getattr(store, "_secrets", None) or {}).get(key[0], {}).get(name)
        labels = ((published or {}).get("metadata") or {}).get("labels") or {}
        orphan = (spec.get("publish") or {}).get("deletionPolicy") == "Orphan"
        if (published is not None and is_managed(published) and not orphan
                and labels.get(ACCOUNT_LABEL) == key[1]):
            store.delete_secret(key[0], name)
        self.queue.remove(key)
        log.info("account deleted during its reconcile; cleaned up", account=f"{key[0]}/{key[1]}")


# --------------------------------------------------------------------------- the command


def _lease_namespace(args: Any) -> str:
    if getattr(args, "lease_namespace", None):
        return str(args.lease_namespace)
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    sa_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if sa_ns.exists():
        return sa_ns.read_text().strip()
    return str(getattr(args, "namespace", None) or "default")


def run_controller(args: Any) -> int:
    """`email-reconciler controller`: run until SIGTERM/SIGINT, then shut down cleanly (exit 0)."""
    from reconciler.run.commands import policy_from
    from reconciler.store.kube import KubeStore

    interval = parse_duration(args.interval)
    if interval <= 0:
        raise UsageError("--interval must be positive, e.g. 10m")
    leader = None
    if args.leader_elect:
        identity = f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        leader = LeaderConfig(name=args.lease_name, namespace=_lease_namespace(args),
                              identity=identity, lease_duration=args.lease_duration,
                              renew_deadline=args.renew_deadline, retry_period=args.retry_period)
        try:
            leader.check()
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    store = KubeStore.from_config(context=args.context, namespace=args.namespace)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            controller = Controller(store.api_client, namespace=args.namespace,
                                    workers=args.workers, interval=interval,
                                    metrics_addr=args.metrics_addr or None, leader=leader,
                                    policy=policy_from(args),
                                    health_addr=args.health_addr or None)
        except OSError as exc:
            raise UsageError(f"cannot listen on --metrics-addr {args.metrics_addr} or "
                             f"--health-addr {args.health_addr}: {exc}") from exc
        controller.start()
        log.warning("controller started", namespace=args.namespace or "(all)",
                    workers=args.workers, leader_elect=bool(leader))
        while not stop.wait(1.0):
            pass
        log.warning("stopping: finishing in-flight work")
        controller.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()
