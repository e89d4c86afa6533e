"""What the published Secret holds for the relay (spec.relay, issue 24): a pure function of
(account, probe result, relay password).

With the relay on, the application-facing formats describe the relay, not the provider: host
127.0.0.1, the relay's port, no TLS (loopback), AUTH PLAIN/LOGIN as the account's address with the
relay password. What the sidecar needs sits in the same Secret, so it needs no API access:

    relay.json                 version 1: listen address, limits, the allowed senders, and the
                               account (its EmailAccount with every reference renamed to a key of
                               this Secret)
    relay-password             the password the application logs in with
    relay-upstream-<what>      the upstream credentials (client secret or certificate, service
                               account key) and the truststore, as the probe read them

Limits default to the provider's: Exchange Online takes 30 messages a minute a mailbox and 500
recipients a message; Gmail 100 recipients a message (the relay's own defaults otherwise).
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Mapping
from typing import Any

from reconciler.model import (
    Account,
    Authentication,
    Connection,
    Identity,
    KeyRef,
    ProbeResult,
    SmtpSpec,
)

PASSWORD_KEY = "relay-password"
CONFIG_KEY = "relay.json"
CA_KEY = "relay-upstream-ca.crt"
LOOPBACK = "127.0.0.1"

#: manifest field of a reference -> (the probe result's credentials name, the published key)
UPSTREAM: dict[str, tuple[str, str]] = {
    "clientSecretSecretRef": ("clientSecret", "relay-upstream-client-secret"),
    "clientCertificateSecretRef": ("clientCertificate", "relay-upstream-client-certificate"),
    "serviceAccountKeySecretRef": ("serviceAccountKey", "relay-upstream-service-account-key"),
    "usernameSecretRef": ("username", "relay-upstream-username"),
    "passwordSecretRef": ("password", "relay-upstream-password"),
}

#: provider -> (messages a minute, recipients a message)
PROVIDER_LIMITS: dict[str, tuple[int | None, int | None]] = {
    "office365": (30, 500),
    "gmail": (None, 100),
}
DEFAULT_MESSAGES_PER_MINUTE = 60
DEFAULT_RECIPIENTS = 100
DEFAULT_MESSAGE_BYTES = 25 * 1024 * 1024
GRAPH_CONCURRENT_SENDS = 4  # Graph's limit of concurrent requests a mailbox


def new_password() -> str:
    """A fresh relay password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def relay_address(account: Account) -> str:
    if account.smtp is not None:
        return account.smtp.identity.email_address
    assert account.graph is not None
    return account.graph.user_principal_name


def relay_view(account: Account) -> SmtpSpec:
    """The SMTP account the application sees: the relay on loopback, AUTH with the relay
    password (referenced as this Secret's relay-password key)."""
    display = account.smtp.identity.display_name if account.smtp is not None else None
    return SmtpSpec(
        identity=Identity(email_address=relay_address(account), display_name=display),
        connection=Connection(host=LOOPBACK, port=account.relay.port, security="None",
                              min_tls_version="1.2", timeout_seconds=60.0,
                              allow_insecure_auth=True),
        authentication=Authentication(method="Password",
                                      password=KeyRef(account.publish.secret_name, PASSWORD_KEY)))


def limits(account: Account) -> dict[str, int]:
    per_minute, recipients = PROVIDER_LIMITS.get(account.provider, (None, None))
    r = account.relay
    return {
        "messagesPerMinute": r.max_messages_per_minute or per_minute
        or DEFAULT_MESSAGES_PER_MINUTE,
        "maxRecipients": r.max_recipients or recipients or DEFAULT_RECIPIENTS,
        "maxMessageBytes": r.max_message_bytes or DEFAULT_MESSAGE_BYTES,
        "concurrentUpstream": GRAPH_CONCURRENT_SENDS,
    }


def _renamed(node: Any, secret_name: str, used: set[str]) -> Any:
    """The manifest with each credential reference naming a key of the published Secret."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in UPSTREAM and isinstance(value, Mapping):
                used.add(UPSTREAM[key][0])
                out[key] = {"name": secret_name, "key": UPSTREAM[key][1]}
            elif key == "truststore" and isinstance(value, Mapping):
                used.add("ca")
                out[key] = {"secretRef": {"name": secret_name, "key": CA_KEY}}
            else:
                out[key] = _renamed(value, secret_name, used)
        return out
    if isinstance(node, list):
        return [_renamed(v, secret_name, used) for v in node]
    return node


def relay_data(account: Account, result: ProbeResult, password: str) -> dict[str, str]:
    """relay.json, relay-password and the relay-upstream-* keys."""
    secret_name = account.publish.secret_name
    spec = {k: v for k, v in (account.manifest.get("spec") or {}).items()
            if k not in ("publish", "relay", "probe", "description")}
    used: set[str] = set()
    manifest = {"apiVersion": account.manifest.get("apiVersion"),
                "kind": account.manifest.get("kind"),
                "metadata": {"name": account.name, "namespace": account.namespace},
                "spec": _renamed(copy.deepcopy(spec), secret_name, used)}
    config = {"version": 1, "listen": {"host": LOOPBACK, "port": account.relay.port},
              "username": relay_address(account),
              "senders": sorted({relay_address(account), *account.relay.senders}),
              "limits": limits(account), "account": manifest}
    out: dict[str, str] = {CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True) + "\n",
                           PASSWORD_KEY: password}
    for cred, key in UPSTREAM.values():
        if cred in used and result.credentials.get(cred):
            out[key] = result.credentials[cred]
    if "ca" in used and result.ca_pem:
        out[CA_KEY] = result.ca_pem
    return out
