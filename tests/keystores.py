"""Test-time keystores: a throwaway CA, S/MIME certificates, PKCS#12 and PEM keystores.

Nothing here is committed as a key or a certificate: every test builds what it needs.
`cryptography` writes a PKCS#12 with one key only, so `build_pfx` assembles multi-key keystores
bag by bag with asn1crypto (shrouded key bags encrypted by `cryptography`, HMAC-SHA256 MAC).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asn1crypto import cms as acms
from asn1crypto import keys as akeys
from asn1crypto import pkcs12 as apkcs12
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    """A fresh key: "ec" (P-256) or "rsa" (2048 bits)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def pem(*certs: x509.Certificate) -> bytes:
    """Certificates as concatenated PEM."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class TestCA:
    """A certificate authority for tests; `issue_smime` makes end-entity S/MIME certificates."""

    __test__ = False  # not a pytest class

    key: PrivateKey
    cert: x509.Certificate
    parent: TestCA | None = None
    chain: list[x509.Certificate] = field(default_factory=list)  # issuers above this CA

    @classmethod
    def create(cls, name: str = "email-reconciler test CA", key_kind: str = "ec") -> TestCA:
        """A self-signed root CA ("ec": P-256, "rsa": 2048 bits)."""
        key = new_key(key_kind)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(_ku(cert_sign=True), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def intermediate(self, name: str = "email-reconciler test intermediate") -> TestCA:
        """A CA issued by this one."""
        key = new_key("ec")
        now = datetime.now(UTC)
        cert = (self._builder(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                              now - timedelta(days=1), now + timedelta(days=1800))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_ku(cert_sign=True), critical=True)
                .sign(self.key, hashes.SHA256()))
        return TestCA(key, cert, self, [self.cert, *self.chain])

    def issue_smime(self, email: str, *, key: PrivateKey | None = None, key_kind: str = "ec",
                    not_before: datetime | None = None, not_after: datetime | None = None,
                    digital_signature: bool = True, email_protection: bool = True,
                    san_emails: Sequence[str] | None = None,
                    ) -> tuple[PrivateKey, x509.Certificate]:
        """An end-entity certificate for email (rfc822Name SAN) and its key."""
        key = key or new_key(key_kind)
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)])
        usages = [ExtendedKeyUsageOID.EMAIL_PROTECTION if email_protection
                  else ExtendedKeyUsageOID.SERVER_AUTH]
        names = [x509.RFC822Name(e) for e in (san_emails if san_emails is not None else [email])]
        builder = (self._builder(key, subject, not_before or now - timedelta(days=1),
                                 not_after or now + timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(_ku(digital_signature=digital_signature), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def _builder(self, key: PrivateKey, subject: x509.Name, not_before: datetime,
                 not_after: datetime) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(not_before).not_valid_after(not_after)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()), critical=False))


def _ku(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False,
        key_encipherment=digital_signature and not cert_sign, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False)


@dataclass
class PfxEntry:
    """One alias in a keystore: a key (None for a trusted-certificate entry) and certificates."""

    alias: str | None
    key: PrivateKey | None
    cert: x509.Certificate
    chain: Sequence[x509.Certificate] = ()


def build_pfx(entries: Sequence[PfxEntry], password: str, *, iterations: int = 2048,
              key_iterations: int | None = None, legacy_safe: bool = False) -> bytes:
    """A PKCS#12 holding every entry (several keys allowed), like a Java keystore would.

    Keys are PBES2/AES-256 shrouded key bags; certificates sit in an unencrypted SafeContents;
    each key and its certificate share friendlyName and localKeyId; the MAC is HMAC-SHA256.
    `key_iterations` rewrites the PBKDF2 count of every key bag (its ciphertext then no longer
    decrypts: for bounds checked before any derivation), under a MAC that still verifies.
    `legacy_safe` puts the key bags in a safe encrypted with pbeWithSHAAnd3-KeyTripleDES-CBC
    (RFC 7292 appendix C), whose contents only OpenSSL reads.
    """
    pw = password.encode("utf-8")
    key_bags, cert_bags = [], []
    seen: set[bytes] = set()
    for index, entry in enumerate(entries):
        local_id = hashlib.sha1(f"{index}:{entry.alias}".encode()).digest()
        attrs = _bag_attributes(entry.alias, local_id if entry.key is not None else None)
        if entry.key is not None:
            der = entry.key.private_bytes(serialization.Encoding.DER,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(pw))
            info = akeys.EncryptedPrivateKeyInfo.load(der)
            if key_iterations is not None:
                kdf = info["encryption_algorithm"]["parameters"]["key_derivation_func"]
                kdf["parameters"]["iteration_count"] = key_iterations
                info = akeys.EncryptedPrivateKeyInfo.load(info.dump(force=True))
            key_bags.append(apkcs12.SafeBag({
                "bag_id": "pkcs8_shrouded_key_bag",
                "bag_value": info,
                "bag_attributes": attrs}))
        for i, cert in enumerate((entry.cert, *entry.chain)):
            der = cert.public_bytes(serialization.Encoding.DER)
            if i > 0 and der in seen:
                continue
            seen.add(der)
            cert_bags.append(apkcs12.SafeBag({
                "bag_id": "cert_bag",
                "bag_value": apkcs12.CertBag({"cert_id": "x509",
                                              "cert_value": ax509.Certificate.load(der)}),
                "bag_attributes": attrs if i == 0 else _bag_attributes(None, None)}))
    safes = [acms.ContentInfo({"content_type": "data",
                               "content": apkcs12.SafeContents(bags).dump()})
             for bags in (key_bags, cert_bags) if bags]
    if legacy_safe and key_bags:
        safes[0] = _legacy_safe(apkcs12.SafeContents(key_bags).dump(), password)
    auth_safe = apkcs12.AuthenticatedSafe(safes).dump()
    salt = os.urandom(16)
    bmp = password.encode("utf-16-be") + b"\x00\x00"
    mac_key = _pkcs12_kdf(bmp, salt, iterations, 32)
    return apkcs12.Pfx({
        "version": "v3",
        "auth_safe": {"content_type": "data", "content": auth_safe},
        "mac_data": {
            "mac": {"digest_algorithm": {"algorithm": "sha256"},
                    "digest": hmac.new(mac_key, auth_safe, "sha256").digest()},
            "mac_salt": salt, "iterations": iterations},
    }).dump()


def with_mac_iterations(pfx: bytes, iterations: int) -> bytes:
    """`pfx` with the MAC's iteration INTEGER rewritten (the MAC then no longer verifies: only a
    bound read before deriving can refuse it quickly)."""
    parsed = apkcs12.Pfx.load(pfx)
    parsed["mac_data"]["iterations"] = iterations
    return apkcs12.Pfx.load(parsed.dump(force=True)).dump()


def _bag_attributes(alias: str | None, local_id: bytes | None) -> apkcs12.Attributes:
    attrs: list[dict[str, object]] = []
    if alias is not None:
        attrs.append({"type": "friendly_name", "values": [alias]})
    if local_id is not None:
        attrs.append({"type": "local_key_id", "values": [local_id]})
    return apkcs12.Attributes(attrs)


def _legacy_safe(contents: bytes, password: str) -> acms.ContentInfo:
    """An EncryptedData safe as Java 8 and OpenSSL 1.x write them (here with 3-key 3DES)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    salt, iterations = os.urandom(8), 2048
    bmp = password.encode("utf-16-be") + b"\x00\x00"
    key = _pkcs12_kdf(bmp, salt, iterations, 24, purpose=1, hash_name="sha1")
    iv = _pkcs12_kdf(bmp, salt, iterations, 8, purpose=2, hash_name="sha1")
    padder = padding.PKCS7(64).padder()
    encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padder.update(contents) + padder.finalize()) + encryptor.finalize()
    return acms.ContentInfo({"content_type": "encrypted_data", "content": acms.EncryptedData({
        "version": "v0", "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "pkcs12_sha1_tripledes_3key",
                                             "parameters": {"salt": salt,
                                                            "iterations": iterations}},
            "encrypted_content": sealed}})})


def _pkcs12_kdf(password_bmp: bytes, salt: bytes, iterations: int, length: int, *,
                purpose: int = 3, hash_name: str = "sha256") -> bytes:
    """RFC 7292 B.2 (default: SHA-256, purpose 3, the MAC key); written apart from the code
    under test."""
    v, u = 64, hashlib.new(hash_name).digest_size

    def fill(data: bytes) -> bytes:
        size = v * ((len(data) + v - 1) // v)
        return (data * (size // len(data) + 1))[:size] if data else b""

    block = bytearray(fill(salt) + fill(password_bmp))
    out = b""
    while len(out) < length:
        a = hashlib.new(hash_name, bytes([purpose]) * v + bytes(block)).digest()
        for _ in range(iterations - 1):
            a = hashlib.new(hash_name, a).digest()
        out += a
        b = int.from_bytes((a * (v // u + 1))[:v], "big")
        for j in range(0, len(block), v):
            n = (int.from_bytes(block[j:j + v], "big") + b + 1) % (1 << (8 * v))
            block[j:j + v] = n.to_bytes(v, "big")
    return out[:length]


def cryptography_pfx(alias: str | None, key: PrivateKey, cert: x509.Certificate,
                     chain: Sequence[x509.Certificate] = (), password: str = "changeit", *,
                     legacy: bool = False) -> bytes:
    """A single-key PKCS#12 as `cryptography` writes it (AES-256, or 3DES/SHA-1 when legacy)."""
    if legacy:
        enc = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
               .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
               .hmac_hash(hashes.SHA1()).build(password.encode()))
    else:
        enc = serialization.BestAvailableEncryption(password.encode())
    return pkcs12.serialize_key_and_certificates(
        alias.encode() if alias else None, key, cert, list(chain) or None, enc)


def pem_keystore(key: PrivateKey, certs: Sequence[x509.Certificate],
                 password: str | None = None) -> bytes:
    """A PEM keystore: the PKCS#8 key (encrypted when password is set), then the certificates."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             enc) + pem(*certs)
