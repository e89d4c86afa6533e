"""Shared pieces of the benchmarks: the result row, timing, and how to run our CLI.

The benchmarks run as `python bench/run.py`, so this folder is on sys.path and the repository root
is added by run.py; helpers import each other as top-level modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SCHEMA = REPO / "schemas" / "emailaccount.schema.json"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Row:
    """One line of the result table. `met` is None when the figure has no target (information)."""

    figure: str
    ours: str
    reference: str
    ratio: str
    target: str
    met: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "-"}[self.met]


# ru_maxrss of a direct child counts the memory of this (large, by now) bench process that the
# child shared between fork and exec. A small Python in between forks the CLI from its own small
# image and reports the CLI's own peak, so the figure does not depend on which benches ran first.
_MEASURE = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status) % 256)\n"
)


def measured(argv: Sequence[str], maxrss_file: Path) -> list[str]:
    """`argv` run under the small forking wrapper; the CLI's peak RSS (KiB) lands in maxrss_file."""
    return [sys.executable, "-c", _MEASURE, str(maxrss_file), *argv]


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int, *, children: bool = False) -> tuple[float, float]:
    """(user, system) CPU seconds of a running process, all its threads; with children, also
    those of the children it has waited for. Read from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    if children:
        user, system = user + int(fields[13]), system + int(fields[14])
    return user / _CLK_TCK, system / _CLK_TCK


def stop_child(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """End a child that serves on its stdin: close stdin, wait, kill if it lingers."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def unavailable(figure: str, target: str, why: str) -> Row:
    """A row for a benchmark that could not run here, with the reason."""
    return Row(figure, "n/a", "n/a", "n/a", target, None, f"not available: {why}")


def cli() -> list[str]:
    """How to start `email-reconciler`: the installed console script, else `python -m reconciler`."""
    script = VENV_BIN / "email-reconciler"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "reconciler"]


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: the repository importable, no cluster configured;
    `extra` is set on top."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    out.pop("KUBECONFIG", None)
    out.pop("KUBERNETES_SERVICE_HOST", None)
    out["PYTHONDONTWRITEBYTECODE"] = out.get("PYTHONDONTWRITEBYTECODE", "")
    out.update(extra or {})
    return out


def timed_run(argv: Sequence[str], *, cwd: Path | None = None, ok_codes: Sequence[int] = (0,),
              stdout: int | None = subprocess.DEVNULL, timeout: float = 600,
              extra_env: Mapping[str, str] | None = None
              ) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Run a command and return (wall seconds, the completed process); raise on an unexpected exit."""
    start = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd or REPO, env=env(extra_env), stdout=stdout,
                          stderr=subprocess.PIPE, timeout=timeout, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok_codes:
        err = proc.stderr.decode("utf-8", "replace")[-800:]
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err}")
    return elapsed, proc


def cpu_run(argv: Sequence[str], *, ok_codes: Sequence[int] = (0,), capture: bool = False,
            extra_env: Mapping[str, str] | None = None) -> tuple[float, float, bytes]:
    """Run a command; return (CPU seconds, wall seconds, stdout if captured).

    CPU is user + system of the child from `os.wait4`, which includes every descendant it waited
    for (the forked workers of `validate`), so a process tree is counted whole; a loaded machine
    stretches wall time but hardly this."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=REPO, env=env(extra_env), stdin=subprocess.DEVNULL,
                                stdout=out if capture else subprocess.DEVNULL, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode not in ok_codes:
            err.seek(0)
            text = err.read().decode("utf-8", "replace")[-800:]
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {text}")
        out.seek(0)
        return usage.ru_utime + usage.ru_stime, elapsed, out.read()


def which(name: str) -> str | None:
    """An executable from the venv first, then PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def render_table(rows: Sequence[Row]) -> str:
    """The result table as GitHub-flavoured Markdown (also readable on a terminal)."""
    header = ["figure", "ours", "reference", "ratio", "target", "result"]
    body = [[r.figure, r.ours, r.reference, r.ratio, r.target, r.verdict] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
              for line in body]
    notes = [f"- {r.figure}: {r.note}" for r in rows if r.note]
    return "\n".join(lines) + ("\n\nNotes:\n" + "\n".join(notes) if notes else "") + "\n"


def machine() -> str:
    """nproc, CPU model and Python version, for the README."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, "
            f"Python {sys.version.split()[0]} on {sys.platform}")
