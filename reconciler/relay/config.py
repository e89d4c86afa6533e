"""The relay's configuration: read from the account's published Secret, mounted as a folder.

The reconciler publishes, beside the application-facing formats, what the relay needs (keys of the
same Secret, so the sidecar needs no API access):

    relay.json                  {"version": 1, "listen": {...}, "limits": {...}, "senders": [...],
                                 "account": <the effective EmailAccount, its references renamed
                                 to keys of this Secret>}
    relay-password              the password the application logs in with (AUTH PLAIN/LOGIN)
    relay-upstream-<what>       the upstream credentials the account references (client secret,
                                client certificate, service-account key, truststore)

`load_config(folder)` reads them into a `RelayConfig`; `fingerprint(folder)` changes whenever
kubelet swaps the mounted Secret (its `..data` link) or a file changes, so the relay reloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import SecretNotFound
from reconciler.model import Account, KeyRef
from reconciler.policy import OPERATOR_SOURCE, SecretMeta

CONFIG_KEY = "relay.json"
PASSWORD_KEY = "relay-password"
UPSTREAM_PREFIX = "relay-upstream-"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class RelayConfigError(Exception):
    """The mounted Secret does not hold a usable relay configuration (names the key)."""


@dataclass(frozen=True)
class Limits:
    """What one application may send through the relay (per-provider defaults from the presets)."""

    max_message_bytes: int = 25 * 1024 * 1024
    max_recipients: int = 100
    messages_per_minute: int = 30
    concurrent_upstream: int = 4


@dataclass(frozen=True)
class RelayConfig:
    account: Account
    username: str
    password: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 2525
    senders: frozenset[str] = frozenset()
    limits: Limits = Limits()
    tls_certificate: str | None = None  # keys of this Secret, for a relay listening beyond loopback
    tls_key: str | None = None


class MountedSecretReader:
    """Reads the keys of one mounted Secret: every reference of the relay's account names a key of
    the Secret it was published in (the Secret name and namespace in a reference are ignored)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        return OPERATOR_SOURCE  # mounted by the application's own pod: its owner opted in

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        if not ref.key.startswith(UPSTREAM_PREFIX) or "/" in ref.key:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key")
        try:
            return (self.folder / ref.key).read_bytes()
        except OSError as exc:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key") from exc

    def version(self, namespace: str, ref: KeyRef) -> str:
        return hashlib.sha256(self.read(namespace, ref)).hexdigest()[:16]


def fingerprint(folder: Path) -> str:
    """Changes when the mounted Secret changes: kubelet swaps `..data` atomically; a plain folder
    (a test, `--secret-dir` on a workstation) is followed by its files' sizes and times."""
    parts: list[str] = []
    with contextlib.suppress(OSError):
        parts.append(os.readlink(folder / "..data"))
    for name in sorted(os.listdir(folder)) if folder.is_dir() else ():
        if name.startswith(".."):
            continue
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read(folder: Path, key: str) -> str:
    try:
        return (folder / key).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RelayConfigError(
            f"{folder}/{key} is missing: mount the account's published Secret (with "
            f"spec.relay.enabled: true) at {folder}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RelayConfigError(f"{folder}/{key} cannot be read: {exc}") from None


def _limits(raw: Any) -> Limits:
    base = Limits()
    if not isinstance(raw, dict):
        return base
    values: dict[str, int] = {}
    for name in ("max_message_bytes", "max_recipients", "messages_per_minute",
                 "concurrent_upstream"):
        value = raw.get(name.replace("_", "").lower()) or raw.get(_camel(name))
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            values[name] = value
    return Limits(**{**base.__dict__, **values})


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(p.title() for p in rest)


def load_config(folder: Path) -> RelayConfig:
    """The relay configuration of the Secret mounted at folder; RelayConfigError names the key."""
    from reconciler.manifest.account import account_from_manifest

    try:
        raw = json.loads(_read(folder, CONFIG_KEY))
    except json.JSONDecodeError as exc:
        raise RelayConfigError(f"{folder}/{CONFIG_KEY} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(
            raw.get("account"), dict):
        raise RelayConfigError(f"{folder}/{CONFIG_KEY} is not a version 1 relay configuration; "
                               "publish the Secret with this version of email-reconciler")
    password = _read(folder, PASSWORD_KEY).strip()
    if len(password) < 16:
        raise RelayConfigError(f"{folder}/{PASSWORD_KEY} is too short to be a relay password")
    try:
        account = account_from_manifest(raw["account"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RelayConfigError(f"{folder}/{CONFIG_KEY}: the account cannot be read "
                               f"({type(exc).__name__}: {exc})") from None
    listen: dict[str, Any] = raw["listen"] if isinstance(raw.get("listen"), dict) else {}
    address = account_address(account)
    senders = frozenset(s.lower() for s in raw.get("senders") or () if isinstance(s, str))
    tls: dict[str, Any] = listen["tls"] if isinstance(listen.get("tls"), dict) else {}
    return RelayConfig(
        account=account, username=str(raw.get("username") or address), password=password,
        host=str(listen.get("host") or "127.0.0.1"), port=int(listen.get("port") or 2525),
        senders=senders | {address.lower()}, limits=_limits(raw.get("limits")),
        tls_certificate=tls.get("certificateKey"), tls_key=tls.get("keyKey"))


def account_address(account: Account) -> str:
    """The address the account sends as (SMTP identity, or the Graph mailbox)."""
    if account.smtp is not None:
        return account.smtp.identity.email_address
    assert account.graph is not None, "a relay account sends by SMTP or Graph"
    return account.graph.user_principal_name
