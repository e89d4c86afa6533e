"""Benchmark 2 (probe throughput, with swaks as the reference) and 4 (memory of a dry run)."""

from __future__ import annotations

import asyncio
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import Row, cli, env, fmt_ratio, fmt_s, measured
from generate import probe_corpus
from smtp_servers import ServerProcess

CONCURRENCY = 64
# The probe keeps at most 4 sessions per server (--max-sessions-per-server), and a server is its
# host: all the stand-ins listen on 127.0.0.1, one MTA to the politeness, so the run lifts the
# bound to the concurrency; the accounts are spread over enough servers (32) that no stand-in is
# what limits the run, as 1,000 accounts of many providers or tenants would be.
SERVERS = 32
BANNER_DELAY = 0.1
SINGLE_PROBES = 15


def _corpus(work: Path, tag: str, count: int, server: ServerProcess) -> tuple[Path, Path, dict[str, str]]:
    manifests, secrets_dir = work / f"{tag}-manifests", work / f"{tag}-secrets"
    users = probe_corpus(manifests, secrets_dir, count, server.ports, server.ca_pem)
    users_file = work / f"{tag}-users.json"
    users_file.write_text(json.dumps(users))
    users_file.chmod(0o600)
    server.accept(users_file)
    return manifests, secrets_dir, users


def _accounts(manifests: Path) -> list[Any]:
    from reconciler.manifest.load import load_paths

    loaded = load_paths([str(manifests)])
    if not loaded.ok:
        raise RuntimeError(f"generated manifests do not validate: {loaded.diagnostics[:3]}")
    return loaded.accounts


def _failures(results: list[Any]) -> list[str]:
    return [f"{r.connection.reason}: {r.connection.message}" if not r.connection.ok
            else f"{r.authentication.reason}: {r.authentication.message}"
            for r in results if not (r.connection.ok and r.authentication and r.authentication.ok)]


async def _single_times(account: Any, secrets: Any, runs: int) -> list[float]:
    from reconciler.probe import probe_account

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = await probe_account(account, secrets, now=datetime.now(UTC))
        times.append(time.perf_counter() - start)
        if _failures([result]):
            raise RuntimeError(f"single probe failed: {_failures([result])[0]}")
    return times


def probe_throughput(work: Path, count: int, swaks_count: int) -> list[Row]:
    """N STARTTLS+AUTH probes at concurrency 64 against banner-delayed servers, vs the ideal."""
    from reconciler.probe import limits, probe_accounts
    from reconciler.probe.credentials import DirSecretReader

    limits.configure(max_sessions_per_server=CONCURRENCY)  # the stand-ins share 127.0.0.1
    # The servers run in their own process, so the probing process has a core to itself.
    with ServerProcess(count=SERVERS, banner_delay=BANNER_DELAY) as delayed, \
            ServerProcess(count=1, banner_delay=0.0) as fast:
        manifests, secrets_dir, users = _corpus(work, "probe", count, delayed)
        one_dir, one_secrets, _ = _corpus(work, "probe-single", 1, fast)
        accounts = _accounts(manifests)
        single = _accounts(one_dir)[0]
        times = asyncio.run(_single_times(single, DirSecretReader(one_secrets), SINGLE_PROBES))
        median = statistics.median(times)
        secrets = DirSecretReader(secrets_dir)
        start = time.perf_counter()
        results = asyncio.run(probe_accounts(accounts, secrets, now=datetime.now(UTC),
                                             concurrency=CONCURRENCY))
        total = time.perf_counter() - start
        failed = _failures(results)
        if failed:
            raise RuntimeError(f"{len(failed)} of {count} probes failed, e.g. {failed[0]}")
        ideal = math.ceil(count / CONCURRENCY) * (BANNER_DELAY + median)
        rows = [Row(f"2a probe {count} accounts, concurrency {CONCURRENCY}", fmt_s(total),
                    f"ideal {fmt_s(ideal)}", fmt_ratio(total / ideal), "<= 1.3x ideal",
                    total / ideal <= 1.3,
                    f"STARTTLS + AUTH PLAIN + MAIL FROM/RSET, {SERVERS} servers (at most 4 "
                    f"sessions each), banner delayed {BANNER_DELAY * 1000:.0f} ms; ideal = "
                    f"ceil(N/{CONCURRENCY}) x (banner delay + median single probe "
                    f"{median * 1000:.1f} ms)")]
        rows.append(_swaks(work, accounts[:swaks_count], users, secrets_dir, total / count))
    return rows


def _swaks(work: Path, accounts: list[Any], users: dict[str, str], secrets_dir: Path,
           ours_per_account: float) -> Row:
    """The same conversation with swaks, one account after another in a shell loop."""
    figure = f"2b swaks, first {len(accounts)} accounts, per account"
    if not accounts:
        return Row(figure, "-", "-", "-", "-", None, "skipped")
    import shutil

    if shutil.which("swaks") is None:
        return Row(figure, fmt_s(ours_per_account), "n/a", "n/a", "(information)", None,
                   "swaks is not installed (Debian package swaks); reference skipped")
    ca = secrets_dir / "bench" / "bench-ca" / "ca.crt"
    lines = ["set -e"]
    for a in accounts:
        login = a.smtp.identity.email_address
        conn = a.smtp.connection
        lines.append(" ".join(shlex.quote(x) for x in [
            "swaks", "--server", conn.host, "--port", str(conn.port), "--tls", "--tls-verify",
            "--tls-ca-path", str(ca), "--auth", "PLAIN", "--auth-user", login,
            "--auth-password", users[login], "--quit-after", "AUTH", "--hide-all"]))
    script = work / "swaks.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o700)
    start = time.perf_counter()
    # Its output is not shown: the command lines hold the (generated) passwords.
    done = subprocess.run(["bash", str(script)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"swaks failed (exit {done.returncode}); run {script} by hand to see why")
    per = elapsed / len(accounts)
    return Row(figure, fmt_s(ours_per_account), fmt_s(per), fmt_ratio(per / ours_per_account)
               + " faster", "(information)", None,
               f"swaks --tls --tls-verify --auth PLAIN --quit-after AUTH in a shell loop over "
               f"{len(accounts)} accounts took {fmt_s(elapsed)}")


def memory(work: Path, count: int) -> list[Row]:
    """Peak RSS of `reconcile --dry-run` over count manifests, probes answered locally."""
    figure = f"4 peak RSS, reconcile --dry-run of {count} manifests"
    with ServerProcess(count=2, banner_delay=0.0) as server:
        manifests, secrets_dir, _ = _corpus(work, "memory", count, server)
        store = work / "memory-store"
        argv = [*cli(), "reconcile", str(manifests), "--dry-run", "--store", f"local:{store}",
                "--secrets-dir", str(secrets_dir), "--concurrency", str(CONCURRENCY),
                # Two local servers stand in for many real ones: without this the per-server
                # session bound (4) would turn a memory figure into a measure of that bound.
                "--max-sessions-per-server", str(CONCURRENCY),
                "--output", "json"]
        out = work / "memory-report.json"
        start = time.perf_counter()
        maxrss_file = work / "memory-maxrss"
        with out.open("wb") as stdout:
            proc = subprocess.Popen(measured(argv, maxrss_file), stdout=stdout,
                                    stderr=subprocess.PIPE, env=env())
            _, stderr = proc.communicate()
        elapsed = time.perf_counter() - start
        maxrss_kib = int(maxrss_file.read_text())
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"reconcile exited {proc.returncode}: "
                           f"{stderr.decode('utf-8', 'replace')[-500:]}")
    report = json.loads(out.read_text())
    ready = sum(1 for a in report["accounts"] if a["ready"])
    if len(report["accounts"]) != count or ready != count:
        raise RuntimeError(f"reconcile --dry-run: {ready} of {len(report['accounts'])} accounts "
                           f"ready, expected {count}")
    peak_mb = maxrss_kib / 1024  # KiB on Linux
    return [Row(figure, f"{peak_mb:.0f} MB", "-", "-", "< 250 MB", peak_mb < 250,
                f"the CLI's own ru_maxrss (common.measured); all {count} probed and Ready in "
                f"{fmt_s(elapsed)}; {sys.platform}")]
