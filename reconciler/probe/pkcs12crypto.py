"""The PKCS#12 cryptography we do ourselves (RFC 7292): its key derivation, the MAC, PBES2.

`cryptography` opens a whole PKCS#12 but returns one key only, so reconciler.probe.keystore
reads keystores bag by bag; for that it needs what this module holds: the RFC 7292 appendix B.2
key derivation, the check of the file's integrity MAC with a candidate password, and the
decryption of PBES2 (PBKDF2 + AES-CBC) encrypted SafeContents. Pure functions of bytes.
"""

from __future__ import annotations

import hashlib
import hmac

from asn1crypto import cms as acms
from asn1crypto import pkcs12 as apkcs12
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

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
