"""Cross-field rules JSON Schema cannot express, as small named checks on the effective account.

Each check returns (pointer, message, severity) findings; pointers name the field to change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Literal

from reconciler import model
from reconciler.manifest import providers

Finding = tuple[str, str, Literal["error", "warning", "note"]]
_CONN = "/spec/smtp/connection"
_AUTH = "/spec/smtp/authentication"


def _has(doc: Mapping[str, Any], pointer: str) -> bool:
    node: Any = doc
    for token in pointer.strip("/").split("/"):
        # YAML's maps are dicts: the ABC's isinstance (a Python call) only for others
        if (type(node) is not dict and not isinstance(node, Mapping)) or token not in node:
            return False
        node = node[token]
    return True


def _first(doc: Mapping[str, Any], *pointers: str) -> str:
    """The first pointer present in the document (the field the user wrote), else the last."""
    for p in pointers:
        if _has(doc, p):
            return p
    return pointers[-1]


def check_port_security(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    if a.smtp is None:
        return []
    c = a.smtp.connection
    if c.port == 465 and c.security == "STARTTLS":
        return [(_port_security_field(doc), "port 465 expects implicit TLS: set security: SMTPS, "
                                            "or use port 587 for STARTTLS", "error")]
    if c.security == "SMTPS" and c.port in (25, 587):
        return [(_port_security_field(doc),
                 f"security SMTPS on port {c.port} is unusual (servers expect "
                 f"{'STARTTLS' if c.port == 587 else 'plain SMTP'} there); use port 465 "
                 "for SMTPS", "warning")]
    return []


def _port_security_field(doc: Mapping[str, Any]) -> str:
    """Where a port/security finding points: looked up only for a finding (four look-ups a
    document otherwise, 1% of `validate` for bench 1)."""
    return _first(doc, f"{_CONN}/security", f"{_CONN}/port", _CONN, "/spec/smtp")


def check_port25_password(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    if a.smtp and a.smtp.connection.port == 25 and a.smtp.authentication.method == "Password":
        return [(_first(doc, f"{_CONN}/port", _CONN, "/spec/smtp"),
                 "port 25 is usually blocked for clients or an unauthenticated relay; use port "
                 "587 (STARTTLS) or 465 (SMTPS) for password authentication", "warning")]
    return []


def check_insecure_auth(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    if a.smtp is None:
        return []
    c, auth = a.smtp.connection, a.smtp.authentication
    if c.security == "None" and auth.method != "None" and not c.allow_insecure_auth:
        return [(_first(doc, f"{_CONN}/security", f"{_CONN}/port", _CONN),
                 "security None without TLS: credentials will not be sent; use STARTTLS or SMTPS, "
                 "or set allowInsecureAuth: true on a trusted network", "warning")]
    return []


def check_basic_auth_deprecated(a: model.Account, doc: Mapping[str, Any],
                                now: dt.datetime | None = None) -> list[Finding]:
    if a.provider == "office365" and a.smtp and a.smtp.authentication.method == "Password":
        when = now or dt.datetime.now(dt.UTC)
        return [(f"{_AUTH}/method", "BasicAuthDeprecated: " + providers.basic_auth_message(
            a.smtp.connection.host, when), "warning")]
    return []


def _spec(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = doc.get("spec")
    return spec if type(spec) is dict or isinstance(spec, Mapping) else {}


def check_region(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """spec.region must be one the provider has; a provider without regions takes none."""
    written = _spec(doc).get("region")
    p = providers.preset(a.provider)
    if written is None:
        return []
    if p is None or (not p.regions and p.host_template is None):
        return [("/spec/region", f"provider {a.provider} has no regions: remove spec.region",
                 "error")]
    if p.host_template is not None:
        if not providers.AWS_REGION.fullmatch(str(written)):
            return [("/spec/region", f"provider {a.provider} needs an AWS region name such as "
                                     "eu-west-1 or us-east-1", "error")]
        return []
    if written not in p.regions:
        return [("/spec/region", f"provider {a.provider} has the regions "
                                 f"{', '.join(p.regions)}: set one of them (default "
                                 f"{p.default_region})", "error")]
    return []


def check_tier(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    written = _spec(doc).get("tier")
    p = providers.preset(a.provider)
    if written is None:
        return []
    if p is None or not p.tiers:
        return [("/spec/tier", f"provider {a.provider} has no tiers that change the host: "
                               "remove spec.tier", "error")]
    if written not in p.tiers:
        return [("/spec/tier", f"provider {a.provider} has the tiers {', '.join(p.tiers)}",
                 "error")]
    return []


def check_provider_auth(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """The provider's rules about authentication methods and app passwords."""
    if a.smtp is None or a.send_using != "SMTP":
        return []
    auth = a.smtp.authentication
    if auth.method == "AWSAccessKey" and a.provider != "amazon-ses":
        return [(f"{_AUTH}/method", "method AWSAccessKey (an IAM access key turned into SES "
                                    "SMTP credentials) is only for provider: amazon-ses; use "
                                    "method: Password here", "error")]
    p = providers.preset(a.provider)
    if p is None or auth.method == "None":
        return []
    if a.provider == "outlook" and auth.method == "Password":
        return [(f"{_AUTH}/method",
                 "provider outlook (consumer Outlook.com) no longer accepts passwords for SMTP "
                 "(Microsoft requires Modern Authentication since 2024-09-16) and consumer "
                 "accounts have no client credentials: send from a Microsoft 365 mailbox "
                 "(provider: office365 with method: OAuth2, oauth2.grantType: "
                 "ClientCredentials, or sendUsing: MicrosoftGraph) or use another provider",
                 "error")]
    if auth.method not in p.auth_methods and auth.method != "OAuth2":
        accepted = ", ".join(p.auth_methods) or "no method this reconciler supports"
        return [(f"{_AUTH}/method", f"provider {a.provider} does not accept method "
                                    f"{auth.method}; it accepts {accepted}", "error")]
    if p.app_password and auth.method == "Password" and auth.password is not None:
        where = _first(doc, f"{_AUTH}/passwordSecretRef", f"{_AUTH}/method")
        extra = (" (or use method: OAuth2 with a Google Workspace service account and "
                 "domain-wide delegation)" if a.provider == "gmail" else "")
        return [(where, f"provider {a.provider} requires an app password, not the "
                        f"account's login password: put an app-specific password in Secret "
                        f"{auth.password.name} key {auth.password.key!r}{extra}", "note")]
    return []


def check_fixed_username(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """A username that contradicts the provider's rule: fixed by it, or one it needs named."""
    p = providers.preset(a.provider)
    if p is None or a.smtp is None:
        return []
    ident = (_spec(doc).get("smtp") or {}).get("identity") or {}
    written = ident.get("userId") if type(ident) is dict or isinstance(ident, Mapping) else None
    from_secret = a.smtp.authentication.username is not None
    if a.smtp.authentication.method == "AWSAccessKey" and written is not None:
        return [("/spec/smtp/identity/userId",
                 "userId is not used with method AWSAccessKey: the SMTP username is the access "
                 "key id from accessKeySecretRef; remove userId", "warning")]
    if a.smtp.authentication.method != "Password":
        return []
    if p.username_needed and written is None and not from_secret:
        return [("/spec/smtp/identity",
                 f"provider {a.provider} authenticates with {p.username_rule}, not "
                 "the e-mail address: put it in a Secret and reference it with "
                 "authentication.usernameSecretRef when it is a credential or token, or set "
                 f"identity.userId; without either the username would be emailAddress, which "
                 f"{p.title} refuses", "warning")]
    if p.username is None:
        return []
    if from_secret:
        return [(f"{_AUTH}/usernameSecretRef",
                 f"provider {a.provider} fixes the SMTP username to {p.username!r}: remove "
                 "usernameSecretRef (the preset fills it in)", "warning")]
    if written is None or written == p.username:
        return []
    return [("/spec/smtp/identity/userId",
             f"provider {a.provider} fixes the SMTP username to {p.username!r}: remove userId "
             f"(the preset fills it in) or set it to {p.username!r}", "warning")]


def _below(version: str, floor: str) -> bool:
    return tuple(map(int, version.split("."))) < tuple(map(int, floor.split(".")))


def check_tls_floor(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """minTLSVersion below the lowest version the provider accepts."""
    p = providers.preset(a.provider)
    if p is None or p.min_tls is None or a.smtp is None:
        return []
    version = a.smtp.connection.min_tls_version
    if not _below(version, p.min_tls):
        return []
    refusal = " (it answers 421 4.7.66)" if a.provider == "office365" else ""
    return [(f"{_CONN}/minTLSVersion",
             f"provider {a.provider} refuses TLS below {p.min_tls}{refusal}: set minTLSVersion "
             f"\"{p.min_tls}\" or higher, or remove it (default \"1.2\")", "error")]


def check_min_tls(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    if check_tls_floor(a, doc):
        return []  # the provider's floor already makes it an error
    if a.smtp and a.smtp.connection.min_tls_version in ("1.0", "1.1"):
        return [(f"{_CONN}/minTLSVersion", f"TLS {a.smtp.connection.min_tls_version} is "
                 "deprecated and insecure; use minTLSVersion \"1.2\" or higher", "warning")]
    return []


def check_oauth2_provider(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    o = a.smtp.authentication.oauth2 if a.smtp else None
    if o is None:
        return []
    where = f"{_AUTH}/oauth2/grantType"
    if o.grant_type == "ClientCredentials" and a.provider != "office365":
        return [(where, "grantType ClientCredentials (Microsoft identity platform) is only for "
                        "provider: office365; use JWTBearer for gmail", "error")]
    if o.grant_type == "JWTBearer" and a.provider not in ("gmail", "custom"):
        return [(where, "grantType JWTBearer (Google service account) is only for provider: "
                        "gmail or custom; use ClientCredentials for office365", "error")]
    return []


def check_durations(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """probe durations within MAX_DURATION_SECONDS: a longer one cannot be scheduled."""
    seconds = {"interval": a.probe.interval_seconds,
               "authInterval": a.probe.auth_interval_seconds,
               "retryInterval": a.probe.retry_interval_seconds}
    return [(f"/spec/probe/{name}", f"must be at most {model.MAX_DURATION_TEXT} (365 days)",
             "error")
            for name, value in seconds.items()
            if value > model.MAX_DURATION_SECONDS and _has(doc, f"/spec/probe/{name}")]


#: Published formats whose consumers take a user and password only (issue 15); kept equal to
#: reconciler.state.formats.PASSWORD_ONLY_FORMATS (manifest must not import state).
PASSWORD_ONLY_FORMATS = ("url", "symfony", "django")


def check_oauth_formats(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    if a.send_using != "SMTP" or a.smtp is None or a.smtp.authentication.method != "OAuth2":
        return []
    names = [f for f in a.publish.formats if f in PASSWORD_ONLY_FORMATS]
    if not names:
        return []
    return [(_first(doc, "/spec/publish/formats", f"{_AUTH}/method"),
             f"FormatCannotAuthenticate: publish.formats {', '.join(names)} cannot carry OAuth2 "
             "(XOAUTH2): Django, dj-email-url, django-environ and the nodemailer/Symfony URLs take a "
             "user and password only; list the formats you use (env, json, nodemailer, javamail)",
             "warning")]


def check_client_credentials(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """publish.clientCredentials on an account that has no client credential to publish."""
    if not a.publish.client_credentials:
        return []
    oauth = a.smtp is not None and a.smtp.authentication.method == "OAuth2"
    graph = a.send_using == "MicrosoftGraph" and a.graph is not None and (
        a.graph.client_secret is not None or a.graph.client_certificate is not None)
    if (a.send_using == "SMTP" and oauth) or graph:
        return []
    return [("/spec/publish/clientCredentials",
             "publish.clientCredentials publishes an OAuth2 or Graph client secret, certificate "
             "or service-account key, and this account has none: remove it", "warning")]


CHECKS: tuple[Callable[[model.Account, Mapping[str, Any]], list[Finding]], ...] = (
    check_region, check_tier, check_port_security, check_port25_password, check_insecure_auth,
    check_provider_auth, check_fixed_username, check_tls_floor,
    check_basic_auth_deprecated, check_min_tls, check_oauth2_provider, check_oauth_formats,
    check_durations, check_client_credentials,
)


def check_account(account: model.Account, doc: Mapping[str, Any],
                  now: dt.datetime | None = None) -> list[Finding]:
    """Every finding of every semantic check, in check order; `now` words dated rules."""
    out = []
    for check in CHECKS:
        if check is check_basic_auth_deprecated:
            out += check_basic_auth_deprecated(account, doc, now)
        else:
            out += check(account, doc)
    return out
