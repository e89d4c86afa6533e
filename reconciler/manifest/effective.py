"""The effective manifest: an Account rendered back as camelCase YAML with presets and defaults."""

from __future__ import annotations

from typing import Any

from reconciler import model


def _ref(ref: model.KeyRef | None) -> dict[str, str] | None:
    return None if ref is None else {"name": ref.name, "key": ref.key}


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None values (fields that are unset even after defaults)."""
    return {k: v for k, v in d.items() if v is not None}


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s != seconds:
        return f"{seconds}s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec else "")
    return text or "0s"


def _smtp(s: model.SmtpSpec) -> dict[str, Any]:
    c, a = s.connection, s.authentication
    truststore = None
    if c.truststore is not None:
        kind = "configMapRef" if c.truststore.kind == "ConfigMap" else "secretRef"
        truststore = {kind: _ref(c.truststore)}
    auth: dict[str, Any] = _prune({"method": a.method, "usernameSecretRef": _ref(a.username),
                                   "passwordSecretRef": _ref(a.password)})
    if a.access_key_id is not None and a.secret_access_key is not None:
        auth["accessKeySecretRef"] = {"name": a.access_key_id.name,
                                      "accessKeyIdKey": a.access_key_id.key,
                                      "secretAccessKeyKey": a.secret_access_key.key}
    if a.oauth2 is not None:
        o = a.oauth2
        auth["oauth2"] = _prune({
            "grantType": o.grant_type, "serviceAccountKeySecretRef": _ref(o.service_account_key),
            "subject": o.subject, "tokenUrl": o.token_url if o.grant_type == "JWTBearer" else None,
            "scope": o.scope, "tenantId": o.tenant_id, "clientId": o.client_id,
            "clientSecretSecretRef": _ref(o.client_secret),
            "clientCertificateSecretRef": _ref(o.client_certificate),
            "authority": o.authority if o.grant_type == "ClientCredentials" else None})
    out: dict[str, Any] = {
        "identity": _prune({"emailAddress": s.identity.email_address,
                            "displayName": s.identity.display_name,
                            "userId": s.identity.user_id, "replyTo": s.identity.reply_to}),
        "connection": _prune({"host": c.host, "port": c.port, "security": c.security,
                              "minTLSVersion": c.min_tls_version, "truststore": truststore,
                              "timeoutSeconds": c.timeout_seconds,
                              "allowInsecureAuth": c.allow_insecure_auth}),
        "authentication": auth,
    }
    if s.signing is not None:
        out["signing"] = _prune({"keystoreSecretRef": _ref(s.signing.keystore),
                                 "keystorePasswordSecretRef": _ref(s.signing.keystore_password),
                                 "alias": s.signing.alias})
    if s.advanced:
        out["advanced"] = dict(s.advanced)
    return out


def _graph(g: model.GraphSpec) -> dict[str, Any]:
    return _prune({
        "userPrincipalName": g.user_principal_name, "replyTo": g.reply_to,
        "timeoutSeconds": g.timeout_seconds, "endpoint": g.endpoint,
        "authentication": _prune({
            "tenantId": g.tenant_id, "clientId": g.client_id, "grantType": g.grant_type,
            "clientSecretSecretRef": _ref(g.client_secret),
            "clientCertificateSecretRef": _ref(g.client_certificate),
            "usernameSecretRef": _ref(g.username), "passwordSecretRef": _ref(g.password),
            "authority": g.authority})})


def effective_manifest(account: model.Account) -> dict[str, Any]:
    """The account as an EmailAccount document with every preset and default filled in."""
    p, pr = account.publish, account.probe
    spec: dict[str, Any] = _prune({
        "provider": account.provider, "region": account.region, "tier": account.tier,
        "sendUsing": account.send_using,
        "description": account.description,
        "smtp": _smtp(account.smtp) if account.smtp else None,
        "graph": _graph(account.graph) if account.graph else None,
    })
    spec["publish"] = _prune({
        "secretName": p.secret_name, "formats": list(p.formats),
        "labels": dict(p.labels) or None, "annotations": dict(p.annotations) or None,
        "deletionPolicy": p.deletion_policy, "signingFormat": p.signing_format,
        "clientCredentials": p.client_credentials or None})
    spec["probe"] = {"interval": _duration(pr.interval_seconds),
                     "authInterval": _duration(pr.auth_interval_seconds),
                     "retryInterval": _duration(pr.retry_interval_seconds),
                     "suspend": pr.suspend, "envelopeCheck": pr.envelope_check}
    metadata: dict[str, Any] = {"name": account.name, "namespace": account.namespace}
    if account.labels:
        metadata["labels"] = dict(account.labels)
    if account.annotations:
        metadata["annotations"] = dict(account.annotations)
    return {"apiVersion": model.GROUP_VERSION, "kind": model.KIND, "metadata": metadata,
            "spec": spec}
