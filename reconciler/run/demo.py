"""`email-reconciler demo`: the whole product on a fresh machine, in one command.

Starts STARTTLS, SMTPS and plain SMTP servers on 127.0.0.1 with a throwaway CA, writes the
credentials they accept into a temporary secrets folder, points the example accounts that use
them at those servers, reconciles them into a temporary local store and prints the table and one
published Secret with its values masked. Nothing outlives the command (also on Ctrl-C).
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets as pysecrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from reconciler.errors import UsageError

DEMO_NAMESPACE = "demo"
CA_CONFIGMAP = ("demo-ca", "ca.crt")


def find_examples() -> Path:
    """The example manifests: ./accounts, or the accounts/ folder beside the package."""
    for candidate in (Path.cwd() / "accounts", Path(__file__).resolve().parents[2] / "accounts"):
        if candidate.is_dir() and any(candidate.glob("*.y*ml")):
            return candidate
    raise UsageError("cannot find the example accounts/ folder; run the demo from a checkout")


def _local_examples(folder: Path) -> list[dict[str, Any]]:
    """The example documents a loopback server can answer: SMTP, password or no authentication."""
    from reconciler.manifest.load import load_paths

    loaded = load_paths([str(folder)])
    out = []
    for account in loaded.accounts:
        smtp = account.smtp
        if (account.send_using != "SMTP" or smtp is None
                or smtp.authentication.method not in ("Password", "None")
                or account.provider not in ("custom",)):
            continue
        out.append(copy.deepcopy(dict(account.manifest)))
    return out


def _point_at(doc: dict[str, Any], ports: Mapping[str, int]) -> str:
    """Rewrite one manifest to use the local server of its security mode."""
    conn = doc["spec"]["smtp"].setdefault("connection", {})
    security = conn.get("security") or {465: "SMTPS", 25: "None"}.get(conn.get("port"), "STARTTLS")
    conn.update({"host": "127.0.0.1", "port": ports[security], "security": security})
    conn.pop("truststore", None)
    if security != "None":
        conn["truststore"] = {"configMapRef": {"name": CA_CONFIGMAP[0], "key": CA_CONFIGMAP[1]}}
    doc["metadata"]["namespace"] = DEMO_NAMESPACE
    return security


def _write_secret(root: Path, name: str, key: str, value: bytes) -> None:
    path = root / DEMO_NAMESPACE / name / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value)
    path.chmod(0o600)


def _signing_keystore(email: str, password: bytes, alias: str) -> bytes:
    """A PKCS#12 keystore with one S/MIME signing key for email, from a throwaway CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "email-reconciler demo S/MIME CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    ku = x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email),
                                     x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(ku, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return pkcs12.serialize_key_and_certificates(
        alias.encode(), key, cert, [ca], serialization.BestAvailableEncryption(password))


def demo_users(examples: list[dict[str, Any]]) -> dict[str, str]:
    """A fresh password for every example that authenticates: login -> password."""
    users: dict[str, str] = {}
    for doc in examples:
        smtp = doc["spec"]["smtp"]
        if (smtp.get("authentication") or {}).get("method") == "Password":
            login = smtp["identity"].get("userId") or smtp["identity"]["emailAddress"]
            users[login] = pysecrets.token_urlsafe(18)
    return users


def prepare(examples: list[dict[str, Any]], work: Path, ports: Mapping[str, int],
            ca_pem: str, users: Mapping[str, str]) -> None:
    """Write the rewritten manifests and the secrets they reference under work."""
    accounts_dir, secrets_dir = work / "accounts", work / "secrets"
    accounts_dir.mkdir(parents=True, exist_ok=True)
    _write_secret(secrets_dir, *CA_CONFIGMAP, ca_pem.encode())
    for doc in examples:
        _point_at(doc, ports)
        smtp = doc["spec"]["smtp"]
        auth = smtp.get("authentication") or {}
        if auth.get("method") == "Password":
            ref = auth["passwordSecretRef"]
            login = smtp["identity"].get("userId") or smtp["identity"]["emailAddress"]
            _write_secret(secrets_dir, ref["name"], ref["key"], users[login].encode())
        signing = smtp.get("signing")
        if signing:
            ks_password = pysecrets.token_urlsafe(12).encode()
            store = signing["keystoreSecretRef"]
            _write_secret(secrets_dir, store["name"], store["key"],
                          _signing_keystore(smtp["identity"]["emailAddress"], ks_password,
                                            signing.get("alias") or "demo-signing"))
            if signing.get("keystorePasswordSecretRef"):
                pw = signing["keystorePasswordSecretRef"]
                _write_secret(secrets_dir, pw["name"], pw["key"], ks_password)
        name = doc["metadata"]["name"]
        (accounts_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def masked_secret(secret: Mapping[str, Any]) -> str:
    """A published Secret as YAML with every value masked."""
    shown = copy.deepcopy(dict(secret))
    shown["data"] = {k: "********" for k in sorted(shown.get("data") or {})}
    return yaml.safe_dump(shown, sort_keys=False)


def run_demo(*, keep: str | None, out: IO[str]) -> int:
    """Run the demo; exit 0 when every demo account is Ready."""
    from reconciler.probe.credentials import DirSecretReader
    from reconciler.run.commands import render_report
    from reconciler.run.demo_servers import start_demo_servers
    from reconciler.run.reconcile import Reconciler, RunOptions
    from reconciler.run.table import format_table, rows
    from reconciler.store.local import LocalStore

    examples = _local_examples(find_examples())
    if not examples:
        raise UsageError("no example account can be demonstrated against local servers")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="email-reconciler-demo-"))
    try:
        users = demo_users(examples)
        with start_demo_servers(users) as servers:
            ports = {"STARTTLS": servers.starttls.port, "SMTPS": servers.smtps.port,
                     "None": servers.plain.port}
            prepare(examples, work, ports, servers.ca_pem, users)
            store = LocalStore(work / "store")
            report = Reconciler(store, DirSecretReader(work / "secrets"), RunOptions()).run(
                _load(work / "accounts"))
        out.write(f"Reconciled {len(report.accounts)} demo accounts against local SMTP servers "
                  f"(STARTTLS :{ports['STARTTLS']}, SMTPS :{ports['SMTPS']}, "
                  f"plain :{ports['None']}) into {store.description}\n\n")
        render_report(report, out=out, output="table", dry_run=False)
        out.write("\n$ email-reconciler get -o wide\n")
        out.write(format_table(rows(store.list_accounts(), wide=True,
                                    now=dt.datetime.now(dt.UTC))))
        first = next((a for a in report.accounts if a.status.get("secretName")), None)
        if first is not None:
            secret = store.get_secret(first.namespace, first.status["secretName"])
            if secret is not None:
                out.write(f"\nPublished Secret {first.namespace}/{first.status['secretName']} "
                          "(values masked):\n")
                out.write(masked_secret(secret))
        if keep:
            out.write(f"\nKept the store and secrets under {work}\n")
        return 0 if report.all_ready else 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _load(folder: Path) -> Any:
    from reconciler.manifest.load import load_paths

    return load_paths([str(folder)])
