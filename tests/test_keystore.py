"""Keystore work is bounded (issue 23 item 8): iteration counts before any derivation, and the
probe's deadline before each one. Keystores are built at test time (tests/keystores.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from asn1crypto import keys as akeys
from asn1crypto import pem as apem
from cryptography.hazmat.primitives import serialization

from reconciler import reasons
from reconciler.model import (
    Account,
    Connection,
    Identity,
    KeyRef,
    Outcome,
    Publish,
    Signing,
    SmtpSpec,
)
from reconciler.probe.keystore import SigningMaterial, load_signing_material
from reconciler.probe.limits import Deadline
from reconciler.probe.pkcs12crypto import MAX_ITERATIONS, MAX_TOTAL_ITERATIONS, iteration_refusal
from reconciler.probe.signing import check_signing, same_pkcs12
from tests.fake_idp import MemorySecrets
from tests.keystores import (
    PfxEntry,
    TestCA,
    build_pfx,
    cryptography_pfx,
    pem,
    with_mac_iterations,
)

PASSWORD = "k3ystore-Pa55"
BOMB = 2 * 10**9  # issue 23: still deriving after 45 s of an 8 s deadline
KEYSTORE = KeyRef("signing", "keystore.p12")
PASSWORD_REF = KeyRef("signing", "password")
T = TypeVar("T")


def account() -> Account:
    return Account(namespace="mail", name="billing", provider="custom", send_using="SMTP",
                   publish=Publish(secret_name="billing-sender"),
                   smtp=SmtpSpec(identity=Identity("alpha@example.com"),
                                 connection=Connection("127.0.0.1", 587),
                                 signing=Signing(KEYSTORE, PASSWORD_REF, None)))


def load(keystore: bytes, deadline: Deadline | None = None) -> SigningMaterial | Outcome:
    secrets = MemorySecrets({("mail", "signing", "keystore.p12"): keystore,
                             ("mail", "signing", "password"): PASSWORD})
    if deadline is None:
        return load_signing_material(account(), secrets)
    return load_signing_material(account(), secrets, deadline)


def refused(keystore: bytes, deadline: Deadline | None = None) -> Outcome:
    """The outcome of loading a keystore that must not load, within a minute (see `within`)."""
    result = within(60, lambda: load(keystore, deadline))
    assert isinstance(result, Outcome), result
    return result


def within(seconds: float, work: Callable[[], T]) -> T:
    """work() in a daemon thread; fails (instead of hanging the suite) when it has not returned
    after `seconds`, which only a derivation of billions of iterations takes."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"still deriving keys after {seconds} s"
    return out[0]


@pytest.fixture(scope="module")
def entry() -> PfxEntry:
    key, cert = TestCA.create().issue_smime("alpha@example.com")
    return PfxEntry("alpha", key, cert)


def test_mac_iteration_bomb_is_refused_before_deriving(entry: PfxEntry) -> None:
    good = build_pfx([entry], PASSWORD)
    result = refused(with_mac_iterations(good, BOMB))
    assert result.reason == reasons.KEYSTORE_UNREADABLE
    assert ("its integrity MAC asks for 2,000,000,000 key-derivation iterations, more than the "
            "1,000,000 allowed") in result.message
    assert "mail/signing" in result.message
    assert isinstance(load(good), SigningMaterial)  # the legitimate keystore beside it


def test_key_bag_iteration_bomb_under_a_valid_mac_is_refused(entry: PfxEntry) -> None:
    result = refused(build_pfx([entry], PASSWORD, key_iterations=BOMB))
    assert result.reason == reasons.KEYSTORE_UNREADABLE
    assert "key entry 'alpha' asks for 2,000,000,000" in result.message


def test_encrypted_pem_key_iteration_bomb_is_refused(entry: PfxEntry) -> None:
    assert entry.key is not None
    der = entry.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(PASSWORD.encode()))
    info = akeys.EncryptedPrivateKeyInfo.load(der)
    kdf = info["encryption_algorithm"]["parameters"]["key_derivation_func"]["parameters"]
    kdf["iteration_count"] = BOMB
    block = apem.armor("ENCRYPTED PRIVATE KEY", info.dump(force=True))
    result = refused(block + pem(entry.cert))
    assert result.reason == reasons.KEYSTORE_UNREADABLE
    assert "encrypted private key asks for 2,000,000,000" in result.message


def test_many_keys_past_the_total_are_refused(entry: PfxEntry) -> None:
    entries = [PfxEntry(f"k{i}", entry.key, entry.cert) for i in range(11)]
    result = refused(build_pfx(entries, PASSWORD, key_iterations=MAX_ITERATIONS))
    assert result.reason == reasons.KEYSTORE_UNREADABLE
    assert "more than 10,000,000 key-derivation iterations in all" in result.message


def test_no_derivation_starts_after_the_deadline(entry: PfxEntry) -> None:
    passed = Deadline(timeout=2.0, end=time.monotonic() - 1)
    result = refused(build_pfx([entry], PASSWORD), passed)
    assert result.reason == reasons.TIMEOUT
    assert "within the probe's deadline" in result.message
    signed = check_signing(account(), MemorySecrets({
        ("mail", "signing", "keystore.p12"): build_pfx([entry], PASSWORD),
        ("mail", "signing", "password"): PASSWORD}), now=datetime.now(UTC),
        deadline=Deadline.start(2.0))
    assert signed.outcome.ok, signed.outcome


def test_key_bag_bomb_inside_a_legacy_safe_ends_at_the_deadline(entry: PfxEntry) -> None:
    """A bag inside a 3DES-encrypted safe: its count is unreadable before OpenSSL decrypts the
    safe, so the file is opened in a child process, killed at the deadline (4 x 1 s): Timeout.
    The same legacy layout without the bomb opens (in a child too)."""
    legacy = build_pfx([entry], PASSWORD, legacy_safe=True)
    assert isinstance(load(legacy, Deadline.start(5.0)), SigningMaterial)
    bomb = build_pfx([entry], PASSWORD, legacy_safe=True, key_iterations=BOMB)
    result = refused(bomb, Deadline.start(1.0))
    assert result.reason == reasons.TIMEOUT
    assert "did not finish within the probe's deadline" in result.message


def test_a_published_keystore_bomb_is_never_opened(entry: PfxEntry) -> None:
    """The published signing.p12 is compared with the new one before it is replaced: a planted
    bomb is "different" (republished), not derived."""
    assert entry.key is not None
    published = cryptography_pfx("alpha", entry.key, entry.cert, password=PASSWORD)
    again = cryptography_pfx("alpha", entry.key, entry.cert, password=PASSWORD)
    assert published != again and same_pkcs12(published, again, PASSWORD)
    assert within(60, lambda: same_pkcs12(with_mac_iterations(published, BOMB), again,
                                          PASSWORD)) is False
    hidden = build_pfx([entry], PASSWORD, legacy_safe=True, key_iterations=BOMB)
    assert within(60, lambda: same_pkcs12(hidden, again, PASSWORD)) is False


@pytest.mark.parametrize(("count", "spent", "refused"), [
    (2048, 0, None),
    (MAX_ITERATIONS, 0, None),
    (MAX_ITERATIONS + 1, 0, "more than the 1,000,000 allowed"),
    (BOMB, 0, "asks for 2,000,000,000"),
    (MAX_ITERATIONS, MAX_TOTAL_ITERATIONS - MAX_ITERATIONS, None),
    (1, MAX_TOTAL_ITERATIONS, "in all"),
    (None, 0, "cannot be bounded"),
])
def test_iteration_refusal(count: int | None, spent: int, refused: str | None) -> None:
    why = iteration_refusal("integrity MAC", count, spent)
    assert (why is None) if refused is None else (why is not None and refused in why)
