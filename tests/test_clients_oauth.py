"""Graph and XOAUTH2 applications configured only from the published Secret (issue 22 item 4).

Each account is reconciled by the CLI into a local store against the stand-ins on 127.0.0.1 (a
Microsoft tenant, Google's token endpoint, Graph with sendMail, an SMTP server taking XOAUTH2
bearer tokens the stand-ins issued); its published Secret is laid out as Kubernetes gives it
(files, and envFrom variables); the README's programs (tests/clients/snippets/send-graph.py and
send-xoauth2.py) then request their own token from what the Secret says and send. The only
other input they get is HTTPS trust for the stand-ins' private CA (REQUESTS_CA_BUNDLE,
SSL_CERT_FILE), as a cluster's system trust store gives it for the real services.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.certificates import ThrowawayCA
from reconciler.demo.identity import DemoIdentity
from reconciler.demo.smtp_servers import RunningServer, ServerLoop, SmtpServerOptions
from reconciler.demo.token_endpoints import client_certificate
from reconciler.model import status_condition
from tests.clients.runners import SNIPPETS
from tests.clients.secret import ENV_NAME

NS = "apps"
TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT_SECRET = "graph~S3cret~value~0123456789"
USER_PASSWORD = "user-Pa55word-4711"
ROPC_DEPRECATION = "ignore::DeprecationWarning"


@dataclass
class Stage:
    ca: ThrowawayCA
    bundle: Path
    identity: DemoIdentity
    smtp: RunningServer


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    ca = ThrowawayCA("client tests CA")
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    bundle.write_text(ca.ca_pem)
    with DemoIdentity(ca, [TENANT]) as identity, ServerLoop() as loop:
        def check(mechanism: str, login: str, secret: str) -> bool:
            return mechanism == "XOAUTH2" and identity.accepts_xoauth2(login, secret)

        smtp = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                           checker=check))
        yield Stage(ca, bundle, identity, smtp)


@pytest.fixture
def trust(stage: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler's own HTTPS trust for the stand-ins (msal and requests read it)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stage.bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(stage.bundle))


def _write(path: Path, value: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value.encode() if isinstance(value, str) else value)


def _reconcile(tmp: Path, doc: dict[str, Any], secrets: dict[tuple[str, str], str | bytes],
               ca_pem: str) -> dict[str, bytes]:
    """Reconcile one account into a local store; its published Secret's data."""
    name = doc["metadata"]["name"]
    _write(tmp / "accounts" / f"{name}.yaml", yaml.safe_dump(doc))
    _write(tmp / "secrets" / NS / "ca" / "ca.crt", ca_pem)
    for (secret, key), value in secrets.items():
        _write(tmp / "secrets" / NS / secret / key, value)
    code = main(["reconcile", str(tmp / "accounts"), "--store", f"local:{tmp / 'store'}",
                 "--secrets-dir", str(tmp / "secrets"), "--allowed-endpoints", "127.0.0.1:*"])
    status = yaml.safe_load((tmp / "store" / NS / "emailaccounts" / f"{name}.yaml").read_text())
    assert code == 0, status.get("status")
    assert status_condition(status["status"], "Ready")["status"] == "True"
    published = yaml.safe_load((tmp / "store" / NS / "secrets" / f"{name}-sender.yaml")
                               .read_text())
    return {k: base64.b64decode(v) for k, v in published["data"].items()}


def _run_snippet(snippet: str, data: dict[str, bytes], mount: Path, bundle: Path, to: str,
                 subject: str) -> subprocess.CompletedProcess[str]:
    """The program with the Secret mounted at `mount` and its keys as envFrom variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(mount),
           "LANG": "C.UTF-8", "SENDER_DIR": str(mount),
           "REQUESTS_CA_BUNDLE": str(bundle), "SSL_CERT_FILE": str(bundle),
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    for key, value in data.items():
        _write(mount / key, value)
        if ENV_NAME.match(key):
            env[key] = value.decode("utf-8")
    return subprocess.run([sys.executable, str(SNIPPETS / snippet), to, subject], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _graph_doc(name: str, upn: str, client_id: str, auth: dict[str, Any],
               publish: bool = True) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"provider": "office365", "sendUsing": "MicrosoftGraph",
                     "graph": {"userPrincipalName": upn, "replyTo": "replies@example.test",
                               "timeoutSeconds": 10, "endpoint": "GRAPH",
                               "authentication": {"tenantId": TENANT, "clientId": client_id,
                                                  "authority": "AUTHORITY", **auth}},
                     "publish": {"clientCredentials": publish}}}


def _point(doc: dict[str, Any], stage: Stage) -> dict[str, Any]:
    graph = doc["spec"].get("graph")
    if graph:
        graph["endpoint"] = stage.identity.graph.url
        graph["authentication"]["authority"] = stage.identity.microsoft.url
    return doc


GRAPH_CASES = ["client-secret", "client-certificate", "password"]


@pytest.mark.filterwarnings(ROPC_DEPRECATION)
@pytest.mark.parametrize("case", GRAPH_CASES)
def test_graph_send_mail_from_the_published_secret(case: str, stage: Stage, trust: None,
                                                   tmp_path: Path) -> None:
    identity = stage.identity
    upn, client_id = f"{case}@example.test", f"app-{case}"
    secrets: dict[tuple[str, str], str | bytes] = {}
    if case == "client-secret":
        identity.enroll_app(client_id, secret=CLIENT_SECRET)
        identity.enroll_mailbox(upn)
        auth: dict[str, Any] = {"clientSecretSecretRef": {"name": "graph-app", "key": "secret"}}
        secrets[("graph-app", "secret")] = CLIENT_SECRET
    elif case == "client-certificate":
        certificate, pem = client_certificate(f"{client_id}.example.test")
        identity.enroll_app(client_id, certificate=certificate)
        identity.enroll_mailbox(upn)
        auth = {"clientCertificateSecretRef": {"name": "graph-app", "key": "tls.pem"}}
        secrets[("graph-app", "tls.pem")] = pem
    else:
        identity.enroll_app(client_id, public=True)
        identity.enroll_user(upn, USER_PASSWORD)
        auth = {"grantType": "Password",
                "usernameSecretRef": {"name": "graph-user", "key": "username"},
                "passwordSecretRef": {"name": "graph-user", "key": "password"}}
        secrets[("graph-user", "username")] = upn
        secrets[("graph-user", "password")] = USER_PASSWORD
    doc = _point(_graph_doc(case, upn, client_id, auth, publish=case != "password"), stage)
    data = _reconcile(tmp_path, doc, secrets, stage.ca.ca_pem)
    assert data["GRAPH_TOKEN_URL"].decode() == (
        f"{identity.microsoft.url}/{TENANT}/oauth2/v2.0/token")
    before = len(identity.graph.sent)
    proc = _run_snippet("send-graph.py", data, tmp_path / "mount", stage.bundle,
                        f"rcpt-{case}@example.test", f"graph {case}")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    [sent] = identity.graph.sent[before:]
    assert (sent.sender, sent.recipients, sent.client_id, sent.delegated) == (
        upn, (f"rcpt-{case}@example.test",), client_id, case == "password")
    msg = email.message_from_bytes(sent.mime, policy=email.policy.default)
    assert msg["Subject"] == f"graph {case}" and msg["Reply-To"] == "replies@example.test"


def test_without_publish_client_credentials_the_secret_holds_no_client_secret(
        stage: Stage, trust: None, tmp_path: Path) -> None:
    """The same Graph account without the option: its Secret cannot send on its own."""
    stage.identity.enroll_app("app-unpublished", secret=CLIENT_SECRET)
    stage.identity.enroll_mailbox("unpublished@example.test")
    doc = _point(_graph_doc("unpublished", "unpublished@example.test", "app-unpublished",
                            {"clientSecretSecretRef": {"name": "graph-app", "key": "secret"}},
                            publish=False), stage)
    data = _reconcile(tmp_path, doc, {("graph-app", "secret"): CLIENT_SECRET}, stage.ca.ca_pem)
    assert "GRAPH_CLIENT_SECRET" not in data
    assert all(CLIENT_SECRET.encode() not in value for value in data.values())
    before = len(stage.identity.graph.sent)
    proc = _run_snippet("send-graph.py", data, tmp_path / "mount", stage.bundle,
                        "rcpt@example.test", "unpublished")
    assert proc.returncode != 0 and len(stage.identity.graph.sent) == before


def _smtp_doc(name: str, address: str, oauth2: dict[str, Any], port: int) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"provider": "custom",
                     "smtp": {"identity": {"emailAddress": address, "displayName": "Zoë Orders"},
                              "connection": {"host": "127.0.0.1", "port": port,
                                             "security": "STARTTLS", "timeoutSeconds": 10,
                                             "truststore": {"configMapRef": {
                                                 "name": "ca", "key": "ca.crt"}}},
                              "authentication": {"method": "OAuth2", "oauth2": oauth2}},
                     "publish": {"clientCredentials": True}}}


@pytest.mark.parametrize("grant", ["ClientCredentials", "JWTBearer"])
def test_xoauth2_from_the_published_secret(grant: str, stage: Stage, trust: None,
                                           tmp_path: Path) -> None:
    identity = stage.identity
    address = f"{grant.lower()}@example.test"
    if grant == "ClientCredentials":
        client_id = "app-smtp"
        identity.enroll_app(client_id, secret=CLIENT_SECRET)
        oauth2: dict[str, Any] = {
            "grantType": grant, "tenantId": TENANT, "clientId": client_id,
            "authority": identity.microsoft.url,
            "clientSecretSecretRef": {"name": "smtp-app", "key": "secret"}}
        secrets: dict[tuple[str, str], str | bytes] = {("smtp-app", "secret"): CLIENT_SECRET}
    else:
        oauth2 = {"grantType": grant, "subject": address, "tokenUrl": identity.google.token_url,
                  "serviceAccountKeySecretRef": {"name": "sa", "key": "key.json"}}
        secrets = {("sa", "key.json"): identity.enroll_service_account(address)}
    # provider custom with JWTBearer needs no Google host; ClientCredentials is office365-only
    doc = _smtp_doc(grant.lower(), address, oauth2, stage.smtp.port)
    if grant == "ClientCredentials":
        doc["spec"]["provider"] = "office365"
    data = _reconcile(tmp_path, doc, secrets, stage.ca.ca_pem)
    assert not {"SMTP_URL", "MAILER_DSN", "EMAIL_URL"} & set(data)  # OAuth2 default formats
    assert data["OAUTH2_GRANT_TYPE"].decode() == grant
    before = len(stage.smtp.messages)
    proc = _run_snippet("send-xoauth2.py", data, tmp_path / "mount", tmp_path / "mount" / "ca.crt",
                        f"rcpt-{grant}@example.test", f"xoauth2 {grant}")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    [got] = stage.smtp.messages[before:]
    assert got.authenticated_as == address and got.mail_from == address
    assert got.rcpt_tos == (f"rcpt-{grant}@example.test",)
    assert stage.smtp.auth_attempts[-1].mechanism == "XOAUTH2"
