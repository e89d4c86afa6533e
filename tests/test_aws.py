# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""Amazon SES SMTP credentials derived from an IAM access key (authentication.method AWSAccessKey).

Vectors: (1) the ones terraform-provider-aws checks its own derivation against
(internal/service/iam/access_key_test.go, TestSESSMTPPasswordFromSecretKeySigV4), an
implementation known to authenticate against SES; (2) a second implementation written here
straight from AWS's description (docs.aws.amazon.com/ses/latest/dg/smtp-credentials.html), run
over several regions and keys. End to end: a reconcile against an aiosmtpd server that accepts
only the derived password is Ready, publishes that password, and shows the IAM secret key
nowhere (Secret, status, logs, output), in plain, base64 or URL-encoded form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions
from reconciler.model import status_condition
from reconciler.probe.aws import ses_smtp_password
from tests.world import NS, World, servers, world  # noqa: F401

TERRAFORM_VECTORS = [
    ("eu-central-1", "some+secret+key", "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2"),
    ("eu-central-1", "another+secret+key", "BBbphbrQmrKMx42d1N6+C7VINYEBGI5v9VsZeTxwskfh"),
    ("us-west-1", "some+secret+key", "BH+jbMzper5WwlwUar9E1ySBqHa9whi0GPo+sJ0mVYJj"),
    ("us-west-1", "another+secret+key", "BKVmjjMDFk/qqw8EROW99bjCS65PF8WKvK5bSr4Y6EqF"),
]


@pytest.mark.parametrize(("region", "secret", "expected"), TERRAFORM_VECTORS)
def test_terraform_provider_aws_vectors(region: str, secret: str, expected: str) -> None:
    assert ses_smtp_password(secret, region) == expected


def _aws_description(secret_access_key: str, region: str) -> str:
    """AWS's published pseudocode, transcribed step by step (kept independent of the module)."""
    date, service, terminal, message, version = "11111111", "ses", "aws4_request", \
        "SendRawEmail", 0x04

    def sign(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()

    signature = sign(("AWS4" + secret_access_key).encode("utf-8"), date)
    signature = sign(signature, region)
    signature = sign(signature, service)
    signature = sign(signature, terminal)
    signature = sign(signature, message)
    return base64.b64encode(bytes([version]) + signature).decode("utf-8")


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1",
                                    "sa-east-1"])
@pytest.mark.parametrize("secret", ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "+/=", "ü-key"])
def test_matches_awss_description(region: str, secret: str) -> None:
    derived = ses_smtp_password(secret, region)
    assert derived == _aws_description(secret, region)
    raw = base64.b64decode(derived)
    assert raw[0] == 0x04 and len(raw) == 33


def test_the_password_is_per_region() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert ses_smtp_password(secret, "eu-west-1") != ses_smtp_password(secret, "us-east-1")


# ------------------------------------------------------------------------------- end to end

KEY_ID = "AKIDTESTSES0EXAMPLE1"
IAM_SECRET = "iam/Secret+Access=Key-9zX2q7Lw0pVb3NcR8tYk"
REGION = "eu-west-1"


def _ses_account(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
        "metadata": {"name": "receipts", "namespace": NS},
        "spec": {
            "provider": "amazon-ses", "region": REGION,
            "smtp": {
                "identity": {"emailAddress": "receipts@example.com"},
                "connection": {"host": "127.0.0.1", "port": port, "timeoutSeconds": 5,
                               "truststore": {"configMapRef": {"name": "ca", "key": "ca.crt"}}},
                "authentication": {"method": "AWSAccessKey",
                                   "accessKeySecretRef": {"name": "ses-iam"}},
            }}}


def _forms(value: str) -> list[str]:
    b64 = base64.b64encode(value.encode()).decode()
    return [value, b64, b64.rstrip("="), urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value)]


def test_reconcile_with_an_iam_access_key(world: World, servers: tuple[ServerLoop, Any, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    expected = _aws_description(IAM_SECRET, REGION)
    seen: list[tuple[str, str]] = []

    def ses(mechanism: str, login: str, password: str) -> bool | str:
        seen.append((login, password == expected))
        if login == KEY_ID and password == expected:
            return True
        return "535 Authentication Credentials Invalid"

    smtp = servers[0].smtp(SmtpServerOptions(mode="STARTTLS", tls_context=world.ca.server_context(),
                                       checker=ses))
    try:
        world.write(_ses_account(smtp.port))
        world.secret("ses-iam", "AWS_ACCESS_KEY_ID", KEY_ID + "\n")
        world.secret("ses-iam", "AWS_SECRET_ACCESS_KEY", IAM_SECRET + "\n")
        code = main(["--log-level", "debug", "--log-format", "json", "reconcile",
                     str(world.accounts), "--store", f"local:{world.store}",
                     "--secrets-dir", str(world.secrets), "-o", "json"])
    finally:
        smtp.close()
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert seen == [(KEY_ID, True)]

    status = world.status("receipts")
    ready = status_condition(status, "Ready")
    assert ready is not None and ready["status"] == "True", status
    data = world.published_data("receipts-sender")
    assert data["SMTP_USERNAME"] == KEY_ID and data["SMTP_PASSWORD"] == expected
    assert data["SMTP_HOST"] == "127.0.0.1"
    assert expected in data["SMTP_URL"] or urllib.parse.quote(expected, safe="") in data[
        "SMTP_URL"]

    published = (world.store / NS / "secrets" / "receipts-sender.yaml").read_text()
    decoded = "\n".join(data.values())
    account_file = (world.store / NS / "emailaccounts" / "receipts.yaml").read_text()
    everything = "\n".join([published, decoded, account_file, yaml.safe_dump(status),
                            captured.out, captured.err])
    for form in _forms(IAM_SECRET):
        assert form not in everything, form
    # the derived password is published, and nowhere else
    outside = "\n".join([account_file, captured.out, captured.err])
    for form in _forms(expected):
        assert form not in outside, form
    assert "probed" in captured.err  # the debug log ran


def test_a_missing_access_key_names_the_secret_and_key(world: World,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    world.write(_ses_account(world.starttls.port))
    world.secret("ses-iam", "AWS_ACCESS_KEY_ID", KEY_ID)
    assert main(["reconcile", str(world.accounts), "--store", f"local:{world.store}",
                 "--secrets-dir", str(world.secrets)]) == 1
    status = world.status("receipts")
    auth = status_condition(status, "Authenticated") or status_condition(status, "Ready")
    assert auth is not None and "ses-iam" in auth["message"]
    assert "AWS_SECRET_ACCESS_KEY" in auth["message"]
    capsys.readouterr()


def test_validate_accepts_aws_access_key_only_for_amazon_ses(tmp_path: Path) -> None:
    from reconciler.manifest.validate import validate_document

    good = _ses_account(587)
    assert [d for d in validate_document(good) if d.severity != "note"] == []
    bad = _ses_account(587)
    bad["spec"]["provider"] = "custom"
    del bad["spec"]["region"]
    [d] = [d for d in validate_document(bad) if d.severity == "error"]
    assert d.pointer == "/spec/smtp/authentication/method" and "only for provider: amazon-ses" \
        in d.message
    missing = _ses_account(587)
    del missing["spec"]["smtp"]["authentication"]["accessKeySecretRef"]
    errors = [d for d in validate_document(missing) if d.severity == "error"]
    assert errors and errors[0].pointer.endswith("/accessKeySecretRef")
