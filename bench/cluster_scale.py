"""A whole cluster: the controller's own CPU, requests and memory at 1,000 to 100,000 accounts.

    .venv/bin/python bench/cluster_scale.py --accounts 1000,10000 [--unrelated 200000] [--profile DIR]
    .venv/bin/python bench/run.py --only 9 [--quick]

Three processes besides this one, so each one's CPU is its own: the test API server
(tests/kubeapi, run here with `--serve-api`), ten STARTTLS aiosmtpd stand-ins (smtp_servers.py)
and `email-reconciler controller` (all namespaces, 8 workers, the session bound per server lifted:
the stand-ins all listen on 127.0.0.1, one MTA to the politeness). For each size N:

1. the cluster holds 20 namespaces, each with the CA ConfigMap and one credential Secret (both
   opted in), and U unrelated, unlabelled Secrets the controller must neither cache nor read;
2. the controller starts and syncs; its resident memory then is the base;
3. N EmailAccounts are created, spread over the 20 namespaces and the 10 servers, through the
   server's bulk-load fixture (tests/kubeapi/bulk.py: admitted as creates, ADDED watch events;
   the controller sees them by WATCH as usual); timed until every one is Ready with its Secret
   published. CPU per reconcile = the controller's CPU (utime + stime of /proc/PID/stat) over
   that phase / its reconciles (email_reconciler_reconciles_total);
4. the resyncs the create held back (changed keys go first, so every resync that fell due in a
   create longer than `--interval` waits for its end) are taken at once: timed and counted
   until the controller's queue is empty, then
5. steady state, nothing changed, for a window as long as the accounts' `spec.probe.interval`
   plus its jitter, so every account is probed again (an endpoint check; AUTH is not due): the
   API server counts requests by verb (0 writes, reads only from watches), the controller's
   metrics count endpoint checks (a session of its own, or served by the endpoint's result).

The figures go per N, and the ratios are against the smallest N: cost per account flat in N is
the target (issue 26).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from common import BENCH, Row, cli, env, fmt_ratio, process_cpu, stop_child

NAMESPACES = [f"tenant-{i:02d}" for i in range(20)]
SERVERS = 10
PASSWORD = "bench-pass-123"
CREDENTIAL = "smtp-credential"
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def account_name(i: int) -> str:
    return f"a{i:06d}"


def own_password(i: int) -> str:
    """The password of account i when each has a credential of its own (memory_profile.py)."""
    return f"{PASSWORD}-own-{i:06d}"


# --------------------------------------------------------------------------- the API server process


def serve_api() -> int:
    """The child: a KubeAPIServer with the CRD, driven by one JSON command per line on stdin."""
    from reconciler.policy import CREDENTIAL_LABEL
    from tests.kube_fixtures import email_account_crd
    from tests.kubeapi import KubeAPIServer
    from tests.kubeapi.bulk import bulk_load
    from tests.manifests_factory import loopback_account

    api = KubeAPIServer(crds=[email_account_crd()], namespaces=("default", "kube-system", *NAMESPACES))
    api.keep_request_log = False
    api.start()
    _send(sys.stdout, {"url": api.url})

    def setup(request: Mapping[str, Any]) -> Any:
        for ns in NAMESPACES:
            api.add_object("configmaps", {"metadata": {"name": "ca", "namespace": ns,
                                                       "labels": {CREDENTIAL_LABEL: "true"}},
                                          "data": {"ca.crt": request["ca_pem"]}})
            api.add_object("secrets", {"metadata": {"name": CREDENTIAL, "namespace": ns,
                                                    "labels": {CREDENTIAL_LABEL: "true"}},
                                       "stringData": {"password": PASSWORD}})
        unrelated = ({"metadata": {"name": f"unrelated-{i:07d}", "namespace": NAMESPACES[i % 20],
                                   "labels": {"app": "something-else"}},
                      "data": {"token": "dW5yZWxhdGVkLXNlY3JldC12YWx1ZS0wMTIzNDU2Nzg5"}}
                     for i in range(int(request["unrelated"])))
        return bulk_load(api, "secrets", unrelated)

    def accounts(request: Mapping[str, Any]) -> Any:
        ports, n, interval = request["ports"], int(request["n"]), request["interval"]
        first = int(request.get("start", 0))  # memory_profile.py loads a warm-up batch first

        own = bool(request.get("own"))  # a credential Secret of its own per account

        def one(i: int) -> dict[str, Any]:
            doc = loopback_account(account_name(i), NAMESPACES[i % 20], ports[i % len(ports)],
                                   timeout=30, password_secret=None if own else CREDENTIAL)
            doc["spec"]["probe"] = {"interval": interval}
            if request.get("auth_interval"):
                doc["spec"]["probe"]["authInterval"] = request["auth_interval"]
            return doc

        if own:
            bulk_load(api, "secrets", ({"metadata": {"name": f"{account_name(i)}-smtp",
                                                     "namespace": NAMESPACES[i % 20],
                                                     "labels": {CREDENTIAL_LABEL: "true"}},
                                        "stringData": {"password": own_password(i)}}
                                       for i in range(first, first + n)))
        return bulk_load(api, "emailaccounts", (one(i) for i in range(first, first + n)),
                         history_limit=4 * (first + n) + 10_000)

    def progress(_: Mapping[str, Any]) -> Any:
        with api._store.lock:
            accounts = list(api._store.bucket(api._type_by_plural("emailaccounts")).values())
            secrets = api._store.bucket(api._type_by_plural("secrets"))
            published = sum(1 for (_, name) in secrets if name.endswith("-sender"))
        ready = sum(1 for a in accounts
                    if any(c.get("type") == "Ready" and c.get("status") == "True"
                           for c in (a.get("status") or {}).get("conditions") or []))
        return {"ready": ready, "published": published}

    def counts(_: Mapping[str, Any]) -> Any:
        with api._store.lock:
            return [[verb, resource, n] for (verb, resource), n in api.request_counts.items()]

    handlers = {"setup": setup, "accounts": accounts, "progress": progress, "counts": counts,
                "kubeconfig": lambda r: str(api.kubeconfig(r["path"])),
                "cpu": lambda _: sum(os.times()[:2])}
    try:
        for line in sys.stdin:
            request = json.loads(line)
            _send(sys.stdout, {"result": handlers[request["op"]](request)})
    finally:
        api.stop()
    return 0


def _send(stream: IO[str], message: Mapping[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


class ApiProcess:
    """The parent's handle on the API server process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "cluster_scale.py"), "--serve-api"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline() or "{}")
        if "url" not in hello:
            self.close()
            raise RuntimeError("the API server process did not start")
        self.url: str = hello["url"]

    def call(self, op: str, **args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _send(self.proc.stdin, {"op": op, **args})
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the API server process died during {op}")
        return json.loads(answer)["result"]

    def close(self) -> None:
        stop_child(self.proc, 30)

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the controller process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: `--profile`: the controller run under this, which counts the cyclic garbage collector's
#: passes and their time by generation (gc.callbacks) and writes them to argv[1] each second.
_GC_STATS = (
    "import gc, json, os, sys, threading, time\n"
    "path, stats, began = sys.argv.pop(1), {'count': [0, 0, 0], 'seconds': [0.0, 0.0, 0.0],\n"
    "                                      'collected': [0, 0, 0]}, [0.0]\n"
    "def on_gc(phase, info):\n"
    "    if phase == 'start':\n"
    "        began[0] = time.thread_time()\n"
    "        return\n"
    "    g = info['generation']\n"
    "    stats['count'][g] += 1\n"
    "    stats['collected'][g] += info['collected']\n"
    "    stats['seconds'][g] += time.thread_time() - began[0]\n"
    "gc.callbacks.append(on_gc)\n"
    "def dump():\n"
    "    while True:\n"
    "        time.sleep(1.0)\n"
    "        out = dict(stats, tracked=len(gc.get_objects()) if os.environ.get('GC_TRACKED') else None,\n"
    "                   frozen=gc.get_freeze_count(), thresholds=gc.get_threshold())\n"
    "        with open(path + '.tmp', 'w') as f:\n"
    "            f.write(json.dumps(out))\n"
    "        os.replace(path + '.tmp', path)\n"
    "threading.Thread(target=dump, daemon=True).start()\n"
    "from reconciler.cli import main\n"
    "sys.argv[0] = 'email-reconciler'\n"
    "sys.exit(main())\n"
)


class ControllerProcess:
    """`email-reconciler controller` against the API server; its CPU, memory and metrics.
    With `gc_stats` (a path) it runs under _GC_STATS, which keeps the gc's passes there."""

    def __init__(self, kubeconfig: Path, workers: int, log: Path, gc_stats: Path | None = None) -> None:
        self.metrics, self.health = free_port(), free_port()
        child_env = {**env(), "KUBECONFIG": str(kubeconfig)}
        self.log = log.open("wb")
        self.gc_stats = gc_stats
        command = cli() if gc_stats is None else [sys.executable, "-c", _GC_STATS, str(gc_stats)]
        self.proc = subprocess.Popen(
            [*command, "controller", "--workers", str(workers), "--interval", "10m",
             "--max-sessions-per-server", "64", "--log-level", "error", "--log-format", "json",
             "--metrics-addr", f"127.0.0.1:{self.metrics}", "--health-addr", f"127.0.0.1:{self.health}"],
            env=child_env, stdout=subprocess.DEVNULL, stderr=self.log)

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.get(self.health, "/readyz")[0] != 200:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited {self.proc.returncode}; see {self.log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller was not ready within {timeout:.0f} s")
            time.sleep(0.2)

    def cpu(self) -> float:
        """utime + stime of the controller process (all its threads), in seconds."""
        return sum(process_cpu(self.proc.pid))

    def activity(self) -> tuple[float, float, int, int, int]:
        """(user s, system s, minor page faults, voluntary and involuntary context switches of
        the threads alive now) of the controller process."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = process_cpu(self.proc.pid)
        voluntary = involuntary = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
            except OSError:
                continue  # a thread that ended meanwhile
        return user, system, int(fields[7]), voluntary, involuntary

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of one metric whose labels include ``labels``."""
        total = 0.0
        for line in self.get(self.metrics, "/metrics")[1].splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name or any(f'{k}="{v}"' not in head for k, v in labels.items()):
                continue
            total += float(value)
        return total

    def gc(self) -> dict[str, Any]:
        """The gc's passes so far (`gc_stats` only; {} otherwise)."""
        if self.gc_stats is None:
            return {}
        for _ in range(50):
            try:
                return dict(json.loads(self.gc_stats.read_text()))
            except (OSError, ValueError):
                time.sleep(0.1)
        return {}

    def sample(self, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
        """py-spy recording this process (the thread holding the GIL) into `out` until stopped
        with SIGINT (`PYSPY`, default /tmp/pyspy/bin/py-spy; `none`: gc counts only)."""
        return subprocess.Popen([os.environ.get("PYSPY", "/tmp/pyspy/bin/py-spy"), "record",
                                 "--nonblocking", "--gil", "--threads", "-r", str(rate), "-f", "raw",
                                 "-o", str(out), "--pid", str(self.proc.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------- one size


@dataclass
class Figures:
    """What one size measured."""

    n: int
    unrelated: int
    load_s: float = 0.0
    ready_s: float = 0.0
    ready: int = 0
    published: int = 0
    create_cpu_s: float = 0.0
    create_reconciles: float = 0.0
    base_rss: float = 0.0
    ready_rss: float = 0.0
    end_rss: float = 0.0
    drain_s: float = 0.0  # after all Ready: the resyncs the create held back, taken at once
    drain_cpu_s: float = 0.0
    drain_reconciles: float = 0.0
    window_s: float = 0.0
    window_cpu_s: float = 0.0
    window_reconciles: float = 0.0
    window_requests: dict[str, int] = field(default_factory=dict)
    create_requests: dict[str, int] = field(default_factory=dict)  # by "verb resource"
    sessions: float = 0.0
    shared: float = 0.0
    probes: float = 0.0  # probes in the steady window; those beyond the endpoint checks AUTHed
    auth_interval: float | None = None
    create_gc: dict[str, list[float]] = field(default_factory=dict)  # --profile: the gc's passes
    #: the create phase's (user s, system s, minor faults, voluntary, involuntary switches)
    create_activity: tuple[float, ...] = ()

    @property
    def cpu_per_reconcile_ms(self) -> float:
        return 1000 * self.create_cpu_s / max(1.0, self.create_reconciles)

    @property
    def rss_per_10k(self) -> float:
        return (self.ready_rss - self.base_rss) * 10_000 / max(1, self.n)

    @property
    def writes(self) -> int:
        return sum(v for k, v in self.window_requests.items() if k.split(" ")[0] in WRITES)

    @property
    def polled_reads(self) -> int:
        return sum(v for k, v in self.window_requests.items() if k.split(" ")[0] in ("get", "list"))


def poll_until(done: Callable[[], bool], deadline: float, n: int) -> None:
    """Until done() or the monotonic deadline, every 0.5 s (every 2 s from 5,000 accounts on)."""
    while not done() and time.monotonic() <= deadline:
        time.sleep(0.5 if n < 5000 else 2.0)


def measure(n: int, unrelated: int, work: Path, *, interval: float, window: float, workers: int = 8,
            ready_timeout: float = 3600.0, auth_interval: float | None = None,
            profile: Path | None = None) -> Figures:
    """One size: a fresh cluster of N accounts and U unrelated Secrets (see the module docstring).
    With `profile` (a folder), the create phase is sampled by py-spy into create-N.txt there,
    and the controller's gc passes are counted (gc-N.json)."""
    from smtp_servers import ServerProcess

    fig = Figures(n, unrelated, auth_interval=auth_interval)
    users = work / f"users-{n}.json"
    users.write_text(json.dumps({f"{account_name(i)}@example.com": PASSWORD for i in range(n)}))
    with ApiProcess() as api, ServerProcess(count=SERVERS) as smtp:
        smtp.accept(users)
        api.call("setup", ca_pem=smtp.ca_pem, unrelated=unrelated)
        kubeconfig = Path(api.call("kubeconfig", path=str(work / f"kubeconfig-{n}")))
        ctl = ControllerProcess(kubeconfig, workers, work / f"controller-{n}.log",
                                gc_stats=profile / f"gc-{n}.json" if profile else None)
        sampler = None
        try:
            ctl.wait_ready(300)
            time.sleep(1.0)  # let start-up garbage settle before the base is read
            fig.base_rss, cpu0 = ctl.rss_mib(), ctl.cpu()
            reconciles0 = ctl.metric("email_reconciler_reconciles_total")
            counts0 = {f"{v} {r}": c for v, r, c in api.call("counts")}
            gc0, activity0 = ctl.gc(), ctl.activity()
            if profile is not None:
                print(f"  controller pid {ctl.proc.pid}", file=sys.stderr, flush=True)
                if os.environ.get("PYSPY") != "none":
                    sampler = ctl.sample(profile / f"create-{n}.txt")
            start = time.monotonic()
            api.call("accounts", n=n, ports=smtp.ports, interval=f"{interval:g}s",
                     auth_interval=f"{auth_interval:g}s" if auth_interval else None)
            fig.load_s = time.monotonic() - start
            def all_ready() -> bool:
                state = api.call("progress")
                fig.ready, fig.published = state["ready"], state["published"]
                if fig.ready >= n and fig.published >= n:
                    return True
                if ctl.proc.poll() is not None:
                    raise RuntimeError(f"the controller exited {ctl.proc.returncode}; see {ctl.log.name}")
                return False

            poll_until(all_ready, start + ready_timeout, n)
            fig.ready_s = time.monotonic() - start
            fig.create_cpu_s = ctl.cpu() - cpu0
            fig.create_reconciles = ctl.metric("email_reconciler_reconciles_total") - reconciles0
            fig.create_activity = tuple(b - a for a, b in zip(activity0, ctl.activity(), strict=True))
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)
                sampler.wait(60)
                sampler = None
            gc1 = ctl.gc()
            fig.create_gc = {k: [b - a for a, b in zip(gc0[k], gc1[k], strict=True)]
                             for k in ("count", "seconds", "collected") if k in gc0 and k in gc1}
            fig.ready_rss = ctl.rss_mib()
            # The resyncs the create held back (changed keys go first) are taken now, all at
            # once: work, but not the steady state, so the window starts after them.
            drain0, cpu_d, reconciles_d = time.monotonic(), ctl.cpu(), fig.create_reconciles + reconciles0
            poll_until(lambda: ctl.metric("email_reconciler_queue_depth") <= 0, drain0 + ready_timeout, n)
            fig.drain_s = time.monotonic() - drain0
            fig.drain_cpu_s = ctl.cpu() - cpu_d
            fig.drain_reconciles = ctl.metric("email_reconciler_reconciles_total") - reconciles_d
            # steady state: with window >= 1.1 x interval every account comes due once (its jitter is 10 %)
            before = {f"{v} {r}": c for v, r, c in api.call("counts")}
            fig.create_requests = {k: c - counts0.get(k, 0) for k, c in before.items()
                                   if c - counts0.get(k, 0)}
            cpu1, reconciles1 = ctl.cpu(), ctl.metric("email_reconciler_reconciles_total")
            sessions1 = ctl.metric("email_reconciler_endpoint_checks_total", result="session")
            shared1 = ctl.metric("email_reconciler_endpoint_checks_total", result="shared")
            probes1 = ctl.metric("email_reconciler_probes_total")
            fig.window_s = window
            time.sleep(fig.window_s)
            after = {f"{v} {r}": c for v, r, c in api.call("counts")}
            fig.window_requests = {k: c - before.get(k, 0) for k, c in after.items() if c - before.get(k, 0)}
            fig.window_cpu_s = ctl.cpu() - cpu1
            fig.window_reconciles = ctl.metric("email_reconciler_reconciles_total") - reconciles1
            fig.sessions = ctl.metric("email_reconciler_endpoint_checks_total", result="session") - sessions1
            fig.shared = ctl.metric("email_reconciler_endpoint_checks_total", result="shared") - shared1
            fig.probes = ctl.metric("email_reconciler_probes_total") - probes1
            fig.end_rss = ctl.rss_mib()
        finally:
            if sampler is not None:
                sampler.kill()
                sampler.wait()
            ctl.close()
    return fig


# --------------------------------------------------------------------------- rows


def rows(figures: Sequence[Figures]) -> list[Row]:
    """The result rows: per size, and the ratios of the largest size to the smallest."""
    out: list[Row] = []
    small, large = figures[0], figures[-1]
    for f in figures:
        complete = f.ready >= f.n and f.published >= f.n
        out.append(Row(
            f"create -> Ready, {f.n:,} accounts in 20 namespaces", f"{f.ready_s:.1f} s",
            f"{f.n / max(f.ready_s, 1e-9):.1f} accounts/s", "-", "every account Ready and published",
            complete, f"{f.ready:,} Ready, {f.published:,} Secrets published; bulk load {f.load_s:.1f} s; "
            f"{f.unrelated:,} unrelated Secrets in the cluster"))
        out.append(Row(
            f"controller CPU per reconcile at {f.n:,}", f"{f.cpu_per_reconcile_ms:.2f} ms",
            f"{small.cpu_per_reconcile_ms:.2f} ms at {small.n:,}",
            fmt_ratio(f.cpu_per_reconcile_ms / max(small.cpu_per_reconcile_ms, 1e-9)),
            "<= 1.5x of the smallest N",
            None if f is small else f.cpu_per_reconcile_ms <= 1.5 * small.cpu_per_reconcile_ms,
            f"{f.create_cpu_s:.1f} s CPU over {f.create_reconciles:.0f} reconciles "
            f"({1000 * f.create_cpu_s / f.n:.2f} ms per account)" + _activity(f)))
        made = ", ".join(f"{k}: {v}" for k, v in sorted(f.create_requests.items())) or "none"
        out.append(Row(
            f"API requests while creating {f.n:,}", f"{f.create_requests.get('get secrets', 0)} "
            "get secrets", f"{sum(f.create_requests.values()):,} in all", "-",
            "no read of a published Secret", f.create_requests.get("get secrets", 0) == 0,
            f"requests by verb: {made}"))
        requests = ", ".join(f"{k}: {v}" for k, v in sorted(f.window_requests.items())) or "none"
        auths = "" if f.auth_interval is None else (
            f"; authInterval {f.auth_interval:g} s: {f.probes - f.sessions - f.shared:.0f} of "
            f"{f.probes:.0f} probes authenticated")
        out.append(Row(
            f"steady state at {f.n:,}, {f.window_s:.0f} s, nothing changed",
            f"{f.writes} writes, {f.polled_reads} get/list", "-", "-", "0 writes, reads only from watches",
            f.writes == 0 and f.polled_reads == 0,
            f"requests by verb: {requests}; {f.window_reconciles:.0f} reconciles, "
            f"{f.window_cpu_s:.1f} s CPU ({100 * f.window_cpu_s / max(f.window_s, 1e-9):.1f} % of a core)"
            f" (the --interval 10m resync alone: about {f.n * f.window_s / 600:.0f}); before the "
            f"window, the resyncs the create held back: {f.drain_reconciles:.0f} reconciles in "
            f"{f.drain_s:.1f} s, {f.drain_cpu_s:.1f} s CPU" + auths))
        out.append(Row(
            f"endpoint checks at {f.n:,} on {SERVERS} endpoints (steady window)",
            f"{f.sessions:.0f} sessions, {f.shared:.0f} shared", f"{f.window_reconciles:.0f} reconciles",
            f"{f.sessions / max(1.0, f.sessions + f.shared):.4f}", "sessions << accounts", None,
            "a session is a connect/TLS/EHLO of its own; shared: served by its endpoint's result"))
        out.append(Row(
            f"resident memory at {f.n:,}", f"{f.ready_rss:.0f} MiB", f"base {f.base_rss:.0f} MiB",
            f"{f.rss_per_10k:.1f} MiB per 10k", "<= 64 MiB per 10,000 accounts above the base",
            f.rss_per_10k <= 64, f"after the steady window {f.end_rss:.0f} MiB; the base already holds "
            f"the informers' caches with {f.unrelated:,} unlabelled Secrets in the cluster"))
    if len(figures) > 1:
        slope = (large.ready_rss - small.ready_rss) * 10_000 / max(1, large.n - small.n)
        out.append(Row(
            f"resident memory per 10,000 accounts, {small.n:,} -> {large.n:,}", f"{slope:.1f} MiB",
            f"{small.ready_rss:.0f} -> {large.ready_rss:.0f} MiB", "-", "<= 64 MiB", slope <= 64,
            "the slope between the sizes: fixed costs (threads, TLS contexts, imports) cancel out"))
        per_account = [f"{1000 * f.create_cpu_s / f.n:.2f} ms at {f.n:,}" for f in figures]
        out.append(Row(
            f"CPU per reconcile, {large.n:,} vs {small.n:,}", f"{large.cpu_per_reconcile_ms:.2f} ms",
            f"{small.cpu_per_reconcile_ms:.2f} ms",
            fmt_ratio(large.cpu_per_reconcile_ms / max(small.cpu_per_reconcile_ms, 1e-9)), "<= 1.5x",
            large.cpu_per_reconcile_ms <= 1.5 * small.cpu_per_reconcile_ms,
            "CPU per account: " + ", ".join(per_account)))
    for f in figures:
        if f.create_gc:
            count, seconds = f.create_gc["count"], f.create_gc["seconds"]
            out.append(Row(
                f"cyclic gc while creating {f.n:,}", f"{sum(seconds):.1f} s",
                f"{f.create_cpu_s:.1f} s CPU", f"{sum(seconds) / max(f.create_cpu_s, 1e-9):.3f}",
                "-", None, "passes by generation " + "/".join(f"{c:.0f}" for c in count)
                + ", seconds " + "/".join(f"{s:.2f}" for s in seconds)
                + f"; {1000 * sum(seconds) / max(1.0, f.create_reconciles):.2f} ms per reconcile"))
    return out


def _activity(f: Figures) -> str:
    """Per reconcile of the create phase: user and system CPU, page faults, context switches."""
    if not f.create_activity:
        return ""
    user, system, faults, voluntary, involuntary = f.create_activity
    per = 1 / max(1.0, f.create_reconciles)
    return (f"; per reconcile {1000 * user * per:.2f} ms user, {1000 * system * per:.2f} ms "
            f"system, {faults * per:.1f} minor faults, {voluntary * per:.1f} voluntary and "
            f"{involuntary * per:.1f} involuntary context switches")


def plan(n: int, interval: float, reprobe_up_to: int) -> tuple[float, float]:
    """(spec.probe.interval, steady window) for one size. Up to ``reprobe_up_to`` accounts the
    window covers one interval, so every account is probed again in it; above, the creation takes
    longer than any interval this machine could keep up with, so the accounts' interval is an hour
    (no re-probes skewing the create phase) and the window is a minute of idle steady state."""
    if n <= reprobe_up_to:
        return interval, interval * 1.15
    return 3600.0, 60.0


def cluster_scale(work: Path, sizes: Sequence[int], unrelated: int, interval: float,
                  reprobe_up_to: int = 1000, auth_interval: float | None = None,
                  profile: Path | None = None) -> list[Row]:
    """Benchmark 9 of bench/run.py. `auth_interval` (below the probe interval): every re-probe
    in the steady window also authenticates, which must not write either."""
    figures = []
    for n in sizes:
        print(f"  {n:,} accounts, {unrelated:,} unrelated Secrets ...", file=sys.stderr, flush=True)
        probe_interval, window = plan(n, interval, reprobe_up_to)
        figures.append(measure(n, unrelated, work, interval=probe_interval, window=window,
                               auth_interval=auth_interval, profile=profile))
        print(f"  {figures[-1]}", file=sys.stderr, flush=True)
    return rows(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-api", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--accounts", default="1000,10000", help="sizes, comma-separated")
    parser.add_argument("--unrelated", type=int, default=200_000, help="unlabelled Secrets in the cluster")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="the accounts' spec.probe.interval in seconds (the steady window is 1.15x)")
    parser.add_argument("--reprobe-up-to", type=int, default=1000,
                        help="sizes up to this one re-probe every account in the steady window")
    parser.add_argument("--auth-interval", type=float, default=None,
                        help="the accounts' spec.probe.authInterval in seconds (default 24h); below "
                             "--interval, every re-probe of the steady window authenticates")
    parser.add_argument("--work", default="bench/out/cluster_scale")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="sample the controller's create phase with py-spy (create-N.txt, "
                             "raw) and count its gc passes (gc-N.json) into DIR")
    args = parser.parse_args()
    if args.serve_api:
        return serve_api()
    from common import render_table

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.accounts.split(",") if x.strip()]
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    print(render_table(cluster_scale(work, sizes, args.unrelated, args.interval, args.reprobe_up_to,
                                     args.auth_interval, profile)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
