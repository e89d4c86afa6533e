"""TLS policy for probes: client contexts, certificate facts, and why a handshake failed.

Always an explicit, verifying context (smtplib's defaults verify nothing): the account's truststore
or the system store, host name checking on, `minTLSVersion` as the floor, TLS 1.3 allowed. The
SMTP probe's TLS runs on the OpenSSL of the `cryptography` wheel (reconciler.probe.tlsengine).
"""

from __future__ import annotations

import datetime as dt
import functools
import ssl

from cryptography import x509

from reconciler import reasons
from reconciler.model import CertificateInfo
from reconciler.probe import tlsengine

TLS_FLOORS: dict[str, int] = {
    "1.0": tlsengine.TLS1_VERSION,
    "1.1": tlsengine.TLS1_1_VERSION,
    "1.2": tlsengine.TLS1_2_VERSION,
    "1.3": tlsengine.TLS1_3_VERSION,
}
# ssl.SSLSocket.version() names, in order.
_RANK = {"TLSv1": 0, "TLSv1.1": 1, "TLSv1.2": 2, "TLSv1.3": 3}
_FLOOR_RANK = {"1.0": 0, "1.1": 1, "1.2": 2, "1.3": 3}

EXPIRING_SOON_DAYS = 14

# OpenSSL X509_V_ERR_* codes seen in SSLCertVerificationError.verify_code
_CERT_HAS_EXPIRED = 10
_CERT_NOT_YET_VALID = 9
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64

ClientContext = tlsengine.ClientContext


@functools.lru_cache(maxsize=128)
def client_context(min_tls_version: str = "1.2", ca_pem: str | None = None, *,
                   credentials: bool = True) -> ClientContext:
    """A verifying client context: truststore (or system store), host name check, TLS floor.
    `credentials` False for sessions that will not AUTH: no post-quantum key share up front
    (tlsengine._new_context says why).

    Raises ssl.SSLError when ca_pem holds no usable certificate. Contexts are cached and shared by
    the probes (loading the CA certificates was a tenth of a probe's CPU time, bench/README.md);
    they cannot be changed once used. On the OpenSSL of the `cryptography` wheel
    (reconciler.probe.tlsengine).
    """
    floor = TLS_FLOORS.get(min_tls_version, tlsengine.TLS1_2_VERSION)
    return tlsengine.client_context(floor, ca_pem, credentials=credentials)


@functools.lru_cache(maxsize=1)
def diagnostic_context() -> ClientContext:
    """A context that accepts any version and certificate: only to learn the server's best version.

    Used on a second connection after a failed handshake; never carries credentials.
    """
    return tlsengine.diagnostic_context()


def below_floor(negotiated: str | None, min_tls_version: str) -> bool:
    """True when the negotiated version ('TLSv1.2') is below minTLSVersion ('1.3')."""
    if negotiated not in _RANK:
        return False
    return _RANK[negotiated] < _FLOOR_RANK.get(min_tls_version, 2)


def certificate_info(der: bytes, now: dt.datetime) -> CertificateInfo:
    """Subject, issuer (RFC 4514), notAfter (RFC 3339 Z) and days left of a DER certificate."""
    subject, issuer, not_after, shown, serial, algorithm = _certificate_facts(der)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    days = (not_after - now).total_seconds() // 86400
    return CertificateInfo(
        subject=subject,
        issuer=issuer,
        not_after=shown,
        days_remaining=int(days),
        serial=serial,
        signature_algorithm=algorithm,
    )


@functools.lru_cache(maxsize=256)
def _certificate_facts(der: bytes) -> tuple[str, str, dt.datetime, str, str, str | None]:
    """What certificate_info shows of a certificate, decoded once per DER (keyed by the whole
    encoding): 1,000 accounts on one server present the same certificate, and decoding it was
    65 us a probe (bench/README.md, benchmark 7). Days left depend on `now`, so not cached."""
    cert = x509.load_der_x509_certificate(der)
    algorithm = cert.signature_hash_algorithm
    not_after = cert.not_valid_after_utc
    return (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), not_after,
            not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), format(cert.serial_number, "x"),
            algorithm.name if algorithm is not None else None)


def expiry_warning(info: CertificateInfo, host: str) -> tuple[str, str] | None:
    """(CertificateExpiringSoon, message) when the server certificate has < 14 days left."""
    if info.days_remaining >= EXPIRING_SOON_DAYS:
        return None
    return (reasons.CERTIFICATE_EXPIRING_SOON,
            f"the certificate of {host} expires on {info.not_after} "
            f"({info.days_remaining} days left): ask the mail provider to renew it")


def classify_verify_error(exc: ssl.SSLCertVerificationError, host: str,
                          truststore: str | None) -> tuple[str, str]:
    """(reason, message) for a failed certificate verification."""
    code = getattr(exc, "verify_code", None)
    detail = getattr(exc, "verify_message", None) or str(exc)
    if code in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID):
        return (reasons.CERTIFICATE_EXPIRED,
                f"the certificate of {host} is not valid now ({detail}): the server must "
                "renew its certificate")
    if code in (_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH):
        return (reasons.CERTIFICATE_HOSTNAME_MISMATCH,
                f"the certificate presented by {host} is not valid for that name ({detail}): "
                "set connection.host to a name in the certificate")
    where = (f"the truststore {truststore}" if truststore
             else "the system trust store")
    return (reasons.CERTIFICATE_UNTRUSTED,
            f"the certificate of {host} is not trusted by {where} ({detail}): set "
            "connection.truststore to a CA bundle that contains the issuing CA")
