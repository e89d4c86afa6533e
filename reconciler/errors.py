"""Exceptions: for our bugs and for infrastructure we cannot reach, never for expected failures.

Expected failures of the outside world (refused connection, bad password, expired certificate)
are probe outcomes with reasons (reconciler.reasons), not exceptions.

    ReconcilerError
    ├── UsageError               bad command line or configuration -> exit 2
    ├── ManifestError            a file cannot be loaded at all (carries Diagnostics)
    ├── SecretNotFound           a referenced Secret/ConfigMap or key is absent (or unreadable)
    │   └── SecretNotAllowed     it exists but is not opted in for this account (§8)
    └── StoreError               the state store failed -> exit 3
        ├── StoreConflict        409: re-read and retry
        │   └── SecretExists     a create found the name taken: read it and decide again
        ├── StoreUnavailable     429/5xx/connection: back off, then ApiUnavailable
        ├── StoreBusy            another run holds the local store's lock -> exit 2
        ├── StoreForbidden       401/403: names verb, resource and namespace
        └── StoreInvalid         422: the server refused the object, with its causes
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every command, defined once."""

    OK = 0
    PROBLEMS = 1  # invalid manifests, an account not Ready, or (--dry-run) something would change
    USAGE = 2  # bad command line or configuration (UsageError), or the local store is busy
    UNREACHABLE = 3  # the cluster or the store could not be used (StoreError)


def exit_code_of(exc: BaseException) -> ExitCode:
    """The exit code for an error that ends a command."""
    if isinstance(exc, UsageError | StoreBusy):
        return ExitCode.USAGE
    if isinstance(exc, StoreError):
        return ExitCode.UNREACHABLE
    return ExitCode.PROBLEMS


class ReconcilerError(Exception):
    """Base of every error this package raises on purpose."""


class UsageError(ReconcilerError):
    """Bad command line or configuration (exit code 2)."""


class ManifestError(ReconcilerError):
    """A manifest file could not be read."""


class SecretNotFound(ReconcilerError):
    """A referenced Secret/ConfigMap, or a key in it, does not exist."""

    reason = "SecretNotFound"

    def __init__(self, namespace: str, name: str, key: str, kind: str = "Secret",
                 detail: str = "", message: str | None = None) -> None:
        self.namespace, self.name, self.key, self.kind = namespace, name, key, kind
        what = f"{kind} {namespace}/{name}"
        msg = f"{what} has no key {key!r}" if detail == "key" else f"{what} not found (key {key!r})"
        super().__init__(message or msg)


class SecretNotAllowed(SecretNotFound):
    """The Secret/ConfigMap exists but may not be used by this account (not opted in, bound to
    other hosts or accounts, or a kind that is never usable); the message says what to add."""

    reason = "SecretNotAllowed"

    def __init__(self, namespace: str, name: str, key: str, kind: str, message: str) -> None:
        super().__init__(namespace, name, key, kind, message=message)


class StoreError(ReconcilerError):
    """The state store (local files or the Kubernetes API) failed."""


class StoreConflict(StoreError):
    """The object changed since it was read (HTTP 409)."""


class SecretExists(StoreConflict):
    """A Secret the caches said was absent exists (409 AlreadyExists on its create): the store
    has read it, and the caller decides again from it."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (429, 5xx, connection error)."""


class StoreBusy(StoreError):
    """Another run holds the local store's lock (and did not let go in time)."""


class StoreForbidden(StoreError):
    """The store refused the request (401/403); the message names verb, resource and namespace."""


class StoreInvalid(StoreError):
    """The API server refused the object as invalid (HTTP 422); `causes` are its field errors.

    Retrying the same object cannot help: the account is Stalled (reason Invalid) until its spec
    changes.
    """

    def __init__(self, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.causes = causes
