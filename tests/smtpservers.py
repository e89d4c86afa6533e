"""Reusable SMTP test helpers: throwaway CA, aiosmtpd servers on 127.0.0.1, fault servers, accounts.

The server machinery lives in `reconciler.demo.smtp_servers` and `reconciler.demo.certificates` (the
demo command uses it too); this module re-exports it and adds what only tests need:

- `make_account(**overrides)`: an SMTP `Account` built directly from the model dataclasses.
- `write_secret(root, namespace, name, key, value)`: a file in a `--secrets-dir` layout.
- `StaticTokens(token)`: a `TokenProvider` that always returns the same access token.
- server-context shortcuts: `tls12_only`, `tls13_only`, `tls11_only`, `expired`, `wrong_host`.

Typical use (with the fixtures of tests/conftest.py):

    server = smtp_server(mode="STARTTLS", users={USER: PASSWORD})
    account = make_account(port=server.port, truststore=TRUSTSTORE_REF)
    result = asyncio.run(probe_account(account, secrets, now=NOW))
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from reconciler.demo.certificates import LOOPBACK, ThrowawayCA
from reconciler.demo.smtp_servers import (
    AuthAttempt,
    DemoServers,
    ReceivedMessage,
    RunningServer,
    ServerLoop,
    SmtpServerOptions,
    start_demo_servers,
    unused_port,
)
from reconciler.model import (
    Account,
    Authentication,
    Connection,
    Identity,
    KeyRef,
    OAuth2,
    Publish,
    SecretReader,
    SmtpSpec,
)

__all__ = [
    "LOOPBACK", "AuthAttempt", "DemoServers", "ReceivedMessage", "RunningServer", "ServerLoop",
    "SmtpServerOptions", "ThrowawayCA", "start_demo_servers", "unused_port", "make_account",
    "write_secret", "StaticTokens", "NAMESPACE", "USER", "PASSWORD", "TOKEN", "PASSWORD_REF",
    "TRUSTSTORE_REF", "NOW", "server_context",
]

NAMESPACE = "mail"
USER = "app@example.test"
PASSWORD = "s3cret-Pa55word-9f1c"  # the known password the secrecy test looks for
TOKEN = "ya29.test-access-token-7d2e"
PASSWORD_REF = KeyRef("smtp-credentials", "password",
                      field="/spec/smtp/authentication/passwordSecretRef")
TRUSTSTORE_REF = KeyRef("mail-ca", "ca.crt", kind="ConfigMap",
                        field="/spec/smtp/connection/truststore/configMapRef")
# The probes of these tests talk TLS to real servers, and OpenSSL checks certificates against the
# wall clock: so the clock the tests inject is the wall clock, read once, and every certificate
# of server_context() is dated from it too (a fixed date here broke the "expiring" test once the
# calendar passed it). Pure tests with no TLS keep their own fixed dates.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_account(**o: Any) -> Account:
    """An SMTP account for 127.0.0.1; keyword overrides name the model fields.

    Connection: host, port, security, min_tls_version, truststore, timeout_seconds,
    allow_insecure_auth. Authentication: method, password, oauth2. Identity: email_address,
    user_id, display_name. Also: namespace, name, advanced, signing, provider.
    """
    method = o.get("method", "Password")
    oauth2 = o.get("oauth2")
    if method == "OAuth2" and oauth2 is None:
        oauth2 = OAuth2(grant_type="JWTBearer", subject=USER)
    name = o.get("name", "billing")
    return Account(
        namespace=o.get("namespace", NAMESPACE),
        name=name,
        provider=o.get("provider", "custom"),
        send_using="SMTP",
        publish=Publish(secret_name=f"{name}-sender"),
        smtp=SmtpSpec(
            identity=Identity(email_address=o.get("email_address", USER),
                              display_name=o.get("display_name"),
                              user_id=o.get("user_id")),
            connection=Connection(
                host=o.get("host", LOOPBACK),
                port=o.get("port", 587),
                security=o.get("security", "STARTTLS"),
                min_tls_version=o.get("min_tls_version", "1.2"),
                truststore=o.get("truststore", TRUSTSTORE_REF),
                timeout_seconds=o.get("timeout_seconds", 5.0),
                allow_insecure_auth=o.get("allow_insecure_auth", False),
            ),
            authentication=Authentication(
                method=method,
                password=o.get("password", PASSWORD_REF if method == "Password" else None),
                oauth2=oauth2,
            ),
            signing=o.get("signing"),
            advanced=o.get("advanced", {}),
        ),
    )


def write_secret(root: Path, namespace: str, name: str, key: str, value: str | bytes) -> Path:
    """Write one key in the --secrets-dir layout ROOT/<namespace>/<name>/<key>."""
    path = root / namespace / name / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value.encode() if isinstance(value, str) else value)
    return path


class StaticTokens:
    """A TokenProvider returning a fixed token (reconciler.probe.tokencache provides the real one)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls = 0

    async def smtp_token(self, account: Account, secrets: SecretReader) -> str:
        self.calls += 1
        return self.token


def server_context(ca: ThrowawayCA, variant: str = "default") -> ssl.SSLContext:
    """Named server TLS setups: default, tls12_only, tls13_only, tls11_only, expired, wrong_host."""
    if variant == "tls12_only":
        return ca.server_context(max_version=ssl.TLSVersion.TLSv1_2)
    if variant == "tls13_only":
        return ca.server_context(min_version=ssl.TLSVersion.TLSv1_3)
    if variant == "tls11_only":
        return ca.server_context(max_version=ssl.TLSVersion.TLSv1_1)
    if variant == "expired":
        past = NOW - dt.timedelta(days=2)
        return ca.server_context(not_before=past - dt.timedelta(days=30), not_after=past)
    if variant == "expiring":
        soon = NOW + dt.timedelta(days=5)
        return ca.server_context(not_after=soon)
    if variant == "wrong_host":
        return ca.server_context("mail.other-host.test")
    return ca.server_context()
