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
from reconciler.policy import OPERATOR_SOURCE, SecretMeta
from reconciler.secretrefs import process_key, secret_version

# DNS-1123 names (namespaces, Secrets, ConfigMaps) and Secret data keys ([-._a-zA-Z0-9]+).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def _check_names(namespace: str, ref: KeyRef) -> None:
    """Refuse names that could leave the secrets directory (.., /, absolute paths)."""
    ok = (bool(_NAME.fullmatch(namespace)) and bool(_NAME.fullmatch(ref.name))
          and bool(_KEY.fullmatch(ref.key)) and ref.key not in (".", "..")
          and ".." not in ref.name and ".." not in namespace)
    if not ok:
        raise SecretNotFound(namespace, ref.name, ref.key, ref.kind,
                             detail="key" if _NAME.fullmatch(ref.name) else "")


class DirSecretReader:
    """Reads ROOT/<namespace>/<name>/<key> for Secrets and ConfigMaps alike.

    The operator laid this folder out for e-mail, so its entries count as opted in (§8); the
    folder is a jail that no path (symbolic links included) leaves.
    """

    def __init__(self, root: str | Path, version_key: bytes | None = None) -> None:
        self.root = Path(root)
        self.version_key = version_key or process_key()

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """Opted in by where it lies; SecretNotFound when the object does not exist."""
        _check_names(namespace, ref)
        if not (self.root / namespace / ref.name).is_dir():
            raise self._missing(namespace, ref, self.root / namespace / ref.name)
        return OPERATOR_SOURCE

    @staticmethod
    def _missing(namespace: str, ref: KeyRef, looked_for: Path, detail: str = "") -> SecretNotFound:
        """SecretNotFound naming the path looked for (a path, never a value)."""
        plain = SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail=detail)
        kind = "file" if detail == "key" else "folder"
        return SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail=detail,
                              message=f"{plain}: no {kind} {looked_for} under --secrets-dir")

    def _path(self, namespace: str, ref: KeyRef) -> Path:
        _check_names(namespace, ref)
        folder = self.root / namespace / ref.name
        if not folder.is_dir():
            raise self._missing(namespace, ref, folder)
        path = folder / ref.key
        if not path.is_file():
            raise self._missing(namespace, ref, path, detail="key")
        # The folder is a jail: every component resolved (folder symlinks included) must stay
        # under the root, and kubelet's key symlinks into ..data must stay inside their folder.
        root = self.root.resolve()
        real_folder, real = folder.resolve(), path.resolve()
        if root not in real_folder.parents or real_folder not in real.parents:
            raise SecretNotFound(
                namespace, ref.name, ref.key, ref.kind,
                message=f"{ref.kind} {namespace}/{ref.name} key {ref.key!r} leads outside "
                        "--secrets-dir through a symbolic link and was not read: secrets are "
                        "read only from inside that directory")
        return real

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        path = self._path(namespace, ref)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key") from exc

    def version(self, namespace: str, ref: KeyRef) -> str:
        """A keyed digest of the content, so a changed password is noticed."""
        return secret_version(namespace, ref, self.read(namespace, ref), self.version_key)


class MappingSecretReader:
    """In-memory secrets: {(namespace, name, key): value}; for tests and the demo."""

    def __init__(self, data: Mapping[tuple[str, str, str], bytes | str],
                 metadata: Mapping[tuple[str, str], SecretMeta] | None = None) -> None:
        self._data = {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in data.items()}
        self._objects = {(ns, name) for ns, name, _ in self._data}
        self._meta = dict(metadata or {})

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """The metadata given for the object, else opted in (the caller built the map)."""
        if (namespace, ref.name) not in self._objects:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)
        return self._meta.get((namespace, ref.name), OPERATOR_SOURCE)

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        try:
            return self._data[(namespace, ref.name, ref.key)]
        except KeyError:
            detail = "key" if (namespace, ref.name) in self._objects else ""
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail=detail) from None

    def version(self, namespace: str, ref: KeyRef) -> str:
        """A keyed digest of the content."""
        return secret_version(namespace, ref, self.read(namespace, ref))
