"""`validate`: load manifests and render the result as text or JSON. Returns the exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from reconciler import model
from reconciler.errors import UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_encode_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def plural(count: int, word: str) -> str:
    """"1 file", "2 files", "0 errors": the count and the word it governs."""
    return f"{count} {word if count == 1 else word + 's'}"


def _diag_json(d: model.Diagnostic) -> dict[str, Any]:
    return {"file": d.file, "line": d.line, "column": d.column, "document": d.document,
            "pointer": d.pointer, "message": d.message}


def dumps_indented(report: dict[str, Any]) -> str:
    """json.dumps(report, indent=2), byte for byte, for a map of scalars and lists of maps of
    scalars (anything else goes to json.dumps). With an indent, json encodes in Python,
    item by item through generators: 3% of `validate` for 5,000 files (bench/README.md, issue 25).
    """
    try:
        return _render(report)
    except _NotScalar:  # e.g. --show-effective's nested maps
        return json.dumps(report, indent=2)


def _render(report: dict[str, Any]) -> str:
    if type(report) is not dict or not report:
        raise _NotScalar
    lines = ["{"]
    keys: dict[str, str] = {}  # the members' keys repeat in every item: each encoded once
    last = len(report) - 1
    for i, (key, value) in enumerate(report.items()):
        comma = "," if i < last else ""
        if type(value) is list:
            if not value:
                lines.append(f"  {_key(key)}: []{comma}")
                continue
            lines.append(f"  {_key(key)}: [")
            for j, item in enumerate(value):
                if type(item) is not dict or not item:
                    raise _NotScalar
                members = []
                for k, v in item.items():
                    text = keys.get(k) if type(k) is str else None
                    if text is None:
                        text = keys[k] = _key(k)
                    members.append(f"{text}: {_encode_str(v) if type(v) is str else _scalar(v)}")
                members_text = ",\n      ".join(members)
                lines.append(f"    {{\n      {members_text}\n    }}{',' if j < len(value) - 1 else ''}")
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {_key(key)}: {_scalar(value)}{comma}")
    lines.append("}")
    return "\n".join(lines)


class _NotScalar(Exception):
    pass


def _key(key: Any) -> str:
    if type(key) is not str:  # json.dumps writes other keys as strings
        raise _NotScalar
    return _encode_str(key)  # type: ignore[no-any-return]


def _scalar(value: Any) -> str:
    """A string, an int, a bool or None as json.dumps writes it."""
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    raise _NotScalar


def run_validate(paths: Sequence[str], *, output: str = "text", show_effective: bool = False,
                 out: IO[str] | None = None, jobs: int = 1) -> int:
    """Validate every manifest under paths; 0 valid, 1 invalid, 2 usage error.

    ``jobs``: processes for a large folder (0: one per CPU). One by default: forked workers buy
    wall time on an idle machine but cost CPU (the fork, the workers' own imports, pickling their
    results back: 18% more for 5,000 files, bench/README.md), and a busy machine (CI, a
    pre-commit hook beside an editor) has no idle CPU to give them.
    """
    from reconciler.manifest.load import gc_paused

    if jobs < 0:
        sys.stderr.write("email-reconciler validate: error: --jobs must be 0 or more\n")
        return EXIT_USAGE
    with gc_paused():
        return _run_validate(paths, output, show_effective, out or sys.stdout, jobs)


def _run_validate(paths: Sequence[str], output: str, show_effective: bool, out: IO[str],
                  jobs: int) -> int:
    import yaml

    from reconciler.manifest.effective import effective_manifest
    from reconciler.manifest.load import load_paths

    try:
        # the CLI process runs no other thread, so it may fork
        result = load_paths(paths, parallel=jobs != 1, workers=jobs or None)
    except UsageError as exc:
        sys.stderr.write(f"email-reconciler validate: error: {exc}\n")
        return EXIT_USAGE
    if result.files == 0:
        sys.stderr.write(f"email-reconciler validate: error: no manifest files (*.yaml, *.yml) "
                         f"under {', '.join(paths)}\n")
        return EXIT_USAGE
    errors = [d for d in result.diagnostics if d.severity == "error"]
    warnings = [d for d in result.diagnostics if d.severity == "warning"]
    notes = [d for d in result.diagnostics if d.severity == "note"]
    if output == "json":
        accounts = []
        for a in result.accounts:
            entry: dict[str, Any] = {
                "namespace": a.namespace, "name": a.name,
                "file": a.source.file if a.source else None,
                "document": a.source.document if a.source else None}
            if show_effective:
                entry["effective"] = effective_manifest(a)
            accounts.append(entry)
        out.write(dumps_indented({"valid": result.ok, "files": result.files, "accounts": accounts,
                                  "errors": [_diag_json(d) for d in errors],
                                  "warnings": [_diag_json(d) for d in warnings],
                                  "notes": [_diag_json(d) for d in notes]}))
        out.write("\n")
    else:
        for d in result.diagnostics:
            out.write(f"{d}\n")
        if show_effective:
            for a in result.accounts:
                out.write("---\n")
                out.write(yaml.safe_dump(effective_manifest(a), sort_keys=False))
        noted = f", {plural(len(notes), 'note')}" if notes else ""
        out.write(f"{plural(result.files, 'file')}, {plural(len(result.accounts), 'account')}, "
                  f"{plural(len(errors), 'error')}, {plural(len(warnings), 'warning')}{noted}\n")
    return EXIT_OK if result.ok else EXIT_FAIL
