"""Memoized CEL rule outcomes: a rule is evaluated once per distinct value of what it reads.

cel-python interprets the parsed tree on every evaluation (about 0.3 ms a rule), so a CRD with a
few dozen rules costs tens of milliseconds of CPU per write. CEL is pure (no clock, no I/O), so a
rule's outcome is a function of the values it reads. :func:`read_key` is that part of ``self``
(and ``oldSelf``): the expression is scanned for access chains ``self.a.b.c``; a chain inside
``has(...)`` reads only whether its last field is present, any other chain reads the whole subtree
at its end (a method call such as ``.size()`` ends the chain). When ``self`` is used in any other
way (``self.all(...)``, ``duration(self)``, ``self[...]``, ``self == ...``) the key is the whole value.
A chain named inside a string literal only makes the key more specific, never less, so the key is
always at least as fine as what the rule can see: equal keys give equal outcomes.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_VARIABLE = re.compile(r"(?<![\w.])(self|oldSelf)\b")
_FIELD = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE = ("*",)


@dataclass(frozen=True)
class Reads:
    """What one expression reads of one variable: chains (value, or presence when ``has``)."""

    whole: bool
    chains: tuple[tuple[tuple[str, ...], bool], ...]  # (path, presence only)


@lru_cache(maxsize=1024)
def reads(expression: str, variable: str) -> Reads:
    """The access chains of ``variable`` (``self`` or ``oldSelf``) in ``expression``."""
    chains: list[tuple[tuple[str, ...], bool]] = []
    for match in _VARIABLE.finditer(expression):
        if match.group(1) != variable:
            continue
        path: list[str] = []
        end = match.end()
        while (field := _FIELD.match(expression, end)) is not None:
            after = field.end()
            if expression[after:after + 1] == "(":
                break  # a method call on the value read so far
            path.append(field.group(1))
            end = after
        if not path:
            return Reads(True, ())  # self used as a whole value (macro, function argument, comparison)
        if expression[end:end + 1] == "[":
            pass  # an index into the subtree at the end of the chain: the subtree is in the key
        presence = expression[:match.start()].rstrip().endswith("has(") and expression[end:end + 1] == ")"
        chains.append((tuple(path), presence))
    return Reads(False, tuple(sorted(set(chains))))


def read_key(expression: str, variable: str, value: Any) -> str:
    """A string equal for two values exactly when what the expression reads of them is equal."""
    found = reads(expression, variable)
    if found.whole:
        return _dump(value)
    parts = []
    for path, presence in found.chains:
        current, state = value, "v"
        for index, key in enumerate(path):
            if not isinstance(current, dict):
                current, state = type(current).__name__, f"not-a-map@{index}"
                break
            if key not in current:
                current, state = None, f"absent@{index}"
                break
            current = current[key]
        if presence and state == "v":
            current, state = None, "present"
        parts.append([list(path), state, current])
    return _dump(parts)


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


class OutcomeCache:
    """A bounded LRU map of (expression, key of self, key of oldSelf) to a rule's outcome."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._map: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, str]) -> Any:
        found = self._map.get(key, _MISS)
        if found is _MISS:
            self.misses += 1
        else:
            self.hits += 1
            self._map.move_to_end(key)
        return found

    def put(self, key: tuple[str, str, str], outcome: Any) -> None:
        self._map[key] = outcome
        if len(self._map) > self.size:
            self._map.popitem(last=False)


_MISS = object()
MISS = _MISS
