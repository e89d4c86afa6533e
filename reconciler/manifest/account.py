"""Build the effective model.Account from a manifest document known to be valid."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from reconciler import model
from reconciler.manifest import providers

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
#: Default keys of spec.smtp.authentication.accessKeySecretRef (the AWS CLI's variable names).
AWS_ACCESS_KEY_ID_KEY = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY_KEY = "AWS_SECRET_ACCESS_KEY"
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as "30s", "10m", "1h30m" or "24h"."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _map(value: Any) -> dict[str, str]:
    if not value:  # the usual absent labels, annotations, advanced: no comprehension
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _ref(block: Mapping[str, Any], key: str, pointer: str,
         kind: Literal["Secret", "ConfigMap"] = "Secret") -> model.KeyRef | None:
    raw = block.get(key)
    # an absent reference (most are) or YAML's map, a dict: the Mapping ABC's isinstance (a
    # Python call) only for anything else
    if raw is None or (type(raw) is not dict and not isinstance(raw, Mapping)):
        return None
    return model.KeyRef(name=str(raw["name"]), key=str(raw["key"]),
                        kind=kind, field=f"{pointer}/{key}")


def _connection(provider: str, region: str | None, tier: str | None,
                raw: Mapping[str, Any]) -> model.Connection:
    preset = providers.preset_for(provider, region, tier)
    host = raw.get("host") or (preset[0] if preset else "")
    port = raw.get("port")
    security = raw.get("security")
    if port is None:
        use_preset = preset is not None and security in (None, preset[2])
        port = preset[1] if preset and use_preset else providers.default_port(security)
    if security is None:
        security = (providers.preset_security(provider, int(port)) if preset else None) \
            or providers.default_security(port)
    p = "/spec/smtp/connection/truststore"
    ts = raw.get("truststore") or {}
    truststore = _ref(ts, "secretRef", p) or _ref(ts, "configMapRef", p, "ConfigMap")
    return model.Connection(
        host=str(host), port=int(port), security=security,
        min_tls_version=str(raw.get("minTLSVersion", "1.2")),  # type: ignore[arg-type]
        truststore=truststore,
        timeout_seconds=float(raw.get("timeoutSeconds", 30)),
        allow_insecure_auth=bool(raw.get("allowInsecureAuth", False)))


def _oauth2(provider: str, raw: Mapping[str, Any]) -> model.OAuth2:
    p = "/spec/smtp/authentication/oauth2"
    grant = raw["grantType"]
    microsoft = grant == "ClientCredentials"
    default_scope = providers.MICROSOFT_SMTP_SCOPE if microsoft else providers.GOOGLE_SMTP_SCOPE
    return model.OAuth2(
        grant_type=grant,
        service_account_key=_ref(raw, "serviceAccountKeySecretRef", p),
        subject=raw.get("subject"),
        token_url=str(raw.get("tokenUrl", providers.GOOGLE_TOKEN_URL)),
        scope=str(raw.get("scope", default_scope)),
        tenant_id=raw.get("tenantId"),
        client_id=raw.get("clientId"),
        client_secret=_ref(raw, "clientSecretSecretRef", p),
        client_certificate=_ref(raw, "clientCertificateSecretRef", p),
        authority=str(raw.get("authority", providers.MICROSOFT_AUTHORITY)))


def _smtp(provider: str, region: str | None, tier: str | None,
          raw: Mapping[str, Any]) -> model.SmtpSpec:
    ident = raw["identity"]
    preset = providers.preset(provider)
    fixed = preset.username if preset else None
    auth_raw = raw.get("authentication") or {}
    p = "/spec/smtp/authentication"
    username = _ref(auth_raw, "usernameSecretRef", p)
    # No userId when the username comes from a Secret: usernameSecretRef, or AWS's access key id
    secret_username = username is not None or auth_raw.get("method") == "AWSAccessKey"
    identity = model.Identity(
        email_address=ident["emailAddress"], display_name=ident.get("displayName"),
        user_id=None if secret_username
        else ident.get("userId") or fixed or ident["emailAddress"],
        reply_to=ident.get("replyTo"))
    aws = auth_raw.get("accessKeySecretRef")
    aws = aws if aws is not None and isinstance(aws, Mapping) else None  # the ABC once, if any
    aws_field = f"{p}/accessKeySecretRef"
    auth = model.Authentication(
        method=auth_raw.get("method", "None"),
        password=_ref(auth_raw, "passwordSecretRef", p), username=username,
        access_key_id=model.KeyRef(
            name=str(aws["name"]), key=str(aws.get("accessKeyIdKey", AWS_ACCESS_KEY_ID_KEY)),
            field=aws_field) if aws is not None else None,
        secret_access_key=model.KeyRef(
            name=str(aws["name"]),
            key=str(aws.get("secretAccessKeyKey", AWS_SECRET_ACCESS_KEY_KEY)),
            field=aws_field) if aws is not None else None,
        oauth2=_oauth2(provider, auth_raw["oauth2"]) if auth_raw.get("oauth2") else None)
    signing = None
    if raw.get("signing"):
        s, p = raw["signing"], "/spec/smtp/signing"
        keystore = _ref(s, "keystoreSecretRef", p)
        assert keystore is not None
        signing = model.Signing(keystore=keystore,
                                keystore_password=_ref(s, "keystorePasswordSecretRef", p),
                                alias=s.get("alias") or None)
    return model.SmtpSpec(identity=identity,
                          connection=_connection(provider, region, tier,
                                                 raw.get("connection") or {}),
                          authentication=auth, signing=signing, advanced=_map(raw.get("advanced")))


def _graph(raw: Mapping[str, Any]) -> model.GraphSpec:
    a, p = raw["authentication"], "/spec/graph/authentication"
    return model.GraphSpec(
        user_principal_name=raw["userPrincipalName"], tenant_id=str(a["tenantId"]),
        client_id=str(a["clientId"]), grant_type=a.get("grantType", "ClientCredentials"),
        client_secret=_ref(a, "clientSecretSecretRef", p),
        client_certificate=_ref(a, "clientCertificateSecretRef", p),
        username=_ref(a, "usernameSecretRef", p), password=_ref(a, "passwordSecretRef", p),
        reply_to=raw.get("replyTo"), timeout_seconds=float(raw.get("timeoutSeconds", 30)),
        authority=str(a.get("authority", providers.MICROSOFT_AUTHORITY)),
        endpoint=str(raw.get("endpoint", providers.GRAPH_ENDPOINT)))


#: The defaults, built once: frozen, so every account without the block can share them (a
#: frozen dataclass costs about a microsecond a field to build; bench/README.md, issue 25).
_PROBE_DEFAULTS = model.ProbeSettings()
_RELAY_DEFAULTS = model.Relay()
_EVERY_FORMAT = model.Publish("x").formats


def _probe(raw: Mapping[str, Any]) -> model.ProbeSettings:
    d = _PROBE_DEFAULTS
    if not raw:
        return d
    return model.ProbeSettings(
        interval_seconds=parse_duration(raw["interval"]) if "interval" in raw
        else d.interval_seconds,
        auth_interval_seconds=parse_duration(raw["authInterval"]) if "authInterval" in raw
        else d.auth_interval_seconds,
        retry_interval_seconds=parse_duration(raw["retryInterval"]) if "retryInterval" in raw
        else d.retry_interval_seconds,
        suspend=bool(raw.get("suspend", False)),
        envelope_check=bool(raw.get("envelopeCheck", True)))


def default_formats(send_using: str, smtp: Mapping[str, Any] | None,
                    relay: bool = False) -> tuple[str, ...]:
    """publish.formats when the manifest lists none: all of them, but for OAuth2 SMTP accounts
    none whose consumers take a user and password only (they could not authenticate) — unless
    the relay is on: then every format logs in to the relay with its password."""
    every = _EVERY_FORMAT
    method = ((smtp or {}).get("authentication") or {}).get("method")
    if send_using == "SMTP" and method == "OAuth2" and not relay:
        from reconciler.manifest.semantics import PASSWORD_ONLY_FORMATS

        return tuple(f for f in every if f not in PASSWORD_ONLY_FORMATS)
    return every


def _relay(raw: Mapping[str, Any]) -> model.Relay:
    if not raw:
        return _RELAY_DEFAULTS

    def number(name: str) -> int | None:
        value = raw.get(name)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    return model.Relay(enabled=bool(raw.get("enabled", False)), port=int(raw.get("port", 2525)),
                       senders=tuple(str(s) for s in raw.get("senders") or ()),
                       max_messages_per_minute=number("maxMessagesPerMinute"),
                       max_recipients=number("maxRecipients"),
                       max_message_bytes=number("maxMessageBytes"))


def account_from_manifest(doc: Mapping[str, Any], source: model.SourceRef | None = None,
                          warnings: tuple[model.Diagnostic, ...] = ()) -> model.Account:
    """The effective Account of a valid EmailAccount document (presets and defaults applied).

    ``metadata.generation`` and ``metadata.uid`` are taken when present (objects read back from
    the Kubernetes API); the namespace defaults to "default".
    """
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    name = str(meta["name"])
    provider = str(spec["provider"])
    preset = providers.preset(provider)
    region = spec.get("region") or (preset.default_region if preset else None)
    tier = spec.get("tier") or (preset.default_tier if preset else None)
    send_using = spec.get("sendUsing", "SMTP")
    pub = spec.get("publish") or {}
    smtp_raw = spec.get("smtp")
    publish = model.Publish(
        secret_name=str(pub.get("secretName") or f"{name}-sender"),
        formats=tuple(pub["formats"]) if pub.get("formats") else default_formats(
            send_using, smtp_raw, bool((spec.get("relay") or {}).get("enabled"))),
        client_credentials=bool(pub.get("clientCredentials", False)),
        labels=_map(pub.get("labels")), annotations=_map(pub.get("annotations")),
        deletion_policy=pub.get("deletionPolicy", "Delete"),
        signing_format=pub.get("signingFormat", "PEM"))
    return model.Account(
        namespace=str(meta.get("namespace") or "default"), name=name, provider=provider,
        send_using=send_using, publish=publish, probe=_probe(spec.get("probe") or {}),
        smtp=_smtp(provider, region, tier, smtp_raw) if smtp_raw else None,
        graph=_graph(spec["graph"]) if spec.get("graph") else None,
        region=region, tier=tier, description=spec.get("description"),
        generation=int(meta.get("generation") or 1), uid=str(meta.get("uid") or ""),
        labels=_map(meta.get("labels")), annotations=_map(meta.get("annotations")),
        source=source, manifest=doc, warnings=warnings, relay=_relay(spec.get("relay") or {}))
