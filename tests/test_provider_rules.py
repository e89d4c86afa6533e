"""Provider presets seen from the outside: `validate --show-effective` per provider, region and
tier; the provider rules `validate` enforces; the README table; Microsoft's dated schedule."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.manifest import providers
from reconciler.manifest.validate import validate_document

ROOT = Path(__file__).parent.parent


def _manifest(provider: str, *, region: str | None = None, tier: str | None = None,
              method: str = "Password", identity: dict[str, str] | None = None,
              connection: dict[str, Any] | None = None,
              username_ref: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": provider}
    if region is not None:
        spec["region"] = region
    if tier is not None:
        spec["tier"] = tier
    auth: dict[str, Any] = {"method": method}
    if method == "Password":
        auth["passwordSecretRef"] = {"name": "smtp", "key": "password"}
        if username_ref:
            auth["usernameSecretRef"] = {"name": "smtp", "key": "username"}
    if method == "AWSAccessKey":
        auth["accessKeySecretRef"] = {"name": "iam"}
    spec["smtp"] = {"identity": {"emailAddress": "sender@example.com", **(identity or {})},
                    "authentication": auth}
    if connection:
        spec["smtp"]["connection"] = connection
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": "sender", "namespace": "ns"}, "spec": spec}


def _effective(tmp_path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The effective manifest as `validate --show-effective -o json` prints it."""
    path = tmp_path / "account.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        code = main(["validate", "--show-effective", "-o", "json", str(path)])
    report = json.loads(out.getvalue())
    assert code == 0, report
    [account] = report["accounts"]
    effective: dict[str, Any] = account["effective"]
    return effective


#: (provider, region, tier, host, port, security, username) — the table of DESIGN §3 presets.
#: username None: the emailAddress (the provider fixes none).
EXPECTED = [
    ("gmail", None, None, "smtp.gmail.com", 587, "STARTTLS", None),
    ("office365", None, None, "smtp.office365.com", 587, "STARTTLS", None),
    ("yahoo", None, None, "smtp.mail.yahoo.com", 465, "SMTPS", None),
    ("icloud", None, None, "smtp.mail.me.com", 587, "STARTTLS", None),
    ("zoho", None, None, "smtp.zoho.com", 465, "SMTPS", None),
    ("zoho", "us", "free", "smtp.zoho.com", 465, "SMTPS", None),
    ("zoho", "eu", None, "smtp.zoho.eu", 465, "SMTPS", None),
    ("zoho", "in", None, "smtp.zoho.in", 465, "SMTPS", None),
    ("zoho", "au", None, "smtp.zoho.com.au", 465, "SMTPS", None),
    ("zoho", "jp", None, "smtp.zoho.jp", 465, "SMTPS", None),
    ("zoho", "cn", None, "smtp.zoho.com.cn", 465, "SMTPS", None),
    ("zoho", "sa", None, "smtp.zoho.sa", 465, "SMTPS", None),
    ("zoho", None, "paid", "smtppro.zoho.com", 465, "SMTPS", None),
    ("zoho", "us", "paid", "smtppro.zoho.com", 465, "SMTPS", None),
    ("zoho", "eu", "paid", "smtppro.zoho.eu", 465, "SMTPS", None),
    ("zoho", "in", "paid", "smtppro.zoho.in", 465, "SMTPS", None),
    ("zoho", "au", "paid", "smtppro.zoho.com.au", 465, "SMTPS", None),
    ("zoho", "jp", "paid", "smtppro.zoho.jp", 465, "SMTPS", None),
    ("zoho", "cn", "paid", "smtppro.zoho.com.cn", 465, "SMTPS", None),
    ("zoho", "sa", "paid", "smtppro.zoho.sa", 465, "SMTPS", None),
    ("sendgrid", None, None, "smtp.sendgrid.net", 587, "STARTTLS", "apikey"),
    ("mailgun", None, None, "smtp.mailgun.org", 587, "STARTTLS", None),
    ("mailgun", "us", None, "smtp.mailgun.org", 587, "STARTTLS", None),
    ("mailgun", "eu", None, "smtp.eu.mailgun.org", 587, "STARTTLS", None),
    ("amazon-ses", "eu-west-1", None, "email-smtp.eu-west-1.amazonaws.com", 587, "STARTTLS",
     None),
    ("amazon-ses", "us-east-1", None, "email-smtp.us-east-1.amazonaws.com", 587, "STARTTLS",
     None),
    ("amazon-ses", "us-gov-west-1", None, "email-smtp.us-gov-west-1.amazonaws.com", 587,
     "STARTTLS", None),
    ("postmark", None, None, "smtp.postmarkapp.com", 587, "STARTTLS", None),
    ("brevo", None, None, "smtp-relay.brevo.com", 587, "STARTTLS", None),
    ("sparkpost", None, None, "smtp.sparkpostmail.com", 587, "STARTTLS", "SMTP_Injection"),
    ("sparkpost", "us", None, "smtp.sparkpostmail.com", 587, "STARTTLS", "SMTP_Injection"),
    ("sparkpost", "eu", None, "smtp.eu.sparkpostmail.com", 587, "STARTTLS", "SMTP_Injection"),
    ("resend", None, None, "smtp.resend.com", 465, "SMTPS", "resend"),
    ("scaleway", None, None, "smtp.tem.scaleway.com", 587, "STARTTLS", None),
    ("fastmail", None, None, "smtp.fastmail.com", 465, "SMTPS", None),
    ("mailjet", None, None, "in-v3.mailjet.com", 587, "STARTTLS", None),
]


@pytest.mark.parametrize(("provider", "region", "tier", "host", "port", "security", "username"),
                         EXPECTED)
def test_effective_preset(tmp_path: Path, provider: str, region: str | None, tier: str | None,
                          host: str, port: int, security: str, username: str | None) -> None:
    spec = _effective(tmp_path, _manifest(provider, region=region, tier=tier))["spec"]
    conn = spec["smtp"]["connection"]
    assert (conn["host"], conn["port"], conn["security"]) == (host, port, security)
    assert spec["smtp"]["identity"]["userId"] == (username or "sender@example.com")
    p = providers.preset(provider)
    assert p is not None
    if p.regions:
        assert spec["region"] == (region or p.default_region)
    if p.tiers:
        assert spec["tier"] == (tier or p.default_tier)


def test_every_provider_region_and_tier_is_in_the_table() -> None:
    covered = {(p, r, t) for p, r, t, *_ in EXPECTED}
    for p in providers.PRESET_LIST:
        if p.provider == "outlook":
            continue  # no method we support: its manifests fail validation (tested below)
        assert any(c[0] == p.provider for c in covered), p.provider
        for region in p.regions:
            for tier in p.tiers or [None]:
                assert any(c[0] == p.provider and (c[1] or p.default_region) == region
                           and (c[2] or p.default_tier) == tier for c in covered), (region, tier)


@pytest.mark.parametrize(("provider", "connection", "expected"), [
    ("amazon-ses", {"port": 2587}, ("email-smtp.eu-west-1.amazonaws.com", 2587, "STARTTLS")),
    ("amazon-ses", {"port": 465}, ("email-smtp.eu-west-1.amazonaws.com", 465, "SMTPS")),
    ("amazon-ses", {"port": 2465}, ("email-smtp.eu-west-1.amazonaws.com", 2465, "SMTPS")),
    ("resend", {"port": 2587}, ("smtp.resend.com", 2587, "STARTTLS")),
    ("resend", {"port": 2465}, ("smtp.resend.com", 2465, "SMTPS")),
    ("sendgrid", {"host": "relay.example.com", "port": 2525},
     ("relay.example.com", 2525, "STARTTLS")),
])
def test_documented_ports_and_explicit_values(tmp_path: Path, provider: str,
                                              connection: dict[str, Any],
                                              expected: tuple[str, int, str]) -> None:
    region = "eu-west-1" if provider == "amazon-ses" else None
    conn = _effective(tmp_path, _manifest(provider, region=region, connection=connection))[
        "spec"]["smtp"]["connection"]
    assert (conn["host"], conn["port"], conn["security"]) == expected


def test_explicit_username_wins_over_the_fixed_one(tmp_path: Path) -> None:
    doc = _manifest("sparkpost", identity={"userId": "SMTP_Injection"})
    assert _effective(tmp_path, doc)["spec"]["smtp"]["identity"]["userId"] == "SMTP_Injection"


def _findings(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(d.severity, d.pointer, d.message) for d in validate_document(doc)]


@pytest.mark.parametrize(("doc", "severity", "pointer", "words"), [
    (_manifest("outlook"), "error", "/spec/smtp/authentication/method",
     ["no longer accepts passwords", "2024-09-16", "no client credentials",
      "provider: office365", "ClientCredentials", "sendUsing: MicrosoftGraph"]),
    (_manifest("gmail"), "note", "/spec/smtp/authentication/passwordSecretRef",
     ["requires an app password", "Secret smtp key 'password'", "domain-wide delegation"]),
    (_manifest("yahoo"), "note", "/spec/smtp/authentication/passwordSecretRef",
     ["requires an app password", "Secret smtp key 'password'"]),
    (_manifest("icloud"), "note", "/spec/smtp/authentication/passwordSecretRef",
     ["requires an app password"]),
    (_manifest("fastmail"), "note", "/spec/smtp/authentication/passwordSecretRef",
     ["requires an app password"]),
    (_manifest("sendgrid", identity={"userId": "me@example.com"}), "warning",
     "/spec/smtp/identity/userId", ["fixes the SMTP username to 'apikey'", "remove userId"]),
    (_manifest("sparkpost", identity={"userId": "someone"}), "warning",
     "/spec/smtp/identity/userId", ["'SMTP_Injection'", "remove userId"]),
    (_manifest("resend", identity={"userId": "someone"}), "warning",
     "/spec/smtp/identity/userId", ["'resend'"]),
    (_manifest("office365", method="None", connection={"minTLSVersion": "1.1"}), "error",
     "/spec/smtp/connection/minTLSVersion",
     ["refuses TLS below 1.2", "421 4.7.66", 'set minTLSVersion "1.2" or higher']),
    (_manifest("office365", method="None", connection={"minTLSVersion": "1.0"}), "error",
     "/spec/smtp/connection/minTLSVersion", ["refuses TLS below 1.2"]),
    (_manifest("zoho", region="us-east-1"), "error", "/spec/region",
     ["regions us, eu, in, au, jp, cn, sa", "default us"]),
    (_manifest("mailgun", region="in"), "error", "/spec/region", ["regions us, eu"]),
    (_manifest("gmail", region="eu"), "error", "/spec/region",
     ["has no regions", "remove spec.region"]),
    (_manifest("amazon-ses", region="eu"), "error", "/spec/region", ["AWS region name"]),
    (_manifest("sendgrid", tier="paid"), "error", "/spec/tier", ["remove spec.tier"]),
    (_manifest("postmark"), "warning", "/spec/smtp/identity",
     ["SMTP token", "usernameSecretRef", "set identity.userId", "Postmark refuses"]),
    (_manifest("amazon-ses", region="eu-west-1"), "warning", "/spec/smtp/identity",
     ["IAM access key id", "usernameSecretRef", "Amazon SES refuses"]),
    (_manifest("mailjet"), "warning", "/spec/smtp/identity", ["API key"]),
    (_manifest("scaleway"), "warning", "/spec/smtp/identity", ["Project ID"]),
    (_manifest("brevo"), "warning", "/spec/smtp/identity", ["SMTP login"]),
    (_manifest("sendgrid", username_ref=True), "warning",
     "/spec/smtp/authentication/usernameSecretRef", ["'apikey'", "remove usernameSecretRef"]),
    (_manifest("amazon-ses", region="eu-west-1", identity={"userId": "AKIAIOSFODNN7EXAMPLE"}),
     "warning", "/spec/smtp/identity/userId",
     ["an AWS access key id", "authentication.usernameSecretRef"]),
    (_manifest("custom", method="AWSAccessKey", connection={"host": "mail.example.com"}),
     "error", "/spec/smtp/authentication/method", ["only for provider: amazon-ses"]),
])
def test_provider_rules(doc: dict[str, Any], severity: str, pointer: str,
                        words: list[str]) -> None:
    found = [f for f in _findings(doc) if f[1] == pointer and f[0] == severity]
    assert found, _findings(doc)
    for w in words:
        assert w in found[0][2], (w, found[0][2])


@pytest.mark.parametrize("doc", [
    _manifest("amazon-ses", region="eu-west-1", username_ref=True),
    _manifest("postmark", username_ref=True),
    _manifest("mailjet", identity={"userId": "0123456789abcdef0123456789abcdef"}),
    _manifest("amazon-ses", region="eu-west-1", method="AWSAccessKey"),
    _manifest("mailgun"), _manifest("gmail"), _manifest("sendgrid"),
], ids=["ses-secret", "postmark-secret", "mailjet-userId", "ses-iam", "mailgun", "gmail",
        "sendgrid"])
def test_a_named_or_implied_username_draws_no_warning(doc: dict[str, Any]) -> None:
    assert [f for f in _findings(doc) if f[0] != "note"] == []


def test_a_username_from_a_secret_is_not_the_user_id(tmp_path: Path) -> None:
    smtp = _effective(tmp_path, _manifest("amazon-ses", region="eu-west-1",
                                          username_ref=True))["spec"]["smtp"]
    assert "userId" not in smtp["identity"]
    assert smtp["authentication"]["usernameSecretRef"] == {"name": "smtp", "key": "username"}


def test_provider_rule_diagnostics_name_file_document_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    second = _manifest("outlook")
    second["metadata"]["name"] = "other"
    path.write_text(yaml.safe_dump_all([_manifest("gmail"), second]))
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        code = main(["validate", str(path)])
    text = out.getvalue()
    assert code == 1
    assert (f"{path}:" in text and "document 2: /spec/smtp/authentication/method: provider "
            "outlook" in text), text
    assert "document 1: /spec/smtp/authentication/passwordSecretRef: note: provider gmail" in text
    assert "1 error, 0 warnings, 1 note" in text


def test_aws_access_key_effective_manifest(tmp_path: Path) -> None:
    spec = _effective(tmp_path, _manifest("amazon-ses", region="eu-central-1",
                                          method="AWSAccessKey"))["spec"]
    assert spec["smtp"]["authentication"]["accessKeySecretRef"] == {
        "name": "iam", "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
        "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY"}
    assert "userId" not in spec["smtp"]["identity"]  # the username is the access key id
    doc = _manifest("amazon-ses", region="eu-central-1", method="AWSAccessKey",
                    identity={"userId": "someone"})
    assert [(s, p) for s, p, _ in _findings(doc)] == [("warning", "/spec/smtp/identity/userId")]


def test_a_fixed_username_equal_to_the_preset_and_floors_met_are_quiet() -> None:
    assert _findings(_manifest("sendgrid", identity={"userId": "apikey"})) == []
    assert _findings(_manifest("office365", method="None",
                               connection={"minTLSVersion": "1.3"})) == []


def test_readme_table_is_generated_from_the_data() -> None:
    readme = (ROOT / "README.md").read_text()
    assert providers.render_table() in readme, (
        "README.md's provider table is stale: regenerate it with "
        "`python -m reconciler.manifest.providers` (or providers.replace_table)")
    assert providers.replace_table(readme) == readme


def test_every_preset_names_its_source_and_check_date() -> None:
    for p in providers.PRESET_LIST:
        assert p.source and p.checked == "2026-12-01", p.provider
        assert p.notes, p.provider


# ------------------------------------------------------------------ Microsoft's dated schedule

BEFORE = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
LAST_DAY_BEFORE = dt.datetime(2026, 12, 30, 23, 59, tzinfo=dt.UTC)
AFTER = dt.datetime(2026, 12, 31, 0, 0, tzinfo=dt.UTC)
LATER = dt.datetime(2027, 8, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("now", [BEFORE, LAST_DAY_BEFORE])
def test_basic_auth_schedule_before_the_end_of_december(now: dt.datetime) -> None:
    text = providers.basic_auth_message("smtp.office365.com", now)
    assert "unchanged until the end of December 2026" in text
    assert "disabled by default for existing tenants on 2026-12-31" in text
    assert "an admin can re-enable it" in text
    assert "unavailable for tenants created after December 2026" in text
    assert "announces the final removal date in the second half of 2027" in text
    assert "OAuth2 with oauth2.grantType: ClientCredentials, or sendUsing: MicrosoftGraph" in text
    assert "since" not in text


@pytest.mark.parametrize("now", [AFTER, LATER])
def test_basic_auth_schedule_after_the_end_of_december(now: dt.datetime) -> None:
    text = providers.basic_auth_message("smtp.office365.com", now)
    assert "disabled by default for existing tenants since 2026-12-31" in text
    assert "only where an admin re-enabled it" in text
    assert "unchanged until" not in text
    assert "OAuth2 with oauth2.grantType: ClientCredentials, or sendUsing: MicrosoftGraph" in text
    final = "from the second half of 2027" in text
    assert final == (now >= LATER)


def test_validate_words_basic_auth_deprecated_by_the_injected_clock() -> None:
    from reconciler.manifest.account import account_from_manifest
    from reconciler.manifest.semantics import check_account

    doc = _manifest("office365")
    account = account_from_manifest(doc)
    before = [m for p, m, s in check_account(account, doc, BEFORE) if "BasicAuth" in m]
    after = [m for p, m, s in check_account(account, doc, AFTER) if "BasicAuth" in m]
    assert before and "unchanged until the end of December 2026" in before[0]
    assert after and "since 2026-12-31" in after[0]


def test_outlook_preset_host_with_no_authentication(tmp_path: Path) -> None:
    """outlook keeps its host preset (an unauthenticated probe still works); Password is refused."""
    spec = _effective(tmp_path, _manifest("outlook", method="None"))["spec"]
    conn = spec["smtp"]["connection"]
    assert (conn["host"], conn["port"], conn["security"]) == ("smtp-mail.outlook.com", 587,
                                                              "STARTTLS")
