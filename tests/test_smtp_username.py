# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""Usernames that are credentials (issue 22 item 3): `authentication.usernameSecretRef`.

Amazon SES SMTP user names (IAM access key ids) and Postmark server tokens are read from a Secret,
sent in AUTH, published in the sender Secret like the password, and shown nowhere else: not in
status, the account file, the output or the debug log. The SMTP server on 127.0.0.1 checks the
username and the password (aiosmtpd with `users=`), so a wrong username fails to authenticate.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from typing import Any

import pytest
import yaml

from reconciler import reasons
from reconciler.cli import main
from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions
from reconciler.model import KeyRef, status_condition
from reconciler.policy import ALLOWED_HOSTS_ANNOTATION, CREDENTIAL_LABEL, SecretMeta
from reconciler.probe import probe_account
from reconciler.probe.credentials import MappingSecretReader
from tests.smtpservers import NOW
from tests.world import NS, World, servers, world  # noqa: F401

SES_USER = "AKIAZ3EXAMPLESMTPUSR"  # an access key id: what SES's SMTP user names look like
SES_PASSWORD = "BBbphbrQmrKMx42d1N6+C7VINYEBGI5v9VsZeTxwskfh"
POSTMARK_TOKEN = "8f2c1e4a-52d7-4b0e-9a61-3c5d7e9f0b12"  # a Postmark server API token


def _account(name: str, provider: str, port: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "provider": provider, **spec,
            "smtp": {
                "identity": {"emailAddress": f"{name}@example.com"},
                "connection": {"host": "127.0.0.1", "port": port, "timeoutSeconds": 5,
                               "truststore": {"configMapRef": {"name": "ca", "key": "ca.crt"}}},
                "authentication": {
                    "method": "Password",
                    "usernameSecretRef": {"name": f"{name}-smtp", "key": "username"},
                    "passwordSecretRef": {"name": f"{name}-smtp", "key": "password"}},
            }}}


def _forms(value: str) -> list[str]:
    b64 = base64.b64encode(value.encode()).decode()
    return [value, b64, b64.rstrip("="), urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value)]


@pytest.fixture
def checking_server(world: World, servers: tuple[ServerLoop, Any, Any]) -> Any:
    """STARTTLS on 127.0.0.1 that knows exactly the SES and Postmark logins, and names the
    login it refuses in its reply (as some servers do), which redaction must catch."""
    seen: list[tuple[str, str]] = []

    def check(mechanism: str, login: str, password: str) -> bool | str:
        seen.append((mechanism, login))
        if {SES_USER: SES_PASSWORD, POSTMARK_TOKEN: POSTMARK_TOKEN}.get(login) == password:
            return True
        return f"535 5.7.8 Authentication credentials invalid for {login}"  # echoes it back

    smtp = servers[0].smtp(SmtpServerOptions(mode="STARTTLS",
                                             tls_context=world.ca.server_context(),
                                             checker=check))
    smtp.seen = seen  # type: ignore[attr-defined]
    yield smtp
    smtp.close()


def test_ses_and_postmark_usernames_from_secrets(world: World, checking_server: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    port = checking_server.port
    world.write(_account("ses", "amazon-ses", port, region="eu-west-1"))
    world.secret("ses-smtp", "username", SES_USER + "\n")
    world.secret("ses-smtp", "password", SES_PASSWORD + "\n")
    world.write(_account("postmark", "postmark", port))
    world.secret("postmark-smtp", "username", POSTMARK_TOKEN)
    world.secret("postmark-smtp", "password", POSTMARK_TOKEN)
    code = main(["--log-level", "debug", "--log-format", "json", "reconcile",
                 str(world.accounts), "--store", f"local:{world.store}",
                 "--secrets-dir", str(world.secrets), "-o", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert sorted(login for _, login in checking_server.seen) == sorted(
        [SES_USER, POSTMARK_TOKEN])

    for name, user, password in (("ses", SES_USER, SES_PASSWORD),
                                 ("postmark", POSTMARK_TOKEN, POSTMARK_TOKEN)):
        status = world.status(name)
        assert status_condition(status, "Ready")["status"] == "True", status
        authenticated = status_condition(status, "Authenticated")["message"]
        assert f"the username in Secret {NS}/{name}-smtp key 'username'" in authenticated
        data = world.published_data(f"{name}-sender")
        assert data["SMTP_USERNAME"] == user and data["SMTP_PASSWORD"] == password
        assert data["EMAIL_HOST_USER"] == user
        assert f"{urllib.parse.quote(user, safe='')}:" in data["SMTP_URL"]
        assert yaml.safe_load(data["nodemailer.json"])["transport"]["auth"]["user"] == user
        assert f"mail.smtp.user={user}" in data["javamail.properties"]
        account_file = (world.store / NS / "emailaccounts" / f"{name}.yaml").read_text()
        outside = "\n".join([account_file, yaml.safe_dump(status), captured.out,
                             captured.err])
        for form in _forms(user):
            assert form not in outside, (name, form)
    assert "probed" in captured.err  # the debug log ran


def test_a_wrong_username_fails_authentication_without_showing_it(
        world: World, checking_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "AKIAZ3EXAMPLEWRONGUS"
    world.write(_account("ses", "amazon-ses", checking_server.port, region="eu-west-1"))
    world.secret("ses-smtp", "username", wrong)
    world.secret("ses-smtp", "password", SES_PASSWORD)
    assert main(["--log-level", "debug", "reconcile", str(world.accounts), "--store",
                 f"local:{world.store}", "--secrets-dir", str(world.secrets)]) == 1
    captured = capsys.readouterr()
    assert [login for _, login in checking_server.seen] == [wrong]
    status = world.status("ses")
    auth = status_condition(status, "Authenticated")
    assert auth["reason"] == reasons.AUTHENTICATION_FAILED
    assert f"the username in Secret {NS}/ses-smtp key 'username'" in auth["message"]
    everything = "\n".join([yaml.safe_dump(status), captured.out, captured.err])
    for form in _forms(wrong):
        assert form not in everything, form


def test_a_missing_username_names_the_secret_and_field(world: World, checking_server: Any,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    world.write(_account("ses", "amazon-ses", checking_server.port, region="eu-west-1"))
    world.secret("ses-smtp", "password", SES_PASSWORD)
    assert world.reconcile() == 1
    capsys.readouterr()
    assert checking_server.seen == []  # no AUTH without the username
    auth = status_condition(world.status("ses"), "Authenticated")
    assert auth["reason"] == reasons.SECRET_NOT_FOUND
    assert "'username'" in auth["message"]
    assert "/spec/smtp/authentication/usernameSecretRef" in auth["message"]


def test_the_username_secret_follows_the_opt_in_rules(world: World) -> None:
    """A username Secret bound to other hosts is refused, as a password Secret would be."""
    from reconciler.manifest.account import account_from_manifest

    account = account_from_manifest(_account("ses", "amazon-ses", 2587, region="eu-west-1"))
    user_ref = account.smtp.authentication.username  # type: ignore[union-attr]
    assert user_ref == KeyRef("ses-smtp", "username",
                              field="/spec/smtp/authentication/usernameSecretRef")
    assert user_ref in account.secret_refs()
    values = {(NS, "ses-smtp", "username"): SES_USER, (NS, "ses-smtp", "password"): SES_PASSWORD,
              (NS, "ca", "ca.crt"): world.ca.ca_pem}
    bound = SecretMeta(labels={CREDENTIAL_LABEL: "true"},
                       annotations={ALLOWED_HOSTS_ANNOTATION: "smtp.elsewhere.example"})
    reader = MappingSecretReader(values, metadata={(NS, "ses-smtp"): bound,
                                                  (NS, "ca"): SecretMeta(opted_in=True)})
    result = asyncio.run(probe_account(account, reader, now=NOW))
    assert result.authentication is not None
    assert result.authentication.reason == reasons.SECRET_NOT_ALLOWED, result.authentication
    assert "smtp.elsewhere.example" in result.authentication.message
    assert SES_USER not in result.authentication.message
