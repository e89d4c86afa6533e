"""Secret references, shared by every layer: the version digest every reader reports, and the
versions of all the references of an account (what status records to notice a changed credential).
"""

from __future__ import annotations

import hashlib

from reconciler.errors import SecretNotFound, StoreError
from reconciler.model import Account, KeyRef, SecretReader


def secret_version(namespace: str, ref: KeyRef, data: bytes) -> str:
    """A sha256 of the value, bound to its location so status never shows a bare password hash,
    and an unrelated change to the same Secret does not look like a changed credential."""
    digest = hashlib.sha256(
        f"email-reconciler/v1\0{namespace}/{ref.kind}/{ref.name}/{ref.key}\0".encode())
    digest.update(data)
    return "sha256:" + digest.hexdigest()[:32]


def secret_versions(account: Account, secrets: SecretReader) -> dict[str, str]:
    """{"<Kind>/<name>/<key>": version} for every reference of the account; "missing" for one
    that does not exist and "unavailable" when the store cannot be read now."""
    out: dict[str, str] = {}
    for ref in account.secret_refs():
        key = f"{ref.kind}/{ref.name}/{ref.key}"
        try:
            out[key] = secrets.version(account.namespace, ref)
        except SecretNotFound:
            out[key] = "missing"
        except StoreError:
            out[key] = "unavailable"
    return out
