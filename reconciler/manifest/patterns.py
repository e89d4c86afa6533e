"""JSON Schema `pattern` with the meaning the schema's readers give it.

ECMA-262 (JSON Schema) and RE2 (the Kubernetes API server reading the CRD) both let `$` match
only at the very end of the text. Python's `re` also lets it match before a final newline, so
`^[^\\r\\n]*$` would accept "Name\\n": a header injection. Every Python check of a schema pattern
goes through `compile_pattern`, which gives `$` the end-of-text meaning.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern compiled for `search`, a final unescaped `$` meaning end of text."""
    body = pattern
    if body.endswith("$"):
        backslashes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
        if backslashes % 2 == 0:  # not an escaped "\$"
            body = body[:-1] + r"\Z"
    return re.compile(body)


def pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's `pattern` keyword, with compile_pattern's end-of-text `$`."""
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"does not match {pattern!r}")
