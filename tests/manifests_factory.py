"""The loopback world shared by tests and benchmarks: SMTP servers and the manifests pointing at them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.demo.certificates import ThrowawayCA
from reconciler.demo.smtp_servers import RunningServer, ServerLoop, SmtpServerOptions


def write_manifests(folder: Path, *docs: dict[str, Any]) -> Path:
    """Each manifest as `<folder>/<metadata.name>.yaml`; the folder, created if need be."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (folder / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc))
    return folder


def loopback_account(name: str, namespace: str, port: int, *, security: str = "STARTTLS",
                     timeout: float = 5, password_secret: str | None = None,
                     display_name: str | None = None, **spec_extra: Any) -> dict[str, Any]:
    """An SMTP EmailAccount for `name@example.com` on 127.0.0.1:port, trusting ConfigMap ca/ca.crt,
    authenticating with the password in Secret `<password_secret or name-smtp>/password`."""
    identity: dict[str, Any] = {"emailAddress": f"{name}@example.com"}
    if display_name:
        identity["displayName"] = display_name
    return {
        "apiVersion": "email.reconciler.io/v1alpha1",
        "kind": "EmailAccount",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "provider": "custom",
            "smtp": {
                "identity": identity,
                "connection": {"host": "127.0.0.1", "port": port, "security": security,
                               "timeoutSeconds": timeout,
                               "truststore": {"configMapRef": {"name": "ca", "key": "ca.crt"}}},
                "authentication": {"method": "Password",
                                   "passwordSecretRef": {"name": password_secret or f"{name}-smtp",
                                                         "key": "password"}},
            },
            **spec_extra,
        },
    }


@dataclass
class LoopbackServers:
    """A STARTTLS and an SMTPS server sharing a throwaway CA; logins checked against `users`."""

    ca: ThrowawayCA
    starttls: RunningServer
    smtps: RunningServer
    users: dict[str, str] = field(default_factory=dict)


@contextmanager
def loopback_servers() -> Iterator[LoopbackServers]:
    """Start the pair on 127.0.0.1 (the users table can change while they run); stop at exit."""
    users: dict[str, str] = {}

    def check(mechanism: str, login: str, secret: str) -> bool:
        return users.get(login) == secret

    with ServerLoop() as loop:
        ca = ThrowawayCA()
        starttls = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                               checker=check))
        smtps = loop.smtp(SmtpServerOptions(mode="SMTPS", tls_context=ca.server_context(),
                                            checker=check))
        yield LoopbackServers(ca, starttls, smtps, users)
