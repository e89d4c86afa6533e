"""manifest: git YAML -> validated, effective accounts (no I/O but reading files).

The JSON schema ships inside the package (``reconciler/schema/``) so that an installed,
non-editable CLI finds it; ``schemas/emailaccount.schema.json`` at the top of the repository is
the canonical copy and a test keeps the two identical.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_FILENAME = "emailaccount.schema.json"


def schema_path() -> Path:
    """Path of the EmailAccount JSON schema shipped with the package."""
    return Path(__file__).resolve().parent.parent / "schema" / SCHEMA_FILENAME


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The EmailAccount JSON schema (parsed once per process)."""
    with schema_path().open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema
