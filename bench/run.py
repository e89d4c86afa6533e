"""Benchmarks: is email-reconciler fast, side by side with what users would use instead?

    .venv/bin/python bench/run.py            # the full run (a few minutes; numbers for README.md)
    .venv/bin/python bench/run.py --quick    # smaller inputs, for CI; never fails the build
    .venv/bin/python bench/run.py --only 1,5 # some benchmarks only

Inputs are generated under a temporary folder (or --work DIR, e.g. bench/out/) and never committed.
Prints one table: figure, ours, reference, ratio, target, met or MISSED. Exits 0 even when a target
is missed (benchmarks are not tests); exits 2 only on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import Row, machine, render_table  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    validate: int = 5000
    probe: int = 1000
    swaks: int = 50
    api: int = 1000
    memory: int = 10000
    startup_runs: int = 7
    repeat: int = 2
    prober: int = 2000
    relay: int = 200
    cluster: tuple[int, ...] = (1000, 10000)
    unrelated: int = 200_000
    probe_interval: float = 120.0


RELAY_CONCURRENCY = (1, 4, 16)
FULL = Sizes()
QUICK = Sizes(validate=500, probe=200, swaks=10, api=100, memory=1000, startup_runs=5, repeat=1,
              prober=200, relay=30, cluster=(100, 300), unrelated=5000, probe_interval=8.0)


def _benchmarks(sizes: Sizes, work: Path) -> dict[str, tuple[str, Callable[[], list[Row]]]]:
    # Each benchmark imports its module when it runs, so one missing piece reports, not crashes.
    def validation() -> Any:
        import validation
        return validation

    def probes() -> Any:
        import probes
        return probes

    def api_cost() -> Any:
        import api_cost
        return api_cost

    def hostile() -> Any:
        import hostile
        return hostile

    def blackbox() -> Any:
        import blackbox
        return blackbox

    def relay() -> Any:
        import relay
        return relay

    def cluster_scale() -> Any:
        import cluster_scale
        return cluster_scale

    return {
        "1": ("validation throughput", lambda: validation().validation_throughput(
            work, sizes.validate, sizes.repeat)),
        "2": ("probe throughput", lambda: probes().probe_throughput(work, sizes.probe, sizes.swaks)),
        "3": ("API cost", lambda: api_cost().api_cost(work, sizes.api)),
        "4": ("memory", lambda: probes().memory(work, sizes.memory)),
        "5": ("start-up", lambda: validation().startup(work, sizes.startup_runs)),
        "6": ("hostile servers", lambda: hostile().hostile_run(work)),
        "7": ("prober CPU vs blackbox_exporter",
              lambda: blackbox().prober_cpu(work, sizes.prober)),
        "8": ("relay sidecar vs sending upstream directly",
              lambda: relay().relay_overhead(work, sizes.relay, RELAY_CONCURRENCY)),
        "9": ("a whole cluster: controller CPU, requests and memory vs accounts",
              lambda: cluster_scale().cluster_scale(work, sizes.cluster, sizes.unrelated,
                                                    sizes.probe_interval)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (for CI)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="comma-separated benchmark numbers")
    parser.add_argument("--work", help="where to generate inputs (default: a temporary folder)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    wanted = [x.strip() for x in args.only.split(",") if x.strip()]
    print(f"machine: {machine()}")
    if args.quick:
        print(f"--quick: scaled down ({sizes.validate} manifests to validate, {sizes.probe} probes, "
              f"{sizes.api} accounts in the API, {sizes.memory} for memory); targets still apply")
    from reconciler.log import configure_logging

    configure_logging(fmt="json", level="warning")  # in-process runs log like the CLI would
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="email-reconciler-bench-") as tmp:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        benchmarks = _benchmarks(sizes, work)
        for key in wanted:
            if key not in benchmarks:
                print(f"unknown benchmark {key!r}; choose from {', '.join(benchmarks)}",
                      file=sys.stderr)
                return 2
            title, run = benchmarks[key]
            t0 = time.perf_counter()
            print(f"[{key}] {title} ...", file=sys.stderr, flush=True)
            try:
                rows += run()
            except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
                traceback.print_exc()
                rows.append(Row(f"{key} {title}", "error", "-", "-", "-", False,
                                f"the benchmark failed: {type(exc).__name__}: {exc}"))
            print(f"[{key}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print()
    print(render_table(rows))
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
