"""Cross-field rules JSON Schema cannot express, as small named checks on the effective account.

Each check returns (pointer, message, severity) findings; pointers name the field to change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from reconciler import model

Finding = tuple[str, str, Literal["error", "warning"]]
_CONN = "/spec/smtp/connection"
_AUTH = "/spec/smtp/authentication"


def _has(doc: Mapping[str, Any], pointer: str) -> bool:
    node: Any = doc
    for token in pointer.strip("/").split("/"):
        if not isinstance(node, Mapping) or token not in node:
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
    where = _first(doc, f"{_CONN}/security", f"{_CONN}/port", _CONN, "/spec/smtp")
    if c.port == 465 and c.security == "STARTTLS":
        return [(where, "port 465 expects implicit TLS: set security: SMTPS, or use port 587 "
                        "for STARTTLS", "error")]
    if c.security == "SMTPS" and c.port in (25, 587):
        return [(where, f"security SMTPS on port {c.port} is unusual (servers expect "
                        f"{'STARTTLS' if c.port == 587 else 'plain SMTP'} there); use port 465 "
                        "for SMTPS", "warning")]
    return []


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


def check_basic_auth_deprecated(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    if a.provider == "office365" and a.smtp and a.smtp.authentication.method == "Password":
        return [(f"{_AUTH}/method", "BasicAuthDeprecated: Microsoft rejects basic-auth SMTP for "
                 "Office 365; use method: OAuth2 (ClientCredentials) or sendUsing: MicrosoftGraph",
                 "warning")]
    return []


def check_min_tls(a: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
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


#: Published formats whose consumers take a user and password only (issue 15); kept equal to
#: reconciler.state.render.PASSWORD_ONLY_FORMATS (manifest must not import state).
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


CHECKS: tuple[Callable[[model.Account, Mapping[str, Any]], list[Finding]], ...] = (
    check_port_security, check_port25_password, check_insecure_auth,
    check_basic_auth_deprecated, check_min_tls, check_oauth2_provider, check_oauth_formats,
)


def check_account(account: model.Account, doc: Mapping[str, Any]) -> list[Finding]:
    """Every finding of every semantic check, in check order."""
    return [f for check in CHECKS for f in check(account, doc)]
