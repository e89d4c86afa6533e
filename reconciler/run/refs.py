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


class RefIndex:
    """account -> names it reads, and (namespace, name) -> accounts reading it; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[Key, frozenset[str]] = {}
        self._readers: dict[Key, set[Key]] = {}

    def set(self, account: Key, names: Iterable[str]) -> None:
        """Record what `account` reads now (replacing what it read before)."""
        new = frozenset(names)
        ns = account[0]
        with self._lock:
            old = self._reads.get(account, frozenset())
            if new == old:
                return
            for name in old - new:
                readers = self._readers.get((ns, name))
                if readers is not None:
                    readers.discard(account)
                    if not readers:
                        del self._readers[(ns, name)]
            for name in new - old:
                self._readers.setdefault((ns, name), set()).add(account)
            if new:
                self._reads[account] = new
            else:
                self._reads.pop(account, None)

    def drop(self, account: Key) -> None:
        """The account is gone."""
        self.set(account, ())

    def readers(self, namespace: str, name: str) -> list[Key]:
        """The accounts that read `namespace/name`, sorted."""
        with self._lock:
            return sorted(self._readers.get((namespace, name), ()))

    def reads(self, account: Key) -> frozenset[str]:
        """The names `account` reads."""
        with self._lock:
            return self._reads.get(account, frozenset())
