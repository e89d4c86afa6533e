"""Secret readers for local runs: a directory laid out like mounted Secrets, or an in-memory map.

Both implement `reconciler.model.SecretReader`. The directory layout is
`ROOT/<namespace>/<secret-or-configmap-name>/<key>`, the same shape kubelet mounts, so
`--secrets-dir` can point at real mounted volumes. (The cluster reader lives with the store.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from reconciler.errors import SecretNotFound
from reconciler.model import KeyRef
from reconciler.secretrefs import secret_version

# DNS-1123 names (namespaces, Secrets, ConfigMaps) and Secret data keys ([-._a-zA-Z0-9]+).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def _check_names(namespace: str, ref: KeyRef) -> None:
    """Refuse names that could leave the secrets directory (.., /, absolute paths)."""
    ok = (bool(_NAME.match(namespace)) and bool(_NAME.match(ref.name))
          and bool(_KEY.match(ref.key)) and ref.key not in (".", "..")
          and ".." not in ref.name and ".." not in namespace)
    if not ok:
        raise SecretNotFound(namespace, ref.name, ref.key, ref.kind,
                             detail="key" if _NAME.match(ref.name) else "")


class DirSecretReader:
    """Reads ROOT/<namespace>/<name>/<key> for Secrets and ConfigMaps alike."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, namespace: str, ref: KeyRef) -> Path:
        _check_names(namespace, ref)
        folder = self.root / namespace / ref.name
        if not folder.is_dir():
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)
        path = folder / ref.key
        if not path.is_file():
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key")
        # kubelet mounts keys as symlinks into ..data; they must stay inside the folder. (A plain
        # file named by a checked key is inside it; resolving costs a stat per path component.)
        if path.is_symlink() and folder.resolve() not in path.resolve().parents:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key")
        return path

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        path = self._path(namespace, ref)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key") from exc

    def version(self, namespace: str, ref: KeyRef) -> str:
        """A sha256 of the content, so a changed password is noticed."""
        return secret_version(namespace, ref, self.read(namespace, ref))


class MappingSecretReader:
    """In-memory secrets: {(namespace, name, key): value}; for tests and the demo."""

    def __init__(self, data: Mapping[tuple[str, str, str], bytes | str]) -> None:
        self._data = {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in data.items()}
        self._objects = {(ns, name) for ns, name, _ in self._data}

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        try:
            return self._data[(namespace, ref.name, ref.key)]
        except KeyError:
            detail = "key" if (namespace, ref.name) in self._objects else ""
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail=detail) from None

    def version(self, namespace: str, ref: KeyRef) -> str:
        """A sha256 of the content."""
        return secret_version(namespace, ref, self.read(namespace, ref))
