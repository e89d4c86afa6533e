"""Message signing (DESIGN §3 smtp.signing, §5 SigningReady): S/MIME signing and verification.

Takes the key reconciler.probe.keystore selected, checks the certificate is fit for S/MIME
signing (validity window, key usages, the sender among its addresses), proves it by signing a
small test message (multipart/signed, SHA-256) and verifying that signature, and returns what the
Secret renderer publishes: the PEM key and chain, and a PKCS#12 whose password is stable for a
key. Expected failures are outcomes with reasons, never exceptions.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP

from asn1crypto import cms as acms
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from reconciler import reasons
from reconciler.log import register_secret
from reconciler.model import Account, CertificateInfo, Outcome, SecretReader, SigningResult
from reconciler.probe.keystore import SigningKey, load_signing_material
from reconciler.probe.limits import Deadline
from reconciler.probe.pkcs12crypto import within_bounds

EXPIRY_WARNING_DAYS = 14
TEST_SUBJECT = "email-reconciler signing check"
_EMAIL_PROTECTION = x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION
_ANY_EKU = x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE


def check_signing(account: Account, secrets: SecretReader, *, now: datetime,
                  deadline: Deadline | None = None) -> SigningResult:
    """Load, check and prove the account's signing key; SigningReady is `outcome.ok`.

    No keystore key derivation starts after `deadline` (reconciler.probe.keystore)."""
    loaded = load_signing_material(account, secrets, deadline)
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
    friendly name (their bytes differ by random salts): then the published one can stay.
    A published file asking for more key derivation than a keystore may is not opened."""
    if not within_bounds(old, password.encode("utf-8")):
        return False
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
