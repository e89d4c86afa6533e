"""The probe against real Postfix + Dovecot (issue 14 item 7): verdicts judged also by the MTA.

Every test probes EmailAccount manifests through the CLI (`email-reconciler probe -o json`)
against one setup of the private Postfix of tests/mta/bed.py, then checks the condition reason
AND what Postfix and Dovecot logged: did AUTH arrive, with which mechanism, over TLS or not,
did the session end with QUIT, and that nothing was ever queued.

Missing Postfix or Dovecot skips this module with what to install (fails it with CI=true).
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
from tests.mta.dovecot import AuthRequest
from tests.mta.postfix import Session
from tests.system import in_ci, missing

NS = "mta"
INSTALL = "apt-get install postfix dovecot-core (tests/system/packages-mta.txt)"


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
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

    def auth_requests(self, dovecot: str = "main", user: str | None = None) -> list[AuthRequest]:
        """Dovecot's AUTH requests since the test began, once each has its logged result."""
        found = self.bed.auth_requests(dovecot, self.dovecot_since[dovecot])
        return [r for r in found if user is None or r.user == user]


@pytest.fixture
def run(bed: Bed, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    r = Run(bed, tmp_path, capsys, bed.postfix.log_size(),
            {name: d.log_size() for name, d in bed.dovecots.items()})
    yield r
    assert bed.postfix.queued() == [], "the probe got a message queued"


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


# --------------------------------------------------------------------------- TLS and AUTH


def test_auth_only_after_tls(run: Run) -> None:
    run.account("authonly", "authonly")
    run.account("authonly-plain", "authonly", security="None", allowInsecureAuth=True)
    status = run.probe()

    assert ready(status["authonly"]), why(status["authonly"])
    assert status["authonly"]["authMechanisms"] == ["PLAIN", "LOGIN"]
    # Postfix offers AUTH only after STARTTLS, so the plain-text account finds none
    plain = status["authonly-plain"]
    assert reason(plain) == "AuthMechanismUnavailable", plain
    assert reason(plain, "Authenticated") == "AuthMechanismUnavailable"

    sessions = run.sessions("authonly", at_least=2)
    with_tls = [s for s in sessions if "starttls" in s.commands]
    assert len(with_tls) == 1 and with_tls[0].commands["auth"] == "1", with_tls[0].text()
    assert "TLS connection established" in with_tls[0].text()
    assert no_auth([s for s in sessions if s not in with_tls])
    assert [(r.mechanism, r.secured, r.result) for r in run.auth_requests()] == [
        ("PLAIN", True, "OK")]
    assert run.auth_requests()[0].user == "authonly@example.com"


def test_wrapper_mode_smtps(run: Run) -> None:
    run.account("smtps", "smtps", security="SMTPS")
    status = run.probe()["smtps"]
    assert ready(status), why(status)
    assert status["protocol"] == "SMTPS"
    assert status["connectivity"] == "SMTP (Connect using SMTPS)"
    [session] = run.sessions("smtps", at_least=1)
    assert "TLS connection established" in session.text()
    assert "starttls" not in session.commands and session.commands["auth"] == "1"
    assert [(r.user, r.secured, r.result) for r in run.auth_requests()] == [
        ("smtps@example.com", True, "OK")]


def test_tls_capped_at_1_2(run: Run) -> None:
    run.account("tls12", "tls12")
    run.account("tls12-floor13", "tls12", minTLSVersion="1.3")
    status = run.probe()
    assert ready(status["tls12"]) and status["tls12"]["tlsVersion"] == "TLSv1.2"
    floor = status["tls12-floor13"]
    assert reason(floor) == "TLSVersionTooLow", floor
    assert "TLSv1.2" in message(floor)

    sessions = run.sessions("tls12", at_least=2)
    assert sum("TLSv1.2 with cipher" in s.text() for s in sessions) >= 1
    assert any("SSL_accept error" in s.text() for s in sessions)
    # only the account allowed TLS 1.2 authenticated; the other never sent credentials
    assert [r.user for r in run.auth_requests()] == ["tls12@example.com"]


def test_tls_1_3_only(run: Run) -> None:
    run.account("tls13", "tls13")
    run.account("tls13-floor13", "tls13", minTLSVersion="1.3")
    status = run.probe()
    for name in ("tls13", "tls13-floor13"):
        assert ready(status[name]), why(status[name])
        assert status[name]["tlsVersion"] == "TLSv1.3"
    sessions = run.sessions("tls13", at_least=2)
    assert all("TLSv1.3 with cipher" in s.text() for s in sessions)


@pytest.mark.parametrize(("service", "expected"), [
    ("wronghost", "CertificateHostnameMismatch"),
    ("expired", "CertificateExpired"),
    ("nochain", "CertificateUntrusted"),
])
def test_certificate_faults_send_no_credentials(run: Run, service: str, expected: str) -> None:
    run.account(service, service)
    status = run.probe()[service]
    assert reason(status) == expected, status
    assert reason(status, "Connected") == expected
    sessions = run.sessions(service, at_least=1)
    # the probe refused the certificate: the handshake did not complete, no AUTH was tried
    assert not any("TLS connection established" in s.text() for s in sessions)
    assert no_auth(sessions)
    assert run.auth_requests(user=f"{service}@example.com") == []


def test_missing_intermediate_is_the_only_difference(run: Run) -> None:
    """The same leaf with its intermediate is trusted: the chain is what the verdict is about."""
    run.account("fullchain", "fullchain")
    status = run.probe()["fullchain"]
    assert ready(status), why(status)
    assert run.auth_requests(user="fullchain@example.com")[0].result == "OK"


def test_relay_without_auth(run: Run) -> None:
    run.account("relay", "relay", method="None")
    run.account("relay-password", "relay")
    status = run.probe()
    assert ready(status["relay"]), why(status["relay"])
    assert reason(status["relay"], "Authenticated") == "NotRequired"
    assert reason(status["relay-password"]) == "AuthMechanismUnavailable"
    sessions = run.sessions("relay", at_least=2)
    assert no_auth(sessions)
    assert all(s.commands.get("starttls") == "1" for s in sessions)
    assert run.auth_requests() == []


def test_login_only_through_dovecot(run: Run) -> None:
    run.account("loginonly", "loginonly", dovecot="login")
    status = run.probe()["loginonly"]
    assert ready(status), why(status)
    assert status["authMechanisms"] == ["LOGIN"]
    [request] = run.auth_requests("login")
    assert (request.mechanism, request.secured, request.user, request.result) == (
        "LOGIN", True, "loginonly@example.com", "OK")
    [session] = run.sessions("loginonly", at_least=1)
    assert session.commands["auth"] == "1"


def test_no_starttls_offered(run: Run) -> None:
    run.account("nostarttls", "nostarttls")
    status = run.probe()["nostarttls"]
    assert reason(status) == "StartTLSNotOffered", status
    assert "no credentials were sent" in message(status)
    sessions = run.sessions("nostarttls", at_least=1)
    assert no_auth(sessions)
    assert run.auth_requests(user="nostarttls@example.com") == []


# --------------------------------------------------------------------------- EHLO


def test_helo_name_override_passes_and_a_bare_name_is_rejected(run: Run) -> None:
    run.account("helo-fqdn", "fqdnhelo", advanced={"mail.smtp.localhost": "client.example.com"})
    run.account("helo-bare", "fqdnhelo", advanced={"mail.smtp.localhost": "laptop"})
    status = run.probe()
    assert ready(status["helo-fqdn"]), why(status["helo-fqdn"])
    bare = status["helo-bare"]
    assert reason(bare) == "ServerRejected", bare
    assert "504" in message(bare) and "fully-qualified" in message(bare)
    text = "\n".join(s.text() for s in run.sessions("fqdnhelo", at_least=2))
    assert "helo=<client.example.com>" in text
    assert "reject: EHLO from" in text and "helo=<laptop>" in text
    assert [r.user for r in run.auth_requests()] == ["helo-fqdn@example.com"]
