"""Message signing (issue 7): keystores built at test time, signatures checked by OpenSSL."""

from __future__ import annotations

import email
import email.policy
import hashlib
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import REDACTED, redact_text
from reconciler.model import (
    Account,
    Connection,
    Identity,
    KeyRef,
    Outcome,
    Publish,
    Signing,
    SigningResult,
    SmtpSpec,
)
from reconciler.policy import OPERATOR_SOURCE, SecretMeta
from reconciler.probe.keystore import SigningMaterial, load_signing_material
from reconciler.probe.signing import (
    build_test_message,
    check_signing,
    sign_message,
    verify_signed_message,
)
from tests.keystores import (
    PfxEntry,
    PrivateKey,
    TestCA,
    build_pfx,
    cryptography_pfx,
    new_key,
    pem,
    pem_keystore,
)

NOW = datetime.now(UTC)
PASSWORD = "k3ystore-Pa55"
SENDER = "alpha@example.com"
KEYSTORE = KeyRef("signing", "keystore.p12", field="/spec/smtp/signing/keystoreSecretRef")
PASSWORD_REF = KeyRef("signing", "password")


class MemorySecrets:
    """SecretReader over a dict {(secret name, key): value}."""

    def __init__(self, data: Mapping[tuple[str, str], bytes]) -> None:
        self.data = dict(data)

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """In-memory secrets are the test's own: opted in."""
        return OPERATOR_SOURCE

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        try:
            return self.data[(ref.name, ref.key)]
        except KeyError:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind) from None

    def version(self, namespace: str, ref: KeyRef) -> str:
        return hashlib.sha256(self.read(namespace, ref)).hexdigest()


def account(alias: str | None = None, sender: str = SENDER,
            password_ref: KeyRef | None = PASSWORD_REF) -> Account:
    return Account(
        namespace="mail", name="billing", provider="custom", send_using="SMTP",
        publish=Publish(secret_name="billing-sender"),
        smtp=SmtpSpec(identity=Identity(sender, display_name="Billing"),
                      connection=Connection("127.0.0.1", 587),
                      signing=Signing(KEYSTORE, password_ref, alias)))


def check(keystore: bytes, alias: str | None = None, password: str | None = PASSWORD,
          sender: str = SENDER) -> SigningResult:
    data = {("signing", "keystore.p12"): keystore}
    if password is not None:
        data[("signing", "password")] = password.encode()
    acct = account(alias, sender, PASSWORD_REF if password is not None else None)
    return check_signing(acct, MemorySecrets(data), now=NOW)


@dataclass
class World:
    ca: TestCA
    inter: TestCA
    entries: list[PfxEntry]

    def one(self, index: int = 0) -> tuple[PrivateKey, x509.Certificate]:
        return self.entries[index].key, self.entries[index].cert  # type: ignore[return-value]


@pytest.fixture(scope="module")
def world() -> World:
    ca = TestCA.create()
    inter = ca.intermediate()
    entries = []
    for alias, kind in (("alpha", "ec"), ("beta", "rsa"), ("gamma", "ec")):
        key, cert = inter.issue_smime(f"{alias}@example.com", key_kind=kind)
        entries.append(PfxEntry(alias, key, cert, [inter.cert, ca.cert]))
    return World(ca, inter, entries)


@pytest.fixture(scope="module")
def three_aliases(world: World) -> bytes:
    # a trusted-certificate entry (no key) first: "blank alias" must skip it
    return build_pfx([PfxEntry("partner", None, world.inter.cert), *world.entries], PASSWORD)


def assert_no_secret(result: SigningResult, *secrets: str) -> None:
    texts = [result.outcome.message, *(w.message for w in result.warnings), repr(result)]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --------------------------------------------------------------------------- alias selection


@pytest.mark.parametrize("alias", ["alpha", "beta", "gamma"])
def test_selects_each_of_three_keyed_aliases(three_aliases: bytes, world: World,
                                             alias: str) -> None:
    result = check(three_aliases, alias)
    assert result.outcome.ok, result.outcome
    assert result.outcome.reason == reasons.SUCCEEDED
    assert result.alias == alias
    assert result.aliases == ("alpha", "beta", "gamma")
    assert result.certificate is not None
    assert result.certificate.subject == f"CN={alias}@example.com"
    assert result.private_key_pem is not None and result.certificate_chain_pem is not None
    key = serialization.load_pem_private_key(result.private_key_pem.encode(), None)
    cert = x509.load_pem_x509_certificates(result.certificate_chain_pem.encode())
    assert cert[0].public_key() == key.public_key()
    assert [c.subject for c in cert[1:]] == [world.inter.cert.subject, world.ca.cert.subject]


@pytest.mark.parametrize("alias", [None, "", "   "])
def test_blank_alias_selects_first_keyed_entry(three_aliases: bytes, alias: str | None) -> None:
    result = check(three_aliases, alias)
    assert result.outcome.ok
    assert result.alias == "alpha"


def test_alias_lookup_falls_back_to_case_insensitive(three_aliases: bytes) -> None:
    assert check(three_aliases, "BETA").alias == "beta"


def test_alias_not_found_lists_existing_aliases(three_aliases: bytes) -> None:
    result = check(three_aliases, "delta")
    assert not result.outcome.ok
    assert result.outcome.reason == reasons.ALIAS_NOT_FOUND
    assert "'delta'" in result.outcome.message
    assert "'alpha', 'beta', 'gamma'" in result.outcome.message
    assert "spec.smtp.signing.alias" in result.outcome.message
    assert result.private_key_pem is None and result.pkcs12 is None


# --------------------------------------------------------------------------- keystore failures


def test_wrong_password_is_reported_without_the_password(three_aliases: bytes) -> None:
    result = check(three_aliases, password="not-the-password")
    assert result.outcome.reason == reasons.KEYSTORE_PASSWORD_WRONG
    assert "keystorePasswordSecretRef" in result.outcome.message
    assert_no_secret(result, "not-the-password", PASSWORD)


def test_password_protected_keystore_without_configured_password(three_aliases: bytes) -> None:
    result = check(three_aliases, password=None)
    assert result.outcome.reason == reasons.KEYSTORE_PASSWORD_WRONG
    assert "no password is configured" in result.outcome.message


def test_password_with_trailing_newline_still_opens(three_aliases: bytes) -> None:
    result = check(three_aliases, "gamma", password=PASSWORD + "\n")
    assert result.outcome.ok
    assert result.pkcs12_password == PASSWORD


@pytest.mark.parametrize("blob", [b"", b"\x00\x01 not a keystore", b"-----BEGIN NOTHING-----\n"
                                  b"AAAA\n-----END NOTHING-----\n", b"0\x82\x01\x00garbage"])
def test_garbage_is_unreadable(blob: bytes) -> None:
    result = check(blob)
    assert result.outcome.reason == reasons.KEYSTORE_UNREADABLE
    assert "mail/signing" in result.outcome.message


@pytest.mark.parametrize("missing", [("signing", "keystore.p12"), ("signing", "password")])
def test_missing_secret_or_key_is_keystore_not_found(three_aliases: bytes,
                                                     missing: tuple[str, str]) -> None:
    data = {("signing", "keystore.p12"): three_aliases, ("signing", "password"): b"x"}
    del data[missing]
    result = check_signing(account(), MemorySecrets(data), now=NOW)
    assert result.outcome.reason == reasons.KEYSTORE_NOT_FOUND
    assert f"mail/signing not found (key '{missing[1]}')" in result.outcome.message
    assert "spec.smtp.signing." in result.outcome.message


def test_key_not_matching_certificate(world: World) -> None:
    key_a, _ = world.one(0)
    _, cert_b = world.one(2)
    blob = build_pfx([PfxEntry("alpha", key_a, cert_b, [world.inter.cert])], PASSWORD)
    result = check(blob)
    assert result.outcome.reason == reasons.KEY_CERTIFICATE_MISMATCH
    assert "'alpha'" in result.outcome.message and "gamma@example.com" in result.outcome.message


def test_pem_key_not_matching_certificate(world: World) -> None:
    result = check(pem_keystore(world.one(0)[0], [world.one(1)[1]]), password=None)
    assert result.outcome.reason == reasons.KEY_CERTIFICATE_MISMATCH


# --------------------------------------------------------------------------- certificate checks


def test_expired_certificate(world: World) -> None:
    key, cert = world.inter.issue_smime(SENDER, not_before=NOW - timedelta(days=400),
                                        not_after=NOW - timedelta(days=1))
    result = check(build_pfx([PfxEntry("old", key, cert)], PASSWORD))
    assert result.outcome.reason == reasons.SIGNING_CERTIFICATE_EXPIRED
    assert result.certificate is not None and result.certificate.days_remaining < 0
    assert result.certificate.not_after in result.outcome.message


def test_expiring_soon_is_a_warning(world: World) -> None:
    key, cert = world.inter.issue_smime(SENDER, not_after=NOW + timedelta(days=5, hours=1))
    result = check(build_pfx([PfxEntry("soon", key, cert)], PASSWORD))
    assert result.outcome.ok
    assert [w.reason for w in result.warnings] == [reasons.SIGNING_CERTIFICATE_EXPIRING_SOON]
    assert "5 days" in result.warnings[0].message
    assert result.certificate is not None and result.certificate.days_remaining == 5


@pytest.mark.parametrize(("options", "why"), [
    ({"email_protection": False}, "emailProtection"),
    ({"digital_signature": False}, "digitalSignature"),
])
def test_certificate_not_for_email(world: World, options: dict[str, bool], why: str) -> None:
    key, cert = world.inter.issue_smime(SENDER, **options)  # type: ignore[arg-type]
    result = check(build_pfx([PfxEntry("web", key, cert)], PASSWORD))
    assert result.outcome.reason == reasons.SIGNING_CERTIFICATE_NOT_FOR_EMAIL
    assert f"lacks {'extended ' if why == 'emailProtection' else ''}key usage {why}" \
        in result.outcome.message


def test_sender_not_in_certificate_is_a_warning(three_aliases: bytes) -> None:
    result = check(three_aliases, "beta", sender="billing@example.org")
    assert result.outcome.ok
    assert [w.reason for w in result.warnings] == [reasons.SENDER_NOT_IN_CERTIFICATE]
    assert "billing@example.org" in result.warnings[0].message
    assert "beta@example.com" in result.warnings[0].message


def test_sender_matches_case_insensitively(three_aliases: bytes) -> None:
    assert check(three_aliases, "alpha", sender="Alpha@Example.COM").warnings == ()


@pytest.mark.parametrize(("key_kind", "ca_kind", "algorithm"), [
    ("rsa", "rsa", "sha256WithRSAEncryption"),
    ("ec", "ec", "ecdsa-with-SHA256"),
])
def test_rsa_and_ec_keys_record_certificate_status(key_kind: str, ca_kind: str,
                                                   algorithm: str) -> None:
    ca = TestCA.create(key_kind=ca_kind)
    key, cert = ca.issue_smime(SENDER, key_kind=key_kind)
    result = check(build_pfx([PfxEntry("k", key, cert, [ca.cert])], PASSWORD))
    assert result.outcome.ok
    info = result.certificate
    assert info is not None
    assert info.signature_algorithm == algorithm
    assert info.serial == format(cert.serial_number, "x")
    assert info.issuer == "CN=email-reconciler test CA"
    assert info.days_remaining in (364, 365)
    assert info.not_after == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- keystore formats


def test_pem_keystore_plain_and_encrypted(world: World) -> None:
    key, cert = world.one(0)
    plain = check(pem_keystore(key, [world.ca.cert, cert, world.inter.cert]), password=None)
    assert plain.outcome.ok, plain.outcome
    assert plain.alias == "" and plain.aliases == ()
    assert plain.certificate is not None and plain.certificate.subject == "CN=alpha@example.com"
    assert plain.pkcs12_password and len(plain.pkcs12_password) >= 24  # generated
    encrypted = pem_keystore(key, [cert], password=PASSWORD)
    assert check(encrypted).outcome.ok
    wrong = check(encrypted, password="wrong-pem-pass")
    assert wrong.outcome.reason == reasons.KEYSTORE_PASSWORD_WRONG
    assert_no_secret(wrong, "wrong-pem-pass")


def test_pem_keystore_with_alias_is_alias_not_found(world: World) -> None:
    result = check(pem_keystore(*world.one(0)[:1], [world.one(0)[1]]), "alpha", password=None)
    assert result.outcome.reason == reasons.ALIAS_NOT_FOUND
    assert "leave spec.smtp.signing.alias blank" in result.outcome.message


@pytest.mark.parametrize("legacy", [False, True], ids=["aes256", "legacy-3des"])
def test_keystores_written_by_cryptography(world: World, legacy: bool) -> None:
    key, cert = world.one(1)
    blob = cryptography_pfx("beta", key, cert, [world.inter.cert], PASSWORD, legacy=legacy)
    result = check(blob)
    assert result.outcome.ok, result.outcome
    assert (result.alias, result.aliases) == ("beta", ("beta",))


def test_keystore_written_by_openssl_cli(world: World, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    key, cert = world.one(2)
    (tmp_path / "key.pem").write_bytes(pem_keystore(key, []))
    (tmp_path / "cert.pem").write_bytes(pem(cert, world.inter.cert))
    subprocess.run([openssl, "pkcs12", "-export", "-name", "gamma", "-inkey",
                    tmp_path / "key.pem", "-in", tmp_path / "cert.pem", "-out",
                    tmp_path / "ks.p12", "-passout", f"pass:{PASSWORD}"],
                   check=True, capture_output=True)
    result = check((tmp_path / "ks.p12").read_bytes())
    assert result.outcome.ok, result.outcome
    assert result.alias == "gamma"


# --------------------------------------------------------------------------- published material


def test_repacked_pkcs12_holds_only_the_chosen_alias(three_aliases: bytes, world: World) -> None:
    result = check(three_aliases, "beta")
    assert result.pkcs12 is not None and result.pkcs12_password == PASSWORD
    loaded = pkcs12.load_pkcs12(result.pkcs12, PASSWORD.encode())
    assert loaded.cert is not None and loaded.cert.friendly_name == b"beta"
    assert loaded.key is not None
    assert loaded.key.public_key() == world.one(1)[0].public_key()
    assert {c.certificate.subject for c in loaded.additional_certs} == {
        world.inter.cert.subject, world.ca.cert.subject}
    assert loaded.cert.certificate == world.one(1)[1]


def test_secret_material_is_registered_for_redaction(three_aliases: bytes) -> None:
    result = check(three_aliases, "alpha")
    assert result.private_key_pem is not None
    assert redact_text(f"oops {result.private_key_pem}") == f"oops {REDACTED}"
    assert redact_text(f"pw={PASSWORD}") == f"pw={REDACTED}"
    assert "PRIVATE KEY" not in repr(result)


# --------------------------------------------------------------------------- signatures


def openssl_verify(tmp_path: Path, signed: bytes, ca: TestCA) -> subprocess.CompletedProcess:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    (tmp_path / "msg.eml").write_bytes(signed)
    (tmp_path / "ca.pem").write_bytes(pem(ca.cert))
    return subprocess.run([openssl, "smime", "-verify", "-in", tmp_path / "msg.eml",
                           "-CAfile", tmp_path / "ca.pem", "-out", tmp_path / "content.eml"],
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("index", [0, 1], ids=["ec", "rsa"])
def test_signed_message_verifies_with_openssl(world: World, tmp_path: Path, index: int) -> None:
    key, cert = world.one(index)
    msg = build_test_message(account())
    signed = sign_message(msg, key, [cert, world.inter.cert])
    done = openssl_verify(tmp_path, signed, world.ca)  # intermediate travels in the signature
    assert done.returncode == 0, done.stderr
    assert "Verification successful" in done.stderr
    assert b"Signing check of EmailAccount mail/billing" in (tmp_path / "content.eml").read_bytes()
    parsed = email.message_from_bytes(signed, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/signed"
    assert parsed.get_param("micalg") == "sha-256"
    assert parsed["From"] == SENDER and parsed["Subject"] == "email-reconciler signing check"
    verify_signed_message(signed, cert)


def test_tampered_message_fails_both_verifiers(world: World, tmp_path: Path) -> None:
    key, cert = world.one(0)
    signed = sign_message(build_test_message(account()), key, [cert, world.inter.cert])
    tampered = signed.replace(b"Signing check", b"Signing CHECK")
    assert openssl_verify(tmp_path, tampered, world.ca).returncode != 0
    with pytest.raises(ValueError, match="message digest"):
        verify_signed_message(tampered, cert)
    with pytest.raises((ValueError, InvalidSignature)):
        verify_signed_message(signed, world.one(2)[1])  # someone else's certificate


def test_load_signing_material_returns_outcome_or_material(three_aliases: bytes) -> None:
    secrets = MemorySecrets({("signing", "keystore.p12"): three_aliases,
                             ("signing", "password"): PASSWORD.encode()})
    material = load_signing_material(account("gamma"), secrets)
    assert isinstance(material, SigningMaterial)
    assert material.alias == "gamma" and material.source_format == "PKCS12"
    assert material.aliases == ("alpha", "beta", "gamma")
    failed = load_signing_material(account("nope"), secrets)
    assert isinstance(failed, Outcome) and failed.reason == reasons.ALIAS_NOT_FOUND


def test_new_key_kinds() -> None:
    assert new_key("rsa").key_size == 2048  # type: ignore[union-attr]
    assert new_key("ec").curve.name == "secp256r1"  # type: ignore[union-attr]
