"""What a run may prune: one inventory per source, as Flux keeps one per Kustomization.

An inventory is what one source (the paths a reconcile run was given, or `--inventory NAME`)
applied: `{(namespace, name): secretName}`. A run prunes an account only when its own inventory
lists it, this run no longer has it, and no other inventory lists it; reconciling one file or
one folder therefore never prunes what another source applied. A source without an inventory
yet (its first run, or the first run after an upgrade) prunes nothing and records what it
applied: that is how it adopts its accounts.

Deletion acts only on a Secret whose owner label names the pruned account and whose name the
inventory recorded for it: a Secret of another account is never deleted or stripped.
Pure functions, table-tested in tests/test_inventory.py.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import UsageError
from reconciler.model import ACCOUNT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from reconciler.store.base import Inventory, Key

#: A DNS-1123 label: the inventory name is a label value and part of a ConfigMap's name.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = 63
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_name(name: str) -> str:
    """`--inventory NAME` as given, or UsageError: a DNS-1123 label of at most 63 characters."""
    if len(name) <= MAX_NAME and _LABEL.fullmatch(name):
        return name
    raise UsageError(f"--inventory {name!r}: must be at most {MAX_NAME} lower-case letters, "
                     "digits and '-', starting and ending with a letter or digit")


def default_name(paths: Sequence[str], cwd: str | None = None) -> str:
    """The inventory of a run given `paths`: a readable slug (the end of the paths, where they
    differ) and a hash of the normalised paths.

    `accounts`, `./accounts/` and `$PWD/accounts` are one source; symlinks are not resolved
    (git-sync's `/git/current` points at a new folder on every commit, the source stays the
    same). The order of the paths does not matter.
    """
    here = os.path.abspath(cwd or os.getcwd())
    norm = set()
    for path in paths:
        full = os.path.normpath(os.path.join(here, path))
        inside = full == here or full.startswith(here.rstrip(os.sep) + os.sep)
        norm.add(os.path.relpath(full, here) if inside else full)
    joined = "\n".join(sorted(norm))
    digest = hashlib.sha256(joined.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(sorted(norm)).lower()).strip("-")
    slug = slug[-(MAX_NAME - len(digest) - 1):].lstrip("-") or "paths"  # the specific end
    return f"{slug}-{digest}"


def valid_identity(namespace: str | None, name: str | None) -> bool:
    """Whether the API server could hold an object of this namespace and name (`Alpha`,
    `"alpha "` and namespace `Team` it could not: such a document names no live account)."""
    if not isinstance(name, str) or not (len(name) <= 253 and _SUBDOMAIN.fullmatch(name)):
        return False
    return namespace is None or (isinstance(namespace, str) and len(namespace) <= MAX_NAME
                                 and bool(_LABEL.fullmatch(namespace)))


def secret_owned_by(secret: Mapping[str, Any] | None, account: str) -> bool:
    """Whether the Secret is ours and its owner label names `account` (else never delete it)."""
    return secret_owner(secret) == account


def secret_owner(secret: Mapping[str, Any] | None) -> str | None:
    """The account a Secret of ours is published for (its owner label), or None."""
    labels = ((secret or {}).get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, Mapping) or labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
        return None
    owner = labels.get(ACCOUNT_LABEL)
    return owner if isinstance(owner, str) and owner else None


@dataclass
class PrunePlan:
    """What to prune (with the Secret the inventory recorded), and what to keep and why."""

    prune: list[tuple[Key, str]] = field(default_factory=list)
    #: (key, the other inventory that lists it)
    kept: list[tuple[Key, str]] = field(default_factory=list)


def plan_prune(*, mine: Inventory | None, present: Iterable[Key],
               others: Mapping[str, Inventory], stored: Mapping[Key, Mapping[str, Any]],
               is_ours: Callable[[Mapping[str, Any]], bool]) -> PrunePlan:
    """Accounts this source applied before (`mine`), no longer has (`present`), still stored
    with our label, and listed by no other inventory. No inventory yet: nothing."""
    plan = PrunePlan()
    here = set(present)
    for key, secret in sorted((mine or {}).items()):
        obj = stored.get(key)
        if key in here or obj is None or not is_ours(obj):
            continue
        also = sorted(n for n, inv in others.items() if key in inv)
        if also:
            plan.kept.append((key, also[0]))
        else:
            plan.prune.append((key, secret))
    return plan


def next_inventory(*, mine: Inventory | None, applied: Mapping[Key, str],
                   still_in_git: Iterable[Key], unpruned: Iterable[Key],
                   keep_all: bool) -> Inventory:
    """The inventory to record after the run.

    `applied`: accounts this run applied (with their Secret names); `still_in_git`: documents
    this run could not apply (invalid) but that still name the account: their old entries stay;
    `unpruned`: accounts due for pruning whose prune failed (the next run tries again);
    `keep_all`: prune was skipped (a broken file, --no-prune), so nothing leaves the inventory.
    """
    old = dict(mine or {})
    out: Inventory = {k: old[k] for k in (*still_in_git, *unpruned) if k in old}
    if keep_all:
        out.update(old)
    out.update(applied)
    return out
