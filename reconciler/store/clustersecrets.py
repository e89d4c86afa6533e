"""Credentials from the cluster: `model.SecretReader` over the Kubernetes store's reads.

A password, key or truststore an account names is a key of a Secret or ConfigMap in its
namespace. `ClusterSecretReader` reads it through the store's per-namespace LISTs (one per kind,
namespace and run, shared with the store's own reads), says what the opt-in check needs to know of
the object, and versions a value by the object's uid and resourceVersion, never by a digest of it.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from reconciler.errors import SecretNotFound
from reconciler.model import KeyRef
from reconciler.policy import SecretMeta

if TYPE_CHECKING:
    from reconciler.store.kube import KubeStore


class ClusterSecretReader:
    """`model.SecretReader` over the Kubernetes store's per-namespace Secret/ConfigMap LISTs."""

    def __init__(self, store: KubeStore) -> None:
        self.store = store

    def _object(self, namespace: str, ref: KeyRef) -> dict[str, Any]:
        if ref.kind == "ConfigMap":
            obj = self.store.get_configmap(namespace, ref.name)
        else:
            obj = self.store.get_secret(namespace, ref.name)
        if obj is None:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)
        return obj

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """Labels, annotations and type: what the opt-in check (reconciler.policy) reads."""
        obj = self._object(namespace, ref)
        meta = obj.get("metadata") or {}
        return SecretMeta(labels=dict(meta.get("labels") or {}),
                          annotations=dict(meta.get("annotations") or {}),
                          type=str(obj.get("type") or ""))

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        obj = self._object(namespace, ref)
        data = obj.get("data") or {}
        if ref.kind == "ConfigMap" and ref.key in data:
            return str(data[ref.key]).encode("utf-8")
        encoded = data.get(ref.key) if ref.kind != "ConfigMap" else (
            (obj.get("binaryData") or {}).get(ref.key))
        if encoded is None:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key")
        try:
            return base64.b64decode(encoded, validate=True)
        except (ValueError, TypeError) as exc:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key") from exc

    def version(self, namespace: str, ref: KeyRef) -> str:
        """The object's uid and resourceVersion: changes with the value, derived from nothing
        in it (status must not leak a digest of a credential, DESIGN §8)."""
        self.read(namespace, ref)  # the key must exist
        meta = self._object(namespace, ref).get("metadata") or {}
        return f"{meta.get('uid') or '-'}/{meta.get('resourceVersion') or '-'}"
