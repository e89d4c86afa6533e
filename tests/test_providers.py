"""Provider presets and how they combine with explicit connection settings."""

from __future__ import annotations

import pytest

from reconciler.manifest.account import account_from_manifest, parse_duration
from reconciler.manifest.providers import PRESETS, PROVIDERS, default_security, preset_for


@pytest.mark.parametrize(("provider", "region", "expected"), [
    ("gmail", None, ("smtp.gmail.com", 587, "STARTTLS")),
    ("office365", None, ("smtp.office365.com", 587, "STARTTLS")),
    ("outlook", None, ("smtp-mail.outlook.com", 587, "STARTTLS")),
    ("yahoo", None, ("smtp.mail.yahoo.com", 465, "SMTPS")),
    ("icloud", None, ("smtp.mail.me.com", 587, "STARTTLS")),
    ("zoho", None, ("smtp.zoho.com", 465, "SMTPS")),
    ("sendgrid", None, ("smtp.sendgrid.net", 587, "STARTTLS")),
    ("mailgun", None, ("smtp.mailgun.org", 587, "STARTTLS")),
    ("amazon-ses", "eu-west-1", ("email-smtp.eu-west-1.amazonaws.com", 587, "STARTTLS")),
    ("amazon-ses", None, None),
    ("zoho", "eu", ("smtp.zoho.eu", 465, "SMTPS")),
    ("zoho", "xx", None),
    ("mailgun", "eu", ("smtp.eu.mailgun.org", 587, "STARTTLS")),
    ("postmark", None, ("smtp.postmarkapp.com", 587, "STARTTLS")),
    ("custom", None, None),
])
def test_preset_for(provider: str, region: str | None, expected: object) -> None:
    assert preset_for(provider, region) == expected


def test_every_schema_provider_is_known() -> None:
    from reconciler.manifest import load_schema

    enum = load_schema()["$defs"] and load_schema()["properties"]["spec"]["properties"][
        "provider"]["enum"]
    assert set(enum) == {*PRESETS, "amazon-ses", "custom"} == set(PROVIDERS)
    assert len(enum) == len(PROVIDERS) == 17


@pytest.mark.parametrize(("port", "security"), [(465, "SMTPS"), (25, "None"), (587, "STARTTLS"),
                                                (2525, "STARTTLS")])
def test_default_security(port: int, security: str) -> None:
    assert default_security(port) == security


def _doc(provider: str, **connection: object) -> dict[str, object]:
    return {"metadata": {"name": "a"}, "spec": {"provider": provider, "smtp": {
        "identity": {"emailAddress": "a@example.com"}, "connection": connection}}}


@pytest.mark.parametrize(("provider", "connection", "expected"), [
    ("yahoo", {}, ("smtp.mail.yahoo.com", 465, "SMTPS")),
    ("yahoo", {"port": 587}, ("smtp.mail.yahoo.com", 587, "STARTTLS")),
    ("gmail", {"host": "relay.example.com"}, ("relay.example.com", 587, "STARTTLS")),
    ("gmail", {"security": "SMTPS"}, ("smtp.gmail.com", 465, "SMTPS")),
    ("custom", {"host": "h.example.com"}, ("h.example.com", 587, "STARTTLS")),
    ("custom", {"host": "h.example.com", "port": 25}, ("h.example.com", 25, "None")),
    ("custom", {"host": "h.example.com", "security": "SMTPS"}, ("h.example.com", 465, "SMTPS")),
])
def test_explicit_values_win_over_presets(provider: str, connection: dict[str, object],
                                          expected: tuple[str, int, str]) -> None:
    c = account_from_manifest(_doc(provider, **connection)).smtp.connection  # type: ignore[union-attr]
    assert (c.host, c.port, c.security) == expected


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("1h30m", 5400),
                                               ("24h", 86400), ("1.5h", 5400), ("250ms", 0.25)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "10 m", "m10", "1d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
