"""Benchmark 1 (validation throughput) and 5 (start-up)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from common import SCHEMA, Row, cli, cpu_run, fmt_ratio, fmt_s, timed_run, which
from generate import validation_corpus

# Parse-only floor: every file through PyYAML's C loader, in one process.
FLOOR = """
import sys, yaml
from pathlib import Path
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    list(yaml.load_all(path.read_bytes(), Loader=loader))
"""


def _bytecode(work: Path) -> dict[str, str]:
    """Children load compiled bytecode, as an installed package does (pip and the Dockerfile's
    compileall write it), from a cache of this run: each command's first run writes it there.

    Without it, where PYTHONDONTWRITEBYTECODE is set (this machine), every run of ours compiled
    its ~45 modules from source (about 200 M of its 735 M instructions for `validate ONE_FILE`,
    callgrind), while the references loaded site-packages' bytecode."""
    return {"PYTHONPYCACHEPREFIX": str(work / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}


def _check_jsonschema() -> str | None:
    """The check-jsonschema executable, installed into this venv from PyPI when missing."""
    found = which("check-jsonschema")
    if found:
        return found
    print("installing check-jsonschema (the reference for benchmark 1) ...", file=sys.stderr)
    try:
        timed_run([sys.executable, "-m", "pip", "install", "-q", "check-jsonschema"], timeout=300)
    except Exception as exc:  # noqa: BLE001 - no registry here: report, do not fail
        print(f"  could not install check-jsonschema: {exc}", file=sys.stderr)
        return None
    return which("check-jsonschema")


def _spread(values: list[float], scale: float = 1.0, unit: str = "s") -> str:
    """'median (min-max)' of values times scale."""
    med = statistics.median(values) * scale
    return f"{med:.3f} {unit} ({min(values) * scale:.3f}-{max(values) * scale:.3f})"


def validation_throughput(work: Path, count: int, repeat: int = 1) -> list[Row]:
    """Ours (`validate DIR --output json`) against check-jsonschema and the parse-only floor.

    Judged on CPU (user + system of each command's whole process tree, `os.wait4`), the three
    commands alternated round by round, medians of the rounds: on a shared, loaded machine wall
    time says more about the neighbours than about the program, and `validate --jobs 0` would
    spread a large folder over forked workers whose CPU is counted too (one process is its
    default). Wall medians are reported for information."""
    folder = work / "validate"
    invalid = validation_corpus(folder, count)
    files = sorted(str(p) for p in folder.glob("*.yaml"))
    tool = _check_jsonschema()
    bytecode = _bytecode(work)

    def ours_once() -> tuple[float, float]:
        cpu, wall, out = cpu_run([*cli(), "validate", str(folder), "--output", "json"],
                                 ok_codes=(1,), capture=True, extra_env=bytecode)
        report = json.loads(out)
        bad_docs = {(e["file"], e["document"]) for e in report["errors"]}
        if len(bad_docs) != invalid or report["files"] != count:
            raise RuntimeError(f"validate found {len(bad_docs)} invalid documents in "
                               f"{report['files']} files; generated {invalid} in {count}")
        return cpu, wall

    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "floor": [], "ref": []}
    for round_ in range(max(3, repeat) + 1):  # alternated, so load hits all three alike
        timed = {"ours": ours_once(),
                 "floor": cpu_run([sys.executable, "-c", FLOOR, str(folder)],
                                  extra_env=bytecode)[:2]}
        if tool:
            timed["ref"] = cpu_run([tool, "--schemafile", str(SCHEMA), *files], ok_codes=(1,),
                                   extra_env=bytecode)[:2]
        for name, figures in timed.items():
            if round_:  # the first round writes the bytecode
                runs[name].append(figures)
    cpu = {k: [c for c, _ in v] for k, v in runs.items()}
    wall = {k: [w for _, w in v] for k, v in runs.items()}
    ours, floor = statistics.median(cpu["ours"]), statistics.median(cpu["floor"])
    rounds = len(cpu["ours"])
    per_file = f"ours {_spread(cpu['ours'], 1000 / count, 'ms')} CPU a file"
    rows = []
    if tool:
        ref = statistics.median(cpu["ref"])
        ratios = [r / o for r, o in zip(cpu["ref"], cpu["ours"], strict=True)]
        rows.append(Row(f"1a validate {count} files vs check-jsonschema, CPU", fmt_s(ours),
                        fmt_s(ref), fmt_ratio(ref / ours) + " faster", ">= 10x faster",
                        ref / ours >= 10,
                        f"medians of {rounds} alternated rounds, per round "
                        f"{min(ratios):.2f}-{max(ratios):.2f}x; {per_file}; check-jsonschema "
                        f"{_spread(cpu['ref'])}; {invalid} invalid documents, all found"))
        rows.append(Row("1a' the same, wall", fmt_s(statistics.median(wall["ours"])),
                        fmt_s(statistics.median(wall["ref"])),
                        fmt_ratio(statistics.median(wall["ref"]) / statistics.median(wall["ours"]))
                        + " faster", "(information)", None,
                        "wall time, at the machine's load at the time"))
    else:
        rows.append(Row(f"1a validate {count} files vs check-jsonschema, CPU", fmt_s(ours), "n/a",
                        "n/a", ">= 10x faster", None, "check-jsonschema not installable here"))
    ratios = [o / f for o, f in zip(cpu["ours"], cpu["floor"], strict=True)]
    rows.append(Row(f"1b validate {count} files vs parse-only floor, CPU", fmt_s(ours),
                    fmt_s(floor), fmt_ratio(ours / floor), "<= 1.5x the floor",
                    ours / floor <= 1.5,
                    f"floor: PyYAML CSafeLoader reading and loading every file in one process "
                    f"(start-up included, as ours); {_spread(cpu['floor'], 1000 / count, 'ms')} "
                    f"CPU a file; per round {min(ratios):.2f}-{max(ratios):.2f}x"))
    rows.append(Row("1b' the same, wall", fmt_s(statistics.median(wall["ours"])),
                    fmt_s(statistics.median(wall["floor"])),
                    fmt_ratio(statistics.median(wall["ours"]) / statistics.median(wall["floor"])),
                    "(information)", None, "ours in one process (its default; --jobs 0 forks a worker per CPU)"))
    return rows


def startup(work: Path, runs: int) -> list[Row]:
    """Cold `validate ONE_FILE` against `python -c "import yaml, jsonschema"`, best of runs, both
    with bytecode (`_bytecode`); ours from source for information."""
    folder = work / "startup"
    validation_corpus(folder, 1)
    one = str(next(folder.glob("*.yaml")))
    bytecode = _bytecode(work)
    ours_argv, ref_argv = [*cli(), "validate", one], [sys.executable, "-c", "import yaml, jsonschema"]
    timed_run(ours_argv, extra_env=bytecode)  # writes the bytecode
    timed_run(ref_argv, extra_env=bytecode)
    ours_times, ref_times, source_times = [], [], []
    for _ in range(runs):  # alternated
        ours_times.append(timed_run(ours_argv, extra_env=bytecode)[0])
        ref_times.append(timed_run(ref_argv, extra_env=bytecode)[0])
        source_times.append(timed_run(ours_argv)[0])
    ours, ref = min(ours_times), min(ref_times)
    return [
        Row("5a start-up: validate ONE_FILE", fmt_s(ours), "-", "-", "< 0.350 s", ours < 0.35,
            f"best of {runs}; median {fmt_s(statistics.median(ours_times))}"),
        Row("5b start-up vs import yaml, jsonschema", fmt_s(ours), fmt_s(ref), fmt_ratio(ours / ref),
            "<= 1.5x", ours / ref <= 1.5,
            f"best of {runs}; reference median {fmt_s(statistics.median(ref_times))}; both "
            "with bytecode, as installed"),
        Row("5b' the same, ours compiled from source", fmt_s(min(source_times)), fmt_s(ref),
            fmt_ratio(min(source_times) / ref), "(information)", None,
            "the environment's PYTHONDONTWRITEBYTECODE, no bytecode of ours (an editable "
            "checkout); the reference still loads its bytecode"),
    ]
