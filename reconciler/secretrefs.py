"""Secret references, shared by every layer: the version digest every reader reports, and the
versions of all the references of an account (what status records to notice a changed credential).

A version must change when the value changes and reveal nothing about the value
(`status.secretVersions` is readable by anyone who may read the EmailAccount):
- local mode: HMAC-SHA-256 of the value under a random per-installation key, kept in a 0600 file
  in the store directory (`installation_key`), or per process when there is no store (`probe`);
- cluster mode: the referenced object's uid and resourceVersion (ClusterSecretReader), which
  are not derived from the value at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as _random
from pathlib import Path

from reconciler.errors import SecretNotAllowed, SecretNotFound, StoreError
from reconciler.model import Account, KeyRef, SecretReader

#: The file, in a local store's directory, holding the installation's version key.
KEY_FILE = ".secret-version-key"
_PROCESS_KEY = _random.token_bytes(32)


def installation_key(store_dir: str | Path, *, create: bool = True) -> bytes:
    """The random key of this installation (hex in a 0600 file), created on first use; without
    `create` (a dry run writes nothing) a missing file gives the per-process key."""
    path = Path(store_dir) / KEY_FILE
    try:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) >= 32:
            return key
    except (FileNotFoundError, ValueError):
        pass
    if not create:
        return _PROCESS_KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _random.token_bytes(32)
    tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # the first writer wins; a concurrent run reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def process_key() -> bytes:
    """A key that lives as long as this process (for runs without a store)."""
    return _PROCESS_KEY


def secret_version(namespace: str, ref: KeyRef, data: bytes, key: bytes | None = None) -> str:
    """A keyed digest of the value, bound to its location: without the key, status tells
    nothing about the value, and an unrelated change to the same Secret does not look like a
    changed credential."""
    digest = hmac.new(key or _PROCESS_KEY, digestmod=hashlib.sha256)
    digest.update(f"email-reconciler/v2\0{namespace}/{ref.kind}/{ref.name}/{ref.key}\0".encode())
    digest.update(data)
    return "hmac-sha256:" + digest.hexdigest()[:32]


def secret_versions(account: Account, secrets: SecretReader) -> dict[str, str]:
    """{"<Kind>/<name>/<key>": version} for every reference of the account; "missing" for one
    that does not exist, "not-allowed" for one the account may not use (§8) and "unavailable"
    when the store cannot be read now."""
    from reconciler.policy import guard

    reader = guard(secrets, account)
    out: dict[str, str] = {}
    for ref in account.secret_refs():
        key = f"{ref.kind}/{ref.name}/{ref.key}"
        try:
            out[key] = reader.version(account.namespace, ref)
        except SecretNotAllowed:
            out[key] = "not-allowed"
        except SecretNotFound:
            out[key] = "missing"
        except StoreError:
            out[key] = "unavailable"
    return out
