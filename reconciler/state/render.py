"""The published Secret as a pure function of (account, probe result): DESIGN §6.

Keys per `spec.publish.formats`, each rendered by reconciler.state.formats (env, url, symfony,
django, nodemailer, json) or reconciler.state.java_properties (javamail, spring), plus:

- javamail or spring, with a CA: `truststore.jks` (the CA as trusted entries, see truststore.py)
  and TRUSTSTORE_PASSWORD. JavaMail has no property naming a truststore file, so a plain
  JavaMail program is started with -Djavax.net.ssl.trustStore / -Djavax.net.ssl.trustStorePassword
  (the javamail.properties header says so).
- always: `ca.crt` when the result carries the truststore PEM; with signing, `smime.crt` +
  `smime.key` (publish.signingFormat PEM) or `signing.p12` + `SIGNING_P12_PASSWORD` (PKCS12).

The url, symfony, javamail, spring, django and nodemailer formats describe SMTP and are not
rendered for Graph. The Secret carries our labels, the hash of its data and, in a cluster, the
EmailAccount as its owner; `secret_diff` and `is_managed` compare and recognise published Secrets.
Credential values come from `ProbeResult.credentials`; nothing here logs them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from reconciler.manifest.published import reserved_key_problem
from reconciler.model import (
    ACCOUNT_LABEL,
    GROUP_VERSION,
    HASH_ANNOTATION,
    KIND,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    ROTATE_RELAY_PASSWORD_ANNOTATION,
    Account,
    ProbeResult,
)
from reconciler.state import relay
from reconciler.state.formats import (
    django_settings,
    env_graph,
    env_smtp,
    mailer_dsn,
    nodemailer_json,
    sender_json,
    smtp_spec,
    smtp_url,
)
from reconciler.state.java_properties import (
    TRUSTSTORE_HINT,
    javamail_properties,
    properties_text,
    spring_properties,
)
from reconciler.state.truststore import ca_certificates, jks_truststore, truststore_password


def render_data(account: Account, result: ProbeResult, *,
                relay_password: str | None = None) -> dict[str, bytes]:
    """Every published key and its raw value, per publish.formats.

    With spec.relay on (and its password given), the formats describe the relay on loopback and
    the relay's own keys are added (reconciler.state.relay)."""
    if account.relay.enabled and relay_password:
        relay_keys = relay.relay_data(account, result, relay_password)
        app = dataclasses.replace(account, send_using="SMTP", smtp=relay.relay_view(account),
                                  graph=None)
        app_result = dataclasses.replace(
            result, ca_pem=None, signing=None,
            credentials={"username": relay.relay_address(account), "password": relay_password})
        data = render_data(app, app_result)
        data.update({k: v.encode("utf-8") for k, v in relay_keys.items()})
        return data
    creds = result.credentials
    formats = set(account.publish.formats)
    raw: dict[str, str | bytes] = {}
    if account.send_using == "MicrosoftGraph" and account.graph is not None:
        if "env" in formats:
            raw.update(env_graph(account.graph, creds))
        if "json" in formats:
            raw["sender.json"] = sender_json(account, creds)
    else:
        smtp = smtp_spec(account)
        if "env" in formats:
            raw.update(env_smtp(smtp, creds))
        if "url" in formats:
            raw["SMTP_URL"] = smtp_url(smtp, creds)
        if "symfony" in formats:
            raw["MAILER_DSN"] = mailer_dsn(smtp, creds)
        certs = ca_certificates(result.ca_pem) if result.ca_pem else []
        java_ca = bool(certs) and smtp.connection.security != "None"
        if "javamail" in formats:
            raw["javamail.properties"] = properties_text(javamail_properties(smtp, creds),
                                                         TRUSTSTORE_HINT if java_ca else "")
        if "spring" in formats:
            raw["application.properties"] = properties_text(
                spring_properties(smtp, creds, result.ca_pem if java_ca else None))
        if java_ca and formats & {"javamail", "spring"}:
            password = truststore_password(certs)
            raw["truststore.jks"] = jks_truststore(certs, password)
            raw["TRUSTSTORE_PASSWORD"] = password
        if "django" in formats:
            raw.update(django_settings(smtp, creds))
        if "nodemailer" in formats:
            raw["nodemailer.json"] = nodemailer_json(smtp, creds, result.ca_pem)
        if "json" in formats:
            raw["sender.json"] = sender_json(account, creds)
    if result.ca_pem:
        raw["ca.crt"] = result.ca_pem
    signing = result.signing
    if signing is not None and signing.outcome.ok:
        if account.publish.signing_format == "PKCS12":
            if signing.pkcs12 is not None:
                raw["signing.p12"] = signing.pkcs12
                raw["SIGNING_P12_PASSWORD"] = signing.pkcs12_password or ""
        elif signing.certificate_chain_pem and signing.private_key_pem:
            raw["smime.crt"] = signing.certificate_chain_pem
            raw["smime.key"] = signing.private_key_pem
    return {k: v if isinstance(v, bytes) else v.encode("utf-8") for k, v in raw.items()}


def data_hash(data: Mapping[str, str]) -> str:
    """'sha256:<hex>' over a Secret's base64 `data`, independent of key order."""
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode("utf-8") + b"\0" + str(data[key]).encode("ascii") + b"\0")
    return f"sha256:{digest.hexdigest()}"


def render_secret(account: Account, result: ProbeResult, *,
                  owner_uid: str | None, relay_password: str | None = None) -> dict[str, Any]:
    """The v1 Secret manifest to publish for `account` (DESIGN §6)."""
    raw = render_data(account, result, relay_password=relay_password)
    data = {k: base64.b64encode(raw[k]).decode("ascii") for k in sorted(raw)}
    # Keys under email.reconciler.io/ are ours alone (validate refuses them in publish): a
    # published Secret must never carry the credential opt-in label, whatever let it through.
    labels = {**_not_reserved(account.publish.labels), MANAGED_BY_LABEL: MANAGED_BY_VALUE,
              ACCOUNT_LABEL: account.name}
    annotations = {**_not_reserved(account.publish.annotations),
                   HASH_ANNOTATION: data_hash(data)}
    rotated = account.annotations.get(ROTATE_RELAY_PASSWORD_ANNOTATION)
    if account.relay.enabled and rotated:  # the rotation this password answers (state/relay.py)
        annotations[ROTATE_RELAY_PASSWORD_ANNOTATION] = rotated
    metadata: dict[str, Any] = {
        "name": account.publish.secret_name,
        "namespace": account.namespace,
        "labels": dict(sorted(labels.items())),
        "annotations": dict(sorted(annotations.items())),
    }
    if owner_uid:
        metadata["ownerReferences"] = [{
            "apiVersion": GROUP_VERSION, "kind": KIND, "name": account.name, "uid": owner_uid,
            "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
            "data": data}


def _not_reserved(meta: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if reserved_key_problem(k) is None}


def _data_of(secret: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not secret:
        return {}
    data = secret.get("data")
    return data if isinstance(data, Mapping) else {}


def secret_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, list[str]]:
    """Key names added, changed and removed between two Secret manifests (never values)."""
    before, after = _data_of(old), _data_of(new)
    return {
        "added": sorted(set(after) - set(before)),
        "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k]),
        "removed": sorted(set(before) - set(after)),
    }


def is_managed(secret: Mapping[str, Any]) -> bool:
    """Whether the Secret carries our managed-by label (else it is never taken over)."""
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, Mapping) and labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
