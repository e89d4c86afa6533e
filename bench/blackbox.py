"""Benchmark 7: CPU per probe, ours against Prometheus blackbox_exporter, on one real Postfix.

The same conversation for every prober, against the same Postfix port (tests/mta's bed, STARTTLS
with a private CA): connect, 220, EHLO, STARTTLS, TLS with the CA and a host-name check, EHLO, QUIT;
no AUTH (blackbox_exporter cannot) and no envelope check. Counted is each prober's own CPU, read
from its own process, so neither the load generator nor Postfix is in the figure:

- ours: `email-reconciler probe` over N accounts (`authentication.method: None`,
  `probe.envelopeCheck: false`), CPU of the child from `os.wait4`, less the CPU of the same command
  over one account (start-up: interpreter, imports, one probe), divided by N - 1;
- blackbox_exporter (Debian's `prometheus-blackbox-exporter`, installed by this bench when it can):
  N `/probe` requests at the same concurrency, CPU from /proc/PID/stat before and after;
- a floor: the same conversation in bare asyncio streams, one SSLContext, in a process of its own.

Ours and blackbox take turns, three rounds by default (`bench/blackbox.py N ROUNDS`), each ratio
taken within its round, since on a shared machine the load moves between rounds; the median round
is reported with the range.

Then the full probe of the product (AUTH PLAIN through Dovecot and the envelope check), which
blackbox cannot do, per account against blackbox's connect-only probe, over as many accounts.

    .venv/bin/python bench/run.py --only 7
    .venv/bin/python bench/blackbox.py floor PORT CA_FILE N CONCURRENCY   # the floor alone
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path[:0] = [str(HERE), str(HERE.parent)]

from common import Row, cli, env, fmt_ratio, process_cpu, unavailable  # noqa: E402

BLACKBOX = "prometheus-blackbox-exporter"
SERVICE = "authonly"  # STARTTLS; AUTH offered only after it (tests/mta/bed.py)
CONCURRENCY = 32
EHLO = "bench.example.test"


def _blackbox_binary() -> str | None:
    found = shutil.which(BLACKBOX)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", BLACKBOX],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which(BLACKBOX)


def _process_cpu(pid: int) -> float:
    """utime + stime of a running process (and its waited-for children), seconds."""
    return sum(process_cpu(pid, children=True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- blackbox_exporter


def _blackbox_config(ca_file: Path) -> dict[str, Any]:
    """blackbox_exporter's own SMTP STARTTLS module (its example config), with our CA."""
    return {"modules": {"smtp_starttls": {"prober": "tcp", "timeout": "10s", "tcp": {
        "preferred_ip_protocol": "ip4",
        "tls_config": {"ca_file": str(ca_file), "server_name": "127.0.0.1"},
        "query_response": [
            {"expect": "^220 "},
            {"send": f"EHLO {EHLO}\r"},
            {"expect": "^250-STARTTLS"},
            {"send": "STARTTLS\r"},
            {"expect": "^220"},
            {"starttls": True},
            {"send": f"EHLO {EHLO}\r"},
            {"expect": "^250 "},
            {"send": "QUIT\r"},
        ]}}}}


@contextmanager
def _blackbox(binary: str, work: Path, ca_file: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    config = work / "blackbox.yml"
    config.write_text(yaml.safe_dump(_blackbox_config(ca_file)))
    port = _free_port()
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:  # ready when it answers its own health page
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("blackbox_exporter did not start") from None
                time.sleep(0.05)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _blackbox_probes(port: int, target: int, count: int) -> tuple[int, float]:
    """count /probe requests at CONCURRENCY; (successes, wall seconds)."""
    url = (f"http://127.0.0.1:{port}/probe?module=smtp_starttls"
           f"&target=127.0.0.1:{target}")

    def one(_: int) -> bool:
        with urllib.request.urlopen(url, timeout=30) as r:
            return b"\nprobe_success 1" in r.read()

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        ok = sum(pool.map(one, range(count)))
    return ok, time.perf_counter() - t0


# ------------------------------------------------------------------------------- the floor


async def _floor_one(port: int, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if line[3:4] != b"-":
                return line

    assert (await reply()).startswith(b"220")
    writer.write(f"EHLO {EHLO}\r\n".encode())
    assert (await reply()).startswith(b"250")
    writer.write(b"STARTTLS\r\n")
    assert (await reply()).startswith(b"220")
    await writer.start_tls(context, server_hostname="127.0.0.1")
    writer.write(f"EHLO {EHLO}\r\n".encode())
    assert (await reply()).startswith(b"250")
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()
    await writer.wait_closed()


async def _floor(port: int, ca_file: Path, count: int, concurrency: int) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    gate = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with gate:
            await _floor_one(port, context)

    await asyncio.gather(*(guarded() for _ in range(count)))


def floor_main(argv: list[str]) -> int:
    """`blackbox.py floor PORT CA N C`: prints the CPU seconds of the N conversations."""
    port, ca_file, count, concurrency = int(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    asyncio.run(_floor(port, ca_file, 1, 1))  # warm: imports, first handshake
    cpu0 = time.process_time()
    asyncio.run(_floor(port, ca_file, count, concurrency))
    print(time.process_time() - cpu0)
    return 0


# ------------------------------------------------------------------------------- ours


def _write_accounts(folder: Path, port: int, count: int, *, full: bool) -> None:
    from tests.manifests_factory import loopback_account

    folder.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(count):
        doc = loopback_account(f"acct-{i:05d}", "bench", port, timeout=20)
        if not full:
            doc["spec"]["smtp"]["authentication"] = {"method": "None"}
            doc["spec"]["probe"] = {"envelopeCheck": False}
        docs.append(doc)
    (folder / "accounts.yaml").write_text(yaml.safe_dump_all(docs))


def _our_cpu(folder: Path, secrets: Path) -> tuple[float, float, int]:
    """(CPU seconds of the child, wall seconds, Ready accounts) of one `probe` run."""
    argv = [*cli(), "probe", str(folder), "--secrets-dir", str(secrets), "-o", "json",
            "--concurrency", str(CONCURRENCY), "--max-sessions-per-server", str(CONCURRENCY)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env())
    out = proc.stdout.read() if proc.stdout else b""
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    import json

    ready = sum(1 for e in json.loads(out or b"[]")
                if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in e["status"].get("conditions", [])))
    return usage.ru_utime + usage.ru_stime, wall, ready


class _Ours:
    """`email-reconciler probe` over `count` accounts of one kind (connect-only or full), its
    start-up (the same command over one account, least of three) subtracted."""

    def __init__(self, work: Path, tag: str, port: int, secrets: Path, count: int, *,
                 full: bool) -> None:
        self.one, self.many = work / f"{tag}-1", work / f"{tag}-{count}"
        self.secrets, self.count = secrets, count
        _write_accounts(self.one, port, 1, full=full)
        _write_accounts(self.many, port, count, full=full)
        self.base = min(_our_cpu(self.one, secrets)[0] for _ in range(3))

    def run(self) -> tuple[float, float, int]:
        """(CPU ms per account, wall s, Ready) of one run over every account."""
        cpu, wall, ready = _our_cpu(self.many, self.secrets)
        return (cpu - self.base) / (self.count - 1) * 1000, wall, ready


def _median_turn(turns: list[dict[str, float]], key: str, *shown: str) -> tuple[float, ...]:
    """The values `shown` and `key` of the round whose `key` is the median."""
    turn = sorted(turns, key=lambda t: t[key])[(len(turns) - 1) // 2]
    return (*(turn[name] for name in shown), turn[key])


def _spread(values: list[float]) -> str:
    return f"median of {len(values)} rounds; range {min(values):.2f}-{max(values):.2f}"


# ------------------------------------------------------------------------------- the benchmark


def prober_cpu(work: Path, count: int, rounds: int = 3) -> list[Row]:
    """Rows 7, 7b, 7c. Ours and blackbox_exporter take turns, `rounds` times, each ratio taken
    within its round (on a shared machine the load moves between rounds, not within one turn),
    and the median round reported."""
    figure = f"7 CPU per probe, {count} STARTTLS probes of one Postfix, concurrency {CONCURRENCY}"
    target = "<= 1.0x blackbox_exporter"
    from tests.mta.bed import missing_tools, running_bed

    gone = missing_tools()
    if gone or os.geteuid() != 0:
        why = (f"missing {', '.join(gone)} (apt-get install postfix dovecot-core)" if gone
               else "the MTA bed needs root")
        return [unavailable(figure, target, why)]
    binary = _blackbox_binary()
    if binary is None:
        return [unavailable(figure, target, "apt-get install prometheus-blackbox-exporter")]
    work = work / "blackbox"
    work.mkdir(parents=True, exist_ok=True)
    with running_bed() as bed:
        port = bed.port(SERVICE)
        ca_file = work / "ca.crt"
        ca_file.write_text(bed.ca_pem)
        secrets = work / "secrets"
        (secrets / "bench" / "ca").mkdir(parents=True, exist_ok=True)
        (secrets / "bench" / "ca" / "ca.crt").write_text(bed.ca_pem)
        # 7c's logins, written now rather than just before 7c: a file changed in the last 2 s
        # is read again at every use (credentials.RACY_NS), which a steady password is not.
        full_count = count  # as many as 7: the start-up subtracted weighs 4x less than at count/4
        logins = {f"acct-{i:05d}@example.com": f"pw-bench-{i}" for i in range(full_count)}
        bed.dovecots["main"].add_users(logins)
        bed.passwords.update(logins)
        for i in range(full_count):
            d = secrets / "bench" / f"acct-{i:05d}-smtp"
            d.mkdir(parents=True, exist_ok=True)
            (d / "password").write_text(logins[f"acct-{i:05d}@example.com"])

        connect = _Ours(work, "connect", port, secrets, count, full=False)
        full = _Ours(work, "full", port, secrets, full_count, full=True)
        turns: list[dict[str, float]] = []
        bb_ok = ours_ready = full_ready = count
        with _blackbox(binary, work, ca_file) as (proc, bb_port):
            _blackbox_probes(bb_port, port, 50)  # warm-up
            for _ in range(rounds):
                cpu0 = _process_cpu(proc.pid)
                ok, bb_wall = _blackbox_probes(bb_port, port, count)
                bb_ms = (_process_cpu(proc.pid) - cpu0) / count * 1000
                ours_ms, ours_wall, ready = connect.run()
                full_ms, full_wall, ready_full = full.run()
                floor_out = subprocess.run(
                    [sys.executable, __file__, "floor", str(port), str(ca_file), str(count),
                     str(CONCURRENCY)], capture_output=True, text=True, check=True, env=env())
                floor_ms = float(floor_out.stdout.strip()) / count * 1000
                bb_ok, ours_ready, full_ready = (min(bb_ok, ok), min(ours_ready, ready),
                                                 min(full_ready, ready_full))
                turns.append({"bb": bb_ms, "ours": ours_ms, "full": full_ms, "floor": floor_ms,
                              "ratio": ours_ms / bb_ms, "full_ratio": full_ms / bb_ms,
                              "floor_ratio": ours_ms / floor_ms})
        # each row shows its median round (the lower middle one of an even count)
        bb_ms, ours_ms, ratio = _median_turn(turns, "ratio", "bb", "ours")
        full_bb, full_ms, full_ratio = _median_turn(turns, "full_ratio", "bb", "full")
        floor_ms, floor_ours, floor_ratio = _median_turn(turns, "floor_ratio", "floor", "ours")

    note = (f"{_spread([t['ratio'] for t in turns])}; blackbox {bb_ok}/{count} probe_success in "
            f"{bb_wall:.1f} s; ours {ours_ready}/{count} Ready in {ours_wall:.1f} s (start-up "
            "included); CPU from each prober's own process")
    return [
        Row(figure, f"{ours_ms:.2f} ms", f"blackbox {bb_ms:.2f} ms", fmt_ratio(ratio),
            target, ratio <= 1.0 and ours_ready == count and bb_ok == count, note),
        Row("7b the same conversation in bare asyncio (floor)", f"{floor_ours:.2f} ms",
            f"floor {floor_ms:.2f} ms", fmt_ratio(floor_ratio), "(information)", None,
            f"{_spread([t['floor_ratio'] for t in turns])}; one SSLContext, asyncio streams, "
            "in a process of its own"),
        Row(f"7c full probe (AUTH PLAIN + envelope check), {full_count} accounts",
            f"{full_ms:.2f} ms", f"blackbox {full_bb:.2f} ms", fmt_ratio(full_ratio),
            "<= 1.5x blackbox connect-only", full_ratio <= 1.5 and full_ready == full_count,
            f"{_spread([t['full_ratio'] for t in turns])}; {full_ready}/{full_count} Ready in "
            f"{full_wall:.1f} s; Dovecot's CPU not counted"),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        sys.exit(floor_main(sys.argv[2:]))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        from common import render_table

        print(render_table(prober_cpu(Path(tmp), int(sys.argv[1]) if len(sys.argv) > 1 else 2000,
                                      int(sys.argv[2]) if len(sys.argv) > 2 else 3)))
