"""Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) from printer columns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.kubeapi.model import JSON, ResourceType
from tests.kubeapi.selectors import jsonpath_first


def _age(timestamp: str | None) -> str:
    """A short human duration (``5s``, ``3m``, ``2d``) since an RFC 3339 timestamp."""
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size, below in (("s", 1, 120), ("m", 60, 180 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"



def table(rtype: ResourceType, items: list[JSON], rv: str, include: str) -> JSON:
    columns: list[JSON] = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "priority": 0,
            "description": "Name must be unique within a namespace.",
        }
    ]
    printer = list(rtype.printer_columns) or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    ]
    for column in printer:
        columns.append(
            {
                "name": column["name"],
                "type": column.get("type", "string"),
                "format": column.get("format", ""),
                "priority": column.get("priority", 0),
                "description": column.get("description", ""),
            }
        )
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in printer:
            value = jsonpath_first(obj, column["jsonPath"])
            if column.get("type") == "date" and value is not None:
                value = _age(str(value))
            cells.append(value)
        row: JSON = {"cells": cells}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns,
        "rows": rows,
    }
