"""Benchmark 1 (validation throughput) and 5 (start-up)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from common import SCHEMA, Row, cli, fmt_ratio, fmt_s, timed_run, which
from generate import validation_corpus

# Parse-only floor: every file through PyYAML's C loader, in one process.
FLOOR = """
import sys, yaml
from pathlib import Path
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    list(yaml.load_all(path.read_bytes(), Loader=loader))
"""


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


def validation_throughput(work: Path, count: int, repeat: int = 1) -> list[Row]:
    """Ours (`validate DIR --output json`) against check-jsonschema and the parse-only floor."""
    folder = work / "validate"
    invalid = validation_corpus(folder, count)
    files = sorted(str(p) for p in folder.glob("*.yaml"))

    def ours_once() -> float:
        elapsed, proc = timed_run([*cli(), "validate", str(folder), "--output", "json"],
                                  ok_codes=(1,), stdout=-1)
        report = json.loads(proc.stdout)
        bad_docs = {(e["file"], e["document"]) for e in report["errors"]}
        if len(bad_docs) != invalid or report["files"] != count:
            raise RuntimeError(f"validate found {len(bad_docs)} invalid documents in "
                               f"{report['files']} files; generated {invalid} in {count}")
        return elapsed

    ours = min(ours_once() for _ in range(repeat))
    floor = min(timed_run([sys.executable, "-c", FLOOR, str(folder)])[0] for _ in range(repeat))
    rows = []
    per_file = f"{count / ours:,.0f} files/s"
    tool = _check_jsonschema()
    if tool:
        ref = min(timed_run([tool, "--schemafile", str(SCHEMA), *files], ok_codes=(1,))[0]
                  for _ in range(repeat))
        rows.append(Row(f"1a validate {count} files vs check-jsonschema", fmt_s(ours), fmt_s(ref),
                        fmt_ratio(ref / ours) + " faster", ">= 3x faster", ref / ours >= 3,
                        f"ours {per_file}; {invalid} invalid documents, all found"))
    else:
        rows.append(Row(f"1a validate {count} files vs check-jsonschema", fmt_s(ours), "n/a", "n/a",
                        ">= 3x faster", None, "check-jsonschema not installable here"))
    rows.append(Row(f"1b validate {count} files vs parse-only floor", fmt_s(ours), fmt_s(floor),
                    fmt_ratio(ours / floor), "<= 2x the floor", ours / floor <= 2,
                    "floor: PyYAML CSafeLoader over the same files in one process"))
    return rows


def startup(work: Path, runs: int) -> list[Row]:
    """Cold `validate ONE_FILE` against `python -c "import yaml, jsonschema"`, best of runs."""
    folder = work / "startup"
    validation_corpus(folder, 1)
    one = str(next(folder.glob("*.yaml")))
    ours_times = [timed_run([*cli(), "validate", one])[0] for _ in range(runs)]
    ref_times = [timed_run([sys.executable, "-c", "import yaml, jsonschema"])[0]
                 for _ in range(runs)]
    ours, ref = min(ours_times), min(ref_times)
    return [
        Row("5a start-up: validate ONE_FILE", fmt_s(ours), "-", "-", "< 0.350 s", ours < 0.35,
            f"best of {runs}; median {fmt_s(statistics.median(ours_times))}"),
        Row("5b start-up vs import yaml, jsonschema", fmt_s(ours), fmt_s(ref), fmt_ratio(ours / ref),
            "<= 1.5x", ours / ref <= 1.5,
            f"best of {runs}; reference median {fmt_s(statistics.median(ref_times))}"),
    ]
