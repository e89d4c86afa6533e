"""Condition reasons: CamelCase constants in one place (DESIGN §4, §5)."""

from __future__ import annotations

# success
SUCCEEDED = "Succeeded"
NOT_REQUIRED = "NotRequired"  # Authenticated with method None
PUBLISHED = "Published"
VALID = "Valid"
READY = "Ready"
NOT_STALLED = "NotStalled"
PROGRESSING = "Progressing"
AUTH_SKIPPED = "AuthCheckDeferred"  # not attempted this run (authInterval); previous result kept

# validation / configuration
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"

# security model (DESIGN §8): refused before anything is read or sent
SECRET_NOT_ALLOWED = "SecretNotAllowed"  # not opted in, bound elsewhere, or never usable
ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"  # URL not https / not allow-listed, host refused
PUBLISH_NOT_ALLOWED = "PublishNotAllowed"  # a copy-elsewhere annotation the admin did not allow
TRUSTSTORE_INVALID = "TruststoreInvalid"  # anything but CERTIFICATE PEM blocks
SHORT_SECRET = "ShortSecret"  # warning: under 8 characters, cannot be redacted reliably

# connection (DESIGN §4 steps 1-3)
CONNECT_FAILED = "ConnectFailed"
TIMEOUT = "Timeout"
SERVER_REJECTED = "ServerRejected"  # e.g. 421 banner, EHLO refused
STARTTLS_NOT_OFFERED = "StartTLSNotOffered"
TLS_HANDSHAKE_FAILED = "TLSHandshakeFailed"
TLS_VERSION_TOO_LOW = "TLSVersionTooLow"
CERTIFICATE_UNTRUSTED = "CertificateUntrusted"
CERTIFICATE_HOSTNAME_MISMATCH = "CertificateHostnameMismatch"
CERTIFICATE_EXPIRED = "CertificateExpired"
CERTIFICATE_EXPIRING_SOON = "CertificateExpiringSoon"  # warning
INSECURE_CONNECTION = "InsecureConnection"  # warning
PROBE_ERROR = "ProbeError"  # a bug in a probe; the batch goes on

# authentication (step 4)
AUTHENTICATION_FAILED = "AuthenticationFailed"
AUTHENTICATION_TEMPORARY_FAILURE = "AuthenticationTemporaryFailure"
AUTH_MECHANISM_UNAVAILABLE = "AuthMechanismUnavailable"
INSECURE_AUTH_REFUSED = "InsecureAuthRefused"
BASIC_AUTH_DEPRECATED = "BasicAuthDeprecated"  # a warning; terminal when the server says 5.7.30

# OAuth2 / Graph
TOKEN_REQUEST_FAILED = "TokenRequestFailed"
MAILBOX_NOT_FOUND = "MailboxNotFound"
INSUFFICIENT_PERMISSIONS = "InsufficientPermissions"
GRAPH_UNAVAILABLE = "GraphUnavailable"

# probe bounds, politeness and the envelope check (issues 12 and 14)
PROTOCOL_VIOLATION = "ProtocolViolation"  # oversized reply or body, 503 bad sequence, not SMTP
SERVER_BUSY = "ServerBusy"  # 421 greeting or reply, still after retries within the deadline
SENDER_REJECTED = "SenderRejected"  # MAIL FROM:<emailAddress> refused (e.g. 553 5.7.1)
TLS_REQUIRED = "TLSRequired"  # 530 5.7.0 Must issue a STARTTLS command first (plain session)

# signing
KEYSTORE_NOT_FOUND = "KeystoreNotFound"
KEYSTORE_PASSWORD_WRONG = "KeystorePasswordWrong"
KEYSTORE_UNREADABLE = "KeystoreUnreadable"
ALIAS_NOT_FOUND = "AliasNotFound"
KEY_CERTIFICATE_MISMATCH = "KeyCertificateMismatch"
SIGNING_CERTIFICATE_EXPIRED = "SigningCertificateExpired"
SIGNING_CERTIFICATE_EXPIRING_SOON = "SigningCertificateExpiringSoon"  # warning
SIGNING_CERTIFICATE_NOT_FOR_EMAIL = "SigningCertificateNotForEmail"
SENDER_NOT_IN_CERTIFICATE = "SenderNotInCertificate"  # warning
SIGNATURE_FAILED = "SignatureFailed"

# published formats (issue 15): a selected format whose consumers cannot use the account
FORMAT_CANNOT_AUTHENTICATE = "FormatCannotAuthenticate"  # warning: XOAUTH2 in URL/Django forms
PASSWORD_NOT_ASCII = "PasswordNotASCII"  # warning: smtplib/Django send AUTH as ASCII only
#: warning: publish.clientCredentials, but the credential's owner did not allow the copy
CREDENTIAL_NOT_PUBLISHED = "CredentialNotPublished"

# publishing / store
SECRET_CONFLICT = "SecretConflict"
API_UNAVAILABLE = "ApiUnavailable"
FORBIDDEN = "Forbidden"
STORE_WRITE_FAILED = "StoreWriteFailed"  # the store refused one account's write (e.g. an OSError)
INVALID = "Invalid"  # the API server refused an object with 422 (its causes in the message)

#: Reasons that retrying without a change cannot fix: the account is Stalled until the spec
#: or a referenced Secret changes.
TERMINAL = frozenset({
    INVALID_SPEC,
    INVALID,
    AUTHENTICATION_FAILED,
    BASIC_AUTH_DEPRECATED,
    INSECURE_AUTH_REFUSED,
    AUTH_MECHANISM_UNAVAILABLE,
    STARTTLS_NOT_OFFERED,
    SECRET_CONFLICT,
    KEYSTORE_PASSWORD_WRONG,
    KEYSTORE_UNREADABLE,
    ALIAS_NOT_FOUND,
    KEY_CERTIFICATE_MISMATCH,
    SIGNING_CERTIFICATE_EXPIRED,
    SIGNING_CERTIFICATE_NOT_FOR_EMAIL,
    SECRET_NOT_ALLOWED,
    ENDPOINT_NOT_ALLOWED,
    PUBLISH_NOT_ALLOWED,
    TRUSTSTORE_INVALID,
})
