"""What each account reads, and who reads each Secret or ConfigMap: the controller's reverse index.

An account names Secrets (`...SecretRef`, `secretRef`) and ConfigMaps (`configMapRef`) of its own
namespace. When one of them changes, the accounts that read it are probed again; `RefIndex` answers
"who reads namespace/name" from a map kept current as accounts come and go, so a Secret event costs
the same at 10 accounts as at 100,000 (Flux's reverse-reference indexes; issue 26 item 4), where a
scan of every account did not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)


def _ref_names(spec: Any, is_ref: Callable[[str], bool]) -> Iterator[str]:
    """Names of the objects a spec references through keys for which `is_ref(key)` holds."""
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if is_ref(key) and isinstance(value, Mapping):
                if value.get("name"):
                    yield str(value["name"])
            else:
                yield from _ref_names(value, is_ref)
    elif isinstance(spec, list):
        for item in spec:
            yield from _ref_names(item, is_ref)


def secret_names(spec: Any) -> set[str]:
    """Names of the Secrets a spec references (any `...SecretRef`/`secretRef` with a name)."""
    return set(_ref_names(spec, lambda key: key.endswith("SecretRef") or key == "secretRef"))


def configmap_names(spec: Any) -> set[str]:
    """Names of the ConfigMaps a spec references (any `configMapRef` with a name)."""
    return set(_ref_names(spec, lambda key: key == "configMapRef"))


#: One member, or a set of several: most referenced objects have a single reader and most
#: accounts read a single name, and a set of one costs 216 bytes where the member alone costs
#: nothing more (issue 26: memory per account).
Few = Any


def few_with(few: Few, item: Any) -> Few:
    """`few` (None, one member or a set of several) with `item` added."""
    if few is None or few == item:
        return item
    if isinstance(few, set):
        few.add(item)
        return few
    return {few, item}


def few_without(few: Few, item: Any) -> Few:
    """`few` with `item` removed: None when nothing is left, the member when one is."""
    if not isinstance(few, set):
        return None if few == item else few
    few.discard(item)
    if len(few) > 1:
        return few
    return next(iter(few), None)


def few_members(few: Few) -> list[Any]:
    """The members of `few`, as a list."""
    if few is None:
        return []
    return list(few) if isinstance(few, set) else [few]


def _packed(names: frozenset[str]) -> str | tuple[str, ...]:
    """The names an account reads as stored: one name alone, several as a sorted tuple."""
    if len(names) == 1:
        return next(iter(names))
    return tuple(sorted(names))


class RefIndex:
    """account -> names it reads, and (namespace, name) -> accounts reading it; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[Key, str | tuple[str, ...]] = {}  # (_packed)
        self._readers: dict[Key, Few] = {}  # one account key, or a set of several

    def set(self, account: Key, names: Iterable[str]) -> None:
        """Record what `account` reads now (replacing what it read before)."""
        new = frozenset(names)
        ns = account[0]
        with self._lock:
            old = self._unpacked(self._reads.get(account))
            if new == old:
                return
            for name in old - new:
                readers = few_without(self._readers.get((ns, name)), account)
                if readers is None:
                    self._readers.pop((ns, name), None)
                else:
                    self._readers[(ns, name)] = readers
            for name in new - old:
                self._readers[(ns, name)] = few_with(self._readers.get((ns, name)), account)
            if new:
                self._reads[account] = _packed(new)
            else:
                self._reads.pop(account, None)

    @staticmethod
    def _unpacked(names: str | tuple[str, ...] | None) -> frozenset[str]:
        if names is None:
            return frozenset()
        return frozenset((names,)) if isinstance(names, str) else frozenset(names)

    def drop(self, account: Key) -> None:
        """The account is gone."""
        self.set(account, ())

    def readers(self, namespace: str, name: str) -> list[Key]:
        """The accounts that read `namespace/name`, sorted."""
        with self._lock:
            return sorted(few_members(self._readers.get((namespace, name))))

    def reads(self, account: Key) -> frozenset[str]:
        """The names `account` reads."""
        with self._lock:
            return self._unpacked(self._reads.get(account))
