"""Message signing (DESIGN §3 smtp.signing, §5 SigningReady, §6 signing material).

Loads the keystore an account names (PKCS#12 with a password, or PEM key + certificate chain),
selects the key by alias, checks the certificate is fit for S/MIME signing, proves it by signing a
small test message (multipart/signed, SHA-256) and verifying that signature, and returns what the
Secret renderer publishes. Expected failures are outcomes with reasons, never exceptions.

`cryptography`'s PKCS#12 loader returns one key only, so keystores are read bag by bag with
asn1crypto: shrouded key bags are decrypted by `cryptography` (PBES2 and the PKCS#12 PBEs), PBES2
encrypted SafeContents by us, and certificates in safes we cannot decrypt (legacy RC2) come from
`cryptography.load_pkcs12`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP

from asn1crypto import cms as acms
from asn1crypto import pkcs12 as apkcs12
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import register_secret
from reconciler.model import (
    Account,
    CertificateInfo,
    KeyRef,
    Outcome,
    SecretReader,
    SigningResult,
)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
EXPIRY_WARNING_DAYS = 14
TEST_SUBJECT = "email-reconciler signing check"
_EMAIL_PROTECTION = x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION
_ANY_EKU = x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
_PRF: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(), "sha224": hashes.SHA224(), "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)


@dataclass(frozen=True)
class SigningMaterial:
    """The chosen key, its certificate and issuer chain, and the keystore's keyed aliases."""

    alias: str
    key: SigningKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuers of `certificate`, nearest first
    aliases: tuple[str, ...]
    password: str | None  # the password that opened the keystore (None: PEM or none needed)
    source_format: str  # "PKCS12" or "PEM"


class _Failed(Exception):
    """Internal: carries an Outcome out of nested parsing code to the public boundary."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.outcome = Outcome(ok=False, reason=reason, message=message)


@dataclass
class _Entry:
    """A keystore entry as read from a bag: key or certificate, with its bag attributes."""

    friendly_name: str | None
    local_key_id: bytes | None
    key: SigningKey | None = None
    certificate: x509.Certificate | None = None


# --------------------------------------------------------------------------- public API


def check_signing(account: Account, secrets: SecretReader, *, now: datetime) -> SigningResult:
    """Load, check and prove the account's signing key; SigningReady is `outcome.ok`."""
    loaded = load_signing_material(account, secrets)
    if isinstance(loaded, Outcome):
        return SigningResult(outcome=loaded)
    material = loaded
    cert = material.certificate
    info = certificate_info(cert, now)
    failure, warnings = _check_certificate(account, cert, info, now)
    base = SigningResult(outcome=failure or Outcome(False, reasons.PROGRESSING, "signing"),
                         certificate=info, alias=material.alias, aliases=material.aliases,
                         warnings=warnings)
    if failure is not None:
        return base
    try:
        signed = sign_message(build_test_message(account), material.key,
                              (cert, *material.chain))
        verify_signed_message(signed, cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        return dataclasses.replace(base, outcome=Outcome(
            False, reasons.SIGNATURE_FAILED,
            f"signing a test message with alias {material.alias or '(first key)'!r} failed "
            f"({type(exc).__name__}); re-export the keystore with an RSA or EC key and its "
            "certificate"))
    key_pem = material.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode("ascii")
    p12_password = material.password or published_p12_password(material.key)
    register_secret(key_pem)
    register_secret(p12_password)
    p12 = pkcs12.serialize_key_and_certificates(
        material.alias.encode("utf-8") if material.alias else None, material.key, cert,
        list(material.chain) or None,
        serialization.BestAvailableEncryption(p12_password.encode("utf-8")))
    chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii")
                        for c in (cert, *material.chain))
    return dataclasses.replace(
        base,
        outcome=Outcome(True, reasons.SUCCEEDED,
                        f"signed and verified a test message as {account_sender(account)} "
                        f"with alias {material.alias or '(unnamed)'!r}"),
        certificate_chain_pem=chain_pem, private_key_pem=key_pem, pkcs12=p12,
        pkcs12_password=p12_password)


def published_p12_password(key: SigningKey) -> str:
    """The password of the published signing.p12 when the keystore has none: stable for a key.

    Derived (HMAC-SHA256, one-way) from the private key, so it changes only with the key and
    the Secret does not churn (a new password on every probe restarted applications through
    Reloader-style tools). It protects nothing the Secret does not already: it is published
    next to the file it opens.
    """
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    mac = hmac.new(der, b"email-reconciler signing.p12 password", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode("ascii")


def same_pkcs12(old: bytes, new: bytes, password: str) -> bool:
    """Whether two PKCS#12 files opened with `password` hold the same key, certificates and
    friendly name (their bytes differ by random salts): then the published one can stay."""
    try:
        a = pkcs12.load_pkcs12(old, password.encode("utf-8"))
        b = pkcs12.load_pkcs12(new, password.encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False

    def content(p: pkcs12.PKCS12KeyAndCertificates) -> tuple[object, ...]:
        key = p.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()) if p.key is not None else None
        cert = p.cert
        return (key,
                cert.certificate.public_bytes(serialization.Encoding.DER) if cert else None,
                cert.friendly_name if cert else None,
                [c.certificate.public_bytes(serialization.Encoding.DER)
                 for c in p.additional_certs])

    return content(a) == content(b)


def load_signing_material(account: Account, secrets: SecretReader) -> SigningMaterial | Outcome:
    """Read the keystore and password Secrets and select the key; an Outcome when that fails."""
    signing = account.smtp.signing if account.smtp is not None else None
    if signing is None:
        return Outcome(False, reasons.INVALID_SPEC,
                       "account has no spec.smtp.signing; add keystoreSecretRef to sign")
    try:
        blob = _read(account, secrets, signing.keystore, "keystoreSecretRef")
        password = None
        if signing.keystore_password is not None:
            raw = _read(account, secrets, signing.keystore_password, "keystorePasswordSecretRef")
            password = raw.decode("utf-8", "replace")
            register_secret(password)
        where = _describe(account, signing.keystore)
        if blob.lstrip().startswith(b"-----BEGIN"):
            return _load_pem(blob, password, signing.alias, where)
        return _load_pkcs12(blob, password, signing.alias, where)
    except _Failed as failed:
        return failed.outcome


def sign_message(msg: EmailMessage, key: SigningKey,
                 chain: Sequence[x509.Certificate]) -> bytes:
    """S/MIME-sign msg (detached, SHA-256); chain[0] is the signer. Returns multipart/signed bytes.

    Transport headers (From, To, Subject, ...) move to the multipart/signed wrapper; the
    content headers and body are the signed entity.
    """
    inner = EmailMessage(policy=SMTP)
    outer_headers: list[tuple[str, str]] = []
    for name, value in msg.items():
        if name.lower().startswith("content-"):
            inner[name] = value
        elif name.lower() != "mime-version":
            outer_headers.append((name, value))
    if msg.is_multipart():
        inner.set_payload(msg.get_payload())
    else:
        inner.set_payload(msg.get_payload(decode=False))
    if "Content-Type" not in inner:
        inner["Content-Type"] = "text/plain; charset=utf-8"
    entity = inner.as_bytes(policy=SMTP)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity).add_signer(
        chain[0], key, hashes.SHA256())
    for extra in chain[1:]:
        builder = builder.add_certificate(extra)
    smime = builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    head = b"".join(f"{n}: {v}\r\n".encode() for n, v in outer_headers)
    return head + smime


def verify_signed_message(signed: bytes, signer: x509.Certificate) -> None:
    """Verify a multipart/signed message made by sign_message against signer's public key.

    Raises ValueError or InvalidSignature when the signature does not hold.
    """
    content, signature = _split_multipart_signed(signed)
    info = acms.ContentInfo.load(signature)
    if info["content_type"].native != "signed_data":
        raise ValueError("signature part is not CMS SignedData")
    signer_info = info["content"]["signer_infos"][0]
    if signer_info["digest_algorithm"]["algorithm"].native != "sha256":
        raise ValueError("digest algorithm is not SHA-256")
    attrs = {a["type"].native: a["values"][0].native for a in signer_info["signed_attrs"]}
    if attrs.get("message_digest") != hashlib.sha256(content).digest():
        raise ValueError("message digest does not match the signed content")
    sid = signer_info["sid"].chosen
    if (sid["serial_number"].native != signer.serial_number
            or sid["issuer"].dump() != signer.issuer.public_bytes()):
        raise ValueError("signature names a different signer certificate")
    signed_attrs = bytearray(signer_info["signed_attrs"].dump())
    signed_attrs[0] = 0x31  # the signature covers the attributes as a SET OF, not [0]
    sig = signer_info["signature"].native
    public_key = signer.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(sig, bytes(signed_attrs), asym_padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(sig, bytes(signed_attrs), ec.ECDSA(hashes.SHA256()))
    else:
        raise ValueError(f"unsupported signer key type {type(public_key).__name__}")


def build_test_message(account: Account) -> EmailMessage:
    """The small message the signing check signs: from and to the account's sender."""
    sender = account_sender(account)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = sender
    msg["Subject"] = TEST_SUBJECT
    msg.set_content(f"Signing check of EmailAccount {account.namespace}/{account.name}.\n")
    return msg


def account_sender(account: Account) -> str:
    """The account's sender address (identity.emailAddress)."""
    return account.smtp.identity.email_address if account.smtp is not None else ""


def certificate_info(cert: x509.Certificate, now: datetime) -> CertificateInfo:
    """Status fields of a certificate: subject, issuer, not-after, days left, serial, algorithm."""
    not_after = cert.not_valid_after_utc
    oid = cert.signature_algorithm_oid
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        days_remaining=(not_after - _utc(now)).days,
        serial=format(cert.serial_number, "x"),
        signature_algorithm=getattr(oid, "_name", None) or oid.dotted_string,
    )


# --------------------------------------------------------------------------- certificate checks


def _check_certificate(account: Account, cert: x509.Certificate, info: CertificateInfo,
                       now: datetime) -> tuple[Outcome | None, tuple[Outcome, ...]]:
    """Validity window, key usages, sender address: (failure or None, warnings)."""
    warnings: list[Outcome] = []
    now = _utc(now)
    sender = account_sender(account)
    addresses = certificate_addresses(cert)
    if sender.casefold() not in {a.casefold() for a in addresses}:
        listed = ", ".join(addresses) or "none"
        warnings.append(Outcome(False, reasons.SENDER_NOT_IN_CERTIFICATE,
                                f"sender {sender} is not among the certificate's e-mail "
                                f"addresses ({listed}); recipients may flag the signature; "
                                "use a certificate issued for this address"))
    if cert.not_valid_after_utc <= now:
        return Outcome(False, reasons.SIGNING_CERTIFICATE_EXPIRED,
                       f"signing certificate {info.subject} expired on {info.not_after}; "
                       "put a renewed certificate in the keystore Secret"), tuple(warnings)
    if cert.not_valid_before_utc > now:
        return Outcome(False, reasons.SIGNING_CERTIFICATE_EXPIRED,
                       f"signing certificate {info.subject} is not valid before "
                       f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}; check its dates"
                       ), tuple(warnings)
    if info.days_remaining < EXPIRY_WARNING_DAYS:
        warnings.append(Outcome(False, reasons.SIGNING_CERTIFICATE_EXPIRING_SOON,
                                f"signing certificate {info.subject} expires on "
                                f"{info.not_after} ({info.days_remaining} days); renew it"))
    problem = _usage_problem(cert)
    if problem:
        return Outcome(False, reasons.SIGNING_CERTIFICATE_NOT_FOR_EMAIL,
                       f"signing certificate {info.subject} {problem}; use a certificate "
                       "with key usage digitalSignature and extended key usage "
                       "emailProtection"), tuple(warnings)
    return None, tuple(warnings)


def _usage_problem(cert: x509.Certificate) -> str:
    """Why cert cannot sign e-mail ('' when it can)."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "has no key usage extension"
    if not ku.digital_signature:
        return "lacks key usage digitalSignature"
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "has no extended key usage extension"
    if _EMAIL_PROTECTION not in eku and _ANY_EKU not in eku:
        return "lacks extended key usage emailProtection"
    return ""


def certificate_addresses(cert: x509.Certificate) -> list[str]:
    """The certificate's e-mail addresses: rfc822Name SANs, then subject emailAddress."""
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        out += [str(v) for v in san.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        pass
    out += [str(a.value) for a in cert.subject.get_attributes_for_oid(
        x509.oid.NameOID.EMAIL_ADDRESS)]
    return out


# --------------------------------------------------------------------------- reading keystores


def _read(account: Account, secrets: SecretReader, ref: KeyRef, field: str) -> bytes:
    try:
        return secrets.read(account.namespace, ref)
    except SecretNotFound as exc:
        raise _Failed(reasons.KEYSTORE_NOT_FOUND,
                      f"{exc}; create it or fix spec.smtp.signing.{field}") from None


def _describe(account: Account, ref: KeyRef) -> str:
    return f"keystore {ref.kind} {account.namespace}/{ref.name} key {ref.key!r}"


def _password_candidates(password: str | None) -> list[bytes | None]:
    """The password as given, then without a trailing newline (files written with echo)."""
    if password is None:
        return [None, b""]
    out: list[bytes | None] = [password.encode("utf-8")]
    stripped = password.rstrip("\r\n")
    if stripped != password:
        out.append(stripped.encode("utf-8"))
    return out


def _load_pem(blob: bytes, password: str | None, alias: str | None,
              where: str) -> SigningMaterial:
    keys: list[SigningKey] = []
    certs: list[x509.Certificate] = []
    used: str | None = None
    for match in _PEM_BLOCK.finditer(blob):
        label, block = match.group(1), match.group(0)
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise _Failed(reasons.KEYSTORE_UNREADABLE,
                              f"{where} has a CERTIFICATE block that does not parse; "
                              "replace it with a PEM certificate") from None
        elif label.endswith(b"PRIVATE KEY"):
            key, used = _load_pem_key(block, label == b"ENCRYPTED PRIVATE KEY"
                                      or b"ENCRYPTED" in block, password, where)
            keys.append(key)
    if not keys or not certs:
        raise _Failed(reasons.KEYSTORE_UNREADABLE,
                      f"{where} is PEM but holds {len(keys)} private key(s) and {len(certs)} "
                      "certificate(s); it needs the private key and its certificate")
    if alias and alias.strip():
        raise _Failed(reasons.ALIAS_NOT_FOUND,
                      f"alias {alias!r} not found: {where} is PEM and has no aliases "
                      "(existing aliases: none); leave spec.smtp.signing.alias blank")
    key = keys[0]
    leaf = next((c for c in certs if _same_key(key, c)), None)
    if leaf is None:
        raise _Failed(reasons.KEY_CERTIFICATE_MISMATCH,
                      f"the private key in {where} does not match any of its certificates "
                      f"({', '.join(c.subject.rfc4514_string() for c in certs)}); put the "
                      "certificate issued for this key next to it")
    return SigningMaterial("", key, leaf, _chain(leaf, certs), (), used, "PEM")


def _load_pem_key(block: bytes, encrypted: bool, password: str | None,
                  where: str) -> tuple[SigningKey, str | None]:
    candidates = _password_candidates(password) if encrypted else [None]
    for pw in candidates:
        try:
            key = serialization.load_pem_private_key(block, pw)
        except (TypeError, ValueError) as exc:
            if encrypted and ("password" in str(exc).lower() or "decrypt" in str(exc).lower()):
                continue
            raise _Failed(reasons.KEYSTORE_UNREADABLE,
                          f"the private key in {where} cannot be read; export it as "
                          "PKCS#8 PEM (RSA or EC)") from None
        except UnsupportedAlgorithm:
            raise _Failed(reasons.KEYSTORE_UNREADABLE,
                          f"the private key in {where} uses an unsupported algorithm; "
                          "re-export it with AES (PBES2)") from None
        return _signing_key(key, where), (pw.decode("utf-8") if pw else None)
    raise _wrong_password(f"the private key in {where}", password)


def _load_pkcs12(blob: bytes, password: str | None, alias: str | None,
                 where: str) -> SigningMaterial:
    try:
        pfx = apkcs12.Pfx.load(blob)
        safes = list(pfx.authenticated_safe)
        mac_data = pfx["mac_data"]
    except Exception:  # asn1crypto raises ValueError, TypeError, KeyError on junk
        raise _Failed(reasons.KEYSTORE_UNREADABLE,
                      f"{where} is neither PEM nor PKCS#12; store the .p12/.pfx file "
                      "itself (not base64 of it) or a PEM key and certificate") from None
    pw = _open_pfx(blob, pfx, mac_data, password, where)
    entries: list[_Entry] = []
    undecrypted = False
    try:
        for info in safes:
            undecrypted |= _read_safe(info, pw, entries, where)
    except (ValueError, TypeError, KeyError):  # malformed bags inside a well-formed envelope
        raise _Failed(reasons.KEYSTORE_UNREADABLE,
                      f"{where} is a damaged PKCS#12 (its entries do not parse); export the "
                      "keystore again") from None
    certs = [e.certificate for e in entries if e.certificate is not None]
    if undecrypted or not any(e.key for e in entries):
        entries += _entries_from_cryptography(blob, pw, certs,
                                              with_key=not any(e.key for e in entries))
        certs = [e.certificate for e in entries if e.certificate is not None]
    keyed = [e for e in entries if e.key is not None]
    aliases = tuple(e.friendly_name or "" for e in keyed)
    if not keyed:
        raise _Failed(reasons.KEYSTORE_UNREADABLE,
                      f"{where} holds no private key (only {len(certs)} certificate(s)); "
                      "export the keystore with the signing key")
    chosen = _select(keyed, alias, aliases, where)
    assert chosen.key is not None
    leaf = _certificate_for(chosen, entries, where)
    return SigningMaterial(chosen.friendly_name or "", chosen.key, leaf,
                           _chain(leaf, certs), aliases,
                           pw.decode("utf-8") if pw else None, "PKCS12")


def _open_pfx(blob: bytes, pfx: apkcs12.Pfx, mac_data: object, password: str | None,
              where: str) -> bytes | None:
    """The password (bytes) whose MAC checks; KeystorePasswordWrong when none does."""
    candidates = _password_candidates(password)
    if isinstance(mac_data, apkcs12.MacData):
        content = pfx["auth_safe"]["content"].native
        for pw in candidates:
            if _mac_ok(mac_data, content, pw):
                return pw
        if mac_data["mac"]["digest_algorithm"]["algorithm"].native in hashlib.algorithms_available:
            raise _wrong_password(f"{where} (integrity check failed)", password)
    # No MAC, or one we cannot compute: let cryptography decide.
    for pw in candidates:
        try:
            pkcs12.load_pkcs12(blob, pw)
            return pw
        except ValueError:
            continue
    raise _wrong_password(where, password)


def _wrong_password(what: str, password: str | None) -> _Failed:
    if password is None:
        return _Failed(reasons.KEYSTORE_PASSWORD_WRONG,
                       f"{what} is password-protected and no password is configured; set "
                       "spec.smtp.signing.keystorePasswordSecretRef")
    return _Failed(reasons.KEYSTORE_PASSWORD_WRONG,
                   f"the configured password does not open {what}; fix the Secret named by "
                   "spec.smtp.signing.keystorePasswordSecretRef")


def _mac_ok(mac_data: apkcs12.MacData, content: bytes, pw: bytes | None) -> bool:
    algo = mac_data["mac"]["digest_algorithm"]["algorithm"].native
    if algo not in hashlib.algorithms_available:
        return False
    bmp = b"" if pw is None else pw.decode("utf-8").encode("utf-16-be") + b"\x00\x00"
    size = hashlib.new(algo).digest_size
    key = pkcs12_kdf(algo, bmp, mac_data["mac_salt"].native, 3,
                     mac_data["iterations"].native, size)
    return hmac.compare_digest(hmac.new(key, content, algo).digest(),
                               mac_data["mac"]["digest"].native)


def pkcs12_kdf(hash_name: str, password_bmp: bytes, salt: bytes, purpose: int,
               iterations: int, length: int) -> bytes:
    """RFC 7292 appendix B.2 key derivation (purpose 1: key, 2: IV, 3: MAC key)."""
    u = hashlib.new(hash_name).digest_size
    v = hashlib.new(hash_name).block_size
    d = bytes([purpose]) * v

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        size = v * ((len(data) + v - 1) // v)
        return (data * (size // len(data) + 1))[:size]

    i = bytearray(stretch(salt) + stretch(password_bmp))
    out = b""
    while len(out) < length:
        a = hashlib.new(hash_name, d + bytes(i)).digest()
        for _ in range(iterations - 1):
            a = hashlib.new(hash_name, a).digest()
        out += a
        b = int.from_bytes((a * (v // u + 1))[:v], "big")
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j:j + v], "big") + b + 1) % (1 << (8 * v))
            i[j:j + v] = block.to_bytes(v, "big")
    return out[:length]


def _read_safe(info: acms.ContentInfo, pw: bytes | None, entries: list[_Entry],
               where: str) -> bool:
    """Append the safe's bags to entries; True when the safe could not be decrypted here."""
    kind = info["content_type"].native
    if kind == "data":
        _read_bags(apkcs12.SafeContents.load(info["content"].native), pw, entries, where)
        return False
    if kind == "encrypted_data":
        plain = _decrypt_pbes2(info["content"]["encrypted_content_info"], pw)
        if plain is None:
            return True
        _read_bags(apkcs12.SafeContents.load(plain), pw, entries, where)
        return False
    return True


def _decrypt_pbes2(content_info: acms.EncryptedContentInfo, pw: bytes | None) -> bytes | None:
    """Decrypt PBES2 (PBKDF2 + AES-CBC) SafeContents; None for other schemes."""
    alg = content_info["content_encryption_algorithm"]
    if alg["algorithm"].native != "pbes2" or alg.encryption_cipher != "aes":
        return None
    prf = _PRF.get(alg.kdf_hmac)
    if prf is None:
        return None
    kdf = PBKDF2HMAC(algorithm=prf, length=alg.key_length, salt=alg.kdf_salt,
                     iterations=alg.kdf_iterations)
    key = kdf.derive(pw or b"")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(alg.encryption_iv)).decryptor()
    padded = decryptor.update(content_info["encrypted_content"].native) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


def _read_bags(bags: apkcs12.SafeContents, pw: bytes | None, entries: list[_Entry],
               where: str) -> None:
    for bag in bags:
        kind = bag["bag_id"].native
        attrs = {a["type"].native: a["values"][0].native for a in bag["bag_attributes"]}
        entry = _Entry(attrs.get("friendly_name"), attrs.get("local_key_id"))
        value = bag["bag_value"].untag().dump()
        if kind in ("key_bag", "pkcs8_shrouded_key_bag"):
            try:
                key = serialization.load_der_private_key(
                    value, pw if kind == "pkcs8_shrouded_key_bag" else None)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise _Failed(reasons.KEYSTORE_UNREADABLE,
                              f"the key of entry {entry.friendly_name or '(unnamed)'!r} in "
                              f"{where} cannot be decrypted or read; re-export the keystore "
                              "with AES-256 (PBES2)") from None
            entry.key = _signing_key(key, where)
        elif kind == "cert_bag" and bag["bag_value"]["cert_id"].native == "x509":
            entry.certificate = x509.load_der_x509_certificate(
                bag["bag_value"]["cert_value"].parsed.dump())
        elif kind == "safe_contents":
            _read_bags(apkcs12.SafeContents.load(value), pw, entries, where)
            continue
        else:
            continue
        entries.append(entry)


def _entries_from_cryptography(blob: bytes, pw: bytes | None, known: list[x509.Certificate],
                               *, with_key: bool) -> list[_Entry]:
    """Certificates (and the one key) cryptography can read from safes we could not decrypt."""
    try:
        loaded = pkcs12.load_pkcs12(blob, pw)
    except ValueError:
        return []
    out: list[_Entry] = []
    for item in ([loaded.cert] if loaded.cert else []) + list(loaded.additional_certs):
        if item.certificate in known:
            continue
        name = item.friendly_name.decode("utf-8", "replace") if item.friendly_name else None
        out.append(_Entry(name, None, certificate=item.certificate))
    if with_key and isinstance(loaded.key, SigningKey):
        raw = loaded.cert.friendly_name if loaded.cert else None
        out.append(_Entry(raw.decode("utf-8", "replace") if raw else None, None,
                          key=loaded.key))
    return out


def _select(keyed: list[_Entry], alias: str | None, aliases: tuple[str, ...],
            where: str) -> _Entry:
    if not alias or not alias.strip():
        return keyed[0]
    for match in (lambda n: n == alias, lambda n: n.casefold() == alias.casefold()):
        for entry in keyed:
            if match(entry.friendly_name or ""):
                return entry
    listed = ", ".join(repr(a) for a in aliases) or "none"
    raise _Failed(reasons.ALIAS_NOT_FOUND,
                  f"alias {alias!r} not found in {where}; existing aliases: {listed}; set "
                  "spec.smtp.signing.alias to one of them or leave it blank for the first key")


def _certificate_for(chosen: _Entry, entries: list[_Entry], where: str) -> x509.Certificate:
    """The entry's certificate: by localKeyId, then friendly name, then public key."""
    assert chosen.key is not None
    certs = [e for e in entries if e.certificate is not None]
    linked = next((e for e in certs if chosen.local_key_id is not None
                   and e.local_key_id == chosen.local_key_id), None)
    linked = linked or next((e for e in certs if chosen.friendly_name
                             and e.friendly_name == chosen.friendly_name), None)
    name = chosen.friendly_name or "(unnamed)"
    if linked is not None and linked.certificate is not None:
        if not _same_key(chosen.key, linked.certificate):
            raise _Failed(reasons.KEY_CERTIFICATE_MISMATCH,
                          f"the key of alias {name!r} in {where} does not match its "
                          f"certificate {linked.certificate.subject.rfc4514_string()}; "
                          "re-export the keystore with the certificate issued for this key")
        return linked.certificate
    by_key = next((e.certificate for e in certs
                   if e.certificate is not None and _same_key(chosen.key, e.certificate)), None)
    if by_key is None:
        raise _Failed(reasons.KEY_CERTIFICATE_MISMATCH,
                      f"alias {name!r} in {where} has no certificate matching its key; "
                      "re-export the keystore with the certificate issued for this key")
    return by_key


def _signing_key(key: object, where: str) -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key
    raise _Failed(reasons.KEYSTORE_UNREADABLE,
                  f"{where} holds a {type(key).__name__}; S/MIME signing here needs an RSA or "
                  "EC key")


def _same_key(key: SigningKey, cert: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def _chain(leaf: x509.Certificate, pool: list[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """Issuers of leaf found in pool, nearest first, stopping at a self-signed certificate."""
    chain: list[x509.Certificate] = []
    current = leaf
    while current.issuer != current.subject:
        issuer = next((c for c in pool if c.subject == current.issuer
                       and c != current and c not in chain), None)
        if issuer is None:
            break
        chain.append(issuer)
        current = issuer
    return tuple(chain)


def _split_multipart_signed(signed: bytes) -> tuple[bytes, bytes]:
    """(canonical signed entity, DER signature) from multipart/signed bytes."""
    found = re.search(rb'boundary="?([^";\r\n]+)"?', signed)
    if found is None:
        raise ValueError("no multipart boundary")
    delimiter = b"\r\n--" + found.group(1)
    text = signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    parts = text.split(delimiter)
    if len(parts) < 4:
        raise ValueError("multipart/signed needs two parts")
    content = parts[1].split(b"\r\n", 1)[1]
    sig_part = parts[2].split(b"\r\n", 1)[1]
    body = sig_part.split(b"\r\n\r\n", 1)[1]
    return content, base64.b64decode(b"".join(body.split()))


def _utc(now: datetime) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
