"""Frozen data shared by every layer: the effective account, probe results, conditions.

The pipeline is manifest -> probe -> state -> store. Each layer takes and returns these
objects; none of them carries behaviour beyond small derived properties.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

API_GROUP = "email.reconciler.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "EmailAccount"
PLURAL = "emailaccounts"
SHORT_NAME = "ea"
FIELD_MANAGER = "email-reconciler"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "email-reconciler"
ACCOUNT_LABEL = f"{API_GROUP}/account"  # on published Secrets: the owning account's name
HASH_ANNOTATION = f"{API_GROUP}/data-hash"
REQUESTED_AT_ANNOTATION = f"{API_GROUP}/requested-at"
#: Set to any new value (a time, a counter) to have the relay password generated anew.
ROTATE_RELAY_PASSWORD_ANNOTATION = f"{API_GROUP}/rotate-relay-password"

Security = Literal["STARTTLS", "SMTPS", "None"]
Protocol_ = Literal["STARTTLS", "SMTPS", "None", "MicrosoftGraph"]


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class SourceRef:
    """Where a document came from, for error messages: FILE:LINE:COL: document N."""

    file: str
    document: int  # 1-based
    line: int = 1  # 1-based line of the document start
    column: int = 1


@dataclass(frozen=True)
class KeyRef:
    """A key in a Secret (kind='Secret') or a ConfigMap (kind='ConfigMap') of the account's namespace."""

    name: str
    key: str
    kind: Literal["Secret", "ConfigMap"] = "Secret"
    # JSON pointer of the manifest field that named it, e.g. /spec/smtp/authentication/passwordSecretRef
    field: str = ""


@dataclass(frozen=True)
class Identity:
    email_address: str
    display_name: str | None = None
    user_id: str | None = None  # effective: defaults to email_address
    reply_to: str | None = None


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    security: Security = "STARTTLS"
    min_tls_version: Literal["1.0", "1.1", "1.2", "1.3"] = "1.2"
    truststore: KeyRef | None = None  # PEM CA bundle; None = system trust store
    timeout_seconds: float = 30.0
    allow_insecure_auth: bool = False


@dataclass(frozen=True)
class OAuth2:
    """SMTP OAuth2: Google JWT bearer, or Microsoft client credentials (Office 365 SMTP)."""

    grant_type: Literal["JWTBearer", "ClientCredentials"]
    # JWTBearer (Google service account)
    service_account_key: KeyRef | None = None
    subject: str | None = None
    token_url: str = "https://oauth2.googleapis.com/token"
    scope: str = "https://mail.google.com/"
    # ClientCredentials (Microsoft identity platform)
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: KeyRef | None = None
    client_certificate: KeyRef | None = None  # PEM with private key and certificate
    authority: str = "https://login.microsoftonline.com"


@dataclass(frozen=True)
class Authentication:
    method: Literal["Password", "OAuth2", "AWSAccessKey", "None"] = "None"
    password: KeyRef | None = None
    # Password: a username that is itself a credential (SES SMTP user name, Postmark token)
    username: KeyRef | None = None
    oauth2: OAuth2 | None = None
    # AWSAccessKey (amazon-ses): two keys of one Secret; the SMTP password is derived per region
    access_key_id: KeyRef | None = None
    secret_access_key: KeyRef | None = None


@dataclass(frozen=True)
class Signing:
    keystore: KeyRef
    keystore_password: KeyRef | None = None
    alias: str | None = None  # None/blank: first entry with a private key


@dataclass(frozen=True)
class SmtpSpec:
    identity: Identity
    connection: Connection
    authentication: Authentication = field(default_factory=Authentication)
    signing: Signing | None = None
    advanced: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphSpec:
    user_principal_name: str
    tenant_id: str
    client_id: str
    grant_type: Literal["ClientCredentials", "Password"] = "ClientCredentials"
    client_secret: KeyRef | None = None
    client_certificate: KeyRef | None = None
    username: KeyRef | None = None
    password: KeyRef | None = None
    reply_to: str | None = None
    timeout_seconds: float = 30.0
    authority: str = "https://login.microsoftonline.com"
    endpoint: str = "https://graph.microsoft.com"


@dataclass(frozen=True)
class Publish:
    secret_name: str
    formats: tuple[str, ...] = ("env", "url", "symfony", "javamail", "spring", "django",
                                "nodemailer", "json")
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    deletion_policy: Literal["Delete", "Orphan"] = "Delete"
    signing_format: Literal["PEM", "PKCS12"] = "PEM"
    #: OAuth2/Graph: publish the client secret, certificate or service-account key too (when
    #: the Secret's owner allows it: reconciler.policy.credential_copy_refusal)
    client_credentials: bool = False

#: Politeness defaults (reconciler.probe.limits): concurrent sessions per mail server without a
#: provider preset's bound, and failed AUTHs per server and minute. fail2ban's sasl jails ban
#: after 5 failures in 10 minutes by default; Dovecot delays every reply after one. 6 a minute
#: lets a run report a few wrong passwords at once, then one every 10 seconds per server.
MAX_SESSIONS_PER_SERVER = 4
MAX_AUTH_FAILURES_PER_MINUTE = 6

#: The longest probe.interval, authInterval or retryInterval (8760h, 365 days): far beyond any
#: useful schedule, far inside what a datetime and the CRD's CEL `duration()` can hold.
MAX_DURATION_SECONDS = 365 * 86400.0
MAX_DURATION_TEXT = "8760h"


@dataclass(frozen=True)
class ProbeSettings:
    interval_seconds: float = 600.0
    auth_interval_seconds: float = 86400.0
    retry_interval_seconds: float = 30.0
    suspend: bool = False
    envelope_check: bool = True  # MAIL FROM:<emailAddress> + RSET after AUTH (never RCPT/DATA)


@dataclass(frozen=True)
class Relay:
    """spec.relay: an SMTP relay beside the application (`email-reconciler relay`), for
    applications that cannot do OAuth; None fields take the provider's defaults."""

    enabled: bool = False
    port: int = 2525
    senders: tuple[str, ...] = ()  # aliases the application may send as, besides emailAddress
    max_messages_per_minute: int | None = None
    max_recipients: int | None = None
    max_message_bytes: int | None = None


@dataclass(frozen=True)
class Account:
    """One EmailAccount with provider presets and defaults applied (the 'effective' account)."""

    namespace: str
    name: str
    provider: str
    send_using: Literal["SMTP", "MicrosoftGraph"]
    publish: Publish
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    smtp: SmtpSpec | None = None
    graph: GraphSpec | None = None
    region: str | None = None
    tier: str | None = None  # provider account tier where it changes the host (zoho: free, paid)
    description: str | None = None
    generation: int = 1
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    source: SourceRef | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)  # the document as written in git
    warnings: tuple[Diagnostic, ...] = ()  # semantic warnings found at validation
    relay: Relay = field(default_factory=Relay)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def secret_refs(self) -> tuple[KeyRef, ...]:
        """Every Secret/ConfigMap key this account reads (credentials, truststore, keystore)."""
        refs: list[KeyRef | None] = []
        if self.smtp is not None:
            a = self.smtp.authentication
            refs += [self.smtp.connection.truststore, a.username, a.password,
                     a.access_key_id, a.secret_access_key]
            if a.oauth2 is not None:
                refs += [a.oauth2.service_account_key, a.oauth2.client_secret,
                         a.oauth2.client_certificate]
            if self.smtp.signing is not None:
                refs += [self.smtp.signing.keystore, self.smtp.signing.keystore_password]
        if self.graph is not None:
            g = self.graph
            refs += [g.client_secret, g.client_certificate, g.username, g.password]
        return tuple(r for r in refs if r is not None)


@dataclass(frozen=True)
class Diagnostic:
    """A validation error or warning, rendered as FILE:LINE:COL: document N: /pointer: message."""

    file: str
    line: int
    column: int
    document: int | None  # None for file-level errors (unreadable, too large)
    pointer: str  # JSON pointer, "" for the document itself
    message: str
    severity: Literal["error", "warning", "note"] = "error"  # a note informs, never fails

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}:"
        if self.document is not None:
            where += f" document {self.document}:"
        if self.pointer:
            where += f" {self.pointer}:"
        prefix = f"{self.severity}: " if self.severity != "error" else ""
        return f"{where} {prefix}{self.message}"


# --------------------------------------------------------------------------- secrets


class SecretReader(Protocol):
    """Reads one key of a Secret or ConfigMap in a namespace.

    Raises reconciler.errors.SecretNotFound naming namespace/name/key when absent.
    """

    def read(self, namespace: str, ref: KeyRef) -> bytes: ...

    def version(self, namespace: str, ref: KeyRef) -> str:
        """A string that changes when the value changes (resourceVersion, mtime, or a hash)."""
        ...


# --------------------------------------------------------------------------- probe results


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    not_after: str  # RFC 3339, UTC, e.g. 2027-01-01T00:00:00Z
    days_remaining: int
    serial: str | None = None
    signature_algorithm: str | None = None

    def to_status(self) -> dict[str, Any]:
        """The status form: without `days_remaining`, which changes every day (a write per
        account per day); describe and the metrics compute it from notAfter."""
        out: dict[str, Any] = {
            "subject": self.subject,
            "issuer": self.issuer,
            "notAfter": self.not_after,
        }
        if self.serial is not None:
            out["serial"] = self.serial
        if self.signature_algorithm is not None:
            out["signatureAlgorithm"] = self.signature_algorithm
        return out


@dataclass(frozen=True)
class Outcome:
    """One stage of a probe: ok, or a CamelCase reason from reconciler.reasons with a message."""

    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class SigningResult:
    outcome: Outcome
    certificate: CertificateInfo | None = None
    alias: str | None = None
    aliases: tuple[str, ...] = ()
    # Material to publish (PEM strings / PKCS#12 bytes); never logged, never in status.
    certificate_chain_pem: str | None = field(default=None, repr=False)
    private_key_pem: str | None = field(default=None, repr=False)
    pkcs12: bytes | None = field(default=None, repr=False)
    pkcs12_password: str | None = field(default=None, repr=False)
    warnings: tuple[Outcome, ...] = ()


@dataclass(frozen=True)
class ProbeResult:
    """What 'Test connectivity' found. Expected failures are outcomes, not exceptions."""

    connection: Outcome  # TCP, TLS, EHLO (SMTP) or token + mailbox reachability (Graph)
    authentication: Outcome | None = None  # None: not attempted this run (authInterval)
    connectivity: str = ""  # "SMTP (Connect using STARTTLS)", "Microsoft Graph", ...
    protocol: str | None = None  # STARTTLS | SMTPS | None | MicrosoftGraph
    tls_version: str | None = None  # "TLSv1.3"
    cipher: str | None = None
    certificate: CertificateInfo | None = None
    extensions: tuple[str, ...] = ()  # EHLO keywords, upper case
    auth_mechanisms: tuple[str, ...] = ()
    auth_mechanism: str | None = None  # the one used
    authenticated_identity: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # step -> seconds
    warnings: tuple[Outcome, ...] = ()  # e.g. CertificateExpiringSoon, BasicAuthDeprecated
    signing: SigningResult | None = None
    secret_versions: Mapping[str, str] = field(default_factory=dict)  # "Secret/name/key" -> version
    # Resolved credential values the Secret renderer needs (password, client secret); never logged.
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    ca_pem: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        auth_ok = self.authentication is None or self.authentication.ok
        sign_ok = self.signing is None or self.signing.outcome.ok
        return self.connection.ok and auth_ok and sign_ok


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Condition:
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    last_transition_time: str  # RFC 3339 UTC
    observed_generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedGeneration": self.observed_generation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(d.get("type", "")),
            status=d.get("status", "Unknown"),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            last_transition_time=str(d.get("lastTransitionTime", "")),
            observed_generation=int(d.get("observedGeneration", 0) or 0),
        )


def status_condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any]:
    """The condition of that type in a status block, or {} when it has none."""
    for cond in (status or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return {}


@dataclass(frozen=True)
class Event:
    """A Kubernetes-style event about an account (Normal/Warning), recorded on transitions."""

    namespace: str
    name: str  # the involved EmailAccount
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    time: str
