"""The state store interface: where EmailAccount objects, their status and published Secrets live.

Two implementations: `local.LocalStore` (plain manifests under a folder, the default without a
cluster) and `kube.KubeStore` (the Kubernetes API). The store knows nothing of probes; it moves
dicts shaped like Kubernetes objects.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol

from reconciler.model import (
    FIELD_MANAGER,
    GROUP_VERSION,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    Event,
    SecretReader,
)

Key = tuple[str, str]  # (namespace, name)
#: One source's inventory: (namespace, name) -> the Secret name it published the account under.
Inventory = dict[Key, str]


class StateStore(Protocol):
    """What a reconcile run needs from the place status and Secrets live."""

    description: str

    def list_accounts(self) -> list[dict[str, Any]]:
        """Every EmailAccount object (metadata, spec, status), one read."""
        ...

    def apply_account(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update an EmailAccount from git; returns the stored object.

        `metadata.generation` is bumped only when `spec` changes; `status` is never touched here.
        """
        ...

    def write_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace the status of one EmailAccount (callers write only when it differs)."""
        ...

    def delete_account(self, namespace: str, name: str) -> None: ...

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Secret by name, ours or not (to detect conflicts), or None. An account reads
        only the Secrets it names: no run lists a namespace's Secrets per account."""
        ...

    def get_published_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret at an account's publish name, as `get_secret`, except that a store that
        watches the Secrets it publishes may answer None from its cache without a read; its
        `apply_secret` then creates the Secret, and raises SecretExists (having read it) when
        the name was taken after all."""
        ...

    def apply_secret(self, secret: Mapping[str, Any]) -> None:
        """Create or update a published Secret (callers write only when its data hash changed)."""
        ...

    def delete_secret(self, namespace: str, name: str) -> None: ...

    def record_event(self, event: Event) -> None: ...

    def read_inventories(self) -> dict[str, Inventory]:
        """Every source's inventory in this store's scope, by inventory name (one read)."""
        ...

    def write_inventory(self, name: str, entries: Mapping[Key, str]) -> None:
        """Record what source `name` applied (within this store's namespace scope)."""
        ...

    def secret_reader(self) -> SecretReader | None:
        """Where credentials come from in this store (cluster Secrets), or None (use --secrets-dir)."""
        ...


def account_object(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The EmailAccount object to store for a git manifest: spec, labels, annotations, our label."""
    meta = manifest.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
    out_meta: dict[str, Any] = {
        "name": meta["name"],
        "namespace": meta.get("namespace") or "default",
        "labels": labels,
    }
    if meta.get("annotations"):
        out_meta["annotations"] = dict(meta["annotations"])
    return {
        "apiVersion": GROUP_VERSION,
        "kind": KIND,
        "metadata": out_meta,
        "spec": copy.deepcopy(dict(manifest.get("spec") or {})),
    }


def is_ours(obj: Mapping[str, Any]) -> bool:
    """True when the object carries our managed-by label."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name")))


def owned_keys(obj: Mapping[str, Any], field: str,
               manager: str = FIELD_MANAGER) -> set[str] | None:
    """Label/annotation keys `manager` applied, from managedFields; None when unknown."""
    entries = (obj.get("metadata") or {}).get("managedFields")
    if not entries:
        return None
    owned: set[str] = set()
    for entry in entries:
        if entry.get("manager") != manager or entry.get("subresource"):
            continue
        fields = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get(f"f:{field}") or {}
        owned |= {k[2:] for k in fields if k.startswith("f:")}
    return owned
