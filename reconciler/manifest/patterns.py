"""JSON Schema `pattern` with the meaning the schema's readers give it.

ECMA-262 (JSON Schema) and RE2 (the Kubernetes API server reading the CRD) both let `$` match
only at the very end of the text. Python's `re` also lets it match before a final newline, so
`^[^\\r\\n]*$` would accept "Name\\n": a header injection, and `^a$|^b$` would accept
"smtp.example.com\\n" as a host. Every Python check of a schema pattern goes through
`compile_pattern`, which gives every `$` (outside a character class, not escaped) the
end-of-text meaning, wherever it stands in the pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any


def end_of_text(pattern: str) -> str:
    r"""The pattern with every `$` anchor written `\Z` (escapes and classes left alone)."""
    out: list[str] = []
    in_class = escaped = False
    for i, ch in enumerate(pattern):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            # "]" right after "[" or "[^" is a literal member, not the end of the class
            opening = pattern[i - 1] == "[" or pattern[i - 2:i] == "[^"
            in_class = not (ch == "]" and not opening)
        elif ch == "[":
            in_class = True
        elif ch == "$":
            out.append(r"\Z")
            continue
        out.append(ch)
    return "".join(out)


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern compiled for `search`, every `$` anchor meaning end of text."""
    return re.compile(end_of_text(pattern))


def pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's `pattern` keyword, with compile_pattern's end-of-text `$`."""
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"does not match {pattern!r}")
