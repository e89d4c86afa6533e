"""A small world for run-level tests: SMTP servers on loopback, secrets, manifests and a store."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.certificates import ThrowawayCA
from reconciler.demo.smtp_servers import RunningServer, ServerLoop, SmtpServerOptions
from tests.manifests_factory import loopback_account

NS = "shop"
PASSWORD = "s3cr3t p@ss:w/rd%"


@dataclass
class World:
    """Servers, a secrets folder, a manifests folder and a store folder for one test."""

    root: Path
    ca: ThrowawayCA
    starttls: RunningServer
    smtps: RunningServer
    users: dict[str, str] = field(default_factory=dict)

    @property
    def accounts(self) -> Path:
        return self.root / "accounts"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def store(self) -> Path:
        return self.root / "store"

    def secret(self, name: str, key: str, value: str | bytes) -> None:
        path = self.secrets / NS / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.encode() if isinstance(value, str) else value)

    def account(self, name: str, *, server: RunningServer | None = None,
                security: str = "STARTTLS", **spec_extra: Any) -> dict[str, Any]:
        server = server or self.starttls
        doc = loopback_account(name, NS, server.port, security=security,
                               display_name=name.title(), **spec_extra)
        self.users[f"{name}@example.com"] = PASSWORD
        self.secret(f"{name}-smtp", "password", PASSWORD)
        self.write(doc)
        return doc

    def write(self, doc: dict[str, Any]) -> None:
        self.accounts.mkdir(parents=True, exist_ok=True)
        (self.accounts / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))

    def reconcile(self, *extra: str) -> int:
        return main(["reconcile", str(self.accounts), "--store", f"local:{self.store}",
                     "--secrets-dir", str(self.secrets), *extra])

    def status(self, name: str) -> dict[str, Any]:
        obj = yaml.safe_load((self.store / NS / "emailaccounts" / f"{name}.yaml").read_text())
        return obj.get("status") or {}

    def published(self, name: str) -> dict[str, Any]:
        return yaml.safe_load((self.store / NS / "secrets" / f"{name}.yaml").read_text())

    def published_data(self, name: str) -> dict[str, str]:
        data = self.published(name)["data"]
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}




@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerLoop, ThrowawayCA, dict[str, str]]]:
    users: dict[str, str] = {}
    with ServerLoop() as loop:
        yield loop, ThrowawayCA(), users


@pytest.fixture
def world(servers: tuple[ServerLoop, ThrowawayCA, dict[str, str]], tmp_path: Path) -> World:
    loop, ca, users = servers
    users.clear()

    def check(mechanism: str, login: str, secret: str) -> bool:
        return users.get(login) == secret

    starttls = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                           checker=check))
    smtps = loop.smtp(SmtpServerOptions(mode="SMTPS", tls_context=ca.server_context(),
                                        checker=check))
    w = World(tmp_path, ca, starttls, smtps, users)
    w.secret("ca", "ca.crt", ca.ca_pem)
    return w


def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
