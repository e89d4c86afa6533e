"""cryptography's whole-file PKCS#12 loader, in a child process killed at the probe's deadline.

reconciler.probe.keystore bounds every iteration count it can read before deriving anything
(reconciler.probe.pkcs12crypto). The key bags inside a safe encrypted with a legacy cipher
(40-bit RC2, as Java 8's keytool and OpenSSL 1.x write their certificate safes) cannot be read
before OpenSSL decrypts that safe, and `cryptography.load_pkcs12` then derives their keys at
whatever count they ask for, holding the GIL: no thread of ours could stop it. A file with such a
safe is therefore loaded by `python -m reconciler.probe.pkcs12child`, which is killed when the
deadline passes; a file whose counts were all read and bounded is loaded in this process.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def load_pkcs12(blob: bytes, pw: bytes | None, *, isolated: bool,
                seconds: float) -> pkcs12.PKCS12KeyAndCertificates:
    """`pkcs12.load_pkcs12(blob, pw)`: here, or (isolated) in a child given `seconds`.

    Raises ValueError as load_pkcs12 does (wrong password, damaged file), TimeoutError when the
    child was killed at `seconds`.
    """
    if not isolated:
        return pkcs12.load_pkcs12(blob, pw)
    if seconds <= 0:
        raise TimeoutError("no time left to open the keystore")
    request = {"blob": _b64(blob), "pw": None if pw is None else _b64(pw)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run([sys.executable, "-m", "reconciler.probe.pkcs12child"],
                              input=json.dumps(request).encode(), capture_output=True,
                              timeout=seconds, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"opening the keystore took more than {seconds:.1f}s") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        raise ValueError("the keystore could not be opened") from None
    if "error" in answer:
        raise ValueError("the keystore could not be opened")
    return _loaded(answer)


def _loaded(answer: dict[str, object]) -> pkcs12.PKCS12KeyAndCertificates:
    def cert(item: object) -> pkcs12.PKCS12Certificate:
        assert isinstance(item, dict)
        name = item.get("name")
        return pkcs12.PKCS12Certificate(
            x509.load_der_x509_certificate(base64.b64decode(item["der"])),
            base64.b64decode(name) if isinstance(name, str) else None)

    key_der = answer.get("key")
    key = (serialization.load_der_private_key(base64.b64decode(key_der), None)
           if isinstance(key_der, str) else None)
    main = answer.get("cert")
    others = answer.get("others")
    return pkcs12.PKCS12KeyAndCertificates(
        key, cert(main) if main is not None else None,  # type: ignore[arg-type]
        [cert(c) for c in others] if isinstance(others, list) else [])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _child() -> None:
    """Read {"blob", "pw"} from stdin, load, write the key (PKCS#8 DER) and certificates."""
    request = json.loads(sys.stdin.buffer.read())
    pw = request["pw"]
    try:
        loaded = pkcs12.load_pkcs12(base64.b64decode(request["blob"]),
                                    None if pw is None else base64.b64decode(pw))
    except Exception as exc:  # noqa: BLE001 (the parent reads any failure as "cannot open")
        sys.stdout.write(json.dumps({"error": type(exc).__name__}))
        return

    def cert(item: pkcs12.PKCS12Certificate) -> dict[str, str | None]:
        return {"der": _b64(item.certificate.public_bytes(serialization.Encoding.DER)),
                "name": None if item.friendly_name is None else _b64(item.friendly_name)}

    key = loaded.key
    sys.stdout.write(json.dumps({
        "key": None if key is None else _b64(key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
        "cert": None if loaded.cert is None else cert(loaded.cert),
        "others": [cert(c) for c in loaded.additional_certs]}))


if __name__ == "__main__":
    _child()
