"""Issue 23, the probe side: what a mail server, an identity provider and a keystore can still do.

Each attack runs through `reconcile` in local mode beside a legitimate account that stays Ready:
- STARTTLS reply injection (CVE-2011-0411): forged replies sent with the `220` to STARTTLS.
- A PKCS#12 iteration bomb: a signing keystore whose MAC asks for 2x10^9 iterations.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.log import configure_logging
from reconciler.model import status_condition
from tests.hostile import HostileServers
from tests.keystores import PfxEntry, TestCA, build_pfx, with_mac_iterations
from tests.manifests_factory import loopback_account, write_manifests
from tests.smtpservers import PASSWORD, USER, RunningServer, ServerLoop, ThrowawayCA

NS = "shop"


class Local:
    """A --secrets-dir, a manifests folder and a local store; `run` returns the exit code and
    everything written (stdout, stderr, the log)."""

    def __init__(self, root: Path, ca: ThrowawayCA) -> None:
        self.secrets, self.accounts, self.store = root / "secrets", root / "accounts", root / "store"
        self.put("ca", "ca.crt", ca.ca_pem)

    def put(self, name: str, key: str, value: str | bytes) -> None:
        path = self.secrets / NS / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.encode() if isinstance(value, str) else value)

    def run_within(self, seconds: float, capsys: pytest.CaptureFixture[str],
                   *docs: dict[str, Any]) -> tuple[int, str]:
        """`run` in a daemon thread; fails (rather than hangs) when it has not ended in `seconds`
        (a generous bound: only an unbounded key derivation takes that long)."""
        out: list[tuple[int, str]] = []
        thread = threading.Thread(target=lambda: out.append(self.run(capsys, *docs)), daemon=True)
        thread.start()
        thread.join(seconds)
        assert out, f"reconcile still running after {seconds} s"
        return out[0]

    def run(self, capsys: pytest.CaptureFixture[str], *docs: dict[str, Any],
            extra: tuple[str, ...] = ()) -> tuple[int, str]:
        write_manifests(self.accounts, *docs)
        log = io.StringIO()
        configure_logging("console", "debug", log)
        code = main(["reconcile", str(self.accounts), "--store", f"local:{self.store}",
                     "--secrets-dir", str(self.secrets), *extra])
        captured = capsys.readouterr()
        return code, captured.out + captured.err + log.getvalue()

    def condition(self, name: str, type_: str = "Ready") -> dict[str, Any]:
        obj = yaml.safe_load((self.store / NS / "emailaccounts" / f"{name}.yaml").read_text())
        return status_condition(obj.get("status") or {}, type_)

    def published(self) -> set[str]:
        return {p.stem for p in (self.store / NS / "secrets").glob("*.yaml")}


@pytest.fixture
def local(tmp_path: Path, ca: ThrowawayCA) -> Local:
    return Local(tmp_path, ca)


@pytest.fixture
def hostile(server_loop: ServerLoop) -> Iterator[HostileServers]:
    servers = HostileServers(server_loop)
    yield servers
    servers.close()


# --------------------------------------------------------------------------- STARTTLS injection


def test_starttls_reply_injection_is_a_protocol_violation(
        local: Local, hostile: HostileServers, ca: ThrowawayCA,
        smtp_server: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]) -> None:
    """The forged `235` sent with the `220` is not read as the TLS server's answer to AUTH (it
    refuses the password): ProtocolViolation, no AUTH sent, nothing published."""
    received: list[str] = []
    evil = hostile.smtp_starttls_injection(ca.server_context(), received)
    good = smtp_server("STARTTLS", users={USER: PASSWORD})
    local.put("evil-smtp", "password", PASSWORD)
    local.put("good-smtp", "password", PASSWORD)
    code, everything = local.run(capsys, _as_user(loopback_account("evil", NS, evil)),
                                 _as_user(loopback_account("good", NS, good.port)))
    assert code == 1
    ready = local.condition("evil")
    assert ready["status"] == "False" and ready["reason"] == "ProtocolViolation"
    connected = local.condition("evil", "Connected")
    assert connected["reason"] == "ProtocolViolation"
    assert "before the TLS handshake" in connected["message"]
    assert "CVE-2011-0411" in connected["message"] and "no credentials were sent" in \
        connected["message"]
    assert "AUTH" not in received  # the TLS server never saw the password
    assert local.condition("good")["reason"] == "Ready"
    assert [name for name in local.published() if "evil" in name] == []
    assert [name for name in local.published() if "good" in name] != []
    assert PASSWORD not in everything and "Traceback" not in everything


def _as_user(doc: dict[str, Any]) -> dict[str, Any]:
    """The aiosmtpd stand-in knows USER: log in as USER rather than as the account's address."""
    doc["spec"]["smtp"]["identity"]["emailAddress"] = USER
    return doc


# --------------------------------------------------------------------------- PKCS#12 bomb


def test_keystore_iteration_bomb_is_refused_beside_a_signing_account(
        local: Local, smtp_server: Callable[..., RunningServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    """2x10^9 MAC iterations: refused before any derivation (KeystoreUnreadable), not published;
    the same keystore with its real count signs, Ready."""
    key, cert = TestCA.create().issue_smime(USER)
    keystore = build_pfx([PfxEntry("mail", key, cert)], "k3ystore-Pa55")
    server = smtp_server("STARTTLS", users={USER: PASSWORD})
    docs = []
    for name, blob in (("signed", keystore), ("bomb", with_mac_iterations(keystore, 2 * 10**9))):
        local.put(f"{name}-smtp", "password", PASSWORD)
        local.put(f"{name}-signing", "keystore.p12", blob)
        local.put(f"{name}-signing", "password", "k3ystore-Pa55")
        doc = _as_user(loopback_account(name, NS, server.port))
        doc["spec"]["smtp"]["signing"] = {
            "keystoreSecretRef": {"name": f"{name}-signing", "key": "keystore.p12"},
            "keystorePasswordSecretRef": {"name": f"{name}-signing", "key": "password"}}
        docs.append(doc)
    code, everything = local.run_within(120, capsys, *docs)
    assert code == 1
    signing = local.condition("bomb", "SigningReady")
    assert signing["reason"] == "KeystoreUnreadable"
    assert "2,000,000,000 key-derivation iterations" in signing["message"]
    assert local.condition("bomb")["status"] == "False"
    assert local.condition("signed")["reason"] == "Ready", local.condition("signed")
    assert [name for name in local.published() if "bomb" in name] == []
    assert "k3ystore-Pa55" not in everything and "Traceback" not in everything
