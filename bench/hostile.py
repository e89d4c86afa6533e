"""Benchmark 6: one `probe` run against 5 hostile servers beside 20 healthy accounts.

The hostile servers (tests/hostile.py: an endless `250-` EHLO reply, an endless `535-` AUTH reply,
an endless Graph body, a token endpoint and a Graph that drip one byte a second) used to take the
probe to gigabytes of RSS and past 60 s. Peak RSS of the child (os.wait4) and the run's wall time,
interpreter start-up included.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from common import Row, cli, env, fmt_s, measured

HEALTHY = 20
TIMEOUT_SECONDS = 3.0
RSS_TARGET_MB = 120




def hostile_run(work: Path) -> list[Row]:
    from tests.hostile import start_hostile_bed

    bed = start_hostile_bed(work / "hostile", healthy=HEALTHY, timeout=TIMEOUT_SECONDS)
    try:
        argv = [*cli(), "probe", str(bed.manifests), "--secrets-dir", str(bed.secrets_dir),
                "--allowed-endpoints", "127.0.0.1:*", "-o", "json"]
        child_env = dict(env(), REQUESTS_CA_BUNDLE=str(bed.ca_bundle))
        out = work / "hostile-report.json"
        start = time.perf_counter()
        maxrss_file = work / "hostile-maxrss"
        with out.open("wb") as stdout:
            proc = subprocess.Popen(measured(argv, maxrss_file),
                                    stdout=stdout, stderr=subprocess.DEVNULL, env=child_env)
            proc.wait()
        elapsed = time.perf_counter() - start
        maxrss_kib = int(maxrss_file.read_text())
    finally:
        bed.close()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"probe exited {proc.returncode}")
    entries = {e["name"]: e["status"] for e in json.loads(out.read_text())}
    ready = [n for n in bed.healthy_names
             if any(c["type"] == "Ready" and c["status"] == "True"
                    for c in entries[n]["conditions"])]
    if len(ready) != HEALTHY:
        raise RuntimeError(f"only {len(ready)} of {HEALTHY} healthy accounts Ready")
    reasons = sorted({next(c["reason"] for c in entries[n]["conditions"] if c["type"] == "Ready")
                      for n in bed.hostile_names})
    peak_mb = maxrss_kib / 1024  # KiB on Linux
    bound = TIMEOUT_SECONDS + 2
    startup = _startup(bed.manifests)
    note = (f"{HEALTHY} healthy Ready; hostile: {', '.join(reasons)}; timeoutSeconds "
            f"{TIMEOUT_SECONDS:g}")
    return [Row("6a peak RSS, probe: 5 hostile servers + 20 healthy", f"{peak_mb:.0f} MB", "-",
                "-", f"< {RSS_TARGET_MB} MB", peak_mb < RSS_TARGET_MB, note),
            Row("6b the same run, less the CLI's start-up", fmt_s(elapsed - startup), "-", "-",
                f"<= timeoutSeconds + 2 s = {fmt_s(bound)}", elapsed - startup <= bound,
                f"wall {fmt_s(elapsed)} minus {fmt_s(startup)}, the wall time of `validate` of "
                "one manifest on this machine just after (interpreter start-up and imports)")]


def _startup(manifests: Path) -> float:
    """Wall time of the CLI validating one manifest: what the machine charges to start it."""
    one = sorted(manifests.glob("*.yaml"))[0]
    start = time.perf_counter()
    subprocess.run([*cli(), "validate", str(one)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env(), check=False)
    return time.perf_counter() - start
