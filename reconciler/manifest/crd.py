"""Generate the EmailAccount CustomResourceDefinition from the JSON schema.

The JSON schema is the single source of truth. Kubernetes wants a *structural* OpenAPI v3 schema:
every node typed, no $ref, no conditionals, no `additionalProperties` beside `properties`. So
$refs are inlined, JSON-Schema-only keywords dropped, and the cross-field rules the schema states
with if/then are restated as CEL `x-kubernetes-validations`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reconciler import model
from reconciler.manifest import load_schema, objectmeta, providers, published

#: Keywords copied as they are (all valid in apiextensions.k8s.io/v1 JSONSchemaProps).
_KEEP = ("type", "description", "format", "enum", "pattern", "minimum", "maximum",
         "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
         "required")

# CEL string literals: `[.]` instead of `\.`, which would be an escape sequence there.
_KEY_RULE = {
    "rule": f"self.all(k, k.matches('{objectmeta.KEY_SYNTAX.replace(chr(92) + '.', '[.]')}') && "
            f"k.matches('{objectmeta.KEY_LENGTHS}'))",
    "message": "keys are an optional DNS subdomain prefix (at most 253 characters) and '/', then "
               "a name of at most 63 letters, digits, '-', '_' or '.'"}
_OAUTH2 = ("has(self.smtp) && has(self.smtp.authentication) && "
           "has(self.smtp.authentication.oauth2)")
#: Rules about the whole object: the API server lets root rules see metadata.name.
_ROOT_RULES = [
    {"rule": f"self.metadata.name.size() <= {objectmeta.MAX_NAME}",
     "message": f"metadata.name must be at most {objectmeta.MAX_NAME} characters: it is the value "
                "of the email.reconciler.io/account label of the published Secret"},
]

_RULES: dict[tuple[str, ...], list[dict[str, str]]] = {
    ("spec",): [
        {"rule": "!has(self.sendUsing) || self.sendUsing != 'MicrosoftGraph' || "
                 "self.provider == 'office365'",
         "message": "sendUsing: MicrosoftGraph is only valid with provider: office365"},
        {"rule": "!has(self.sendUsing) || self.sendUsing != 'MicrosoftGraph' || has(self.graph)",
         "message": "sendUsing: MicrosoftGraph needs spec.graph"},
        {"rule": "!has(self.sendUsing) || self.sendUsing != 'MicrosoftGraph' || "
                 "!has(self.smtp) || !has(self.smtp.signing)",
         "message": "signing is not supported with sendUsing: MicrosoftGraph"},
        {"rule": "(has(self.sendUsing) && self.sendUsing == 'MicrosoftGraph') || "
                 "(has(self.smtp) && !has(self.graph))",
         "message": "sendUsing: SMTP needs spec.smtp and no spec.graph"},
        {"rule": "!has(self.relay) || !has(self.relay.enabled) || !self.relay.enabled || "
                 "(has(self.sendUsing) && self.sendUsing == 'MicrosoftGraph') || "
                 "(has(self.smtp) && has(self.smtp.authentication) && "
                 "self.smtp.authentication.method == 'OAuth2')",
         "message": "spec.relay needs smtp.authentication.method OAuth2 or sendUsing "
                    "MicrosoftGraph"},
        {"rule": "self.provider != 'amazon-ses' || has(self.region)",
         "message": "provider: amazon-ses needs spec.region"},
        {"rule": "self.provider != 'custom' || (has(self.smtp) && has(self.smtp.connection) && "
                 "has(self.smtp.connection.host))",
         "message": "provider: custom needs spec.smtp.connection.host"},
        {"rule": f"!({_OAUTH2}) || !has(self.smtp.authentication.oauth2.grantType) || "
                 "self.smtp.authentication.oauth2.grantType != 'ClientCredentials' || "
                 "self.provider == 'office365'",
         "message": "grantType ClientCredentials (Microsoft identity platform) is only for "
                    "provider: office365"},
        {"rule": f"!({_OAUTH2}) || !has(self.smtp.authentication.oauth2.grantType) || "
                 "self.smtp.authentication.oauth2.grantType != 'JWTBearer' || "
                 "self.provider in ['gmail', 'custom']",
         "message": "grantType JWTBearer (Google service account) is only for provider: gmail "
                    "or custom"},
    ],
    ("spec", "smtp", "advanced"): [
        {"rule": "self.all(k, k.size() <= 256 && k.matches('^[A-Za-z0-9][-A-Za-z0-9_.]*$'))",
         "message": "advanced keys are letters, digits, '-', '_' and '.' (at most 256)"},
    ],
    ("spec", "publish", "labels"): [_KEY_RULE],
    ("spec", "publish", "annotations"): [_KEY_RULE],
    ("spec", "smtp", "connection"): [
        {"rule": "!has(self.port) || !has(self.security) || "
                 "!(self.port == 465 && self.security == 'STARTTLS')",
         "message": "port 465 expects implicit TLS: set security: SMTPS"},
    ],
    ("spec", "smtp", "connection", "truststore"): [
        {"rule": "has(self.secretRef) != has(self.configMapRef)",
         "message": "set exactly one of secretRef or configMapRef"},
    ],
    ("spec", "smtp", "authentication"): [
        {"rule": "self.method != 'Password' || has(self.passwordSecretRef)",
         "message": "method Password needs passwordSecretRef"},
        {"rule": "self.method != 'OAuth2' || has(self.oauth2)",
         "message": "method OAuth2 needs oauth2"},
        {"rule": "self.method != 'AWSAccessKey' || has(self.accessKeySecretRef)",
         "message": "method AWSAccessKey needs accessKeySecretRef"},
        {"rule": "self.method == 'Password' || !has(self.usernameSecretRef)",
         "message": "usernameSecretRef is only used with method Password"},
    ],
    ("spec", "smtp"): [
        {"rule": "!has(self.identity.userId) || !has(self.authentication) || "
                 "!has(self.authentication.usernameSecretRef)",
         "message": "set the username in one place: identity.userId or "
                    "authentication.usernameSecretRef, not both"},
    ],
    ("spec", "smtp", "authentication", "oauth2"): [
        {"rule": "self.grantType != 'JWTBearer' || "
                 "(has(self.serviceAccountKeySecretRef) && has(self.subject))",
         "message": "grantType JWTBearer needs serviceAccountKeySecretRef and subject"},
        {"rule": "self.grantType != 'ClientCredentials' || (has(self.tenantId) && "
                 "has(self.clientId) && "
                 "has(self.clientSecretSecretRef) != has(self.clientCertificateSecretRef))",
         "message": "grantType ClientCredentials needs tenantId, clientId and exactly one of "
                    "clientSecretSecretRef or clientCertificateSecretRef"},
    ],
    ("spec", "graph", "authentication"): [
        {"rule": "!has(self.grantType) || self.grantType != 'Password' || "
                 "(has(self.usernameSecretRef) && has(self.passwordSecretRef))",
         "message": "grantType Password needs usernameSecretRef and passwordSecretRef"},
        {"rule": "(has(self.grantType) && self.grantType == 'Password') || "
                 "has(self.clientSecretSecretRef) != has(self.clientCertificateSecretRef)",
         "message": "grantType ClientCredentials needs exactly one of clientSecretSecretRef or "
                    "clientCertificateSecretRef"},
    ],
}

def _provider_rules() -> list[dict[str, str]]:
    """CEL for the regions and tiers of providers.PRESET_LIST (validate's check_region/tier)."""
    def quoted(names: Iterable[str]) -> str:
        return "[" + ", ".join(f"'{n}'" for n in names) + "]"

    regional = [p for p in providers.PRESET_LIST if p.regions or p.host_template]
    rules = [{"rule": f"!has(self.region) || self.provider in "
                      f"{quoted(p.provider for p in regional)}",
              "message": "spec.region is only used by providers with regions: "
                         + ", ".join(p.provider for p in regional)}]
    for p in regional:
        if p.regions:
            rules.append({"rule": f"self.provider != '{p.provider}' || !has(self.region) || "
                                  f"self.region in {quoted(p.regions)}",
                          "message": f"provider {p.provider} has the regions "
                                     f"{', '.join(p.regions)}"})
    method = "self.smtp.authentication.method"
    no_method = "!has(self.smtp) || !has(self.smtp.authentication)"
    rules.append({"rule": f"self.provider != 'outlook' || {no_method} || {method} != 'Password'",
                  "message": "provider outlook (consumer Outlook.com) no longer accepts "
                             "passwords: use provider office365 with OAuth2 or Microsoft Graph"})
    rules.append({"rule": f"self.provider == 'amazon-ses' || {no_method} || "
                          f"{method} != 'AWSAccessKey'",
                  "message": "method AWSAccessKey is only for provider: amazon-ses"})
    rules.append({"rule": "self.provider != 'amazon-ses' || !has(self.region) || "
                          f"self.region.matches('{providers.AWS_REGION.pattern}')",
                  "message": "provider amazon-ses needs an AWS region name such as eu-west-1"})
    versions = ("1.0", "1.1", "1.2", "1.3")
    for p in providers.PRESET_LIST:
        if p.min_tls:
            allowed = [v for v in versions if v >= p.min_tls]
            rules.append({"rule": f"self.provider != '{p.provider}' || !has(self.smtp) || "
                                  "!has(self.smtp.connection) || "
                                  "!has(self.smtp.connection.minTLSVersion) || "
                                  f"self.smtp.connection.minTLSVersion in {quoted(allowed)}",
                          "message": f"provider {p.provider} refuses TLS below {p.min_tls}: "
                                     f"set minTLSVersion \"{p.min_tls}\" or higher"})
    tiered = [p for p in providers.PRESET_LIST if p.tiers]
    rules.append({"rule": f"!has(self.tier) || self.provider in "
                          f"{quoted(p.provider for p in tiered)}",
                  "message": "spec.tier is only used by providers with tiers: "
                             + ", ".join(p.provider for p in tiered)})
    return rules

_RULES[("spec",)] += _provider_rules()
for _path, _rules in published.cel_rules().items():  # validate's check_published
    _RULES.setdefault(_path, []).extend(_rules)
for _duration in ("interval", "authInterval", "retryInterval"):  # validate's check_durations
    _RULES[("spec", "probe", _duration)] = [
        {"rule": f"duration(self) <= duration('{model.MAX_DURATION_TEXT}')",
         "message": f"must be at most {model.MAX_DURATION_TEXT} (365 days)"}]

_READY = '.status.conditions[?(@.type=="Ready")]'
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Provider", "type": "string", "jsonPath": ".spec.provider"},
    {"name": "Via", "type": "string", "jsonPath": ".status.via"},
    {"name": "Protocol", "type": "string", "jsonPath": ".status.protocol"},
    {"name": "TLS", "type": "string", "jsonPath": ".status.tlsVersion"},
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
    {"name": "Secret", "type": "string", "jsonPath": ".status.secretName"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Email", "type": "string", "priority": 1, "jsonPath": ".status.sender"},
    {"name": "Host", "type": "string", "priority": 1, "jsonPath": ".status.host"},
    # A string: kubectl's `date` type prints a time in the future as <invalid>.
    {"name": "Cert-Expires", "type": "string", "priority": 1,
     "jsonPath": ".status.certificate.notAfter"},
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": f"{_READY}.message"},
]

def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node

def structural(node: dict[str, Any], defs: dict[str, Any],
               path: tuple[str, ...] = ()) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for one JSON schema node (recursively)."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {k: node[k] for k in _KEEP if k in node}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "exclusiveMinimum" in node:  # OpenAPI v3.0: a boolean beside minimum
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "properties" in node:
        out["properties"] = {name: structural(sub, defs, (*path, name))
                             for name, sub in node["properties"].items()}
    elif isinstance(node.get("additionalProperties"), dict):
        # The values of a map are a path of their own: a rule on the map (its keys) must not
        # land on the values too, where `self` is a string (issue 22: the apiserver refuses it).
        out["additionalProperties"] = structural(node["additionalProperties"], defs,
                                                 (*path, "{}"))
    if "items" in node:
        out["items"] = structural(node["items"], defs, (*path, "[]"))
        if node.get("uniqueItems"):
            out["x-kubernetes-list-type"] = "set"
    if path in _RULES:
        out["x-kubernetes-validations"] = _RULES[path]
    return out

def openapi_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema: spec from the JSON schema, metadata and status left open."""
    schema = load_schema()
    defs = schema.get("$defs", {})
    props = schema["properties"]

    def described(name: str, node: dict[str, Any]) -> dict[str, Any]:
        return {"type": node["type"], "description": props[name]["description"],
                **{k: v for k, v in node.items() if k != "type"}}

    return {
        "type": "object",
        "description": schema.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": described("apiVersion", {"type": "string"}),
            "kind": described("kind", {"type": "string"}),
            # Nothing but the type: the apiserver refuses a CRD whose metadata schema says more
            # than name and generateName, a description included; it documents ObjectMeta itself.
            "metadata": {"type": "object"},
            "spec": structural(props["spec"], defs, ("spec",)),
            "status": described("status", {"type": "object",
                                           "x-kubernetes-preserve-unknown-fields": True}),
        },
        "x-kubernetes-validations": _ROOT_RULES,
    }

def crd_object() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.PLURAL}.{model.API_GROUP}"},
        "spec": {
            "group": model.API_GROUP,
            "names": {"kind": model.KIND, "listKind": f"{model.KIND}List",
                      "plural": model.PLURAL, "singular": model.KIND.lower(),
                      "shortNames": [model.SHORT_NAME], "categories": ["email"]},
            "scope": "Namespaced",
            "versions": [{
                "name": model.API_VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }

def render_crd() -> str:
    """The CRD as YAML text (deploy/crd.yaml is this, byte for byte)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a shared rule is written out, not &id001
            return True

    header = ("# Generated by `email-reconciler crd` from schemas/emailaccount.schema.json.\n"
              "# Do not edit by hand: change the schema and regenerate.\n")
    return header + yaml.dump(crd_object(), Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)
