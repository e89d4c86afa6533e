"""Generated benchmark inputs: manifests (valid and invalid) and a secrets folder.

Nothing here is committed: callers write under a temporary folder or bench/out/.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from common import REPO

NAMESPACE = "bench"
CA_CONFIGMAP = ("bench-ca", "ca.crt")
Mutation = Callable[[dict[str, Any]], None]


def templates() -> list[dict[str, Any]]:
    """The example accounts (every provider, SMTP and Graph, STARTTLS/SMTPS/None, password, OAuth2,
    signing), as parsed documents."""
    docs = []
    for path in sorted((REPO / "accounts").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return docs


def _set_conn(field: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        spec = doc["spec"]
        if "smtp" in spec:
            spec["smtp"].setdefault("connection", {"host": "mail.example.com"})[field] = value
        else:
            spec["graph"]["timeoutSeconds"] = -1
    return mutate


def _drop_identity(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    if "smtp" in spec:
        del spec["smtp"]["identity"]["emailAddress"]
    else:
        del spec["graph"]["userPrincipalName"]


def _unknown_field(doc: dict[str, Any]) -> None:
    doc["spec"]["hostname"] = "mail.example.com"


def _bad_name(doc: dict[str, Any]) -> None:
    doc["metadata"]["name"] = doc["metadata"]["name"].upper() + "_X"


def _bad_provider(doc: dict[str, Any]) -> None:
    doc["spec"]["provider"] = "hotmail"


# The kinds of mistakes people make, one per invalid document, in rotation.
MUTATIONS: tuple[Mutation, ...] = (_set_conn("port", 70000), _set_conn("security", "TLS"),
                                   _drop_identity, _unknown_field, _bad_name, _bad_provider)


def validation_corpus(dest: Path, count: int, invalid_every: int = 10) -> int:
    """Write `count` one-document files under dest, every `invalid_every`-th one invalid.

    Returns the number of invalid documents.
    """
    dest.mkdir(parents=True, exist_ok=True)
    base = templates()
    invalid = 0
    for i in range(count):
        doc = copy.deepcopy(base[i % len(base)])
        name = f"{doc['metadata']['name']}-{i:05d}"
        doc["metadata"]["name"] = name
        publish = doc["spec"].setdefault("publish", {})
        publish["secretName"] = f"{name}-sender"
        if i % invalid_every == invalid_every - 1:
            MUTATIONS[invalid % len(MUTATIONS)](doc)
            invalid += 1
        (dest / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return invalid


def probe_account(index: int, port: int, *, security: str = "STARTTLS") -> tuple[dict[str, Any], str]:
    """An SMTP account with password authentication against 127.0.0.1:port; (manifest, login)."""
    name = f"acct-{index:05d}"
    login = f"{name}@bench.test"
    conn: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": security,
                            "timeoutSeconds": 30}
    if security != "None":
        conn["truststore"] = {"configMapRef": {"name": CA_CONFIGMAP[0], "key": CA_CONFIGMAP[1]}}
    doc = {
        "apiVersion": "email.reconciler.io/v1alpha1",
        "kind": "EmailAccount",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "provider": "custom",
            "smtp": {
                "identity": {"emailAddress": login, "displayName": f"Bench {index}"},
                "connection": conn,
                "authentication": {"method": "Password",
                                   "passwordSecretRef": {"name": f"{name}-smtp", "key": "password"}},
            },
        },
    }
    return doc, login


def probe_corpus(manifests: Path, secrets_dir: Path, count: int, ports: list[int], ca_pem: str,
                 ) -> dict[str, str]:
    """Write `count` STARTTLS+AUTH accounts spread over ports, their passwords and the CA.

    Returns login -> password, for the servers.
    """
    manifests.mkdir(parents=True, exist_ok=True)
    users: dict[str, str] = {}
    ca = secrets_dir / NAMESPACE / CA_CONFIGMAP[0] / CA_CONFIGMAP[1]
    ca.parent.mkdir(parents=True, exist_ok=True)
    ca.write_text(ca_pem)
    for i in range(count):
        doc, login = probe_account(i, ports[i % len(ports)])
        password = "p" + secrets.token_urlsafe(18)  # never starts with "-" (swaks reads options)
        users[login] = password
        name = doc["metadata"]["name"]
        path = secrets_dir / NAMESPACE / f"{name}-smtp" / "password"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(password)
        path.chmod(0o600)
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return users


def secret_objects(users: dict[str, str], ca_pem: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The same credentials as Kubernetes objects: ("secrets"|"configmaps", object)."""
    import base64

    from reconciler.policy import CREDENTIAL_LABEL  # issue 18: credentials are opted in

    yield "configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": CA_CONFIGMAP[0], "namespace": NAMESPACE,
                                      "labels": {CREDENTIAL_LABEL: "true"}},
                         "data": {CA_CONFIGMAP[1]: ca_pem}}
    for login, password in users.items():
        name = login.split("@", 1)[0]
        yield "secrets", {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": f"{name}-smtp", "namespace": NAMESPACE,
                                       "labels": {CREDENTIAL_LABEL: "true"}},
                          "data": {"password": base64.b64encode(password.encode()).decode()}}
