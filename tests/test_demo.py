"""`email-reconciler demo`: SMTP, OAuth 2.0 and Microsoft Graph examples against local fakes."""

from __future__ import annotations

import base64
import io
import os
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.demo.certificates import ThrowawayCA
from reconciler.demo.command import BROKEN_NAME, BROKEN_REASON, demo_checker, run_demo
from reconciler.demo.identity import DemoIdentity
from reconciler.demo.smtp_servers import start_demo_servers

REPO = Path(__file__).resolve().parents[1]
OAUTH_ROWS = {"gmail-oauth": "STARTTLS", "office365-oauth": "STARTTLS",
              "graph-app": "MicrosoftGraph", "graph-user": "MicrosoftGraph"}
DEMO_BUDGET_SECONDS = 15.0  # the README's first command must stay quick
ROPC_DEPRECATION = "ignore:This API has been deprecated:DeprecationWarning"


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """NAME -> columns of the first table the demo prints (the reconcile report)."""
    rows: dict[str, list[str]] = {}
    for line in stdout.split("\n\n$ ")[0].splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0] == "demo":
            rows[cols[1]] = cols
    return rows


def _yaml_items(text: str) -> list[dict[str, Any]]:
    """The objects of `get -o yaml` (a List, or one document per object)."""
    items: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and isinstance(doc.get("items"), list):
            items += doc["items"]
        elif isinstance(doc, dict):
            items.append(doc)
    return items


def test_demo_subprocess_shows_oauth_and_graph_ready_quickly(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "reconciler", "demo", "--keep", str(keep)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < DEMO_BUDGET_SECONDS, f"demo took {elapsed:.1f}s"

    rows = _table_rows(proc.stdout)
    for name, protocol in OAUTH_ROWS.items():
        # NAMESPACE NAME PROVIDER VIA PROTOCOL TLS READY REASON ...
        assert rows[name][4:8] == [protocol, "TLSv1.3", "True", "Ready"], rows[name]
    # Every account is Ready but the one the demo gets wrong on purpose, shown with its fix.
    assert all(cols[6] == "True" for name, cols in rows.items() if name != BROKEN_NAME), rows
    assert rows[BROKEN_NAME][6:8] == ["False", BROKEN_REASON], rows[BROKEN_NAME]
    assert f"{BROKEN_NAME} fails on purpose" in proc.stdout
    assert f"$ email-reconciler explain {BROKEN_REASON}\n{BROKEN_REASON}: " in proc.stdout
    assert "  Fix: " in proc.stdout
    assert "Google token :" in proc.stdout and "Graph :" in proc.stdout

    statuses = {p.stem: yaml.safe_load(p.read_text())["status"]
                for p in (keep / "store" / "demo" / "emailaccounts").glob("*.yaml")}
    assert statuses["gmail-oauth"]["connectivity"] == "SMTP (Connect using STARTTLS)"
    assert statuses["graph-app"]["connectivity"] == "Microsoft Graph"
    assert "XOAUTH2" in statuses["office365-oauth"]["authMechanisms"]
    # The published Secret is shown as the application reads it, credentials masked (a URL
    # keeps its host and port, its password redacted), and `get -o yaml` shows an OAuth2 account
    # that keeps the default formats without a Warning: the defaults leave out those whose
    # consumers cannot do XOAUTH2 (issue 22), and its Secret has none of their keys.
    for key in ("SMTP_PASSWORD", "truststore.jks", "TRUSTSTORE_PASSWORD"):
        assert f"  {key}: '********'" in proc.stdout
    assert "  SMTP_HOST: 127.0.0.1\n" in proc.stdout
    assert "[REDACTED]@127.0.0.1:" in proc.stdout  # SMTP_URL, MAILER_DSN: the password only
    got = subprocess.run([sys.executable, "-m", "reconciler", "get", "-o", "yaml", "--store",
                          f"local:{keep / 'store'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=env)
    assert got.returncode == 0, got.stderr
    shown_status = {item["metadata"]["name"]: item["status"]
                    for item in _yaml_items(got.stdout)}
    assert [c for c in shown_status["gmail-oauth"]["conditions"]
            if c["type"] == "Warning" and c["status"] == "True"] == []
    published = yaml.safe_load((keep / "store" / "demo" / "secrets" /
                                "gmail-oauth-sender.yaml").read_text())["data"]
    assert {"OAUTH2_TOKEN_URL", "OAUTH2_GRANT_TYPE", "nodemailer.json"} <= set(published)
    assert not {"SMTP_URL", "MAILER_DSN", "EMAIL_URL", "EMAIL_HOST"} & set(published)

    # No generated credential is printed or written into a status.
    shown = proc.stdout + proc.stderr + "".join(
        yaml.safe_dump(s) for s in statuses.values())
    generated = [p for p in (keep / "secrets" / "demo").rglob("*")
                 if p.is_file() and p.parent.name != "demo-ca"]
    assert {p.parent.name for p in generated} >= {
        "gmail-service-account", "office365-app", "graph-app", "graph-user"}
    for path in generated:
        value = path.read_bytes().decode("utf-8", "replace").strip()
        if path.name == "username":
            continue  # a mailbox address, shown on purpose
        assert value and value not in shown, f"{path} leaked"


@pytest.mark.filterwarnings(ROPC_DEPRECATION)
def test_demo_in_process_restores_the_environment_and_stops_every_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/caller-bundle.pem")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    before = set(threading.enumerate())
    out = io.StringIO()
    assert run_demo(keep=None, out=out) == 0, out.getvalue()
    assert os.environ["REQUESTS_CA_BUNDLE"] == "/nonexistent/caller-bundle.pem"
    assert "SSL_CERT_FILE" not in os.environ
    assert set(_table_rows(out.getvalue())) >= set(OAUTH_ROWS)
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, left


def _xoauth2(login: str, token: str) -> str:
    return base64.b64encode(f"user={login}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def test_demo_smtp_server_accepts_only_tokens_the_fakes_issued(tmp_path: Path) -> None:
    """The demo servers are not open: a forged bearer token or a wrong password gets 535."""
    ca = ThrowawayCA()
    users = {"billing@example.com": "right-password-123"}
    with (DemoIdentity(ca) as identity,
          start_demo_servers(users, checker=demo_checker(users, identity), ca=ca) as servers):
        context = ssl.create_default_context(cadata=ca.ca_pem)
        with smtplib.SMTP("127.0.0.1", servers.starttls.port, timeout=5) as client:
            client.starttls(context=context)
            client.ehlo()
            code, _ = client.docmd("AUTH", "XOAUTH2 " + _xoauth2("support@example.com",
                                                                 "ya29.forged"))
            if code == 334:  # the error challenge; an empty line ends the exchange
                code, _ = client.docmd("")
            assert code == 535
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("billing@example.com", "wrong-password")
            client.login("billing@example.com", "right-password-123")
        seen = [(a.mechanism, a.accepted) for a in servers.starttls.auth_attempts]
        # smtplib tries each mechanism the server offers before giving up on a wrong password.
        assert seen[0] == ("XOAUTH2", False) and seen[-1] == ("PLAIN", True)
        assert not any(accepted for _, accepted in seen[:-1]), seen
