"""Which namespaces the controller serves (issue 26 item 1): every one (the default), one, a fixed
list, or those a label selector on Namespace objects picks.

    (no flag)                   every namespace: cluster-wide informers
    --namespace NS              one: namespaced informers (a RoleBinding of the ClusterRole is enough)
    --namespaces a,b            exactly these: one set of namespaced informers per namespace
    --namespace-selector LABELS the Namespaces matching LABELS, followed as their labels change

How each narrowed mode is watched, and why (API load and memory):

- A fixed list gets one informer per kind and namespace, as controller-runtime's multi-namespace
  cache does: the API server sends only the served namespaces' objects (nothing else crosses the
  wire or is cached), and the ClusterRole may be bound with RoleBindings in those namespaces only.
  It costs one watch connection and thread per kind and namespace (four per namespace), right for
  the handful of namespaces a list names.
- A selector may pick hundreds of namespaces, and its set changes: one informer set per namespace
  would be four watches each, started and stopped as labels change. So the kinds are watched
  cluster-wide (four watches whatever the number of namespaces; Secrets and ConfigMaps
  label-selected as always) and each object is filtered on arrival by its namespace: an unserved
  namespace's objects are neither cached nor handled (memory grows with what is served). A
  Namespace watch selected by LABELS itself keeps the served set (the server sends only matching
  Namespaces, and a DELETED when one stops matching). A namespace that gains the labels makes the
  informers relist once (its objects were dropped on arrival; namespaces change rarely), so its
  accounts are served at once, well within one resync. One that loses them is dropped from the
  caches and its accounts forgotten: no reconcile, write or deletion of them afterwards (a
  reconcile already running finishes), their status and Secrets left as they are.

The tenancy rules hold in every mode: an account's references are read in its own namespace only
(run/refs.py, the store), and only opted-in Secrets and ConfigMaps are read.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

#: A namespace name: a DNS-1123 label (what the API server accepts).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: A label key: an optional DNS-1123 subdomain prefix and a name of up to 63 characters.
_KEY = r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
#: One requirement of a label selector: key, !key, key=v, key==v, key!=v, key in (..), notin.
_REQUIREMENT = re.compile(
    rf"\s*(?:!\s*{_KEY}|{_KEY}\s*(?:(?:==?|!=)\s*{_VALUE}"
    rf"|\s+(?:in|notin)\s*\(\s*{_VALUE}(?:\s*,\s*{_VALUE})*\s*\))?)\s*")


def parse_namespaces(values: Iterable[str], flag: str = "--namespaces") -> tuple[str, ...]:
    """The namespaces of `--namespaces` (repeatable, each comma-separated), in order, once each.

    Raises ValueError naming the first value that is not a namespace name."""
    out: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name or len(name) > 63 or not _NAMESPACE.fullmatch(name):
                raise ValueError(f"{flag}: {name!r} is not a namespace name (lower-case "
                                 "letters, digits and '-', at most 63)")
            if name not in out:
                out.append(name)
    return tuple(out)


def _requirements(selector: str) -> list[str]:
    """The selector split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return parts


def check_selector(selector: str) -> str:
    """The label selector, stripped, when Kubernetes would parse it; else ValueError (so a typo
    fails at start, not as an endless 400 from every LIST of Namespaces)."""
    text = selector.strip()
    bad = [r for r in _requirements(text) if not _REQUIREMENT.fullmatch(r)] if text else [""]
    if bad:
        raise ValueError(f"--namespace-selector: {bad[0].strip()!r} in {selector!r} is not a "
                         "label selector requirement (e.g. email.reconciler.io/served=true)")
    return text


@dataclass(frozen=True)
class NamespaceScope:
    """The namespaces to serve as the flags say: `fixed` names them (empty: see `selector`; both
    empty: every namespace)."""

    fixed: tuple[str, ...] = ()
    selector: str | None = None

    @classmethod
    def from_flags(cls, namespace: str | None = None, namespaces: Iterable[str] | None = None,
                   selector: str | None = None) -> NamespaceScope:
        """The scope of `--namespace`, `--namespaces` and `--namespace-selector` (at most one);
        ValueError for a conflict or a bad value."""
        given = [f for f, v in (("--namespace", namespace), ("--namespaces", namespaces),
                                ("--namespace-selector", selector)) if v]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} exclude each other: give one")
        if namespace:
            return cls(fixed=parse_namespaces([namespace], "--namespace"))
        if namespaces:
            return cls(fixed=parse_namespaces(namespaces))
        if selector:
            return cls(selector=check_selector(selector))
        return cls()

    @property
    def everywhere(self) -> bool:
        return not self.fixed and self.selector is None

    def describe(self) -> str:
        """For the start-up log line."""
        if self.selector is not None:
            return f"namespaces labelled {self.selector}"
        return ",".join(self.fixed) if self.fixed else "(all)"


class ServedSet:
    """The namespaces a selector serves right now; read by every informer thread on each event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: frozenset[str] = frozenset()

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._names  # one read of an immutable set: no lock needed

    def add(self, namespace: str) -> bool:
        """Serve `namespace`; False when it already was."""
        with self._lock:
            if namespace in self._names:
                return False
            self._names = self._names | {namespace}
            return True

    def discard(self, namespace: str) -> bool:
        """Stop serving `namespace`; False when it was not served."""
        with self._lock:
            if namespace not in self._names:
                return False
            self._names = self._names - {namespace}
            return True

    def names(self) -> frozenset[str]:
        return self._names
