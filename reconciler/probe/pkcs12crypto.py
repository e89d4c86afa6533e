"""The PKCS#12 cryptography we do ourselves (RFC 7292): its key derivation, the MAC, PBES2.

`cryptography` opens a whole PKCS#12 but returns one key only, so reconciler.probe.keystore
reads keystores bag by bag; for that it needs what this module holds: the RFC 7292 appendix B.2
key derivation, the check of the file's integrity MAC with a candidate password, the
decryption of PBES2 (PBKDF2 + AES-CBC) encrypted SafeContents, and the bound on the iteration
counts the file asks for, read before any derivation runs. Pure functions of bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac

from asn1crypto import cms as acms
from asn1crypto import keys as akeys
from asn1crypto import pem as apem
from asn1crypto import pkcs12 as apkcs12
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

#: Iteration counts a keystore may ask for: per key derivation, and in all. Writers use 2048
#: (OpenSSL), 2000 (Windows), 10000-100000 (Java); OWASP's advice for PBKDF2-SHA256 is 600000.
#: A derivation of 10**6 takes about 0.5 s in OpenSSL and 3-5 s in pkcs12_kdf below (pure
#: Python, used for the MAC), measured on the 2-core test machine; the 2x10**9 of issue 23 would
#: have run for hours, past every deadline, in a thread that cannot be stopped.
MAX_ITERATIONS = 1_000_000
MAX_TOTAL_ITERATIONS = 10_000_000

_PRF: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(), "sha224": hashes.SHA224(), "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}


def mac_ok(mac_data: apkcs12.MacData, content: bytes, pw: bytes | None) -> bool:
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


def decrypt_pbes2(content_info: acms.EncryptedContentInfo, pw: bytes | None) -> bytes | None:
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


def iteration_counts(pfx: apkcs12.Pfx) -> list[tuple[str, int | None]]:
    """(what, count) of every key derivation opening `pfx` takes that can be read before any
    decryption: the integrity MAC, each encrypted safe, each shrouded key bag of a plain safe.
    None for a scheme whose count we cannot read (it cannot be bounded)."""
    out: list[tuple[str, int | None]] = []
    mac = pfx["mac_data"]
    if isinstance(mac, apkcs12.MacData):
        known = mac["mac"]["digest_algorithm"]["algorithm"].native in hashlib.algorithms_available
        out.append(("integrity MAC", mac["iterations"].native if known else None))
    for index, info in enumerate(pfx.authenticated_safe):
        kind = info["content_type"].native
        if kind == "encrypted_data":
            algo = info["content"]["encrypted_content_info"]["content_encryption_algorithm"]
            out.append((f"encrypted safe {index + 1}", kdf_iterations(algo)))
        elif kind == "data":
            # bags that do not parse are reported as damage, never decrypted
            with contextlib.suppress(ValueError, TypeError, KeyError):
                out += bag_iterations(apkcs12.SafeContents.load(info["content"].native))
    return out


def within_bounds(blob: bytes, pw: bytes | None) -> bool:
    """Whether every iteration count of a PKCS#12 is within the bounds, those of the key bags in
    its PBES2-encrypted safes included (decrypted with `pw`); False for any other safe."""
    try:
        pfx = apkcs12.Pfx.load(blob)
        counts = iteration_counts(pfx)
        if not _fits(counts):
            return False
        for info in pfx.authenticated_safe:
            if info["content_type"].native == "encrypted_data":
                plain = decrypt_pbes2(info["content"]["encrypted_content_info"], pw)
                if plain is None:
                    return False
                counts += bag_iterations(apkcs12.SafeContents.load(plain))
    except Exception:  # asn1crypto raises ValueError, TypeError, KeyError on junk
        return False
    return _fits(counts)


def _fits(counts: list[tuple[str, int | None]]) -> bool:
    spent = 0
    for what, count in counts:
        if iteration_refusal(what, count, spent) is not None:
            return False
        spent += count or 0
    return True


def bag_iterations(bags: apkcs12.SafeContents) -> list[tuple[str, int | None]]:
    """(what, count) of the shrouded key bags among `bags`, nested safes included."""
    out: list[tuple[str, int | None]] = []
    for bag in bags:
        kind = bag["bag_id"].native
        if kind == "pkcs8_shrouded_key_bag":
            names = [a["values"][0].native for a in bag["bag_attributes"]
                     if a["type"].native == "friendly_name"]
            what = f"key entry {names[0]!r}" if names else "a key entry"
            out.append((what, kdf_iterations(bag["bag_value"]["encryption_algorithm"])))
        elif kind == "safe_contents":
            out += bag_iterations(apkcs12.SafeContents.load(bag["bag_value"].untag().dump()))
    return out


def kdf_iterations(algo: object) -> int | None:
    """The iteration count of a PBES2 (PBKDF2) or PKCS#12 PBE algorithm; None otherwise."""
    try:
        count = algo.kdf_iterations  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return count if isinstance(count, int) else None


def pem_key_iterations(block: bytes) -> int | None:
    """The count of an ENCRYPTED PRIVATE KEY PEM block (PKCS#8); None for a scheme we cannot
    read, 0 for a block that does not parse (nothing can be derived from it)."""
    try:
        info = akeys.EncryptedPrivateKeyInfo.load(apem.unarmor(block)[2])
        algo = info["encryption_algorithm"]
        algo.native  # noqa: B018 (parses it: asn1crypto is lazy)
    except (ValueError, TypeError, KeyError):
        return 0
    return kdf_iterations(algo)


def iteration_refusal(what: str, count: int | None, spent: int) -> str | None:
    """Why a derivation of `count` iterations, after `spent` others, is refused; or None."""
    if count is None:
        return (f"its {what} uses a key-derivation scheme whose cost cannot be bounded; "
                "export the keystore again with AES-256 (PBES2)")
    if count > MAX_ITERATIONS:
        return (f"its {what} asks for {count:,} key-derivation iterations, more than the "
                f"{MAX_ITERATIONS:,} allowed (OpenSSL writes 2,048, Java 10,000 to 100,000); "
                "nothing was derived: export the keystore again with the tool's defaults")
    if spent + count > MAX_TOTAL_ITERATIONS:
        return (f"it asks for more than {MAX_TOTAL_ITERATIONS:,} key-derivation iterations in "
                "all; nothing more was derived: export the keystore again with fewer entries "
                "or the tool's default iteration counts")
    return None
