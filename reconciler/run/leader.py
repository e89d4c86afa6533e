"""Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

A candidate reads the Lease every `retry_period`. It takes the Lease when nobody holds it, or when
the holder's record has not changed for `lease_duration` as measured on the candidate's own
monotonic clock (so clock skew between replicas does not matter). The leader renews every
`retry_period`; if it cannot renew for `renew_deadline` it stops leading before anybody else may
take over (renew_deadline < lease_duration). `release()` on shutdown empties holderIdentity so a
standby takes over at its next retry instead of waiting for the lease to run out.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import StoreError
from reconciler.log import get_logger
from reconciler.store.lease import LeaseClient

log = get_logger("reconciler.leader")


@dataclass(frozen=True)
class LeaseTimings:
    """Where a replica's Leases live, who it is, and their timings in seconds (client-go's
    defaults): shared by leader election and shard membership (run/membership.py)."""

    namespace: str = "default"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def check(self) -> None:
        """Raise ValueError unless lease_duration > renew_deadline > retry_period > 0."""
        if not (self.lease_duration > self.renew_deadline > self.retry_period > 0):
            raise ValueError("need --lease-duration > --renew-deadline > --retry-period > 0 "
                             f"(got {self.lease_duration}, {self.renew_deadline}, "
                             f"{self.retry_period})")


@dataclass(frozen=True)
class LeaderConfig(LeaseTimings):
    """Leader election over the Lease `name`."""

    name: str = "email-reconciler"


def micro_time(now: datetime | None = None) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Runs the election in a thread; calls on_started/on_stopped when leadership changes."""

    def __init__(self, leases: LeaseClient, config: LeaderConfig,
                 on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        config.check()
        self.leases = leases
        self.config = config
        self._on_started, self._on_stopped = on_started, on_stopped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False
        self._observed: Any = None  # the last Lease spec we saw
        self._observed_at = 0.0  # monotonic time we saw it change
        self._last_renew = 0.0
        self._current: dict[str, Any] | None = None
        self.transitions = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the election; the caller has finished in-flight work, so release the Lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.retry_period * 3 + 10)
        if release and self.is_leader:
            self.release()
        if self.is_leader:
            self.is_leader = False
            self._on_stopped()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        cfg = self.config
        while not self._stop.is_set():
            ok = self._try_acquire_or_renew()
            now = time.monotonic()
            if ok:
                self._last_renew = now
                if not self.is_leader:
                    self.is_leader = True
                    log.info("became leader", lease=f"{cfg.namespace}/{cfg.name}",
                             identity=cfg.identity)
                    self._on_started()
            elif self.is_leader and now - self._last_renew >= cfg.renew_deadline:
                self.is_leader = False
                log.warning("lost leadership: could not renew within the renew deadline",
                            lease=f"{cfg.namespace}/{cfg.name}", identity=cfg.identity)
                self._on_stopped()
            # client-go jitters the acquire retry by up to 1.2x; renewals keep the plain period.
            wait = cfg.retry_period if self.is_leader else cfg.retry_period * random.uniform(1, 1.2)
            self._stop.wait(wait)

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.config.identity,
                "leaseDurationSeconds": max(1, math.ceil(self.config.lease_duration)),
                "acquireTime": acquire_time, "renewTime": micro_time(),
                "leaseTransitions": transitions}

    def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        try:
            lease = self.leases.get()
            if lease is None:
                self._current = self.leases.create(self._spec(micro_time(), 0))
                self._observe(self._current)
                return True
            spec = lease.get("spec") or {}
            self._observe(lease)
            holder = spec.get("holderIdentity") or ""
            expired = time.monotonic() >= self._observed_at + cfg.lease_duration
            if holder and holder != cfg.identity and not expired:
                return False
            if holder == cfg.identity:
                new = self._spec(spec.get("acquireTime") or micro_time(),
                                 int(spec.get("leaseTransitions") or 0))
            else:
                new = self._spec(micro_time(), int(spec.get("leaseTransitions") or 0) + 1)
            self._current = self.leases.replace(lease, new)
            self._observe(self._current)
            return True
        except StoreError as exc:
            log.info("lease not acquired or renewed", lease=f"{cfg.namespace}/{cfg.name}",
                     error=str(exc))
            return False

    def _observe(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        if spec != self._observed:
            self._observed = spec
            self._observed_at = time.monotonic()

    def release(self) -> bool:
        """Give the Lease up: holderIdentity emptied, renewTime cleared; True when written."""
        try:
            lease = self.leases.get()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.config.identity:
                return False
            spec = dict(lease.get("spec") or {})
            spec.update({"holderIdentity": "", "renewTime": None, "leaseDurationSeconds": 1})
            self.leases.replace(lease, spec)
            log.info("released the lease", lease=f"{self.config.namespace}/{self.config.name}")
            return True
        except StoreError as exc:
            log.warning("could not release the lease", error=str(exc))
            return False
