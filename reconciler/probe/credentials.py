"""Secret readers for local runs: a directory laid out like mounted Secrets, or an in-memory map.

Both implement `reconciler.model.SecretReader`. The directory layout is
`ROOT/<namespace>/<secret-or-configmap-name>/<key>`, the same shape kubelet mounts, so
`--secrets-dir` can point at real mounted volumes. (The cluster reader lives with the store.)
"""

from __future__ import annotations

import functools
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from reconciler.errors import SecretNotFound
from reconciler.model import KeyRef
from reconciler.policy import OPERATOR_SOURCE, SecretMeta
from reconciler.secretrefs import process_key, secret_version

# DNS-1123 names (namespaces, Secrets, ConfigMaps) and Secret data keys ([-._a-zA-Z0-9]+).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
#: A file changed this recently (ctime, nanoseconds) is read again on every use: a rewrite in
#: place within the file system's clock tick keeps size and times (git's "racily clean" rule).
RACY_NS = 2_000_000_000


def _check_names(namespace: str, ref: KeyRef) -> None:
    """Refuse names that could leave the secrets directory (.., /, absolute paths)."""
    if not _names_ok(namespace, ref.name, ref.key):
        raise SecretNotFound(namespace, ref.name, ref.key, ref.kind,
                             detail="key" if _NAME.fullmatch(ref.name) else "")


@functools.lru_cache(maxsize=4096)
def _names_ok(namespace: str, name: str, key: str) -> bool:
    """Whether the three names stay inside their folders (a pure function: each probe checks
    the same few names several times)."""
    return (bool(_NAME.fullmatch(namespace)) and bool(_NAME.fullmatch(name))
            and bool(_KEY.fullmatch(key)) and key not in (".", "..")
            and ".." not in name and ".." not in namespace)


class DirSecretReader:
    """Reads ROOT/<namespace>/<name>/<key> for Secrets and ConfigMaps alike.

    The operator laid this folder out for e-mail, so its entries count as opted in (§8); the
    folder is a jail that no path (symbolic links included) leaves.
    """

    def __init__(self, root: str | Path, version_key: bytes | None = None, *,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.root = Path(root)
        self._root = str(root)
        self._root_seen: tuple[tuple[int, int], str] | None = None  # (identity, real path)
        self.version_key = version_key or process_key()
        self._clock = clock
        # (namespace, name, key) -> (identity of the file read, its bytes, its version or "").
        # Resolving the jail and reading a truststore for each of 1,000 accounts was ~55 stat
        # calls and two reads a probe (bench/README.md, benchmark 7); a hit costs one stat.
        self._cache: dict[tuple[str, str, str], tuple[tuple[int, ...], bytes, str]] = {}

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """Opted in by where it lies; SecretNotFound when the object does not exist."""
        _check_names(namespace, ref)
        if not os.path.isdir(os.path.join(self._root, namespace, ref.name)):
            raise self._missing(namespace, ref, self.root / namespace / ref.name)
        return OPERATOR_SOURCE

    @staticmethod
    def _missing(namespace: str, ref: KeyRef, looked_for: Path, detail: str = "") -> SecretNotFound:
        """SecretNotFound naming the path looked for (a path, never a value)."""
        plain = SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail=detail)
        kind = "file" if detail == "key" else "folder"
        return SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail=detail,
                              message=f"{plain}: no {kind} {looked_for} under --secrets-dir")

    def _path(self, namespace: str, ref: KeyRef) -> Path | str:
        _check_names(namespace, ref)
        plain = self._plain_path(namespace, ref)
        if plain is not None:
            return plain
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

    def _plain_path(self, namespace: str, ref: KeyRef) -> str | None:
        """The key's path when neither its namespace and object folders nor the key itself are
        symbolic links: then it lies under the root without resolving anything (3 lstat calls
        where resolving the whole path took ~25). None otherwise (a link, or something
        missing): _path resolves and reports."""
        try:
            root = self._real_root()
            namespace_dir = os.path.join(root, namespace)
            folder = os.path.join(namespace_dir, ref.name)
            key = os.path.join(folder, ref.key)
            if not (stat.S_ISDIR(os.lstat(namespace_dir).st_mode)
                    and stat.S_ISDIR(os.lstat(folder).st_mode)
                    and stat.S_ISREG(os.lstat(key).st_mode)):
                return None
        except (OSError, ValueError):
            return None
        return key

    def _real_root(self) -> str:
        """The root with its links resolved, again whenever it is another directory."""
        st = os.stat(self._root)
        if self._root_seen is None or self._root_seen[0] != (st.st_dev, st.st_ino):
            self._root_seen = ((st.st_dev, st.st_ino), os.path.realpath(self._root))
        return self._root_seen[1]

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        return self._entry(namespace, ref)[1]

    def version(self, namespace: str, ref: KeyRef) -> str:
        """A keyed digest of the content, so a changed password is noticed."""
        cache_key = (namespace, ref.name, ref.key)
        identity, data, version = self._entry(namespace, ref)
        if not version:
            version = secret_version(namespace, ref, data, self.version_key)
            if self._cache.get(cache_key, (None,))[0] == identity:
                self._cache[cache_key] = (identity, data, version)
        return version

    def _entry(self, namespace: str, ref: KeyRef) -> tuple[tuple[int, ...], bytes, str]:
        """(identity, bytes, version) of the key: from the cache while the file (symbolic links
        followed) is the same one, with the same size and times, and not changed lately."""
        cache_key = (namespace, ref.name, ref.key)
        cached = self._cache.get(cache_key)
        if cached is not None:
            try:
                st = os.stat(os.path.join(self._root, namespace, ref.name, ref.key))
            except (OSError, ValueError):
                st = None
            if st is not None and _identity(st) == cached[0]:
                return cached
            self._cache.pop(cache_key, None)
        path = self._path(namespace, ref)
        try:
            # Neither path _path gives is a link: one that became a link since is not followed.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                chunks: list[bytes] = []
                while chunk := os.read(fd, st.st_size + 1 if not chunks else 1 << 16):
                    chunks.append(chunk)
                data = b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key") from exc
        identity = _identity(st)
        entry = (identity, data, "")
        if st.st_ctime_ns < self._clock() - RACY_NS:  # else it may change again unseen
            self._cache[cache_key] = entry
        return entry


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced (kubelet swaps ..data) or rewritten in place."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
