"""Provider presets: host, port and security for each provider of DESIGN §3."""

from __future__ import annotations

from typing import Final

from reconciler.model import Security

Preset = tuple[str, int, Security]

#: provider -> (host, port, security). amazon-ses is regional (see preset_for); custom has none.
PRESETS: Final[dict[str, Preset]] = {
    "gmail": ("smtp.gmail.com", 587, "STARTTLS"),
    "office365": ("smtp.office365.com", 587, "STARTTLS"),
    "outlook": ("smtp-mail.outlook.com", 587, "STARTTLS"),
    "yahoo": ("smtp.mail.yahoo.com", 465, "SMTPS"),
    "icloud": ("smtp.mail.me.com", 587, "STARTTLS"),
    "zoho": ("smtp.zoho.com", 465, "SMTPS"),
    "sendgrid": ("smtp.sendgrid.net", 587, "STARTTLS"),
    "mailgun": ("smtp.mailgun.org", 587, "STARTTLS"),
}

PROVIDERS: Final[tuple[str, ...]] = (*PRESETS, "amazon-ses", "custom")

GOOGLE_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"
GOOGLE_SMTP_SCOPE: Final = "https://mail.google.com/"
MICROSOFT_AUTHORITY: Final = "https://login.microsoftonline.com"
MICROSOFT_SMTP_SCOPE: Final = "https://outlook.office365.com/.default"
GRAPH_ENDPOINT: Final = "https://graph.microsoft.com"


def preset_for(provider: str, region: str | None = None) -> Preset | None:
    """(host, port, security) of a provider; None for custom or amazon-ses without a region."""
    if provider == "amazon-ses":
        return (f"email-smtp.{region}.amazonaws.com", 587, "STARTTLS") if region else None
    return PRESETS.get(provider)


def default_security(port: int) -> Security:
    """Security implied by a port: 465 -> SMTPS, 25 -> None, otherwise STARTTLS."""
    if port == 465:
        return "SMTPS"
    if port == 25:
        return "None"
    return "STARTTLS"


def default_port(security: Security | None) -> int:
    """Port implied by a security mode when the manifest names none."""
    return {"SMTPS": 465, "None": 25}.get(security or "STARTTLS", 587)
