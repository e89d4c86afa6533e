"""Keystore reading (DESIGN §6 signing material): the account's signing key, certificate, chain.

Reads the keystore and password Secrets an account names, opens a PKCS#12 (with its password,
or without one) or a PEM key and certificate chain, selects the key by alias (exact, then
case-insensitive; blank: the first key), finds its certificate and issuer chain, and returns
them as `SigningMaterial`; a failure is an Outcome with a reason, never an exception.

`cryptography`'s PKCS#12 loader returns one key only, so keystores are read bag by bag with
asn1crypto: shrouded key bags are decrypted by `cryptography` (PBES2 and the PKCS#12 PBEs), PBES2
encrypted SafeContents by us (reconciler.probe.pkcs12crypto), and certificates in safes we
cannot decrypt (legacy RC2) come from `cryptography.load_pkcs12`. Every iteration count the
file asks for is bounded before any key derivation runs (pkcs12crypto.MAX_ITERATIONS), each
derivation starts only within the probe's deadline, and a file with safes whose contents we
cannot see first is loaded in a child process killed at the deadline (pkcs12child).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from asn1crypto import cms as acms
from asn1crypto import pkcs12 as apkcs12
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import register_secret
from reconciler.model import Account, KeyRef, Outcome, SecretReader
from reconciler.probe import pkcs12child
from reconciler.probe.limits import Deadline
from reconciler.probe.pkcs12crypto import (
    bag_iterations,
    decrypt_pbes2,
    iteration_counts,
    iteration_refusal,
    mac_ok,
    pem_key_iterations,
)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
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


class _Work:
    """The key derivations opening one keystore: counts bounded, each begun within the deadline."""

    def __init__(self, where: str, deadline: Deadline | None) -> None:
        self.where, self.deadline, self.spent = where, deadline, 0
        self.hidden = False  # encrypted safes: whole-file loads run in a child (pkcs12child)

    def admit(self, counts: list[tuple[str, int | None]]) -> None:
        """Count derivations the file asks for; KeystoreUnreadable past the bounds."""
        for what, count in counts:
            refusal = iteration_refusal(what, count, self.spent)
            if refusal is not None:
                raise _Failed(reasons.KEYSTORE_UNREADABLE, f"{self.where}: {refusal}")
            self.spent += count or 0

    def in_time(self) -> None:
        """Before a derivation: Timeout once the probe's deadline has passed."""
        if self.deadline is not None and self.deadline.remaining() <= 0:
            raise self.timed_out()

    def timed_out(self) -> _Failed:
        return _Failed(reasons.TIMEOUT,
                       f"opening {self.where} did not finish within the probe's deadline; "
                       "export the keystore again with the tool's default iteration counts, "
                       "or raise timeoutSeconds")

    def load_whole(self, blob: bytes, pw: bytes | None) -> pkcs12.PKCS12KeyAndCertificates:
        """cryptography's whole-file load, in a child under the deadline when the file has safes
        whose counts could not be read first; ValueError when pw does not open it."""
        self.in_time()
        left = self.deadline.remaining() if self.deadline is not None else 60.0
        try:
            return pkcs12child.load_pkcs12(blob, pw, isolated=self.hidden, seconds=left)
        except TimeoutError:
            raise self.timed_out() from None


@dataclass
class _Entry:
    """A keystore entry as read from a bag: key or certificate, with its bag attributes."""

    friendly_name: str | None
    local_key_id: bytes | None
    key: SigningKey | None = None
    certificate: x509.Certificate | None = None


def load_signing_material(account: Account, secrets: SecretReader,
                          deadline: Deadline | None = None) -> SigningMaterial | Outcome:
    """Read the keystore and password Secrets and select the key; an Outcome when that fails.

    With a deadline, no key derivation starts after it (each is bounded in iterations)."""
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
            return _load_pem(blob, password, signing.alias, _Work(where, deadline))
        return _load_pkcs12(blob, password, signing.alias, _Work(where, deadline))
    except _Failed as failed:
        return failed.outcome


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
              work: _Work) -> SigningMaterial:
    where = work.where
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
            if label == b"ENCRYPTED PRIVATE KEY":  # PKCS#8: PBKDF2 with the file's count
                work.admit([("encrypted private key", pem_key_iterations(block))])
            work.in_time()
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
                 work: _Work) -> SigningMaterial:
    where = work.where
    try:
        pfx = apkcs12.Pfx.load(blob)
        safes = list(pfx.authenticated_safe)
        mac_data = pfx["mac_data"]
        counts = iteration_counts(pfx)
    except Exception:  # asn1crypto raises ValueError, TypeError, KeyError on junk
        raise _Failed(reasons.KEYSTORE_UNREADABLE,
                      f"{where} is neither PEM nor PKCS#12; store the .p12/.pfx file "
                      "itself (not base64 of it) or a PEM key and certificate") from None
    work.admit(counts)  # before any derivation: the MAC's, the safes', the keys'
    work.hidden = any(info["content_type"].native != "data" for info in safes)
    pw = _open_pfx(blob, pfx, mac_data, password, work)
    entries: list[_Entry] = []
    undecrypted = False
    try:
        for info in safes:
            undecrypted |= _read_safe(info, pw, entries, work)
    except (ValueError, TypeError, KeyError):  # malformed bags inside a well-formed envelope
        raise _Failed(reasons.KEYSTORE_UNREADABLE,
                      f"{where} is a damaged PKCS#12 (its entries do not parse); export the "
                      "keystore again") from None
    certs = [e.certificate for e in entries if e.certificate is not None]
    if undecrypted or not any(e.key for e in entries):
        entries += _entries_from_cryptography(blob, pw, certs, work,
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
              work: _Work) -> bytes | None:
    """The password (bytes) whose MAC checks; KeystorePasswordWrong when none does."""
    where = work.where
    candidates = _password_candidates(password)
    if isinstance(mac_data, apkcs12.MacData):
        content = pfx["auth_safe"]["content"].native
        for pw in candidates:
            work.in_time()
            if mac_ok(mac_data, content, pw):
                return pw
        if mac_data["mac"]["digest_algorithm"]["algorithm"].native in hashlib.algorithms_available:
            raise _wrong_password(f"{where} (integrity check failed)", password)
    # No MAC, or one we cannot compute: let cryptography decide.
    for pw in candidates:
        try:
            work.load_whole(blob, pw)
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


def _read_safe(info: acms.ContentInfo, pw: bytes | None, entries: list[_Entry],
               work: _Work) -> bool:
    """Append the safe's bags to entries; True when the safe could not be decrypted here."""
    kind = info["content_type"].native
    if kind == "data":
        _read_bags(apkcs12.SafeContents.load(info["content"].native), pw, entries, work)
        return False
    if kind == "encrypted_data":
        work.in_time()
        plain = decrypt_pbes2(info["content"]["encrypted_content_info"], pw)
        if plain is None:
            return True
        bags = apkcs12.SafeContents.load(plain)
        work.admit(bag_iterations(bags))  # its key bags were hidden until now
        _read_bags(bags, pw, entries, work)
        return False
    return True


def _read_bags(bags: apkcs12.SafeContents, pw: bytes | None, entries: list[_Entry],
               work: _Work) -> None:
    where = work.where
    for bag in bags:
        kind = bag["bag_id"].native
        attrs = {a["type"].native: a["values"][0].native for a in bag["bag_attributes"]}
        entry = _Entry(attrs.get("friendly_name"), attrs.get("local_key_id"))
        value = bag["bag_value"].untag().dump()
        if kind in ("key_bag", "pkcs8_shrouded_key_bag"):
            work.in_time()
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
            _read_bags(apkcs12.SafeContents.load(value), pw, entries, work)
            continue
        else:
            continue
        entries.append(entry)


def _entries_from_cryptography(blob: bytes, pw: bytes | None, known: list[x509.Certificate],
                               work: _Work, *, with_key: bool) -> list[_Entry]:
    """Certificates (and the one key) cryptography can read from safes we could not decrypt."""
    try:
        loaded = work.load_whole(blob, pw)
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
