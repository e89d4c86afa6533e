"""The MTA test bed as pytest fixtures, and the helpers the tests/test_mta_*.py modules share.

`mta_bed` (module scope: one Postfix and its Dovecots per MTA test module, stopped as soon as
the module is done rather than idling through the rest of the suite) skips, or fails with
CI=true, when Postfix or Dovecot is missing. `mta` (per test) is a `Run`: accounts
written as EmailAccount manifests and probed through the CLI, with the MTAs' log offsets taken
when the test began, so a test reads only what its own probes caused. tests/conftest.py
imports both fixtures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.model import status_condition
from tests.manifests_factory import loopback_account
from tests.mta.bed import Bed, missing_tools, running_bed
from tests.mta.postfix import Session
from tests.system import in_ci, missing

NS = "mta"
INSTALL = "apt-get install postfix dovecot-core (tests/system/packages-mta.txt)"


@pytest.fixture(scope="module")
def mta_bed() -> Iterator[Bed]:
    """The running bed; at the end, nothing queued and no generated password in any log."""
    gone = missing_tools()
    if gone:
        missing(" and ".join(gone), INSTALL)
    if os.geteuid() != 0:  # both masters start as root, then run their daemons unprivileged
        why = "the MTA test bed needs root: Postfix's and Dovecot's masters start as root"
        pytest.fail(why, pytrace=False) if in_ci() else pytest.skip(why)
    with running_bed() as b:
        yield b
        assert b.postfix.queued() == [], "the probe got a message queued"
        assert "Mail queue is empty" in b.postfix.postqueue()
        logs = b.postfix.log_text() + "".join(d.log_text() for d in b.dovecots.values())
        leaked = [login for login, password in b.passwords.items() if password in logs]
        assert not leaked, f"a password of {leaked} is in an MTA log"


@dataclass
class Run:
    """One test's accounts, secrets and probe run against the bed; log offsets taken at start."""

    bed: Bed
    root: Path
    capsys: pytest.CaptureFixture[str]
    postfix_since: int = 0
    dovecot_since: dict[str, int] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def account(self, name: str, service: str, *, security: str = "STARTTLS",
                method: str = "Password", dovecot: str = "main", password: str | None = None,
                login: str | None = None, email: str | None = None, timeout: float = 5,
                advanced: dict[str, str] | None = None, **connection: Any) -> dict[str, Any]:
        """An EmailAccount `name` on the service's port; its login is created in Dovecot."""
        doc = loopback_account(name, NS, self.bed.port(service), security=security,
                               timeout=timeout)
        smtp = doc["spec"]["smtp"]
        smtp["connection"].update(connection)
        if advanced:
            smtp["advanced"] = advanced
        if email:
            smtp["identity"]["emailAddress"] = email
        if login:
            smtp["identity"]["userId"] = login
        if method == "None":
            smtp["authentication"] = {"method": "None"}
        else:
            real = self.bed.user(login or smtp["identity"]["emailAddress"], dovecot)
            self.secret(f"{name}-smtp", "password", password if password is not None else real)
        self.docs[name] = doc
        return doc

    def secret(self, name: str, key: str, value: str) -> None:
        path = self.root / "secrets" / NS / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    def probe(self, *extra: str) -> dict[str, dict[str, Any]]:
        """`email-reconciler probe -o json` over every account; name -> status."""
        accounts = self.root / "accounts"
        accounts.mkdir(exist_ok=True)
        for old in accounts.glob("*.yaml"):  # a second run in one test probes only its docs
            old.unlink()
        for name, doc in self.docs.items():
            (accounts / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        self.secret("ca", "ca.crt", self.bed.ca_pem)
        self.capsys.readouterr()
        main(["probe", str(accounts), "--secrets-dir", str(self.root / "secrets"),
              "-o", "json", *extra])
        out = self.capsys.readouterr().out
        return {e["name"]: e["status"] for e in json.loads(out)}

    def sessions(self, service: str, at_least: int) -> list[Session]:
        return self.bed.sessions(service, self.postfix_since, at_least=at_least)

    def auth_requests(self, dovecot: str = "main") -> list[tuple[str, bool]]:
        """(mechanism, TLS-protected) of each AUTH Dovecot received since the test began."""
        requests, _ = self.bed.auth_log(dovecot, self.dovecot_since[dovecot])
        return [(r.mechanism, r.secured) for r in requests]

    def auth_results(self, dovecot: str = "main") -> list[tuple[str, str]]:
        """(login, OK|FAIL) of each AUTH Dovecot answered since the test began."""
        _, results = self.bed.auth_log(dovecot, self.dovecot_since[dovecot])
        return [(r.user, r.result) for r in results]


@pytest.fixture
def mta(mta_bed: Bed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    """One test's Run; afterwards the queue must still be empty."""
    r = Run(mta_bed, tmp_path, capsys, mta_bed.postfix.log_size(),
            {name: d.log_size() for name, d in mta_bed.dovecots.items()})
    yield r
    assert mta_bed.postfix.queued() == [], "the probe got a message queued"


def reason(status: dict[str, Any], type_: str = "Ready") -> str:
    return str(status_condition(status, type_).get("reason"))


def ready(status: dict[str, Any]) -> bool:
    return status_condition(status, "Ready").get("status") == "True"


def why(status: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The conditions in short, for assertion messages."""
    return [(c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
            for c in status.get("conditions", ())]


def message(status: dict[str, Any], type_: str = "Ready") -> str:
    return str(status_condition(status, type_).get("message"))


def no_auth(sessions: list[Session]) -> bool:
    """No session sent AUTH (the disconnect line counts every AUTH command, good or bad)."""
    return all("auth" not in s.commands for s in sessions)
