"""One builder for the EmailAccount manifests that tests and benchmarks point at loopback servers."""

from __future__ import annotations

from typing import Any


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
