"""What each published format holds, in the form its ecosystem expects: pure functions of a spec
and its credentials, assembled into the Secret by reconciler.state.render.

- env: SMTP_HOST, SMTP_PORT, SMTP_SECURITY (STARTTLS|SMTPS|None), SMTP_MIN_TLS_VERSION
  ("1.2", not for security None), SMTP_FROM, and when set SMTP_FROM_NAME, SMTP_REPLY_TO, SMTP_USERNAME,
  SMTP_PASSWORD. OAuth2 adds SMTP_AUTH_METHOD=XOAUTH2, OAUTH2_GRANT_TYPE (JWTBearer or
  ClientCredentials), OAUTH2_TOKEN_URL, OAUTH2_SCOPE and either OAUTH2_SUBJECT (+
  GOOGLE_SERVICE_ACCOUNT_JSON) for the JWT bearer grant, or OAUTH2_TENANT_ID, OAUTH2_CLIENT_ID,
  OAUTH2_AUTHORITY (+ OAUTH2_CLIENT_SECRET or OAUTH2_CLIENT_CERTIFICATE) for client credentials.
  Graph accounts: GRAPH_TENANT_ID, GRAPH_CLIENT_ID, GRAPH_USER, GRAPH_AUTHORITY (authority URL
  with the tenant, as msal takes it), GRAPH_TOKEN_URL, GRAPH_SCOPE, GRAPH_ENDPOINT,
  GRAPH_GRANT_TYPE (+ GRAPH_CLIENT_SECRET or GRAPH_CLIENT_CERTIFICATE), GRAPH_USERNAME/
  GRAPH_PASSWORD for the password grant, GRAPH_REPLY_TO when set. The values in parentheses are
  there only with publish.clientCredentials and the credential owner's consent
  (reconciler.probe.publishable).
- url: SMTP_URL (nodemailer's URL form): `smtps://` for SMTPS, `smtp://…?requireTLS=true` for
  STARTTLS (a bare `smtp://` means opportunistic STARTTLS to nodemailer and Symfony), `smtp://`
  for None; user and password percent-encoded.
- symfony: MAILER_DSN, `smtps://` for SMTPS, `smtp://…?require_tls=true` for STARTTLS (honoured
  from Symfony 7.3), `smtp://…?auto_tls=false` for None.
- django: EMAIL_HOST, EMAIL_PORT, EMAIL_USE_TLS, EMAIL_USE_SSL (never both "True"),
  EMAIL_TIMEOUT, DEFAULT_FROM_EMAIL and, with a password, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD;
  and EMAIL_URL, which dj-email-url and django-environ parse to the same settings:
  `smtp+tls://…?tls=True` (STARTTLS), `smtp+ssl://…?ssl=True` (SMTPS), `smtp://` (None).
- nodemailer: `nodemailer.json`, {"transport": <createTransport options>, "defaults": {"from",
  "replyTo"}} in nodemailer's own names (secure/requireTLS/ignoreTLS, auth.user/auth.pass,
  tls.ca/tls.minVersion, timeouts in milliseconds): `createTransport(c.transport, c.defaults)`.
- json: `sender.json`, one object (keys sorted, absent values omitted):
  {"transport": "smtp"|"graph", "from": {"address", "name"}, "replyTo",
   "smtp": {"host", "port", "security", "minTLSVersion", "timeoutSeconds", "authMethod",
            "username", "password", "oauth2": {...}, "advanced": {...}},
   "graph": {"tenantId", "clientId", "clientSecret", "clientCertificate", "userPrincipalName",
             "authority", "tokenUrl", "scope", "endpoint", "grantType", "username", "password"}}

The Java formats (javamail, spring) are reconciler.state.java_properties; they share the login
helpers here. `format_warnings` says which selected formats cannot work for an account (XOAUTH2
in URL/Django forms, a non-ASCII password for Python's smtplib).
Credential values come from `ProbeResult.credentials`; nothing here logs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from email.utils import formataddr
from typing import Any
from urllib.parse import quote

from reconciler import reasons
from reconciler.manifest.published import untested
from reconciler.model import Account, GraphSpec, Outcome, ProbeResult, SmtpSpec

MICROSOFT_SMTP_SCOPE = "https://outlook.office365.com/.default"
#: What the probe asks Microsoft for Graph (reconciler.probe.microsoft.GRAPH_SCOPE), both grants.
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
#: Formats whose consumers take only a user and a password (no XOAUTH2 token source).
PASSWORD_ONLY_FORMATS = ("url", "symfony", "django")
#: Authentication methods whose consumers log in with a user and password (AWSAccessKey: the
#: access key id and the SES SMTP password derived from it; never the IAM secret key).
PASSWORD_METHODS = ("Password", "AWSAccessKey")
#: Formats read by Python's smtplib, which sends AUTH as ASCII only.
SMTPLIB_FORMATS = ("django",)


# --------------------------------------------------------------------------- small helpers


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def smtp_username(smtp: SmtpSpec, creds: Mapping[str, str]) -> str | None:
    """The SMTP login (None without authentication): the username credential, the OAuth2
    subject, userId or the address."""
    auth = smtp.authentication
    if auth.method == "None":
        return None
    if creds.get("username"):
        return creds["username"]
    if auth.method == "OAuth2" and auth.oauth2 is not None and auth.oauth2.subject:
        return auth.oauth2.subject
    return smtp.identity.user_id or smtp.identity.email_address


def smtp_password(smtp: SmtpSpec, creds: Mapping[str, str]) -> str | None:
    """The password a user-and-password consumer logs in with; None for other methods."""
    return creds.get("password") if smtp.authentication.method in PASSWORD_METHODS else None


def format_address(address: str, name: str | None) -> str:
    """'Name <addr>' with the display name quoted when RFC 5322 requires it."""
    if not name:
        return address
    if any(c in name for c in '()<>[]:;@\\,."'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def mime_address(address: str, name: str | None) -> str:
    """'Name <addr>' as a header value: the display name RFC 2047-encoded when not ASCII."""
    return formataddr((name or "", address), charset="utf-8")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _graph_authority(graph: GraphSpec) -> str:
    return f"{graph.authority.rstrip('/')}/{graph.tenant_id}"


def _oauth_token_url(tenant_authority: str) -> str:
    return f"{tenant_authority}/oauth2/v2.0/token"


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != {}}


# --------------------------------------------------------------------------- formats


def _oauth_env(smtp: SmtpSpec, creds: Mapping[str, str]) -> dict[str, str | None]:
    oauth = smtp.authentication.oauth2
    if smtp.authentication.method != "OAuth2" or oauth is None:
        return {}
    if oauth.grant_type == "JWTBearer":
        return {"SMTP_AUTH_METHOD": "XOAUTH2", "OAUTH2_GRANT_TYPE": oauth.grant_type,
                "OAUTH2_TOKEN_URL": oauth.token_url,
                "OAUTH2_SCOPE": oauth.scope, "OAUTH2_SUBJECT": oauth.subject,
                "GOOGLE_SERVICE_ACCOUNT_JSON": creds.get("serviceAccountKey")}
    authority = f"{oauth.authority.rstrip('/')}/{oauth.tenant_id}"
    scope = MICROSOFT_SMTP_SCOPE if oauth.scope == GOOGLE_SCOPE else oauth.scope
    return {"SMTP_AUTH_METHOD": "XOAUTH2", "OAUTH2_GRANT_TYPE": oauth.grant_type,
            "OAUTH2_TOKEN_URL": _oauth_token_url(authority), "OAUTH2_AUTHORITY": authority,
            "OAUTH2_SCOPE": scope, "OAUTH2_TENANT_ID": oauth.tenant_id,
            "OAUTH2_CLIENT_ID": oauth.client_id,
            "OAUTH2_CLIENT_SECRET": creds.get("clientSecret"),
            "OAUTH2_CLIENT_CERTIFICATE": creds.get("clientCertificate")}


def env_smtp(smtp: SmtpSpec, creds: Mapping[str, str]) -> dict[str, str]:
    """env format for an SMTP account."""
    conn, ident = smtp.connection, smtp.identity
    values: dict[str, str | None] = {
        "SMTP_HOST": conn.host,
        "SMTP_PORT": str(conn.port),
        "SMTP_SECURITY": conn.security,
        "SMTP_MIN_TLS_VERSION": conn.min_tls_version if conn.security != "None" else None,
        "SMTP_FROM": ident.email_address,
        "SMTP_FROM_NAME": ident.display_name or None,
        "SMTP_REPLY_TO": ident.reply_to or None,
        "SMTP_USERNAME": smtp_username(smtp, creds),
        "SMTP_PASSWORD": smtp_password(smtp, creds),
    }
    values.update(_oauth_env(smtp, creds))
    return {k: v for k, v in values.items() if v}


def env_graph(graph: GraphSpec, creds: Mapping[str, str]) -> dict[str, str]:
    """env format for a Microsoft Graph account."""
    values: dict[str, str | None] = {
        "GRAPH_TENANT_ID": graph.tenant_id,
        "GRAPH_CLIENT_ID": graph.client_id,
        "GRAPH_CLIENT_SECRET": creds.get("clientSecret"),
        "GRAPH_CLIENT_CERTIFICATE": creds.get("clientCertificate"),
        "GRAPH_USER": graph.user_principal_name,
        "GRAPH_REPLY_TO": graph.reply_to or None,
        "GRAPH_AUTHORITY": _graph_authority(graph),
        "GRAPH_TOKEN_URL": _oauth_token_url(_graph_authority(graph)),
        "GRAPH_SCOPE": GRAPH_SCOPE,
        "GRAPH_ENDPOINT": graph.endpoint,
        "GRAPH_GRANT_TYPE": graph.grant_type,
    }
    if graph.grant_type == "Password":
        values["GRAPH_USERNAME"] = creds.get("username")
        values["GRAPH_PASSWORD"] = creds.get("password")
    return {k: v for k, v in values.items() if v}


def _userinfo(smtp: SmtpSpec, creds: Mapping[str, str]) -> str:
    user, password = smtp_username(smtp, creds), smtp_password(smtp, creds)
    if user is None:
        return ""
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return userinfo + "@"


def _url(scheme: str, smtp: SmtpSpec, creds: Mapping[str, str], query: str = "") -> str:
    conn = smtp.connection
    tail = f"?{query}" if query else ""
    return f"{scheme}://{_userinfo(smtp, creds)}{_url_host(conn.host)}:{conn.port}{tail}"


def smtp_url(smtp: SmtpSpec, creds: Mapping[str, str]) -> str:
    """smtps:// for SMTPS, smtp://…?requireTLS=true for STARTTLS (nodemailer's names)."""
    security = smtp.connection.security
    if security == "SMTPS":
        return _url("smtps", smtp, creds)
    return _url("smtp", smtp, creds, "requireTLS=true" if security == "STARTTLS" else "")


def mailer_dsn(smtp: SmtpSpec, creds: Mapping[str, str]) -> str:
    """Symfony Mailer's DSN: smtps://, smtp://…?require_tls=true, or smtp://…?auto_tls=false."""
    security = smtp.connection.security
    if security == "SMTPS":
        return _url("smtps", smtp, creds)
    return _url("smtp", smtp, creds,
                "require_tls=true" if security == "STARTTLS" else "auto_tls=false")


def email_url(smtp: SmtpSpec, creds: Mapping[str, str]) -> str:
    """EMAIL_URL that dj-email-url and django-environ both read with the same TLS/SSL settings.

    dj-email-url reads `?tls=True` / `?ssl=True` (and `smtps://` as STARTTLS); django-environ
    reads the schemes `smtp+tls` / `smtp+ssl`: each ignores the other's half.
    """
    security = smtp.connection.security
    if security == "SMTPS":
        return _url("smtp+ssl", smtp, creds, "ssl=True")
    if security == "STARTTLS":
        return _url("smtp+tls", smtp, creds, "tls=True")
    return _url("smtp", smtp, creds)


def django_settings(smtp: SmtpSpec, creds: Mapping[str, str]) -> dict[str, str]:
    """Django EMAIL_* settings; EMAIL_USE_TLS means STARTTLS, EMAIL_USE_SSL implicit TLS."""
    conn, ident = smtp.connection, smtp.identity
    values = {
        "EMAIL_HOST": conn.host,
        "EMAIL_PORT": str(conn.port),
        "EMAIL_USE_TLS": "True" if conn.security == "STARTTLS" else "False",
        "EMAIL_USE_SSL": "True" if conn.security == "SMTPS" else "False",
        "EMAIL_TIMEOUT": _num(conn.timeout_seconds),
        "DEFAULT_FROM_EMAIL": format_address(ident.email_address, ident.display_name),
    }
    password = smtp_password(smtp, creds)
    if password is not None:
        values["EMAIL_HOST_USER"] = smtp_username(smtp, creds) or ""
        values["EMAIL_HOST_PASSWORD"] = password
    values["EMAIL_URL"] = email_url(smtp, creds)
    return values


def sender_json(account: Account, creds: Mapping[str, str]) -> str:
    """sender.json: the whole sender configuration as one JSON object (see module docstring)."""
    doc: dict[str, Any]
    if account.graph is not None:
        g = account.graph
        doc = {"transport": "graph", "from": {"address": g.user_principal_name},
               "replyTo": g.reply_to, "graph": _drop_none({
                   "tenantId": g.tenant_id, "clientId": g.client_id,
                   "clientSecret": creds.get("clientSecret"),
                   "clientCertificate": creds.get("clientCertificate"),
                   "userPrincipalName": g.user_principal_name,
                   "authority": _graph_authority(g),
                   "tokenUrl": _oauth_token_url(_graph_authority(g)), "scope": GRAPH_SCOPE,
                   "endpoint": g.endpoint,
                   "grantType": g.grant_type,
                   "username": creds.get("username") if g.grant_type == "Password" else None,
                   "password": creds.get("password") if g.grant_type == "Password" else None,
                   "timeoutSeconds": _int_if_whole(g.timeout_seconds)})}
    else:
        smtp = smtp_spec(account)
        conn, ident = smtp.connection, smtp.identity
        oauth = {k: v for k, v in _oauth_env(smtp, creds).items()
                 if v and k != "SMTP_AUTH_METHOD"}
        doc = {"transport": "smtp",
               "from": _drop_none({"address": ident.email_address,
                                   "name": ident.display_name or None}),
               "replyTo": ident.reply_to or None,
               "smtp": _drop_none({
                   "host": conn.host, "port": conn.port, "security": conn.security,
                   "minTLSVersion": (conn.min_tls_version if conn.security != "None"
                                     else None),
                   "timeoutSeconds": _int_if_whole(conn.timeout_seconds),
                   "authMethod": ("XOAUTH2" if smtp.authentication.method == "OAuth2"
                                  else "Password" if smtp.authentication.method
                                  in PASSWORD_METHODS else smtp.authentication.method),
                   "username": smtp_username(smtp, creds), "password": smtp_password(smtp, creds),
                   "oauth2": {_camel(k): v for k, v in sorted(oauth.items())},
                   "advanced": dict(sorted(untested(smtp.advanced).items())),
               })}
    return json.dumps(_drop_none(doc), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _int_if_whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _nodemailer_auth(smtp: SmtpSpec, creds: Mapping[str, str]) -> dict[str, Any] | None:
    auth, user = smtp.authentication, smtp_username(smtp, creds)
    if auth.method in PASSWORD_METHODS:
        return {"user": user, "pass": smtp_password(smtp, creds) or ""}
    if auth.method != "OAuth2" or auth.oauth2 is None:
        return None
    out: dict[str, Any] = {"type": "OAuth2", "user": user}
    if auth.oauth2.grant_type == "JWTBearer":
        # nodemailer's two-legged OAuth2: it signs the JWT with the service account's key.
        try:
            key = json.loads(creds.get("serviceAccountKey") or "{}")
        except ValueError:
            key = {}
        if isinstance(key, dict):
            out.update(_drop_none({"serviceClient": key.get("client_id"),
                                   "privateKey": key.get("private_key"),
                                   "accessUrl": auth.oauth2.token_url}))
    return out


def nodemailer_json(smtp: SmtpSpec, creds: Mapping[str, str], ca_pem: str | None) -> str:
    """nodemailer.json: {"transport": createTransport options, "defaults": message defaults}."""
    conn, ident = smtp.connection, smtp.identity
    millis = int(round(conn.timeout_seconds * 1000))
    transport: dict[str, Any] = {
        "host": conn.host, "port": conn.port, "secure": conn.security == "SMTPS",
        "connectionTimeout": millis, "greetingTimeout": millis, "socketTimeout": millis,
    }
    if conn.security == "STARTTLS":
        transport["requireTLS"] = True
    if conn.security == "None":
        transport["ignoreTLS"] = True
    else:
        transport["tls"] = _drop_none({"minVersion": f"TLSv{conn.min_tls_version}",
                                       "ca": ca_pem or None})
    auth = _nodemailer_auth(smtp, creds)
    if auth is not None:
        transport["auth"] = auth
    defaults = _drop_none({"from": _drop_none({"address": ident.email_address,
                                               "name": ident.display_name or None}),
                           "replyTo": ident.reply_to or None})
    doc = {"transport": transport, "defaults": defaults}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _camel(env_key: str) -> str:
    """OAUTH2_TOKEN_URL -> tokenUrl, GOOGLE_SERVICE_ACCOUNT_JSON -> serviceAccountJson."""
    words = env_key.lower().split("_")
    words = words[1:] if words[0] in ("oauth2", "google") else words
    return words[0] + "".join(w.capitalize() for w in words[1:])


def smtp_spec(account: Account) -> SmtpSpec:
    """The account's spec.smtp (an SMTP account always has one)."""
    if account.smtp is None:
        raise ValueError(f"account {account.namespace}/{account.name} has no smtp spec")
    return account.smtp


# --------------------------------------------------------------------------- what a format's consumers cannot do


def format_warnings(account: Account, result: ProbeResult | None) -> tuple[Outcome, ...]:
    """Warnings for selected formats whose consumers cannot authenticate this account's way.

    XOAUTH2 is known from the spec alone (`validate` says it too); a non-ASCII password only
    from the probe's credentials.
    """
    smtp = account.smtp
    if account.send_using != "SMTP" or smtp is None or account.relay.enabled:
        return ()  # with the relay, every format logs in with the relay's ASCII password
    selected = list(account.publish.formats)
    found: list[Outcome] = []
    if smtp.authentication.method == "OAuth2":
        names = [f for f in selected if f in PASSWORD_ONLY_FORMATS]
        if names:
            found.append(Outcome(False, reasons.FORMAT_CANNOT_AUTHENTICATE,
                                 f"publish.formats {', '.join(names)}: their consumers (Django, "
                                 "dj-email-url, django-environ, nodemailer and Symfony URLs) "
                                 "take a user and password only and cannot do OAuth2 (XOAUTH2); "
                                 "use env, json, nodemailer or javamail"))
    password = (result.credentials.get("password") if result is not None else None) or ""
    if smtp.authentication.method in PASSWORD_METHODS and not password.isascii():
        names = [f for f in selected if f in SMTPLIB_FORMATS]
        if names:
            found.append(Outcome(False, reasons.PASSWORD_NOT_ASCII,
                                 f"publish.formats {', '.join(names)}: the password has "
                                 "non-ASCII characters, which Python's smtplib (Django) cannot "
                                 "send in AUTH; use an ASCII password for Django"))
    return tuple(found)
