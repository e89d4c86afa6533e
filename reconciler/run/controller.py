"""Controller mode: informers feed a de-duplicating work queue, workers reconcile one key at a time.

    EmailAccount informer ──┐                  ┌─ worker ─ Reconciler.reconcile_objects([obj])
    Secret informer ────────┴─> WorkQueue ─────┼─ worker        (a KubeStore primed from the caches)
                                 (dedupe,      └─ ...
                                  delays, backoff)

An account is queued when its spec changes (metadata.generation; our own status writes change
nothing), when a Secret it references changes or appears, when its published Secret is deleted or
edited, and again after each reconcile: on `--interval`, at the key's own slot in it (or its
nextProbeTime, when sooner) while Ready, after a per-key exponential backoff with jitter and a
cap while not Ready, and only on the interval while Stalled (retrying cannot fix it). With leader election, every
replica keeps its caches warm but only the leader's workers reconcile. With sharding
(`run/membership.py`), every replica reconciles the accounts a consistent hash gives it, and a
worker asks the membership gate before each reconcile.

This module wires informers to the queue and runs the worker threads (their lifecycle, leader
election, the health and metrics ports, the `controller` command); the queue and its backoffs
are in `run/workqueue.py`, the reconcile of one key in `run/worker.py`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import UsageError
from reconciler.log import get_logger, redact_text
from reconciler.model import (
    ACCOUNT_LABEL,
    HASH_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MAX_DURATION_SECONDS,
    MAX_DURATION_TEXT,
    REQUESTED_AT_ANNOTATION,
)
from reconciler.policy import DEFAULT_POLICY, Policy
from reconciler.run.leader import LeaderConfig, LeaderElector
from reconciler.run.membership import ACT, ELSEWHERE, ShardConfig, ShardMember
from reconciler.run.metrics import HealthServer, Metrics, MetricsServer
from reconciler.run.probeloop import ProbeLoop, ProbesStopped
from reconciler.run.refs import RefIndex, configmap_names, secret_names
from reconciler.run.scope import NamespaceScope
from reconciler.run.served import ServedInformers
from reconciler.run.trim import Trimmer, settle_heap
from reconciler.run.worker import Worker
from reconciler.run.workqueue import ApiBackoff, Slots, WorkQueue
from reconciler.store.base import Key, object_key

log = get_logger("reconciler.controller")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("10m", "1h30m", "1.5s", "250ms"); a bare number is seconds.
    Not NaN, infinite, negative or beyond MAX_DURATION_SECONDS (8760h)."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return _bounded(number, text)
    pos, total = 0, 0.0
    for match in _DURATION.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise UsageError(f"invalid duration {text!r}: write it like 30s, 10m or 1h30m")
    return _bounded(total, text)


def _bounded(seconds: float, text: str) -> float:
    if not 0 <= seconds <= MAX_DURATION_SECONDS:  # False for NaN too
        raise UsageError(f"invalid duration {text!r}: between 0s and {MAX_DURATION_TEXT}")
    return seconds


def _data_hash(secret: Mapping[str, Any]) -> Any:
    return ((secret.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)


# --------------------------------------------------------------------------- the controller


class Controller:
    """The controller, usable in-process: `start()`, then `stop()` (finishes in-flight work)."""

    def __init__(self, api_client: Any, *, namespace: str | None = None, workers: int = 4,
                 interval: float = 600.0, metrics_addr: str | None = None,
                 leader: LeaderConfig | None = None, watch_seconds: int = 300,
                 backoff_base: float = 0.5, backoff_cap: float = 300.0,
                 policy: Policy = DEFAULT_POLICY,
                 slow_after: float = 2.0, max_threads: int | None = None,
                 health_addr: str | None = None, shards: ShardConfig | None = None,
                 shard_selector: str | None = None, namespaces: list[str] | None = None,
                 namespace_selector: str | None = None, probe_grace: float = 2.0) -> None:
        """`workers` reconciles run at once; one that takes longer than `slow_after` seconds
        (a slow server, up to its probe's deadline) gives its slot back, so a slow account holds
        only its own thread and the others go on, up to `max_threads` (4 x workers) in all.
        `namespace`, `namespaces` or `namespace_selector` narrow what it serves (run/scope.py).
        Every probe runs on one event loop (run/probeloop.py); at `stop()` those in flight get
        `probe_grace` seconds to finish before they are cancelled."""
        from reconciler.store.watch import instrument_client

        try:
            scope = NamespaceScope.from_flags(namespace, namespaces, namespace_selector)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        self.api_client = api_client
        self.namespace = scope.fixed[0] if len(scope.fixed) == 1 else None
        self.workers = workers
        self.interval = interval
        self.policy = policy
        self.queue = WorkQueue(base=backoff_base, cap=backoff_cap)
        self.api_backoff = ApiBackoff(base=backoff_base, cap=min(backoff_cap, 30.0))
        self.max_threads = max(workers, max_threads or 4 * workers)
        self.slots = Slots(workers, slow_after)
        self.metrics = Metrics(queue_depth=lambda: float(self.queue.depth()))
        instrument_client(api_client, self.metrics.api_request)
        self.shard: ShardMember | None = None
        if shards is not None:
            # The account cache keeps only this replica's accounts and relists on a new view.
            self.shard = ShardMember(api_client, shards, keys=lambda: self.accounts.cached_keys(),
                                     requeue=self._requeue,
                                     on_view=lambda: self.accounts.request_relist())
            shard = self.shard
            self.metrics.shard_members.set_function(lambda: float(len(shard.published)))
        self.served = ServedInformers(api_client, scope, on_account=self._on_account,
                                      on_secret=self._on_secret, on_configmap=self._on_configmap,
                                      on_unserved=self._unserved, watch_seconds=watch_seconds,
                                      label_selector=shard_selector,
                                      account_keep=self._shard_keeps if self.shard else None)
        self.accounts = self.served.accounts
        self.secrets, self.configmaps = self.served.secrets, self.served.configmaps
        #: The event loop every worker's probe runs on (a thread of its own).
        self.probe_loop = ProbeLoop(io_threads=2 * self.max_threads)
        self.probe_grace = probe_grace
        self.worker = Worker(api_client, namespace=self.namespace, interval=interval, policy=policy,
                             queue=self.queue, api_backoff=self.api_backoff,
                             metrics=self.metrics, accounts=self.accounts,
                             secrets=self.secrets, configmaps=self.configmaps,
                             serves=self.served.serves, probe_loop=self.probe_loop)
        #: Gives the C allocator's free pages back after reconciles (run/trim.py).
        self.trimmer = Trimmer(lambda: self.worker.done)
        self.secret_refs = RefIndex()  # who reads which Secret (reverse references)
        self.configmap_refs = RefIndex()  # and which ConfigMap
        self._leading = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
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
        return all(i.synced.is_set() for i in self.served.all)

    @property
    def reconciles(self) -> Counter[Key]:
        """Reconciles per key, for tests and logs."""
        return self.worker.reconciles

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        for server in (self.health, self.metrics_server):
            if server is not None:
                server.start()
        if self.shard is not None:
            # The first LIST of the Leases first, so that the first LIST of the accounts
            # already keeps only this replica's share (not every account, then a relist).
            self.shard.start()
            self.shard.listed.wait(self.shard.config.renew_deadline)
        self.served.start()
        self.probe_loop.start()
        for i in range(self.max_threads):
            t = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        watchdog = threading.Thread(target=self.slots.release_slow, args=(self._stopping,),
                                    name="slots", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)
        trim = threading.Thread(target=self.trimmer.run, args=(self._stopping,), name="trim",
                                daemon=True)
        trim.start()
        self._threads.append(trim)
        if self.elector is not None:
            self.elector.start()
        else:
            self._started_leading()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        return all(informer.synced.wait(max(0.0, end - time.monotonic()))
                   for informer in self.served.all)

    def stop(self, release: bool = True) -> None:
        """Stop taking work, finish in-flight reconciles (their probes within the grace), release
        the Lease, stop watching.

        `release=False` leaves the Leases as a killed replica would (for tests of fail-over)."""
        self._stopping.set()
        self.queue.shutdown()
        # Probes in flight get their grace, then are cancelled: their workers write nothing.
        self.probe_loop.stop(self.probe_grace)
        for t in self._threads:
            t.join(60)
        if self.shard is not None:
            self.shard.stop(release=release)
        if self.elector is not None:
            self.elector.stop(release=release)
        self._leading.clear()
        self.served.stop()
        for server in (self.health, self.metrics_server):
            if server is not None:
                server.stop()

    def _started_leading(self) -> None:
        self._leading.set()
        self.metrics.leader.set(1)
        for key in self.accounts.cached_keys():
            self.queue.add(key)

    def _requeue(self, keys: Any) -> None:
        for key in keys:
            self.queue.add(key)

    def _stopped_leading(self) -> None:
        self._leading.clear()
        self.metrics.leader.set(0)

    # ------------------------------------------------------------------ events
    def _on_account(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        key = object_key(obj)
        if etype == "DELETED":
            self._forget(key)
            return
        spec = obj.get("spec") or {}
        self.secret_refs.set(key, secret_names(spec))
        self.configmap_refs.set(key, configmap_names(spec))
        self.worker.seen(key, obj)
        done = self.worker.reconciled_generation(key)
        self.metrics.accounts.set(len(self.accounts))
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

    def _forget(self, key: Key) -> None:
        self.secret_refs.drop(key)
        self.configmap_refs.drop(key)
        self.worker.forget(key)
        self.queue.remove(key)
        self.metrics.observe_account(key, None)
        self.metrics.accounts.set(len(self.accounts))

    def _shard_keeps(self, obj: dict[str, Any]) -> bool:
        """The account cache's filter with shards: ours (or about to be). One that is not is
        forgotten as it leaves the cache (given away, not deleted: nothing is written)."""
        assert self.shard is not None
        if self.shard.keeps(obj):
            return True
        self._forget(object_key(obj))
        return False

    def _unserved(self, namespace: str, keys: list[Key]) -> None:
        """`namespace` is no longer served: forget its accounts (nothing is written or deleted)."""
        for key in keys:
            self._forget(key)

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
        for key in self.secret_refs.readers(ns, name):
            self.queue.add(key, urgent=True)

    def _on_configmap(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        """A truststore ConfigMap changed: probe the accounts that read it again."""
        ns, name = object_key(obj)
        if prev is not None and etype != "DELETED" and (
                prev.get("data"), prev.get("binaryData")) == (obj.get("data"), obj.get("binaryData")):
            return
        for key in self.configmap_refs.readers(ns, name):
            self.queue.add(key, urgent=True)

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        # Like client-go's WaitForCacheSync: reconciling before the Secret cache is filled would
        # see credentials as missing, then probe again the moment they show up.
        while not self.synced and not self._stopping.wait(0.05):
            pass
        while not self._stopping.is_set():
            # The API server failed: everyone waits, then one worker at a time tries.
            self.api_backoff.wait(self._stopping)
            if not self.slots.acquire(timeout=0.5):
                self.api_backoff.done()
                continue
            key = None
            try:
                key = self.queue.get(timeout=0.5)
                if key is None:
                    continue
                self.api_backoff.wait(self._stopping)  # it may have begun while we waited
                self.slots.restart_clock()  # the reconcile's own clock
                if self._leading.is_set() and not self._stopping.is_set():
                    self._reconcile(key)
            except ProbesStopped:  # stopping: the account waits for the next start
                if key is not None:
                    log.info("reconcile interrupted by shutdown", account=f"{key[0]}/{key[1]}")
            except Exception as exc:  # a bug must not kill the worker; back off that key
                if key is not None:
                    log.error("reconcile crashed", account=f"{key[0]}/{key[1]}",
                              error=redact_text(f"{type(exc).__name__}: {exc}"))
                    self.metrics.reconciles.labels(result="error").inc()
                    self.queue.add_after(key, self.queue.backoff(key))
            finally:
                self.slots.release()
                self.api_backoff.done()  # this thread's try, if it decided nothing
                if key is not None:
                    self.queue.done(key)

    def _reconcile(self, key: Key) -> None:
        """Reconcile `key` now, if no other replica may act on it (sharding): at most one does;
        not at all once its namespace is no longer served."""
        if not self.served.serves(key[0]):
            return
        if self.shard is None:
            self.worker.reconcile(key)
            return
        verdict = self.shard.begin(key)
        if verdict == ELSEWHERE:
            # Another replica's: what this one remembers of it (probe times, a status it could
            # not write) would be stale if the account came back.
            self.worker.forget(key)
            return
        if verdict != ACT:
            return  # queued again when the hand-over allows it
        try:
            self.worker.reconcile(key)
        finally:
            self.shard.end(key)


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


def _shard_config(args: Any) -> ShardConfig | None:
    """`--shards auto`: this replica's membership, timed like leader election."""
    if args.shards != "auto":
        return None
    if args.leader_elect:
        raise UsageError("--shards auto and --leader-elect exclude each other: with shards every "
                         "replica works, each on its own accounts")
    from reconciler.run.membership import replica_identity

    config = ShardConfig(prefix=args.shard_lease_prefix, namespace=_lease_namespace(args),
                         identity=replica_identity(os.environ.get("HOSTNAME") or socket.gethostname(),
                                                   uuid.uuid4().hex[:8]),
                         lease_duration=args.lease_duration, renew_deadline=args.renew_deadline,
                         retry_period=args.retry_period)
    try:
        config.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return config


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
    shards = _shard_config(args)
    store = KubeStore.from_config(context=args.context, namespace=args.namespace)
    if shards is not None:  # audit logs (and tests) tell the replicas apart
        from reconciler import __version__

        store.api_client.user_agent = f"email-reconciler/{__version__} (shard {shards.identity})"
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            controller = Controller(store.api_client, namespace=args.namespace,
                                    namespaces=args.namespaces,
                                    namespace_selector=args.namespace_selector,
                                    workers=args.workers, interval=interval,
                                    metrics_addr=args.metrics_addr or None, leader=leader,
                                    policy=policy_from(args),
                                    health_addr=args.health_addr or None, shards=shards,
                                    shard_selector=args.shard_selector or None)
        except OSError as exc:
            raise UsageError(f"cannot listen on --metrics-addr {args.metrics_addr} or "
                             f"--health-addr {args.health_addr}: {exc}") from exc
        controller.start()
        log.warning("controller started", namespace=controller.served.scope.describe(),
                    workers=args.workers, leader_elect=bool(leader),
                    shard=shards.lease_name if shards else None,
                    shard_selector=args.shard_selector or None)
        settled = False
        while not stop.wait(1.0):
            if not settled and controller.synced:
                settled = True  # once: the start-up heap leaves the collector's full passes
                log.info("heap settled", frozen=settle_heap())
        log.warning("stopping: finishing in-flight work")
        controller.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()

