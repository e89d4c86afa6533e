"""The reconcile rate the controller sustains: N EmailAccounts against local servers.

    .venv/bin/python bench/controller_rate.py [--accounts 500] [--workers 8]

A fake Kubernetes API (tests/kubeapi/, real HTTP) and STARTTLS aiosmtpd servers on 127.0.0.1 with
a throwaway CA. Phase 1 creates the accounts with the controller running and times until every one
is Ready with its Secret published (each: a watch event, a full probe with TLS and AUTH, a status
patch, a Secret apply). Phase 2 changes every spec (a generation bump) and times until every
account reports the new observedGeneration. Not a test: it takes tens of seconds.

The controller shares this process with the stand-ins, so its CPU is counted per thread: the
CPU time (/proc/self/task/TID/stat) of the controller's own threads (informers, workers, which
run each probe's event loop, the slot watchdog), not of the API server's or the SMTP servers'.
The stand-ins all listen on 127.0.0.1, one MTA to the politeness (a server is its host): its
session bound is lifted (`--max-sessions-per-server`, default 64) so it does not set the pace.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler.demo.certificates import ThrowawayCA  # noqa: E402
from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions  # noqa: E402
from reconciler.log import configure_logging  # noqa: E402
from reconciler.policy import CREDENTIAL_LABEL  # noqa: E402
from reconciler.probe import limits  # noqa: E402
from reconciler.run.controller import Controller  # noqa: E402
from tests.kube_fixtures import email_account_crd  # noqa: E402
from tests.kubeapi import KubeAPIServer  # noqa: E402
from tests.manifests_factory import loopback_account  # noqa: E402

NS = "bench"
PASSWORD = "bench-pass-123"


def account(name: str, port: int) -> dict[str, Any]:
    return loopback_account(name, NS, port, timeout=10, password_secret="shared-smtp")


def count(api: KubeAPIServer, done: Any) -> int:
    return sum(1 for o in api.objects("emailaccounts", NS) if done(o.get("status") or {}))


def ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def thread_cpu(ctl: Controller) -> float:
    """CPU seconds (user + system) of the controller's own threads so far."""
    threads = list(ctl._threads) + [i._thread for i in (ctl.accounts, ctl.configmaps)]
    threads += [p._thread for p in ctl.secrets.parts]
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for t in threads:
        if t is None or t.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / tick


def wait_all(api: KubeAPIServer, n: int, done: Any, timeout: float) -> float:
    start = time.monotonic()
    while count(api, done) < n:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"only {count(api, done)}/{n} done after {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--max-sessions-per-server", type=int, default=64)
    args = parser.parse_args()
    limits.configure(max_sessions_per_server=args.max_sessions_per_server)
    assert threading.current_thread() is threading.main_thread()
    configure_logging(fmt="json", level="error")
    n = args.accounts
    ca = ThrowawayCA()
    with ServerLoop() as loop, KubeAPIServer(crds=[email_account_crd()], namespaces=("default", NS)) as api:
        users = {f"a{i:04d}@example.com": PASSWORD for i in range(n)}
        ports = [loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                             users=users)).port for _ in range(args.servers)]
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS,
                                                   "labels": {CREDENTIAL_LABEL: "true"}},
                                      "data": {"ca.crt": ca.ca_pem}})
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "shared-smtp", "namespace": NS,
                                                "labels": {CREDENTIAL_LABEL: "true"}},
                                   "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
        with api.api_client() as client:
            ctl = Controller(client, namespace=NS, workers=args.workers, interval=3600)
            ctl.start()
            try:
                assert ctl.wait_synced(10)
                cpu0 = thread_cpu(ctl)
                start = time.monotonic()
                for i in range(n):
                    api.add_object("emailaccounts", account(f"a{i:04d}", ports[i % len(ports)]))
                created = time.monotonic() - start
                first = wait_all(api, n, ready, 600) + created
                cpu1 = thread_cpu(ctl)
                reconciles1 = sum(ctl.reconciles.values())
                published = sum(1 for s in api.objects("secrets", NS)
                                if s["metadata"]["name"].endswith("-sender"))
                changing = time.monotonic()
                from kubernetes import client as k8s

                custom = k8s.CustomObjectsApi(client)
                for i in range(n):  # a merge patch: no 409 when the controller wrote meanwhile
                    custom.patch_namespaced_custom_object(
                        "email.reconciler.io", "v1alpha1", NS, "emailaccounts", f"a{i:04d}",
                        {"spec": {"description": "changed"}})
                wait_all(api, n, lambda s: s.get("observedGeneration") == 2, 600)
                second = time.monotonic() - changing
                cpu2 = thread_cpu(ctl)
                reconciles = sum(ctl.reconciles.values())
            finally:
                ctl.stop()
    print(f"accounts={n} workers={args.workers} smtp_servers={args.servers}")
    print(f"create -> all Ready + Secret published: {first:.1f} s = {n / first:.1f} accounts/s "
          f"({published} Secrets)")
    print(f"spec change -> all re-probed, observedGeneration 2: {second:.1f} s = "
          f"{n / second:.1f} accounts/s")
    print(f"reconciles: {reconciles} for {2 * n} changes")
    print(f"controller CPU (its own threads), create phase: {cpu1 - cpu0:.1f} s = "
          f"{1000 * (cpu1 - cpu0) / n:.1f} ms per account, "
          f"{1000 * (cpu1 - cpu0) / max(1, reconciles1):.1f} ms per reconcile "
          f"({reconciles1} reconciles, {reconciles1 / first:.1f} reconciles/s)")
    print(f"controller CPU, spec-change phase: {cpu2 - cpu1:.1f} s = "
          f"{1000 * (cpu2 - cpu1) / n:.1f} ms per account, "
          f"{1000 * (cpu2 - cpu1) / max(1, reconciles - reconciles1):.1f} ms per reconcile "
          f"({reconciles - reconciles1} reconciles, {(reconciles - reconciles1) / second:.1f} "
          "reconciles/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
