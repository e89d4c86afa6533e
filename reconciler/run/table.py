"""The one table of accounts that `get`, `reconcile`, `probe` and the demo print.

Its columns are the CRD's additionalPrinterColumns (`reconciler.manifest.crd.PRINTER_COLUMNS`),
so `email-reconciler get` and `kubectl get emailaccounts` show the same thing; `-o wide` adds the
columns of priority 1 (e-mail, host, when the server certificate expires, the Ready message).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from reconciler.manifest.crd import PRINTER_COLUMNS

_CONDITION = re.compile(r'^\.status\.conditions\[\?\(@\.type=="(\w+)"\)\]\.(\w+)$')
#: A message longer than this is cut in the table (`describe` shows it whole).
MESSAGE_WIDTH = 100


def _path(json_path: str) -> str:
    """The CRD's jsonPath in the simple form _lookup reads: a.b.c, or condition:Type.field."""
    m = _CONDITION.match(json_path)
    return f"condition:{m.group(1)}.{m.group(2)}" if m else json_path.lstrip(".")


# (header, path, wide-only)
COLUMNS: tuple[tuple[str, str, bool], ...] = tuple(
    (c["name"].upper(), _path(c["jsonPath"]), bool(c.get("priority"))) for c in PRINTER_COLUMNS)


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
    """kubectl's short age: 45s, 12m, 5h, 3d; "-" when the object is not stored."""
    if not timestamp:
        return "-"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    secs = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "d" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def short(text: str, limit: int = MESSAGE_WIDTH) -> str:
    """One line of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table_object(namespace: str, name: str, status: Mapping[str, Any], *,
                 provider: str | None = None, send_using: str | None = None,
                 created: str | None = None) -> dict[str, Any]:
    """An object shaped as the store keeps it, for what `probe` and `reconcile` know of one."""
    spec = {k: v for k, v in (("provider", provider), ("sendUsing", send_using)) if v}
    meta = {"namespace": namespace, "name": name}
    if created:
        meta["creationTimestamp"] = created
    return {"metadata": meta, "spec": spec, "status": dict(status)}


def rows(objects: Sequence[Mapping[str, Any]], *, wide: bool, now: datetime,
         sort: bool = True) -> list[list[str]]:
    """The header and one row per object (sorted by namespace and name unless `sort` is False)."""
    header = ["NAMESPACE", "NAME"] + [h for h, _, w in COLUMNS if wide or not w]
    out = [header]
    ordered = sorted(objects, key=lambda o: ((o.get("metadata") or {}).get("namespace", ""),
                                             (o.get("metadata") or {}).get("name", ""))) \
        if sort else objects
    for obj in ordered:
        meta = obj.get("metadata") or {}
        row = [str(meta.get("namespace") or "default"), str(meta.get("name"))]
        for header_name, path, w in COLUMNS:
            if w and not wide:
                continue
            value = _lookup(obj, path)
            if header_name == "VIA" and value is None:
                spec = obj.get("spec") or {}
                value = ("Graph" if spec.get("sendUsing") == "MicrosoftGraph"
                         else "SMTP" if spec else None)
            if header_name == "AGE":
                row.append(age(value, now))
            elif header_name == "MESSAGE":
                row.append(short(str(value or "")) or "<none>")
            else:
                row.append("<none>" if value is None else str(value))
        out.append(row)
    return out


def format_table(table: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in table) + "\n"
