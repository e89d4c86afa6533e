"""CPU per reconcile of the controller, measured in its own process, at several numbers of accounts.

    .venv/bin/python bench/controller_cpu.py [--accounts 1000,10000] [--changes 300]

Issue 26 items 4 and 7: the controller's cost per reconcile must not grow with the number of
accounts. For each N: the test Kubernetes API server (tests/kubeapi/, in this process) is seeded
with N EmailAccounts over 10 namespaces that are Ready, with their published Secrets (one real
reconcile per namespace, then copies written straight into the server's store: admission's CEL
costs about 20 ms an object in the test server, which is not what is measured); the STARTTLS
stand-ins run in a process of their own (bench/smtp_servers.py). Then `email-reconciler
controller` starts as its own process (8 workers, every namespace) and the figures are read from
its /proc CPU times and its /metrics:

- start-up: informer LISTs, then one reconcile of every account (not due: no probe, no write);
- changes: the spec of `--changes` accounts is patched; each is reconciled with a full probe
  (STARTTLS, AUTH), a status write and a Secret apply: CPU per reconcile;
- steady state: 20 s with nothing changed: CPU and the API requests the controller sends.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from common import env, process_cpu  # noqa: E402
from smtp_servers import ServerProcess  # noqa: E402

from reconciler.log import configure_logging  # noqa: E402
from reconciler.model import ACCOUNT_LABEL  # noqa: E402
from reconciler.policy import CREDENTIAL_LABEL  # noqa: E402
from reconciler.run.reconcile import Reconciler, RunOptions  # noqa: E402
from reconciler.state.schedule import rfc3339  # noqa: E402
from reconciler.store.kube import KubeStore  # noqa: E402
from tests.kube_fixtures import email_account_crd  # noqa: E402
from tests.kubeapi import KubeAPIServer  # noqa: E402
from tests.manifests_factory import loopback_account  # noqa: E402

NAMESPACES = [f"bench-{i}" for i in range(10)]
PASSWORD = "bench-pass-123"


def cpu_seconds(pid: int) -> float:
    return sum(process_cpu(pid))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metrics(port: int) -> dict[str, float]:
    """Sums of the controller's counters by name (labels summed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def api_requests(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("email_reconciler_api_requests_total{"):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            out[verb] = out.get(verb, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(api: KubeAPIServer, n: int, ports: list[int], ca_pem: str) -> None:
    """N Ready accounts with their published Secrets: one real reconcile per namespace, copies
    of it for the rest (written into the server's store, as the API server would hold them)."""
    per_ns = n // len(NAMESPACES)
    accounts_type = api._type_by_plural("emailaccounts")
    secrets_type = api._type_by_plural("secrets")
    later = rfc3339(datetime.now(UTC) + timedelta(hours=6))
    for ns in NAMESPACES:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": ns,
                                                   "labels": {CREDENTIAL_LABEL: "true"}},
                                      "data": {"ca.crt": ca_pem}})
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "shared-smtp", "namespace": ns,
                                                "labels": {CREDENTIAL_LABEL: "true"}},
                                   "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
        template = f"{ns}-a00000"
        api.add_object("emailaccounts", loopback_account(template, ns, ports[0], timeout=10,
                                                         password_secret="shared-smtp"))
        with api.api_client() as client, KubeStore(client, ns) as store:
            objs = store.list_accounts()
            report = Reconciler(store, store.secret_reader(),
                                RunOptions(prune=False)).reconcile_objects(objs)
            assert report.accounts and report.accounts[0].ready, report.accounts
        account = api.get_object("emailaccounts", ns, template)
        secret = api.get_object("secrets", ns, f"{template}-sender")
        assert account is not None and secret is not None
        account["status"]["nextProbeTime"] = later
        with api._store.lock:
            accounts = api._store.bucket(accounts_type)
            secrets = api._store.bucket(secrets_type)
            accounts[(ns, template)] = account
            for i in range(1, per_ns):
                name = f"{ns}-a{i:05d}"
                port = ports[i % len(ports)]
                obj = copy.deepcopy(account)
                meta = obj["metadata"]
                meta.update(name=name, uid=str(uuid.uuid4()), resourceVersion=api._store.next_rv())
                obj["spec"]["smtp"]["identity"]["emailAddress"] = f"{name}@example.com"
                obj["spec"]["smtp"]["connection"]["port"] = port
                obj["status"].update(secretName=f"{name}-sender", sender=f"{name}@example.com")
                accounts[(ns, name)] = obj
                sec = copy.deepcopy(secret)
                smeta = sec["metadata"]
                smeta.update(name=f"{name}-sender", uid=str(uuid.uuid4()),
                             resourceVersion=api._store.next_rv())
                smeta["labels"][ACCOUNT_LABEL] = name
                for ref in smeta.get("ownerReferences") or []:
                    ref.update(name=name, uid=meta["uid"])
                secrets[(ns, f"{name}-sender")] = sec


def run(n: int, changes: int, workers: int) -> dict[str, Any]:
    ca_users: dict[str, str] = {}
    with ServerProcess(count=8) as servers, \
            KubeAPIServer(crds=[email_account_crd()], namespaces=("default", *NAMESPACES)) as api, \
            tempfile.TemporaryDirectory() as tmp:
        for ns in NAMESPACES:
            for i in range(n // len(NAMESPACES)):
                ca_users[f"{ns}-a{i:05d}@example.com"] = PASSWORD
        users = Path(tmp) / "users.json"
        users.write_text(json.dumps(ca_users))
        servers.accept(users)
        started = time.monotonic()
        seed(api, n, servers.ports, servers.ca_pem)
        seeded = time.monotonic() - started
        kubeconfig = api.kubeconfig(Path(tmp) / "kubeconfig")
        port, health = free_port(), free_port()
        child_env = env()
        child_env["KUBECONFIG"] = str(kubeconfig)
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--log-level", "error", "controller", "--workers", str(workers),
             "--interval", "6h", "--metrics-addr", f"127.0.0.1:{port}",
             "--health-addr", f"127.0.0.1:{health}", "--max-sessions-per-server", "64"],
            env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        try:
            def reconciles() -> float:
                if proc.poll() is not None:
                    raise SystemExit(f"the controller exited with {proc.returncode}")
                try:
                    return metrics(port).get("email_reconciler_reconciles_total", 0.0)
                except OSError:
                    return 0.0

            t0 = time.monotonic()
            wait(lambda: reconciles() >= n, 1800, f"{n} start-up reconciles")
            startup_wall = time.monotonic() - t0
            cpu_startup = cpu_seconds(proc.pid)
            rss_startup = rss_mb(proc.pid)
            time.sleep(2)  # let stragglers (requeues of the last keys) settle
            before = reconciles()
            cpu0 = cpu_seconds(proc.pid)
            from kubernetes import client as k8s

            changed = [(NAMESPACES[i % len(NAMESPACES)],
                        f"{NAMESPACES[i % len(NAMESPACES)]}-a{i // len(NAMESPACES):05d}")
                       for i in range(changes)]
            t1 = time.monotonic()
            with api.api_client() as api_client:
                custom = k8s.CustomObjectsApi(api_client)
                for ns, name in changed:
                    custom.patch_namespaced_custom_object(
                        "email.reconciler.io", "v1alpha1", ns, "emailaccounts", name,
                        {"spec": {"description": "changed"}})

            def all_changed() -> bool:
                return all(((api.get_object("emailaccounts", ns, name) or {}).get("status") or {})
                           .get("observedGeneration") == 2 for ns, name in changed)

            wait(all_changed, 1800, f"{changes} changed accounts re-probed")
            change_wall = time.monotonic() - t1
            cpu1 = cpu_seconds(proc.pid)
            done = reconciles() - before
            requests0 = api_requests(port)
            time.sleep(20)
            cpu2 = cpu_seconds(proc.pid)
            requests1 = api_requests(port)
            idle = {k: v - requests0.get(k, 0.0) for k, v in requests1.items()
                    if v - requests0.get(k, 0.0)}
            return {
                "accounts": n, "seed_s": seeded, "startup_wall_s": startup_wall,
                "startup_cpu_s": cpu_startup, "rss_mb": rss_startup, "change_reconciles": done,
                "change_wall_s": change_wall, "change_cpu_s": cpu1 - cpu0,
                "idle_cpu_s": cpu2 - cpu1, "idle_requests": idle, "rss_end_mb": rss_mb(proc.pid),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="1000,10000")
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    configure_logging(fmt="json", level="error")
    rows = []
    for n in (int(x) for x in args.accounts.split(",")):
        r = run(n, args.changes, args.workers)
        rows.append(r)
        print(f"accounts={n}: seeded in {r['seed_s']:.0f} s")
        print(f"  start-up (LISTs + {n} reconciles, nothing due): {r['startup_cpu_s']:.1f} s CPU "
              f"({1000 * r['startup_cpu_s'] / n:.2f} ms per account), {r['startup_wall_s']:.1f} s "
              f"wall, RSS {r['rss_mb']:.0f} MB")
        per = 1000 * r["change_cpu_s"] / max(1, r["change_reconciles"])
        print(f"  {args.changes} spec changes: {r['change_reconciles']:.0f} reconciles in "
              f"{r['change_wall_s']:.1f} s = {r['change_reconciles'] / r['change_wall_s']:.1f} "
              f"reconciles/s, {r['change_cpu_s']:.1f} s CPU = {per:.1f} ms CPU per reconcile "
              "(probe with AUTH, status write, Secret apply)")
        print(f"  steady state, 20 s, nothing changed: {r['idle_cpu_s']:.2f} s CPU, API "
              f"requests {r['idle_requests'] or 'none'}; RSS {r['rss_end_mb']:.0f} MB", flush=True)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        a = first["change_cpu_s"] / max(1, first["change_reconciles"])
        b = last["change_cpu_s"] / max(1, last["change_reconciles"])
        print(f"CPU per reconcile at {last['accounts']} vs {first['accounts']}: {b / a:.2f}x "
              "(target <= 1.5x: flat in N)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
