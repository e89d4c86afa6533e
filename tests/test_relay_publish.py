"""spec.relay published (issue 24): the reconciler writes what the relay and the application need
into the account's Secret, and an application configured from that Secret alone sends through the
sidecar to the upstream stand-ins.

The run is `email-reconciler reconcile` into a local store; the Secret is laid out as kubelet
mounts it (one file a key); the application is Python's smtplib reading the env keys.
"""

from __future__ import annotations

import base64
import json
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import reasons
from reconciler.cli import main
from reconciler.demo.graph import FakeGraph
from reconciler.demo.token_endpoints import Client, MicrosoftIdentity
from reconciler.manifest.account import account_from_manifest
from reconciler.model import ROTATE_RELAY_PASSWORD_ANNOTATION, Outcome, ProbeResult
from reconciler.state import relay as relay_state
from reconciler.state.render import render_data
from tests.smtpservers import LOOPBACK, ThrowawayCA, unused_port
from tests.test_relay import CLIENT_ID, CLIENT_SECRET, SENDER, TENANT, message, relay  # noqa: F401

NS = "shop"
OK = Outcome(True, reasons.SUCCEEDED, "")


def graph_doc(graph_url: str, authority: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": "orders", "namespace": NS, **extra},
            "spec": {"provider": "office365", "sendUsing": "MicrosoftGraph",
                     "relay": {"enabled": True, "port": port},
                     "graph": {"userPrincipalName": SENDER, "endpoint": graph_url,
                               "timeoutSeconds": 5, "authentication": {
                                   "tenantId": TENANT, "clientId": CLIENT_ID,
                                   "grantType": "ClientCredentials", "authority": authority,
                                   "clientSecretSecretRef": {"name": "graph-app",
                                                             "key": "client-secret"}}}}}


def oauth_doc(port: int) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": "alerts", "namespace": NS},
            "spec": {"provider": "office365", "relay": {"enabled": True, "port": port,
                                                        "senders": ["noreply@contoso.example"]},
                     "smtp": {"identity": {"emailAddress": SENDER},
                              "connection": {"truststore": {"configMapRef": {
                                  "name": "ca", "key": "ca.crt"}}},
                              "authentication": {"method": "OAuth2", "oauth2": {
                                  "grantType": "ClientCredentials", "tenantId": TENANT,
                                  "clientId": CLIENT_ID, "clientSecretSecretRef": {
                                      "name": "o365-app", "key": "client-secret"}}}}}}


# ---------------------------------------------------------------------- what is rendered


def test_formats_point_at_the_relay_and_the_relay_keys_are_published() -> None:
    account = account_from_manifest(oauth_doc(2600))
    result = ProbeResult(connection=OK, authentication=OK, ca_pem="-----BEGIN CERTIFICATE-----\n",
                         credentials={"username": SENDER, "clientSecret": CLIENT_SECRET})
    data = {k: v.decode() for k, v in render_data(account, result,
                                                  relay_password="r" * 32).items()}
    assert (data["SMTP_HOST"], data["SMTP_PORT"], data["SMTP_SECURITY"]) == (LOOPBACK, "2600",
                                                                             "None")
    assert (data["SMTP_USERNAME"], data["SMTP_PASSWORD"]) == (SENDER, "r" * 32)
    assert "mail.smtp.host=127.0.0.1" in data["javamail.properties"]
    assert "OAUTH2_CLIENT_SECRET" not in data and "ca.crt" not in data  # the app needs neither
    assert data["relay-password"] == "r" * 32
    assert data["relay-upstream-client-secret"] == CLIENT_SECRET
    assert data["relay-upstream-ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    config = json.loads(data["relay.json"])
    oauth2 = config["account"]["spec"]["smtp"]["authentication"]["oauth2"]
    assert oauth2["clientSecretSecretRef"] == {"name": "alerts-sender",
                                               "key": "relay-upstream-client-secret"}
    assert config["account"]["spec"]["smtp"]["connection"]["truststore"] == {
        "secretRef": {"name": "alerts-sender", "key": "relay-upstream-ca.crt"}}
    assert config["senders"] == ["noreply@contoso.example", SENDER]
    assert config["limits"]["messagesPerMinute"] == 30  # Exchange Online's, from the provider
    assert "relay" not in config["account"]["spec"]


@pytest.mark.parametrize("doc", [
    {"spec": {"provider": "gmail", "relay": {"enabled": True},
              "smtp": {"identity": {"emailAddress": "a@example.com"},
                       "authentication": {"method": "Password", "passwordSecretRef": {
                           "name": "s", "key": "p"}}}}},
])
def test_relay_is_refused_for_password_accounts(tmp_path: Path, doc: dict[str, Any],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
           "metadata": {"name": "a", "namespace": NS}, **doc}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "a.yaml")]) == 1
    assert "spec.relay" in capsys.readouterr().out


# ---------------------------------------------------------------------- end to end


@pytest.fixture
def idp(ca: ThrowawayCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[MicrosoftIdentity]:
    bundle = tmp_path / "idp-ca.pem"
    bundle.write_text(ca.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with MicrosoftIdentity(ca=ca, tenant_id=TENANT) as fake:
        fake.clients[CLIENT_ID] = Client(secret=CLIENT_SECRET, roles=("Mail.Send",
                                                                      "User.Read.All"))
        yield fake


def reconcile(tmp_path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """One `reconcile` into tmp_path/store; the published Secret's data, decoded."""
    accounts, secrets = tmp_path / "accounts", tmp_path / "secrets"
    accounts.mkdir(exist_ok=True)
    (accounts / "orders.yaml").write_text(yaml.safe_dump(doc))
    key = secrets / NS / "graph-app" / "client-secret"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(CLIENT_SECRET)
    main(["reconcile", str(accounts), "--secrets-dir", str(secrets),
          "--store", f"local:{tmp_path / 'store'}", "--allowed-endpoints", "127.0.0.1:*",
          "--force"])
    secret = yaml.safe_load((tmp_path / "store" / NS / "secrets" / "orders-sender.yaml")
                            .read_text())
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def status(tmp_path: Path) -> dict[str, Any]:
    doc = yaml.safe_load((tmp_path / "store" / NS / "emailaccounts" / "orders.yaml").read_text())
    return {c["type"]: c for c in doc["status"]["conditions"]}


def mounted(tmp_path: Path, data: dict[str, str]) -> Path:
    folder = tmp_path / "mounted"
    folder.mkdir(exist_ok=True)
    for key, value in data.items():
        (folder / key).write_text(value)
    return folder


def test_application_sends_through_the_sidecar_with_only_the_published_secret(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, relay: Any) -> None:  # noqa: F811
    with FakeGraph(ca=ca, idp=idp, users={SENDER}) as graph:
        port = unused_port()
        data = reconcile(tmp_path, graph_doc(graph.url, idp.url, port))
        conditions = status(tmp_path)
        assert conditions["RelayReady"]["status"] == "True", conditions["RelayReady"]
        assert conditions["Ready"]["status"] == "True", conditions["Ready"]
        relay(mounted(tmp_path, data), port=port)
        assert json.loads(data["relay.json"])["listen"]["port"] == port == int(data["SMTP_PORT"])
        env = {k: v for k, v in data.items() if k.startswith("SMTP_")}
        with smtplib.SMTP(env["SMTP_HOST"], int(env["SMTP_PORT"]), timeout=30) as app:
            app.login(env["SMTP_USERNAME"], env["SMTP_PASSWORD"])
            app.send_message(message(sender=env["SMTP_FROM"]), env["SMTP_FROM"],
                             ["alice@example.net", "bcc@example.net"])
        [sent] = graph.sent
        assert sorted(sent.recipients) == ["alice@example.net", "bcc@example.net"]


def test_relay_password_is_stable_and_rotates_when_asked(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity) -> None:
    with FakeGraph(ca=ca, idp=idp, users={SENDER}) as graph:
        doc = graph_doc(graph.url, idp.url, 2600)
        first = reconcile(tmp_path, doc)["relay-password"]
        assert reconcile(tmp_path, doc)["relay-password"] == first
        rotated_doc = graph_doc(graph.url, idp.url, 2600, annotations={
            ROTATE_RELAY_PASSWORD_ANNOTATION: "2026-12-07T09:00:00Z"})
        rotated = reconcile(tmp_path, rotated_doc)["relay-password"]
        assert rotated != first and len(rotated) >= 32
        assert reconcile(tmp_path, rotated_doc)["relay-password"] == rotated
        assert len(relay_state.new_password()) >= 32


def test_oauth2_smtp_account_relayed_with_xoauth2_from_the_published_secret(
        tmp_path: Path, ca: ThrowawayCA, idp: MicrosoftIdentity, smtp_server: Any,
        relay: Any) -> None:  # noqa: F811
    """Office 365 SMTP with client credentials: the probe authenticates with XOAUTH2, the
    Secret carries the client secret for the sidecar (a --secrets-dir counts as its owner's
    consent), and the application's plain login goes upstream as XOAUTH2."""
    def checker(mechanism: str, login: str, token: str) -> bool:
        claims = idp.issued.get(token, {})
        return (mechanism == "XOAUTH2" and login == SENDER
                and claims.get("aud") == "https://outlook.office365.com")

    upstream = smtp_server("STARTTLS", checker=checker, mechanisms=("XOAUTH2",))
    port = unused_port()
    doc = oauth_doc(port)
    doc["metadata"]["name"] = "orders"
    doc["spec"]["smtp"]["connection"].update({"host": LOOPBACK, "port": upstream.port,
                                              "security": "STARTTLS", "timeoutSeconds": 5})
    oauth2 = doc["spec"]["smtp"]["authentication"]["oauth2"]
    oauth2.update({"authority": idp.url, "clientSecretSecretRef": {"name": "graph-app",
                                                                   "key": "client-secret"}})
    ca_file = tmp_path / "secrets" / NS / "ca" / "ca.crt"
    ca_file.parent.mkdir(parents=True)
    ca_file.write_text(ca.ca_pem)
    data = reconcile(tmp_path, doc)
    conditions = status(tmp_path)
    assert conditions["RelayReady"]["status"] == "True", conditions
    assert data["relay-upstream-client-secret"] == CLIENT_SECRET
    assert data["relay-upstream-ca.crt"] == ca.ca_pem
    relay(mounted(tmp_path, data), port=port)
    with smtplib.SMTP(data["SMTP_HOST"], int(data["SMTP_PORT"]), timeout=30) as app:
        app.login(data["SMTP_USERNAME"], data["SMTP_PASSWORD"])
        app.send_message(message(sender="noreply@contoso.example"), "noreply@contoso.example",
                         ["alice@example.net"])  # a declared alias
    [received] = upstream.messages
    assert (received.mail_from, received.rcpt_tos) == ("noreply@contoso.example",
                                                       ("alice@example.net",))
    assert [a.mechanism for a in upstream.auth_attempts] == ["XOAUTH2", "XOAUTH2"]  # probe, relay
