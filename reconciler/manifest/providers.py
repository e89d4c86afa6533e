"""Provider presets as data: hosts, ports, regions, tiers, usernames and each provider's rules.

One `Preset` per provider of DESIGN §3. The manifest loader fills host, port, security and a fixed
username from it when the manifest leaves them out (explicit values win); the semantic checks read
its rules (accepted authentication methods, TLS floor, app passwords); the README's provider table
is rendered from it (`python -m reconciler.manifest.providers`, kept equal by a test).

Every entry names the provider documentation its host, port and username rules were checked
against, and the date of that check. Change a rule only together with its source.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from reconciler import reasons
from reconciler.model import Account, Outcome, Security

#: The day every entry below was last checked against its source.
CHECKED: Final = "2026-12-01"

#: AWS region names (eu-west-1, us-gov-west-1, ap-southeast-3).
AWS_REGION: Final = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")


def _frozen(d: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Preset:
    """One provider: where its SMTP submission service listens and what it accepts."""

    provider: str
    title: str
    #: region -> host; the key "" holds the host of a provider without regions. amazon-ses has
    #: a host template instead (any AWS region).
    hosts: Mapping[str, str]
    port: int
    security: Security
    #: other documented submission ports, as (port, security)
    other_ports: tuple[tuple[int, Security], ...] = ()
    default_region: str | None = None
    host_template: str | None = None  # "{region}" is replaced; for providers with open regions
    #: tier -> host prefix (zoho: free accounts "smtp.", paid custom-domain accounts "smtppro.")
    tiers: Mapping[str, str] = field(default_factory=_frozen)
    default_tier: str | None = None
    username: str | None = None  # the username the provider fixes (sendgrid: "apikey")
    username_rule: str = "the mailbox address"  # what the username is, in words
    #: The username is neither the mailbox address nor fixed: the manifest must name it
    #: (identity.userId, or authentication.usernameSecretRef when it is a credential or token).
    username_needed: bool = False
    auth_methods: tuple[str, ...] = ("Password",)  # spec.smtp.authentication.method values
    min_tls: str | None = None  # the lowest TLS version the provider accepts, when documented
    app_password: bool = False  # Password means an app(-specific) password, never the login one
    #: Concurrent probe sessions per MTA (politeness, reconciler/probe/limits.py). Every preset
    #: is a large multi-tenant service whose documented limits are per mailbox or account
    #: (Exchange Online: three concurrent SMTP AUTH connections per mailbox,
    #: learn.microsoft.com/exchange/troubleshoot/send-emails/smtp-submission-improvements),
    #: and a probe holds at most one session per account; 16 is our choice. custom (a
    #: self-hosted MTA) keeps the default of 4.
    max_sessions: int = 16
    notes: str = ""
    source: str = ""
    checked: str = CHECKED

    @property
    def regions(self) -> tuple[str, ...]:
        """The region names the provider accepts (empty for one host, or open AWS regions)."""
        return tuple(r for r in self.hosts if r)

    def host(self, region: str | None = None, tier: str | None = None) -> str | None:
        """The host for a region and tier; None when the region or tier is unknown here."""
        if self.host_template is not None:
            return self.host_template.format(region=region) if region else None
        key = region if self.regions else ""
        if key is None:
            key = self.default_region or ""
        host = self.hosts.get(key)
        if host is None:
            return None
        if self.tiers:
            prefix = self.tiers.get(tier or self.default_tier or "")
            if prefix is None:
                return None
            default_prefix = self.tiers[self.default_tier or ""]
            host = prefix + host.removeprefix(default_prefix)
        return host


_ZOHO_HOSTS = {"us": "smtp.zoho.com", "eu": "smtp.zoho.eu", "in": "smtp.zoho.in",
               "au": "smtp.zoho.com.au", "jp": "smtp.zoho.jp", "cn": "smtp.zoho.com.cn",
               "sa": "smtp.zoho.sa"}

#: Every provider but custom, in the order of the schema's enum.
PRESET_LIST: Final[tuple[Preset, ...]] = (
    Preset(
        "gmail", "Gmail / Google Workspace", _frozen({"": "smtp.gmail.com"}), 587, "STARTTLS",
        other_ports=((465, "SMTPS"),), username_rule="the full Gmail or Workspace address",
        auth_methods=("Password", "OAuth2"), app_password=True,
        notes="Password means an app password (2-Step Verification on). OAuth2 JWTBearer works "
              "only for Google Workspace with domain-wide delegation.",
        source="developers.google.com/gmail/imap/xoauth2-protocol and gmail/oauth_overview "
               "(smtp.gmail.com, 465 SSL, 587 STARTTLS, XOAUTH2); app passwords: "
               "support.google.com/accounts/answer/185833 as cited by secondary guides"),
    Preset(
        "office365", "Microsoft 365 / Exchange Online", _frozen({"": "smtp.office365.com"}), 587,
        "STARTTLS", username_rule="the mailbox's user principal name",
        auth_methods=("OAuth2", "Password"), min_tls="1.2",
        notes="OAuth2 ClientCredentials or sendUsing: MicrosoftGraph; Basic SMTP AUTH (Password) "
              "follows Microsoft's retirement schedule (BasicAuthDeprecated). TLS 1.0/1.1 are "
              "refused (421 4.7.66).",
        source="techcommunity.microsoft.com Exchange Team blog 2026-01-27 (Updated Exchange "
               "Online SMTP AUTH Basic Authentication Deprecation Timeline); learn.microsoft.com "
               "opt-in-exchange-online-endpoint-for-legacy-tls-using-smtp-auth "
               "(smtp.office365.com, TLS 1.2, 421 4.7.66)"),
    Preset(
        "outlook", "Outlook.com (consumer)", _frozen({"": "smtp-mail.outlook.com"}), 587,
        "STARTTLS", username_rule="the Outlook.com address", auth_methods=(),
        notes="Consumer Outlook.com takes no passwords since 2024-09-16 (Modern Authentication "
              "only) and has no client credentials: use a Microsoft 365 mailbox (provider: "
              "office365) or another provider.",
        source="Microsoft's Outlook.com notice 'Modern authentication methods now needed' "
               "(Basic Authentication unavailable from 2024-09-16), as quoted by secondary "
               "reports; Microsoft's own page was not retrievable here"),
    Preset(
        "yahoo", "Yahoo Mail", _frozen({"": "smtp.mail.yahoo.com"}), 465, "SMTPS",
        other_ports=((587, "STARTTLS"),), username_rule="the full Yahoo address",
        app_password=True, notes="Password means an app password generated under Account "
                                 "Security; the login password is refused.",
        source="help.yahoo.com/kb/SLN4075 (not retrievable here); Thunderbird ISPDB yahoo.com "
               "and Delta Chat provider-db yahoo (smtp.mail.yahoo.com 465 SSL, app password)"),
    Preset(
        "icloud", "iCloud Mail", _frozen({"": "smtp.mail.me.com"}), 587, "STARTTLS",
        username_rule="the full iCloud address (name@icloud.com)", app_password=True,
        notes="Password means an app-specific password (two-factor authentication on); the "
              "username is the full address.",
        source="support.apple.com/102525 (iCloud Mail server settings, as cited by "
               "developer.nylas.com); Delta Chat provider-db icloud (587 STARTTLS, "
               "app-specific password)"),
    Preset(
        "zoho", "Zoho Mail", _frozen(_ZOHO_HOSTS), 465, "SMTPS", other_ports=((587, "STARTTLS"),),
        default_region="us", tiers=_frozen({"free": "smtp.", "paid": "smtppro."}),
        default_tier="free", username_rule="the full Zoho address",
        notes="spec.region picks the data centre (us, eu, in, au, jp, cn, sa); spec.tier: paid "
              "for paid organization (custom-domain) accounts uses smtppro.; an app-specific "
              "password when two-factor authentication is on.",
        source="zoho.com/mail/help/zoho-smtp.html (not retrievable here; its text as "
               "reproduced by Zoho partner pages: personal and free organization users smtp., "
               "paid organization users smtppro., one domain per data centre)"),
    Preset(
        "sendgrid", "Twilio SendGrid", _frozen({"": "smtp.sendgrid.net"}), 587, "STARTTLS",
        other_ports=((25, "STARTTLS"), (2525, "STARTTLS"), (465, "SMTPS")), username="apikey",
        username_rule="the literal string apikey",
        notes="The password is an API key with Mail Send permission.",
        source="twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-"
               "api"),
    Preset(
        "mailgun", "Mailgun", _frozen({"us": "smtp.mailgun.org", "eu": "smtp.eu.mailgun.org"}),
        587, "STARTTLS", other_ports=((25, "STARTTLS"), (2525, "STARTTLS"), (465, "SMTPS")),
        default_region="us", username_rule="the domain's SMTP login (postmaster@your-domain)",
        notes="spec.region: eu for domains created in the EU region; SMTP credentials are per "
              "sending domain.",
        source="documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/send-smtp "
               "(ports 25, 465, 587, 2525); docs/mailgun/api-reference (US and EU regions); "
               "cloud.google.com Compute Engine Mailgun guide (smtp.eu.mailgun.org)"),
    Preset(
        "amazon-ses", "Amazon SES", _frozen(), 587, "STARTTLS",
        other_ports=((2587, "STARTTLS"), (25, "STARTTLS"), (465, "SMTPS"), (2465, "SMTPS")),
        host_template="email-smtp.{region}.amazonaws.com",
        username_rule="the SMTP user name (an IAM access key id)",
        username_needed=True,
        auth_methods=("Password", "AWSAccessKey"), min_tls="1.2",
        notes="spec.region (an AWS region) is required: SMTP credentials are per region. "
              "Password: the SMTP user name from usernameSecretRef, the SMTP password from "
              "passwordSecretRef. AWSAccessKey derives the SMTP password from an IAM access key "
              "for that region.",
        source="docs.aws.amazon.com/ses/latest/dg/smtp-connect.html; "
               "docs.aws.amazon.com/ses/latest/dg/smtp-credentials.html; "
               "docs.aws.amazon.com/ses/latest/dg/security-protocols.html (TLS 1.2 and 1.3)"),
    Preset(
        "postmark", "Postmark", _frozen({"": "smtp.postmarkapp.com"}), 587, "STARTTLS",
        other_ports=((25, "STARTTLS"), (2525, "STARTTLS")),
        username_rule="an SMTP token's access key, or the Server API token (the same value as "
                      "the password)",
        username_needed=True,
        notes="No implicit-TLS port. Put an SMTP token's access key (or the Server API token) "
              "in the Secret usernameSecretRef names and its secret key (or the same token) in "
              "the password Secret (validate warns without a username); broadcasts use "
              "smtp-broadcasts.postmarkapp.com (set host).",
        source="postmarkapp.com/support/article/811-what-are-the-smtp-details-api-tokens-i-"
               "should-be-using"),
    Preset(
        "brevo", "Brevo (Sendinblue)", _frozen({"": "smtp-relay.brevo.com"}), 587, "STARTTLS",
        other_ports=((2525, "STARTTLS"), (465, "SMTPS")),
        username_rule="the SMTP login shown under SMTP & API", username_needed=True,
        notes="The password is an SMTP key, not the API key and not the account password.",
        source="developers.brevo.com/docs/smtp-integration"),
    Preset(
        "sparkpost", "SparkPost",
        _frozen({"us": "smtp.sparkpostmail.com", "eu": "smtp.eu.sparkpostmail.com"}), 587,
        "STARTTLS", other_ports=((2525, "STARTTLS"),), default_region="us",
        username="SMTP_Injection", username_rule="the literal string SMTP_Injection",
        notes="spec.region: eu for SparkPost EU accounts; the password is an API key with "
              "'Send via SMTP' permission.",
        source="developers.sparkpost.com/api/smtp/"),
    Preset(
        "resend", "Resend", _frozen({"": "smtp.resend.com"}), 465, "SMTPS",
        other_ports=((2465, "SMTPS"), (587, "STARTTLS"), (2587, "STARTTLS"), (25, "STARTTLS")),
        username="resend", username_rule="the literal string resend",
        notes="The password is a Resend API key.",
        source="resend.com/docs/send-with-smtp"),
    Preset(
        "scaleway", "Scaleway Transactional Email", _frozen({"": "smtp.tem.scaleway.com"}), 587,
        "STARTTLS", other_ports=((2587, "STARTTLS"), (465, "SMTPS"), (2465, "SMTPS")),
        username_rule="the Scaleway Project ID", username_needed=True,
        notes="TLS is mandatory; the password is the secret key of an IAM API key with "
              "Transactional Email permissions.",
        source="scaleway docs-content (transactional-email smtp-configuration: Project ID "
               "username, mandatory encryption; generate-api-keys-for-tem-with-iam: "
               "smtp.tem.scaleway.com, ports 25, 587, 2587, 465, 2465)"),
    Preset(
        "fastmail", "Fastmail", _frozen({"": "smtp.fastmail.com"}), 465, "SMTPS",
        username_rule="the full Fastmail address", app_password=True,
        notes="Every SMTP connection needs its own app password; the login password is refused.",
        source="fastmail.com/help/technical/servernamesandports.html"),
    Preset(
        "mailjet", "Mailjet", _frozen({"": "in-v3.mailjet.com"}), 587, "STARTTLS",
        other_ports=((25, "STARTTLS"), (465, "SMTPS")),
        username_rule="the API key (the password is its secret key)", username_needed=True,
        notes="The username is the API key, the password the secret key of the same pair.",
        source="mailjet.com/support/what-are-the-api-key-and-secret-keys-how-should-i-use-"
               "them,109.htm (API key and secret key as SMTP credentials); the mailjet Ruby "
               "gem's Mailjet::Mailer (in-v3.mailjet.com:587, STARTTLS)"),
)

PRESET_BY_NAME: Final[Mapping[str, Preset]] = MappingProxyType(
    {p.provider: p for p in PRESET_LIST})

Triple = tuple[str, int, Security]

#: provider -> (host, port, security) in its default region and tier (amazon-ses has no default).
PRESETS: Final[Mapping[str, Triple]] = MappingProxyType({
    p.provider: (h, p.port, p.security)
    for p in PRESET_LIST if (h := p.host()) is not None})

PROVIDERS: Final[tuple[str, ...]] = (*PRESET_BY_NAME, "custom")

GOOGLE_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"
GOOGLE_SMTP_SCOPE: Final = "https://mail.google.com/"
MICROSOFT_AUTHORITY: Final = "https://login.microsoftonline.com"
MICROSOFT_SMTP_SCOPE: Final = "https://outlook.office365.com/.default"
GRAPH_ENDPOINT: Final = "https://graph.microsoft.com"


def preset(provider: str) -> Preset | None:
    """The preset of a provider; None for custom."""
    return PRESET_BY_NAME.get(provider)


def preset_for(provider: str, region: str | None = None, tier: str | None = None
               ) -> Triple | None:
    """(host, port, security) of a provider in a region and tier; None when there is none
    (custom, amazon-ses without a region, an unknown region or tier)."""
    p = PRESET_BY_NAME.get(provider)
    if p is None:
        return None
    host = p.host(region, tier)
    return (host, p.port, p.security) if host else None


def default_security(port: int) -> Security:
    """Security implied by a port: 465 -> SMTPS, 25 -> None, otherwise STARTTLS."""
    if port == 465:
        return "SMTPS"
    if port == 25:
        return "None"
    return "STARTTLS"


def preset_security(provider: str, port: int) -> Security | None:
    """The security a provider documents for one of its ports; None for an undocumented port."""
    p = PRESET_BY_NAME.get(provider)
    if p is None:
        return None
    return dict(((p.port, p.security), *p.other_ports)).get(port)


def default_port(security: Security | None) -> int:
    """Port implied by a security mode when the manifest names none."""
    return {"SMTPS": 465, "None": 25}.get(security or "STARTTLS", 587)


# --------------------------------------------------------------------------- dated deprecations


@dataclass(frozen=True)
class Milestone:
    """One step of a provider's published schedule, worded for before and after its date."""

    date: dt.date
    ahead: str  # while today is before `date`
    passed: str  # from `date` on


#: Microsoft's schedule for Basic authentication with SMTP AUTH in Exchange Online, as the Exchange
#: Team announced it on 2026-01-27 ("Updated Exchange Online SMTP AUTH Basic Authentication
#: Deprecation Timeline", techcommunity.microsoft.com; checked 2026-12-01). A date change is one line.
BASIC_AUTH_SCHEDULE: Final[tuple[Milestone, ...]] = (
    Milestone(dt.date(2026, 12, 31),
              "unchanged until the end of December 2026, then disabled by default for existing "
              "tenants on 2026-12-31 (an admin can re-enable it)",
              "disabled by default for existing tenants since 2026-12-31 (works only where an "
              "admin re-enabled it)"),
    Milestone(dt.date(2026, 12, 31),
              "unavailable for tenants created after December 2026",
              "unavailable for tenants created after December 2026"),
    Milestone(dt.date(2027, 7, 1),
              "Microsoft announces the final removal date in the second half of 2027",
              "the final removal date is announced from the second half of 2027: check "
              "Microsoft's Exchange Team blog"),
)

BASIC_AUTH_FIX: Final = ("set spec.smtp.authentication.method: OAuth2 with oauth2.grantType: "
                         "ClientCredentials, or sendUsing: MicrosoftGraph")


def basic_auth_schedule(now: dt.datetime) -> str:
    """Microsoft's Basic SMTP AUTH schedule worded for the day `now` falls on (UTC)."""
    today = now.astimezone(dt.UTC).date() if now.tzinfo else now.date()
    return "; ".join(m.passed if today >= m.date else m.ahead for m in BASIC_AUTH_SCHEDULE)


def basic_auth_message(host: str, now: dt.datetime) -> str:
    """The BasicAuthDeprecated message for a password account on Exchange Online."""
    return (f"basic authentication (password) for SMTP AUTH to {host} is being retired by "
            f"Microsoft: {basic_auth_schedule(now)} (Exchange Team, 2026-01-27): "
            f"{BASIC_AUTH_FIX}")


def basic_auth_warning(account: Account, now: dt.datetime | None = None) -> Outcome | None:
    """BasicAuthDeprecated for Office 365 SMTP with a password, worded for `now` by Microsoft's
    schedule (BASIC_AUTH_SCHEDULE); None for every other account."""
    smtp = account.smtp
    if account.send_using != "SMTP" or smtp is None or smtp.authentication.method != "Password":
        return None
    host = smtp.connection.host.lower().rstrip(".")
    if account.provider != "office365" and not host.endswith("office365.com"):
        return None
    return Outcome(ok=False, reason=reasons.BASIC_AUTH_DEPRECATED,
                   message=basic_auth_message(smtp.connection.host,
                                              now or dt.datetime.now(dt.UTC)))


# --------------------------------------------------------------------------- README table

TABLE_BEGIN: Final = "<!-- providers table: generated by `python -m reconciler.manifest.providers`"
TABLE_END: Final = "<!-- end of providers table -->"


def _hosts_cell(p: Preset) -> str:
    if p.host_template is not None:
        return f"`{p.host_template}` (spec.region required)"
    parts = []
    for region, host in p.hosts.items():
        label = f"{region}{' (default)' if region == p.default_region else ''}: " if region else ""
        parts.append(f"{label}`{host}`")
    text = "<br>".join(parts)
    if p.tiers:
        tiers = ", ".join(f"{t}{' (default)' if t == p.default_tier else ''} → `{pre}…`"
                          for t, pre in p.tiers.items())
        text += f"<br>spec.tier: {tiers}"
    return text


def _ports_cell(p: Preset) -> str:
    others = ", ".join(f"{port} {sec}" for port, sec in p.other_ports)
    return f"**{p.port} {p.security}**" + (f"; also {others}" if others else "")


def render_table() -> str:
    """The README's provider table (Markdown), from PRESET_LIST."""
    lines = [f"{TABLE_BEGIN} -->",
             "| provider | host | port | username | authentication | TLS floor | notes | "
             "checked against |",
             "|---|---|---|---|---|---|---|---|"]
    for p in PRESET_LIST:
        user = f"`{p.username}` (fixed)" if p.username else p.username_rule
        if p.username_needed:
            user += ": userId, or usernameSecretRef when it is a credential"
        methods = ", ".join(p.auth_methods) or "none we support"
        if p.app_password:
            methods += " (app password)"
        cells = [f"`{p.provider}`", _hosts_cell(p), _ports_cell(p), user, methods,
                 p.min_tls or "–", p.notes, f"{p.source} ({p.checked})"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("| `custom` | spec.smtp.connection.host (required) | 587 STARTTLS, 465 SMTPS, "
                 "25 None (from the port) | userId or usernameSecretRef, else emailAddress | "
                 "Password, OAuth2, None | "
                 "– | | |")
    lines.append(TABLE_END)
    return "\n".join(lines) + "\n"


def replace_table(readme: str) -> str:
    """The README text with its provider table replaced by a freshly rendered one."""
    start = readme.index(TABLE_BEGIN)
    end = readme.index(TABLE_END) + len(TABLE_END) + 1
    return readme[:start] + render_table() + readme[end:]


if __name__ == "__main__":  # pragma: no cover - the regeneration command
    import sys

    sys.stdout.write(render_table())
