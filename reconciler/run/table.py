"""The `kubectl get emailaccounts` table, from stored objects (printer columns of DESIGN §5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# (header, path, wide-only). Paths are the CRD's additionalPrinterColumns in a simple form.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("PROVIDER", "spec.provider", False),
    ("VIA", "status.via", False),
    ("PROTOCOL", "status.protocol", False),
    ("TLS", "status.tlsVersion", False),
    ("READY", "condition:Ready.status", False),
    ("REASON", "condition:Ready.reason", False),
    ("AGE", "metadata.creationTimestamp", False),
    ("EMAIL", "status.sender", True),
    ("HOST", "status.host", True),
    ("CERT-DAYS", "status.certificate.daysRemaining", True),
    ("SECRET", "status.secretName", True),
)


def _lookup(obj: Mapping[str, Any], path: str) -> Any:
    if path.startswith("condition:"):
        ctype, _, attr = path[len("condition:"):].partition(".")
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == ctype:
                return c.get(attr)
        return None
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def age(timestamp: str | None, now: datetime) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    secs = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "d" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def rows(objects: Sequence[Mapping[str, Any]], *, wide: bool, now: datetime) -> list[list[str]]:
    header = ["NAMESPACE", "NAME"] + [h for h, _, w in COLUMNS if wide or not w]
    out = [header]
    for obj in sorted(objects, key=lambda o: ((o.get("metadata") or {}).get("namespace", ""),
                                               (o.get("metadata") or {}).get("name", ""))):
        meta = obj.get("metadata") or {}
        row = [str(meta.get("namespace") or "default"), str(meta.get("name"))]
        for header_name, path, w in COLUMNS:
            if w and not wide:
                continue
            value = _lookup(obj, path)
            if header_name == "VIA" and value is None:
                value = "Graph" if (obj.get("spec") or {}).get("sendUsing") == "MicrosoftGraph" \
                    else "SMTP"
            if header_name == "AGE":
                row.append(age(value, now))
            else:
                row.append("<none>" if value is None else str(value))
        out.append(row)
    return out


def format_table(table: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in table) + "\n"
