"""Where the controller's memory per account goes: KB per account by owner (issue 26).

    .venv/bin/python bench/memory_profile.py [--accounts 2000] [--unrelated 2000] [--frames 30]
    .venv/bin/python bench/memory_profile.py --accounts 2000 --no-trace     # RSS alone
    .venv/bin/python bench/memory_profile.py --accounts 1000 --interval 20 --rounds 3   # re-probes

The controller runs in this process (8 workers, every namespace, the session bound per server
lifted), against the test API server (`cluster_scale.py --serve-api`) and ten STARTTLS stand-ins
(`smtp_servers.py`), each in a process of its own, so this process holds the controller and
nothing else: the cluster of benchmark 9 (20 namespaces, a CA ConfigMap and a credential Secret
each, `--unrelated` unlabelled Secrets; `--own-credentials`: a credential Secret and password
per account). Once the controller has synced and reconciled a warm-up batch (`--warmup`: the
modules a reconcile imports lazily, the process-wide caches), its RSS is the base and
tracemalloc starts; N accounts are bulk-loaded and timed until every one is Ready with its
Secret published; then, after a short settle and a garbage collection, the live allocations made
since the base are grouped by traceback and each traceback by its owner:

- informer caches: allocated under store/watch.py, store/informers.py, run/served.py alone;
- worker state: under run/worker.py (its per-key dicts, `slim` copies of its own writes);
- reference indexes (run/refs.py), work queue (run/workqueue.py), endpoint cache
  (probe/endpoints.py), metrics (run/metrics.py, prometheus_client), sharding
  (run/membership.py, run/sharding.py), redaction (log.py's registry);
- reconcile: retained by a reconcile's own code (probe, state, store) under the worker; mostly
  each worker thread's KubeStore holding its last reconcile's account and Secret (up to
  4 x workers threads: a fixed cost, large per account only at small N);
- other: the rest (the Kubernetes client, the interpreter), named by its innermost frame.

RSS is the figure only with `--no-trace`: tracemalloc's traces (a hashtable entry per live
block, about as large as the blocks) and its slower allocations more than double RSS above
the base. The allocators' share (pymalloc arenas and glibc heaps part-used, freed memory not
returned) is read from sys._debugmallocstats and mallinfo2 at the base and at Ready. With
`--rounds R` every account is probed again R times (`--interval` seconds apart) and the RSS is
read after each round, then after `malloc_trim(0)`: whether memory keeps growing with re-probes,
and how much of it the C allocator can give back. `--no-trace` runs without tracemalloc (its
bookkeeping and slower allocations change RSS and timing) and reports RSS only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
import types
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from cluster_scale import PASSWORD, SERVERS, ApiProcess, account_name, own_password

#: (owner, the module paths any frame of the traceback may be in), first match wins.
OWNERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("redaction (log.py)", ("reconciler/log.py",)),
    ("endpoint cache", ("reconciler/probe/endpoints.py",)),
    ("metrics", ("reconciler/run/metrics.py", "prometheus_client/")),
    ("reference indexes", ("reconciler/run/refs.py",)),
    ("work queue", ("reconciler/run/workqueue.py",)),
    ("sharding", ("reconciler/run/membership.py", "reconciler/run/sharding.py")),
)
#: Modules whose allocations belong to whoever called them (the informer's slim copy of an
#: object is the worker's when the worker made it).
HELPERS = ("reconciler/store/watch.py",)
INFORMERS = ("reconciler/store/watch.py", "reconciler/store/informers.py",
             "reconciler/run/served.py")


def _intern_site() -> str:
    """The line of store/watch.py where strings are interned: the interpreter's table of
    interned strings grows there, whichever thread interned the string that grew it."""
    from reconciler.store import watch

    intern = getattr(watch, "_intern", None)
    if intern is None:
        return "\0"  # matches no frame
    return f"reconciler/store/watch.py:{intern.__code__.co_firstlineno + 1}"


INTERN_SITE = _intern_site()


def owner(frames: Sequence[str], inner: str = "") -> str:
    """The owner of an allocation whose traceback's files are `frames`, innermost first
    (`inner`: the innermost frame as file:line)."""
    if inner.endswith(INTERN_SITE):
        return "informer caches: interned strings table"
    for name, paths in OWNERS:
        if any(p in f for f in frames for p in paths):
            return name
    ours = [f for f in frames if "/reconciler/" in f]
    if any("reconciler/run/worker.py" in f for f in ours):
        inner = next((f for f in ours if not any(h in f for h in HELPERS)), "")
        if "reconciler/run/worker.py" in inner:
            return "worker state"
        return "reconcile: " + _short(inner)
    if any(any(p in f for p in INFORMERS) for f in ours):
        return "informer caches"
    return "other: " + _short(ours[0] if ours else (frames[0] if frames else "?"))


def _short(path: str) -> str:
    for root in ("/reconciler/", "/site-packages/", "/lib/python3"):
        if root in path:
            return path.split(root, 1)[1]
    return path


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heaps() -> dict[str, int]:
    """Bytes of the two allocators: pymalloc's arenas and the blocks in use in them
    (sys._debugmallocstats), glibc's heaps (mallinfo2: in use, free, mmapped)."""
    out: dict[str, int] = {}
    read, write = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write, 2)
        os.close(write)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with os.fdopen(read) as stream:
        text = stream.read()
    for line in text.splitlines():
        if line.startswith("# arenas allocated current"):
            out["pymalloc arenas"] = int(line.split("=")[1].replace(",", "")) * 2**20
        elif line.startswith("# bytes in allocated blocks"):
            out["pymalloc in use"] = int(line.split("=")[1].replace(",", ""))
    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
        info.restype = _MallInfo2
        mi = info()
        out.update({"glibc in use": mi.uordblks, "glibc free": mi.fordblks,
                    "glibc mmapped": mi.hblkhd})
    except (OSError, AttributeError):
        pass
    return out


def malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


@dataclass
class Profile:
    """What one run measured."""

    n: int
    unrelated: int
    traced: bool
    ready_s: float = 0.0
    base_kib: int = 0
    ready_kib: int = 0
    tracer_kib: int = 0  # tracemalloc's own bookkeeping at the snapshot
    by_owner: dict[str, int] = field(default_factory=dict)  # bytes
    top: list[tuple[int, int, str]] = field(default_factory=list)  # (bytes, blocks, where)
    rounds: list[tuple[int, int]] = field(default_factory=list)  # (reconciles, RSS KiB)
    trimmed_kib: int = 0
    state: dict[str, int] = field(default_factory=dict)  # entries per structure
    growth: dict[str, int] = field(default_factory=dict)  # bytes by owner over the rounds
    growth_top: list[tuple[int, int, str]] = field(default_factory=list)
    heaps_base: dict[str, int] = field(default_factory=dict)
    heaps_ready: dict[str, int] = field(default_factory=dict)

    def per_account_kb(self, kib: float) -> float:
        return kib * 1024 / 1000 / max(1, self.n)

    def render(self) -> str:
        above = self.ready_kib - self.base_kib - self.tracer_kib
        traced = sum(self.by_owner.values()) / 1024
        lines = [f"accounts={self.n:,} unrelated Secrets={self.unrelated:,} "
                 f"create -> all Ready and published {self.ready_s:.1f} s",
                 f"RSS base {self.base_kib / 1024:.1f} MiB, at Ready {self.ready_kib / 1024:.1f} MiB"
                 + (f" (tracemalloc's own {self.tracer_kib / 1024:.1f} MiB left out)"
                    if self.traced else ""),
                 f"RSS above base: {self.per_account_kb(above):.2f} KB per account = "
                 f"{above * 10_000 / max(1, self.n) / 1024:.0f} MiB per 10,000 (target 64)"
                 + (" -- with tracemalloc on: NOT the figure (its traces and slower "
                    "allocations add to it), run --no-trace for that" if self.traced else "")]
        if self.heaps_ready:
            lines.append("allocators above base, KB per account: " + ", ".join(
                f"{k} {(v - self.heaps_base.get(k, 0)) / 1000 / max(1, self.n):.2f}"
                for k, v in self.heaps_ready.items()))
        lines.append("entries: " + ", ".join(f"{k} {v:,}" for k, v in self.state.items()))
        if self.traced:
            lines.append("")
            lines.append(f"{'owner':<44} {'KB/account':>10} {'MiB':>8}")
            for name, size in sorted(self.by_owner.items(), key=lambda kv: -kv[1]):
                lines.append(f"{name:<44} {self.per_account_kb(size / 1024):>10.2f} "
                             f"{size / 2**20:>8.1f}")
            lines.append(f"{'traced, all':<44} {self.per_account_kb(traced):>10.2f} "
                         f"{traced / 1024:>8.1f}")

            lines.append("")
            lines.append("largest tracebacks (bytes per account, blocks, owner | frames):")
            for size, blocks, where in self.top:
                lines.append(f"  {size / max(1, self.n):>8.0f} B {blocks:>9,}  {where}")
        for i, (reconciles, kib) in enumerate(self.rounds, 1):
            lines.append(f"re-probe round {i}: {reconciles:,} reconciles in all, RSS above base "
                         f"{self.per_account_kb(kib - self.base_kib):.2f} KB per account")
        if self.growth:
            lines.append("traced growth over the re-probe rounds, KB per account by owner: " + ", ".join(
                f"{k} {self.per_account_kb(v / 1024):.2f}"
                for k, v in sorted(self.growth.items(), key=lambda kv: -abs(kv[1]))[:8]))
            for size, blocks, where in self.growth_top[:10]:
                lines.append(f"  {size / max(1, self.n):>8.0f} B {blocks:>9,}  {where}")
        if self.trimmed_kib:
            lines.append(f"after malloc_trim(0): RSS above base "
                         f"{self.per_account_kb(self.trimmed_kib - self.base_kib):.2f} KB per account")
        return "\n".join(lines)


def group(snapshot: tracemalloc.Snapshot, top: int, since: tracemalloc.Snapshot | None = None
          ) -> tuple[dict[str, int], list[tuple[int, int, str]]]:
    """Bytes by owner, and the `top` largest tracebacks (with their reconciler frames); with
    `since`, what grew from that snapshot to this one."""
    by_owner: dict[str, int] = defaultdict(int)
    rows = []
    stats = ([(d.traceback, d.size_diff, d.count_diff) for d in snapshot.compare_to(since, "traceback")]
             if since is not None else
             [(st.traceback, st.size, st.count) for st in snapshot.statistics("traceback")])
    for traceback, size, count in stats:
        frames = [f.filename for f in reversed(traceback)]  # innermost first
        inner = traceback[-1]
        who = owner(frames, f"{inner.filename}:{inner.lineno}")
        by_owner[who] += size
        ours = [f"{_short(f.filename)}:{f.lineno}" for f in reversed(traceback)
                if "/reconciler/" in f.filename][:4]
        rows.append((size, count, f"{who} | {_short(inner.filename)}:{inner.lineno}"
                     f" < {' < '.join(ours)}"))
    rows.sort(reverse=True)
    return dict(by_owner), rows[:top]


def why(pattern: str, samples: int = 3, depth: int = 6) -> list[str]:
    """Who holds the live containers and strings allocated under a frame matching `pattern`
    ("store/kube.py:312"): for a few samples, the chain of first referrers, `depth` long."""
    objects = [o for o in gc.get_objects() if type(o) in (dict, list, tuple)]
    matched: list[Any] = []
    strings: dict[int, Any] = {}  # strings are not tracked by gc: found in the containers
    for obj in objects:
        members = [*obj.keys(), *obj.values()] if type(obj) is dict else list(obj)
        for member in (obj, *(m for m in members if type(m) is str)):
            if type(member) is str and id(member) in strings:
                continue
            tb = tracemalloc.get_object_traceback(member)
            if tb is not None and any(pattern in f"{f.filename}:{f.lineno}" for f in tb):
                if type(member) is str:
                    strings[id(member)] = member
                elif member is obj:
                    matched.append(obj)
    matched += list(strings.values())
    ignore_ids = {id(strings)}
    out = [f"{len(matched)} live dicts/lists/tuples and strings allocated under {pattern}"]
    ignore = {id(objects), id(matched), id(out), *ignore_ids}
    matched = matched[::max(1, len(matched) // samples)]  # spread over what matched
    for obj in matched[:samples]:
        chain, current = [], obj
        for _ in range(depth):
            holders = [r for r in gc.get_referrers(current)
                       if id(r) not in ignore and not isinstance(r, types.FrameType)
                       and not _ours(r)]
            ignore.add(id(holders))
            if not holders:
                break
            current = holders[0]
            where = tracemalloc.get_object_traceback(current)
            site = f"{_short(where[-1].filename)}:{where[-1].lineno}" if where else "?"
            keys = sorted(map(str, current))[:3] if isinstance(current, dict) else ""
            chain.append(f"{type(current).__name__}@{site}{keys}")
        head = repr(obj)[:40] if type(obj) is str else type(obj).__name__
        out.append(f"  {head} <- " + " <- ".join(chain))
    return out


def _ours(obj: Any) -> bool:
    """Whether `obj` was allocated by this script (its own lists of objects)."""
    tb = tracemalloc.get_object_traceback(obj)
    return tb is not None and any(f.filename == __file__ for f in tb)


def _after_trim(ctl: Any) -> None:
    """Until the controller's own trimmer (run/trim.py) has run after the burst: RSS then is
    what it keeps in the steady state (at most its period plus a little)."""
    trimmer = getattr(ctl, "trimmer", None)
    if trimmer is None or not trimmer.available:
        return
    before, end = trimmer.trims, time.monotonic() + trimmer.period + 5
    while trimmer.trims == before and time.monotonic() < end:
        time.sleep(0.5)


def _wait_ready(api: ApiProcess, n: int, timeout: float) -> None:
    start = shown = time.monotonic()
    while True:
        state = api.call("progress")
        if state["ready"] >= n and state["published"] >= n:
            return
        if time.monotonic() - shown > 30:
            shown = time.monotonic()
            print(f"  {state['ready']:,} of {n:,} Ready, {state['published']:,} published after "
                  f"{shown - start:.0f} s", file=sys.stderr, flush=True)
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"only {state['ready']} Ready, {state['published']} published "
                               f"of {n} after {timeout:.0f} s")
        time.sleep(0.5)


def _settle(ctl: Any, quiet: float = 2.0, timeout: float = 120.0) -> None:
    """Until no reconcile ran for `quiet` seconds (the last writes' watch events are in)."""
    end = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        now = sum(ctl.reconciles.values())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet and ctl.queue.depth() == 0:
            return
        time.sleep(0.2)


def state_sizes(ctl: Any) -> dict[str, int]:
    """Entries in the controller's per-key structures outside the informers (for the report)."""
    w, q = ctl.worker, ctl.queue
    out = {}
    for name, obj in (("worker._generations", "_generations"), ("worker._written", "_written"),
                      ("worker._unwritten", "_unwritten"), ("worker._schedule", "_schedule"),
                      ("worker.reconciles", "reconciles")):
        value = getattr(w, obj, None)
        if value is not None:
            out[name] = len(value)
    for name in ("_due", "_heap", "_failures", "_pending"):
        value = getattr(q, name, None)
        if value is not None:
            out["queue." + name] = len(value)
    out["endpoint cache"] = len(w.endpoints)
    return out


def profile(n: int, unrelated: int, work: Path, *, trace: bool, frames: int, top: int,
            interval: float, rounds: int, warmup: int, workers: int = 8,
            holders: Sequence[str] = (), own: bool = False, trace_rounds: bool = False
            ) -> Profile:
    from smtp_servers import ServerProcess

    from reconciler.log import configure_logging
    from reconciler.probe import limits
    from reconciler.run.controller import Controller
    from reconciler.store.kubeclient import client_from_config

    configure_logging(fmt="json", level="error")
    limits.configure(max_sessions_per_server=64)
    prof = Profile(n, unrelated, trace)
    users = work / f"users-{n}.json"
    users.write_text(json.dumps({f"{account_name(i)}@example.com":
                                 own_password(i) if own else PASSWORD
                                 for i in range(warmup + n)}))
    with ApiProcess() as api, ServerProcess(count=SERVERS) as smtp:
        smtp.accept(users)
        api.call("setup", ca_pem=smtp.ca_pem, unrelated=unrelated)
        os.environ["KUBECONFIG"] = api.call("kubeconfig", path=str(work / f"kubeconfig-{n}"))
        client, _ = client_from_config()
        ctl = Controller(client, workers=workers, interval=600.0)
        ctl.start()
        try:
            if not ctl.wait_synced(300):
                raise RuntimeError("the controller did not sync")
            # A first batch imports the modules a reconcile imports lazily and fills the
            # process-wide caches (TLS contexts, schema, politeness per server): not per account.
            api.call("accounts", n=warmup, ports=smtp.ports, interval="3600s", own=own)
            _wait_ready(api, warmup, 600)
            _settle(ctl)
            time.sleep(1.0)
            gc.collect()
            prof.base_kib, prof.heaps_base = rss_kib(), heaps()
            if trace:
                tracemalloc.start(frames)
            start = time.monotonic()
            api.call("accounts", n=n, start=warmup, ports=smtp.ports, own=own,
                     interval=f"{interval:g}s" if rounds else "3600s")
            _wait_ready(api, warmup + n, 3600)
            prof.ready_s = time.monotonic() - start
            _settle(ctl)
            _after_trim(ctl)
            gc.collect()
            if trace:
                snapshot = tracemalloc.take_snapshot()
                prof.tracer_kib = tracemalloc.get_tracemalloc_memory() // 1024
                prof.by_owner, prof.top = group(snapshot, top)
                for pattern in holders:
                    print("\n".join(why(pattern)), flush=True)
                if not trace_rounds:
                    del snapshot
                gc.collect()
            prof.ready_kib, prof.heaps_ready = rss_kib(), heaps()
            prof.state = state_sizes(ctl)
            if trace and not trace_rounds:  # its bookkeeping would grow with every round
                tracemalloc.stop()
            done = sum(ctl.reconciles.values())
            for _ in range(rounds):
                target = done + n
                while sum(ctl.reconciles.values()) < target:
                    time.sleep(0.5)
                done = sum(ctl.reconciles.values())
                gc.collect()
                prof.rounds.append((done, rss_kib()))
            if trace and trace_rounds and rounds:
                gc.collect()
                later = tracemalloc.take_snapshot()
                prof.growth, prof.growth_top = group(later, top, since=snapshot)
                tracemalloc.stop()
            malloc_trim()
            prof.trimmed_kib = rss_kib()
        finally:
            ctl.stop()
            client.close()
    return prof


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--unrelated", type=int, default=2000, help="unlabelled Secrets in the cluster")
    parser.add_argument("--frames", type=int, default=30, help="tracemalloc frames per traceback")
    parser.add_argument("--top", type=int, default=25, help="largest tracebacks to print")
    parser.add_argument("--no-trace", action="store_true", help="RSS only, without tracemalloc")
    parser.add_argument("--interval", type=float, default=20.0,
                        help="the accounts' spec.probe.interval in seconds, with --rounds")
    parser.add_argument("--rounds", type=int, default=0, help="re-probe rounds after Ready")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--why", action="append", default=[], metavar="FILE:LINE",
                        help="print who holds live containers allocated at a frame like "
                             "store/kube.py:312 (repeatable)")
    parser.add_argument("--trace-rounds", action="store_true",
                        help="keep tracing through --rounds and print what grew, by owner")
    parser.add_argument("--own-credentials", action="store_true",
                        help="a credential Secret (and password) of its own per account, "
                             "instead of one per namespace: what the redaction registry holds")
    parser.add_argument("--warmup", type=int, default=50,
                        help="accounts loaded before the base is read (lazy imports, caches)")
    parser.add_argument("--work", default="bench/out/memory_profile")
    args = parser.parse_args()
    assert threading.current_thread() is threading.main_thread()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    prof = profile(args.accounts, args.unrelated, work, trace=not args.no_trace, frames=args.frames,
                   top=args.top, interval=args.interval, rounds=args.rounds, warmup=args.warmup,
                   workers=args.workers, holders=args.why,
                   own=args.own_credentials, trace_rounds=args.trace_rounds)
    print(prof.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
