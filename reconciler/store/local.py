"""The local store: the cluster mirrored as plain manifests under a folder (DESIGN §7).

    DIR/<namespace>/emailaccounts/<name>.yaml   the EmailAccount with its status
    DIR/<namespace>/secrets/<secret-name>.yaml  a v1 Secret, mode 0600
    DIR/events.jsonl                            events, one JSON object a line
    DIR/.inventories/<name>.yaml                what each source (--inventory NAME) applied

Files are written atomically (temp file + rename) and only when their content changes, so a run
that finds nothing changed leaves every mtime alone. One run at a time writes a store: a second
waits for the lock on DIR (bounded), then gives up with StoreBusy; the kernel drops the lock of a killed
run, and the next run removes the temp files such a run left behind.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import StoreBusy, StoreError
from reconciler.model import GROUP_VERSION, Event, SecretReader
from reconciler.store import nofollow
from reconciler.store.base import Inventory, Key, account_object, object_key
from reconciler.store.nofollow import TEMP_PREFIX, write_atomic

__all__ = ["LocalStore", "TEMP_PREFIX", "write_atomic"]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(obj: Any) -> bytes:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True).encode("utf-8")


INVENTORIES = ".inventories"
#: Temp files of older versions: `.<file name>.<8 random characters>`.
_OLD_TEMP = re.compile(r"^\..+\.(yaml|jsonl)\.[a-z0-9_]{8}$")


def _safe_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise StoreError(f"refusing unsafe object name {name!r}")
    return name


def _os_error(verb: str, path: Path, exc: OSError) -> StoreError:
    """A file system failure as a store error naming the file (its name may be very long)."""
    if isinstance(exc, nofollow.SymlinkRefused) and exc.filename:
        path = Path(exc.filename)  # the link, which may be a folder above the file
    shown = str(path) if len(path.name) <= 80 else f"{path.parent}/{path.name[:60]}..."
    return StoreError(f"cannot {verb} {shown}: {exc.strerror or type(exc).__name__}")


class LocalStore:
    """State store on the local file system."""

    def __init__(self, root: str | Path, namespace: str | None = None) -> None:
        self.root = Path(root)
        #: Like KubeStore's: reads and the inventory are limited to this namespace when set.
        self.namespace = namespace
        self.default_namespace = namespace or "default"
        #: The line every run prints before it writes: which folder, which namespaces.
        self.description = (f"local {self.root} "
                            f"({f'namespace {namespace}' if namespace else 'all namespaces'})")
        self.writes = 0  # files actually written, for reports and tests

    # ------------------------------------------------------------------ one run at a time
    @contextlib.contextmanager
    def locked(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the store's lock for a run: wait up to `timeout` seconds for another run to end,
        else raise StoreBusy. Then remove the temp files a killed run left behind.

        The lock is a flock on the store folder itself: no file to leave behind or to rewrite
        (a run that changes nothing changes no mtime), and the kernel drops it with the process.
        """
        try:
            fd = nofollow.open_root(self.root, create=True)
        except OSError as exc:
            raise _os_error("lock", self.root, exc) from exc
        try:
            self._acquire(fd, timeout)
            self.remove_stale_temp_files()
            yield
        finally:
            os.close(fd)  # releases the lock

    def _acquire(self, fd: int, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        delay = 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusy(
                        f"{self.description} is in use by another reconcile run; waited "
                        f"{timeout:g} s. Run again when it has finished, or wait longer with "
                        "--lock-timeout") from None
                time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
                delay = min(delay * 2, 1.0)

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files of an interrupted write (call only while holding the lock); a
        folder that is a link is not entered."""
        removed: list[Path] = []
        folders: list[tuple[str, ...]] = [(), (INVENTORIES,)]
        if self.root.is_dir():
            for ns in self.root.iterdir():
                if ns.is_dir() and not ns.is_symlink():
                    folders += [(ns.name, "emailaccounts"), (ns.name, "secrets")]
        for parts in folders:
            try:
                with nofollow.folder(self.root, parts, create=False) as dir_fd:
                    for entry in list(os.scandir(dir_fd)):
                        if (entry.name.startswith(TEMP_PREFIX) or _OLD_TEMP.fullmatch(entry.name)) and (
                                entry.is_file(follow_symlinks=False)):
                            with contextlib.suppress(OSError):
                                os.unlink(entry.name, dir_fd=dir_fd)
                                removed.append(self.root.joinpath(*parts, entry.name))
            except OSError:
                continue
        return removed

    # ------------------------------------------------------------------ paths
    def _account_path(self, namespace: str, name: str) -> Path:
        return self.root / _safe_name(namespace) / "emailaccounts" / f"{_safe_name(name)}.yaml"

    def _secret_path(self, namespace: str, name: str) -> Path:
        return self.root / _safe_name(namespace) / "secrets" / f"{_safe_name(name)}.yaml"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = yaml.load(path.read_bytes(), Loader=_Loader)
        except FileNotFoundError:
            return None
        except OSError as exc:  # e.g. File name too long: this object's failure, not a crash
            raise _os_error("read", path, exc) from exc
        except yaml.YAMLError as exc:
            raise StoreError(f"{path}: not a readable manifest: {exc}") from exc
        return data if isinstance(data, dict) else None

    def _write(self, path: Path, obj: Mapping[str, Any], mode: int = 0o644) -> None:
        try:
            written = write_atomic(self.root, self._parts(path), _dump(obj), mode)
        except OSError as exc:
            raise _os_error("write", path, exc) from exc
        if written:
            self.writes += 1

    def _unlink(self, path: Path) -> None:
        try:
            nofollow.unlink(self.root, self._parts(path))
        except OSError as exc:
            raise _os_error("delete", path, exc) from exc

    def _parts(self, path: Path) -> tuple[str, ...]:
        """The components of a path of ours below the root (each opened without following a
        link, reconciler.store.nofollow)."""
        return path.relative_to(self.root).parts

    def _namespaces(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and (self.namespace is None or p.name == self.namespace))

    # ------------------------------------------------------------------ accounts
    def list_accounts(self) -> list[dict[str, Any]]:
        out = []
        for ns in self._namespaces():
            for path in sorted((ns / "emailaccounts").glob("*.yaml")):
                obj = self._read(path)
                if obj is not None:
                    out.append(obj)
        return out

    def get_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self._account_path(namespace, name))

    def apply_account(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        desired = account_object(manifest)
        namespace, name = object_key(desired)
        path = self._account_path(namespace, name)
        old = self._read(path)
        if old is None:
            meta = desired["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["generation"] = 1
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj = desired
        else:
            obj = copy.deepcopy(old)
            old_meta = obj.setdefault("metadata", {})
            generation = int(old_meta.get("generation") or 1)
            if obj.get("spec") != desired["spec"]:
                generation += 1
            for field in ("labels", "annotations"):
                if desired["metadata"].get(field):
                    old_meta[field] = desired["metadata"][field]
                else:
                    old_meta.pop(field, None)
            old_meta["generation"] = generation
            obj["spec"] = desired["spec"]
        self._write(path, obj)
        return obj

    def write_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = self._account_path(namespace, name)
        obj = self._read(path)
        if obj is None:
            raise StoreError(f"EmailAccount {namespace}/{name} not found in {self.description}")
        obj["status"] = copy.deepcopy(dict(status))
        self._write(path, obj)

    def delete_account(self, namespace: str, name: str) -> None:
        self._unlink(self._account_path(namespace, name))

    # ------------------------------------------------------------------ secrets
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self._secret_path(namespace, name))

    def get_published_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get_secret(namespace, name)

    def apply_secret(self, secret: Mapping[str, Any]) -> None:
        namespace, name = object_key(secret)
        self._write(self._secret_path(namespace, name), secret, mode=0o600)

    def delete_secret(self, namespace: str, name: str) -> None:
        self._unlink(self._secret_path(namespace, name))

    # ------------------------------------------------------------------ events, inventory
    def record_event(self, event: Event) -> None:
        line = json.dumps({"time": event.time, "namespace": event.namespace,
                           "involvedObject": {"kind": "EmailAccount", "name": event.name},
                           "type": event.type, "reason": event.reason,
                           "message": event.message}, sort_keys=True)
        try:
            nofollow.append(self.root, ("events.jsonl",), (line + "\n").encode("utf-8"))
        except OSError as exc:
            raise _os_error("write", self.root / "events.jsonl", exc) from exc

    def read_events(self) -> list[dict[str, Any]]:
        try:
            text = (self.root / "events.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def account_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The events of one EmailAccount, oldest first."""
        return [e for e in self.read_events() if e.get("namespace") == namespace
                and (e.get("involvedObject") or {}).get("name") == name]

    def annotate_account(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Set annotations on one stored EmailAccount (`email-reconciler request`)."""
        path = self._account_path(namespace, name)
        obj = self._read(path)
        if obj is None:
            raise StoreError(f"EmailAccount {namespace}/{name} not found in {self.description}")
        obj.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
        self._write(path, obj)

    def _inventory_path(self, name: str) -> Path:
        return self.root / INVENTORIES / f"{_safe_name(name)}.yaml"

    def _inventory_entries(self, path: Path) -> Inventory:
        data = self._read(path) or {}
        entries = data.get("entries") or []
        return {(str(e["namespace"]), str(e["name"])): str(e.get("secretName") or "")
                for e in entries if isinstance(e, dict) and "namespace" in e and "name" in e}

    def read_inventories(self) -> dict[str, Inventory]:
        """Every source's inventory: DIR/.inventories/<name>.yaml (within the namespace scope)."""
        out: dict[str, Inventory] = {}
        for path in sorted((self.root / INVENTORIES).glob("*.yaml")):
            out[path.stem] = {k: v for k, v in self._inventory_entries(path).items()
                              if self.namespace is None or k[0] == self.namespace}
        return out

    def write_inventory(self, name: str, entries: Mapping[Key, str]) -> None:
        path = self._inventory_path(name)
        # With a namespace, the other namespaces' entries are not this run's to change.
        keep = ({k: v for k, v in self._inventory_entries(path).items()
                 if k[0] != self.namespace} if self.namespace is not None else {})
        keep.update(entries)
        self._write(path, {"apiVersion": GROUP_VERSION, "kind": "Inventory",
                           "metadata": {"name": name},
                           "entries": [{"namespace": ns, "name": n, "secretName": secret}
                                       for (ns, n), secret in sorted(keep.items())]})

    def secret_reader(self) -> SecretReader | None:
        return None
