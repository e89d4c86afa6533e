"""A Java truststore (JKS) holding the account's CA certificates as trusted entries.

Java cannot use a PEM `ca.crt` through JavaMail's properties, and a PKCS#12 written by
`cryptography` loads in Java's KeyStore as zero entries (it lacks Oracle's trusted-key-usage bag
attribute). A JKS of trusted-certificate entries is a simple, documented format every JDK loads
(`KeyStore.getInstance("JKS")`, and `"PKCS12"` too, through keystore.type.compat). It is written
here byte-for-byte deterministically: entry dates come from each certificate's notBefore and the
password from the certificates themselves, so the published Secret (and the apps that Reloader
restarts on a change) stays the same until the CA changes.

The password protects integrity only: a truststore holds public certificates, nothing secret.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

JKS_MAGIC = 0xFEEDFEED
JKS_VERSION = 2
TRUSTED_CERT_TAG = 2
# The whitener Sun's JKS implementation mixes into the integrity digest.
_WHITENER = b"Mighty Aphrodite"


def _java_utf(text: str) -> bytes:
    raw = text.encode("utf-8")  # aliases are ASCII, where modified UTF-8 equals UTF-8
    return struct.pack(">H", len(raw)) + raw


def ca_certificates(ca_pem: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle, in order; [] when it holds none."""
    try:
        return x509.load_pem_x509_certificates(ca_pem.encode("ascii", "replace"))
    except ValueError:
        return []


def truststore_password(certs: list[x509.Certificate]) -> str:
    """A password derived from the certificates: stable until the CA changes."""
    digest = hashlib.sha256(b"email-reconciler truststore\0")
    for cert in certs:
        digest.update(cert.public_bytes(Encoding.DER))
    return digest.hexdigest()[:32]


def jks_truststore(certs: list[x509.Certificate], password: str) -> bytes:
    """A JKS keystore with one trusted-certificate entry per certificate (aliases ca-0, ca-1...)."""
    body = bytearray(struct.pack(">III", JKS_MAGIC, JKS_VERSION, len(certs)))
    for index, cert in enumerate(certs):
        der = cert.public_bytes(Encoding.DER)
        millis = int(cert.not_valid_before_utc.timestamp()) * 1000
        body += struct.pack(">I", TRUSTED_CERT_TAG) + _java_utf(f"ca-{index}")
        body += struct.pack(">q", millis) + _java_utf("X.509")
        body += struct.pack(">I", len(der)) + der
    digest = hashlib.sha1(password.encode("utf-16-be") + _WHITENER + bytes(body),
                          usedforsecurity=False).digest()
    return bytes(body) + digest
