"""The reconcile worker: one key at a time, from the informers' caches to the next time it is due.

`Worker.reconcile(key)` reconciles the account as the caches hold it (a KubeStore primed from
them, so a reconcile costs no LIST), then queues the key again: on the interval, at the key's own
slot in it (run/requeue.py resync_delay), or its nextProbeTime when sooner, while Ready, after a
per-key backoff while not Ready, and only on the interval while Stalled. It remembers what it
wrote until the watch shows it, and the status it decided on but could not write (an API
outage), so a retry does not AUTH again; an API server failure starts the backoff every worker
waits out.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.log import get_logger, redact_text
from reconciler.model import ACCOUNT_LABEL, status_condition
from reconciler.policy import Policy
from reconciler.run import requeue
from reconciler.run.metrics import EndpointChecks, Metrics
from reconciler.run.workqueue import ApiBackoff, WorkQueue
from reconciler.state.schedule import rfc3339
from reconciler.state.status import REMEMBERED_FIELDS
from reconciler.store.base import Key

if TYPE_CHECKING:
    from reconciler.run.probeloop import ProbeLoop
    from reconciler.store.informers import InformerUnion
    from reconciler.store.watch import Informer

log = get_logger("reconciler.controller")


class Worker:
    """Reconciles keys taken from the queue; shared by the controller's worker threads."""

    def __init__(self, api_client: Any, *, namespace: str | None, interval: float,
                 policy: Policy, queue: WorkQueue, api_backoff: ApiBackoff, metrics: Metrics,
                 accounts: Informer | InformerUnion, secrets: InformerUnion,
                 configmaps: Informer | InformerUnion,
                 serves: Callable[[str], bool] = lambda namespace: True,
                 probe_loop: ProbeLoop | None = None) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.interval = interval
        self.policy = policy
        self.queue = queue
        self.api_backoff = api_backoff
        self.metrics = metrics
        self.accounts, self.secrets, self.configmaps = accounts, secrets, configmaps
        #: Whether a namespace is still served (run/scope.py): an account that left the cache
        #: because its namespace did is not deleted, so nothing of it is cleaned up.
        self.serves = serves
        self._lock = threading.Lock()
        self._generations: dict[Key, int] = {}  # generation last reconciled
        self._written: dict[Key, dict[str, Any]] = {}  # our last status write, until watched
        #: The status a reconcile decided on but could not write (API outage): remembered in
        #: memory so the retry does not AUTH again (DESIGN §3 authInterval; issue 12 item 7).
        self._unwritten: dict[Key, dict[str, Any]] = {}
        #: The probe times last decided (lastProbeTime, nextProbeTime), which are not written
        #: when nothing else changed (issue 26 item 5): the next reconcile decides from them.
        #: Kept packed (`pack_times`: epoch seconds, about a third of a dict of strings).
        self._schedule: dict[Key, tuple[float | str | None, ...]] = {}
        #: When this process took a key over (its first reconcile here: the start, or a shard
        #: hand-over), until it has authenticated the account: an AUTH already overdue then is
        #: spread over authInterval (schedule.spread_auth_time), not sent at once for every
        #: account, as the stored lastAuthTime is written only with another change.
        self._taken_over: dict[Key, datetime] = {}
        self.reconciles: Counter[Key] = Counter()  # per key, for tests and logs
        self.done = 0  # reconciles in all (run/trim.py: whether any ran since the last trim)
        from reconciler.probe.endpoints import EndpointCache

        #: Endpoint checks shared by the accounts of one endpoint, across reconciles and workers.
        self.endpoints = EndpointCache()
        metrics.registry.register(EndpointChecks(
            lambda: (self.endpoints.checks, self.endpoints.served)))
        self._local = threading.local()
        #: Where the probes run (run/probeloop.py): one loop for every worker; None: a loop per
        #: reconcile. Its token cache shares the requests in flight on that loop.
        self.probe_loop = probe_loop
        self.tokens: Any = None
        if probe_loop is not None:
            from reconciler.probe.tokencache import TokenCache

            self.tokens = TokenCache(remember=False)

    def reconciled_generation(self, key: Key) -> int | None:
        """The metadata.generation the last reconcile of `key` started from."""
        with self._lock:
            return self._generations.get(key)

    def seen(self, key: Key, obj: Mapping[str, Any]) -> None:
        """The watch delivered `obj`: our own last write of it is no longer needed once the
        informer holds that write or a newer one (a copy per account otherwise)."""
        from reconciler.store.watch import newest

        with self._lock:
            written = self._written.get(key)
            if written is not None and newest(dict(obj), written) is not written:
                del self._written[key]

    def forget(self, key: Key) -> None:
        """The account is gone: drop what was remembered about it."""
        with self._lock:
            self._generations.pop(key, None)
            self._written.pop(key, None)
            self._unwritten.pop(key, None)
            self._schedule.pop(key, None)
            self._taken_over.pop(key, None)

    def _store(self) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            from reconciler.store.kube import KubeStore
            from reconciler.store.kubeclient import RetryPolicy

            # One quick retry for a dropped connection; an answer of 429/5xx goes straight to
            # the controller-wide backoff (five tries per request, per key, made an outage cost
            # ten times the requests; then two tries of each write, twice: issue 23 item 11).
            store = self._local.store = KubeStore(
                self.api_client, self.namespace,
                retry=RetryPolicy(attempts=2, retry_server_errors=False))
        return store

    def reconcile(self, key: Key) -> None:
        """Reconcile the account at `key` as the caches hold it, then queue it again: on the
        interval (or its nextProbeTime) while Ready or Stalled, after a backoff while not."""
        from reconciler.run.reconcile import Reconciler, RunOptions
        from reconciler.store.watch import newest, prime_store, slim, stored_account

        cached = self.accounts.get(key)
        if cached is None:
            self.queue.remove(key)
            return
        with self._lock:
            written_before = self._written.get(key)
            obj = newest(cached, written_before) or cached
            if written_before is not None and obj is cached:
                del self._written[key]  # the watch has shown it: the informer's copy will do
            obj = _with_remembered(obj, self._unwritten.get(key))
            schedule = unpack_times(self._schedule.get(key))
            taken = (self._taken_over.setdefault(key, datetime.now(UTC)) if schedule is None
                     else self._taken_over.get(key))
        started = time.monotonic()
        store = self._store()
        prime_store(store, obj, self.secrets.peek, self.configmaps.peek)
        # The store compares what it writes with obj (as stored); the decision sees the probe
        # times decided last, which are newer when nothing else changed since.
        obj = _with_schedule(obj, schedule)
        with self._lock:  # before the status write, whose watch event must not queue it again
            self._generations[key] = int((obj.get("metadata") or {}).get("generation") or 0)
        # A deleted or edited published Secret is put back from a fresh probe.
        unpublished = [key] if _unpublished(obj, self.secrets) else []
        report = Reconciler(store, store.secret_reader(),
                            RunOptions(prune=False, concurrency=1, policy=self.policy,
                                       hold_writes_on_outage=True, endpoints=self.endpoints,
                                       auth_time_in_memory=True, probe_loop=self.probe_loop),
                            tokens=self.tokens
                            ).reconcile_objects([obj], unpublished=unpublished,
                                                taken_over={key: taken} if taken else None)
        self.metrics.duration.observe(time.monotonic() - started)
        if self.accounts.peek(*key) is None:
            if self.serves(key[0]):
                self._clean_up_after(key, store, obj)
            return
        written = stored_account(store, key)
        entry = report.accounts[0] if report.accounts else None
        with self._lock:
            # Kept only while the informer lags behind it (the informer updates its cache
            # before `seen` runs, so one of the two sees the other).
            shown = self.accounts.peek(*key)
            if written is not None and (shown is None or newest(shown, written) is written):
                self._written[key] = slim(written)
            if entry is not None and entry.unwritten:
                self._unwritten[key] = entry.unwritten
            elif entry is not None and not entry.error:
                self._unwritten.pop(key, None)
        self.reconciles[key] += 1
        self.done += 1
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
            self._remember_schedule(key, status)
        if entry is None or entry.error:
            outcome: requeue.Outcome = "error"
            log.warning("reconcile failed", account=f"{key[0]}/{key[1]}",
                        error=redact_text(str(entry.error if entry else "no report")))
        elif entry.ready:
            outcome = "ready"
        elif status_condition(status, "Stalled").get("status") == "True":
            outcome = "stalled"
        else:
            outcome = "not_ready"
        turn = requeue.requeue_after(
            outcome, until_probe=_seconds_until(status.get("nextProbeTime")),
            suspended=bool(status.get("suspended")),
            resync=requeue.resync_delay(requeue.key_phase(*key), time.time(), self.interval),
            backoff=self.queue.backoff(key) if requeue.uses_backoff(outcome) else 0.0)
        if turn.forget:
            self.queue.forget(key)
        self.metrics.reconciles.labels(result=turn.result).inc()
        log.info("reconciled", account=f"{key[0]}/{key[1]}", result=turn.result,
                 probed=bool(entry and entry.probed), next_in=round(turn.after, 3))
        self.queue.add_after(key, turn.after)

    def _remember_schedule(self, key: Key, status: Mapping[str, Any]) -> None:
        """Keep the probe and AUTH times this reconcile decided: they are written only with
        another change (state/status.py REMEMBERED_FIELDS), so the stored ones may be older."""
        times = {k: status[k] for k in REMEMBERED_FIELDS if status.get(k)}
        with self._lock:
            if times:
                self._schedule[key] = pack_times(times)
            taken = self._taken_over.get(key)
            last_auth = str(status.get("lastAuthTime") or "")
            if taken is not None and (not last_auth or last_auth >= rfc3339(taken)):
                del self._taken_over[key]  # authenticated since (or nothing to spread)

    def _clean_up_after(self, key: Key, store: Any, obj: Mapping[str, Any]) -> None:
        """The account was deleted while we reconciled it: a Secret we published meanwhile
        would outlive it until the garbage collector notices, so delete it now."""
        from reconciler.state.render import is_managed

        spec = obj.get("spec") or {}
        name = ((spec.get("publish") or {}).get("secretName")
                or (obj.get("status") or {}).get("secretName") or f"{key[1]}-sender")
        published = store.get_secret(key[0], name)
        labels = ((published or {}).get("metadata") or {}).get("labels") or {}
        orphan = (spec.get("publish") or {}).get("deletionPolicy") == "Orphan"
        if (published is not None and is_managed(published) and not orphan
                and labels.get(ACCOUNT_LABEL) == key[1]):
            store.delete_secret(key[0], name)
        self.queue.remove(key)
        log.info("account deleted during its reconcile; cleaned up", account=f"{key[0]}/{key[1]}")


def _unpublished(obj: Mapping[str, Any], secrets: InformerUnion) -> bool:
    """Whether the Secret the account's status names as published is missing from the cache,
    or was edited by someone else (its data no longer matches its hash annotation)."""
    from reconciler.state.digests import edited

    name = (obj.get("status") or {}).get("secretName")
    if not name:
        return False
    ns = str((obj.get("metadata") or {}).get("namespace") or "default")
    cached = secrets.peek(ns, str(name))
    return cached is None or edited(cached)


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


def pack_times(times: Mapping[str, Any]) -> tuple[float | str | None, ...]:
    """REMEMBERED_FIELDS of a status as kept per key: each time as epoch seconds when it reads
    back as the same text (rfc3339 writes seconds and Z), else as it is; None when absent."""
    return tuple(_packed_time(times.get(k)) for k in REMEMBERED_FIELDS)


def _packed_time(value: Any) -> float | str | None:
    if not isinstance(value, str) or not value:
        return None
    from reconciler.state.schedule import parse_rfc3339

    try:
        at = parse_rfc3339(value).timestamp()
    except ValueError:
        return value
    return at if _time_text(at) == value else value


def _time_text(at: float) -> str:
    return rfc3339(datetime.fromtimestamp(at, UTC))


def unpack_times(packed: tuple[float | str | None, ...] | None) -> dict[str, str] | None:
    """The times `pack_times` kept, as the status writes them (None: nothing kept)."""
    if packed is None:
        return None
    return {k: v if isinstance(v, str) else _time_text(v)
            for k, v in zip(REMEMBERED_FIELDS, packed, strict=True) if v is not None}


def _with_schedule(obj: dict[str, Any], times: Mapping[str, Any] | None) -> dict[str, Any]:
    """The object with the probe times decided last, when they are newer than its own."""
    status = obj.get("status") or {}
    if not times or not status or str(times.get("lastProbeTime") or "") <= str(
            status.get("lastProbeTime") or ""):
        return obj
    return {**obj, "status": {**status, **times}}


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
