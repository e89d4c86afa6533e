"""`email-reconciler demo`: the whole product on a fresh machine, in one command.

Starts STARTTLS, SMTPS and plain SMTP servers on 127.0.0.1 with a throwaway CA, and HTTPS fakes of
Google's token endpoint, the Microsoft identity platform and Microsoft Graph with the same CA
(reconciler/demo/identity.py). Writes the credentials they accept into a temporary secrets folder
(passwords, a service-account key, a client secret and certificate, an S/MIME keystore), points
the example accounts at those servers, reconciles them into a temporary local store and prints
the table and one published Secret (secret values masked, the rest as the application reads it).
One more account is wrong on purpose (STARTTLS asked of the plain server), to show a failure with
its reason and its fix. HTTPS trust for msal and our urllib
calls goes through REQUESTS_CA_BUNDLE / SSL_CERT_FILE, set to the demo CA for the run only.
Nothing outlives the command (also on Ctrl-C).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import os
import re
import secrets as pysecrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from reconciler.errors import UsageError

if TYPE_CHECKING:
    from reconciler.demo.identity import DemoIdentity
    from reconciler.demo.smtp_servers import AuthChecker
    from reconciler.model import Account

DEMO_NAMESPACE = "demo"
CA_CONFIGMAP = ("demo-ca", "ca.crt")
CA_ENV = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")  # what msal/requests and httpclient.ca_bundle() read
SMTP_SEND_AS_APP = ("SMTP.SendAsApp",)


def find_examples() -> Path:
    """The example manifests: ./accounts, or the accounts/ folder beside the package."""
    for candidate in (Path.cwd() / "accounts", Path(__file__).resolve().parents[2] / "accounts"):
        if candidate.is_dir() and any(candidate.glob("*.y*ml")):
            return candidate
    raise UsageError("cannot find the example accounts/ folder; run the demo from a checkout")


def _local_examples(folder: Path) -> list[dict[str, Any]]:
    """The example documents the local servers can answer."""
    from reconciler.manifest.load import load_paths

    loaded = load_paths([str(folder)])
    return [copy.deepcopy(dict(a.manifest)) for a in loaded.accounts if _demonstrable(a)]


def _demonstrable(account: Account) -> bool:
    """Custom SMTP with a password or none, SMTP with OAuth 2.0 (any provider), and Graph."""
    if account.send_using == "MicrosoftGraph":
        return account.graph is not None
    smtp = account.smtp
    if smtp is None:
        return False
    method = smtp.authentication.method
    return method == "OAuth2" or (method in ("Password", "None") and account.provider == "custom")


def _tenants(examples: list[dict[str, Any]]) -> list[str]:
    """The Microsoft tenant names the examples use, in order of appearance."""
    names = []
    for doc in examples:
        spec = doc["spec"]
        auth = ((spec.get("graph") or {}).get("authentication")
                or ((spec.get("smtp") or {}).get("authentication") or {}).get("oauth2") or {})
        if auth.get("tenantId"):
            names.append(str(auth["tenantId"]))
    return names


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


def _write_ref(root: Path, ref: Mapping[str, str], value: bytes) -> None:
    _write_secret(root, ref["name"], ref["key"], value)


def _enroll_app(auth: Mapping[str, Any], identity: DemoIdentity, secrets_dir: Path,
                roles: tuple[str, ...] | None = None) -> None:
    """Register the app of an OAuth2/Graph authentication block and write its client credential.

    An app with neither a client secret nor a certificate is a public client (password grant).
    """
    from reconciler.demo.token_endpoints import client_certificate

    client_id = str(auth["clientId"])
    extra: dict[str, Any] = {"roles": roles} if roles else {}
    if auth.get("clientSecretSecretRef"):
        secret = pysecrets.token_urlsafe(24)
        identity.enroll_app(client_id, secret=secret, **extra)
        _write_ref(secrets_dir, auth["clientSecretSecretRef"], secret.encode())
    elif auth.get("clientCertificateSecretRef"):
        certificate, pem = client_certificate(f"{client_id}.demo.invalid")
        identity.enroll_app(client_id, certificate=certificate, **extra)
        _write_ref(secrets_dir, auth["clientCertificateSecretRef"], pem)
    else:
        identity.enroll_app(client_id, public=True, **extra)


def _point_smtp_oauth2_at(doc: dict[str, Any], identity: DemoIdentity, secrets_dir: Path) -> None:
    """Point an SMTP OAuth2 manifest at the identity fakes and write its credentials."""
    smtp = doc["spec"]["smtp"]
    oauth2 = smtp["authentication"]["oauth2"]
    if oauth2.get("grantType") == "JWTBearer":
        oauth2["tokenUrl"] = identity.google.token_url
        subject = oauth2.get("subject") or smtp["identity"]["emailAddress"]
        _write_ref(secrets_dir, oauth2["serviceAccountKeySecretRef"],
                   identity.enroll_service_account(str(subject)))
    else:
        oauth2["authority"] = identity.microsoft.url
        _enroll_app(oauth2, identity, secrets_dir, roles=SMTP_SEND_AS_APP)


def _point_graph_at(doc: dict[str, Any], identity: DemoIdentity, secrets_dir: Path) -> None:
    """Point a Microsoft Graph manifest at the identity and Graph fakes and write its credentials."""
    graph = doc["spec"]["graph"]
    auth = graph["authentication"]
    graph["endpoint"] = identity.graph.url
    auth["authority"] = identity.microsoft.url
    doc["metadata"]["namespace"] = DEMO_NAMESPACE
    upn = str(graph["userPrincipalName"])
    _enroll_app(auth, identity, secrets_dir)
    if auth.get("grantType") == "Password":
        password = pysecrets.token_urlsafe(18)
        identity.enroll_user(upn, password)
        _write_ref(secrets_dir, auth["usernameSecretRef"], upn.encode())
        _write_ref(secrets_dir, auth["passwordSecretRef"], password.encode())
    else:
        identity.enroll_mailbox(upn)


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
        smtp = doc["spec"].get("smtp") or {}
        if (smtp.get("authentication") or {}).get("method") == "Password":
            login = smtp["identity"].get("userId") or smtp["identity"]["emailAddress"]
            users[login] = pysecrets.token_urlsafe(18)
    return users


def demo_checker(users: Mapping[str, str], identity: DemoIdentity) -> AuthChecker:
    """The SMTP servers' AUTH check: demo passwords, and XOAUTH2 tokens the fakes issued."""
    def check(mechanism: str, login: str, secret: str) -> bool:
        if mechanism == "XOAUTH2":
            return identity.accepts_xoauth2(login, secret)
        return login in users and pysecrets.compare_digest(users[login], secret)
    return check


def prepare(examples: list[dict[str, Any]], work: Path, ports: Mapping[str, int],
            ca_pem: str, users: Mapping[str, str], identity: DemoIdentity | None = None) -> None:
    """Write the rewritten manifests and the secrets they reference under work."""
    accounts_dir, secrets_dir = work / "accounts", work / "secrets"
    accounts_dir.mkdir(parents=True, exist_ok=True)
    _write_secret(secrets_dir, *CA_CONFIGMAP, ca_pem.encode())
    for doc in examples:
        name = doc["metadata"]["name"]
        if doc["spec"].get("sendUsing") == "MicrosoftGraph":
            if identity is None:
                raise UsageError(f"{name}: Microsoft Graph needs the identity provider fakes")
            _point_graph_at(doc, identity, secrets_dir)
            (accounts_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            continue
        _point_at(doc, ports)
        smtp = doc["spec"]["smtp"]
        auth = smtp.get("authentication") or {}
        if auth.get("method") == "OAuth2":
            if identity is None:
                raise UsageError(f"{name}: OAuth 2.0 needs the identity provider fakes")
            _point_smtp_oauth2_at(doc, identity, secrets_dir)
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
        (accounts_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


#: What the demo passes as --allowed-endpoints: its token and Graph fakes listen on loopback.
DEMO_ALLOWED_ENDPOINTS = "127.0.0.1:*"


#: The account the demo gets wrong on purpose, and the reason it must fail with.
BROKEN_NAME = "typo-starttls-on-plain-port"
BROKEN_REASON = "StartTLSNotOffered"
#: Keys whose whole value is a credential (or carries one in a binary form): always masked.
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|CLIENT_CERTIFICATE|SERVICE_ACCOUNT|PRIVATE|\.key$|"
                         r"\.p12$|\.jks$|^relay-(password|upstream)", re.IGNORECASE)
_SHOWN_LINES = 8


def _shown_value(key: str, raw: bytes) -> str:
    """What the demo prints of one key: masked when it is a credential, else the value as the
    application reads it, with every registered secret form redacted (a URL keeps its host)."""
    from reconciler.log import redact_text

    if _SECRET_KEY.search(key):
        return "********"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes>"
    lines = redact_text(text).splitlines()
    more = f"\n... ({len(lines) - _SHOWN_LINES} more lines)" if len(lines) > _SHOWN_LINES else ""
    return "\n".join(lines[:_SHOWN_LINES]) + more


def masked_secret(secret: Mapping[str, Any]) -> str:
    """A published Secret as YAML: credentials masked, every other value shown."""
    shown = copy.deepcopy(dict(secret))
    shown["data"] = {k: _shown_value(k, base64.b64decode(v))
                     for k, v in sorted((shown.get("data") or {}).items())}
    return yaml.dump(shown, Dumper=_BlockDumper, sort_keys=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line values as YAML literal blocks, as `kubectl get -o yaml` users read files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def broken_example(examples: list[dict[str, Any]], ports: Mapping[str, int]
                   ) -> dict[str, Any] | None:
    """A copy of the first STARTTLS password example sent to the plain server: a typo of a port
    that a new user makes, which the probe catches before any password is sent."""
    for doc in examples:
        conn = ((doc["spec"].get("smtp") or {}).get("connection") or {})
        auth = ((doc["spec"].get("smtp") or {}).get("authentication") or {})
        if conn.get("port") == ports["STARTTLS"] and auth.get("method") == "Password":
            broken = copy.deepcopy(doc)
            broken["metadata"]["name"] = BROKEN_NAME
            broken["spec"]["publish"] = {"secretName": f"{BROKEN_NAME}-sender"}
            broken["spec"]["smtp"]["connection"]["port"] = ports["None"]
            return broken
    return None


def run_demo(*, keep: str | None, out: IO[str]) -> int:
    """Run the demo; exit 0 when every demo account is Ready."""
    from reconciler.demo.certificates import ThrowawayCA
    from reconciler.demo.identity import DemoIdentity
    from reconciler.demo.smtp_servers import start_demo_servers
    from reconciler.policy import Policy
    from reconciler.probe.credentials import DirSecretReader
    from reconciler.run.commands import render_report
    from reconciler.run.reconcile import Reconciler, RunOptions
    from reconciler.run.table import format_table, rows
    from reconciler.secretrefs import installation_key
    from reconciler.store.local import LocalStore

    examples = _local_examples(find_examples())
    if not examples:
        raise UsageError("no example account can be demonstrated against local servers")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="email-reconciler-demo-"))
    try:
        users = demo_users(examples)
        ca = ThrowawayCA("email-reconciler demo CA")
        bundle = work / "demo-ca.pem"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        bundle.write_text(ca.ca_pem)
        with (DemoIdentity(ca, _tenants(examples)) as identity,
              start_demo_servers(users, checker=demo_checker(users, identity), ca=ca) as servers,
              _trusting(bundle)):
            ports = {"STARTTLS": servers.starttls.port, "SMTPS": servers.smtps.port,
                     "None": servers.plain.port}
            https = {"Google token": identity.google.url, "Microsoft identity":
                     identity.microsoft.url, "Graph": identity.graph.url}
            prepare(examples, work, ports, servers.ca_pem, users, identity)
            broken = broken_example(examples, ports)
            if broken is not None:
                (work / "accounts" / f"{BROKEN_NAME}.yaml").write_text(
                    yaml.safe_dump(broken, sort_keys=False))
            store = LocalStore(work / "store")
            # As `reconcile --allowed-endpoints 127.0.0.1:*` would: the HTTPS fakes are on
            # loopback, which the default endpoint policy refuses (README "Security model").
            options = RunOptions(policy=Policy.from_flags(DEMO_ALLOWED_ENDPOINTS))
            reader = DirSecretReader(work / "secrets", installation_key(work / "store"))
            report = Reconciler(store, reader, options).run(_load(work / "accounts"))
        out.write(f"Reconciled {len(report.accounts)} demo accounts against local SMTP servers "
                  f"(STARTTLS :{ports['STARTTLS']}, SMTPS :{ports['SMTPS']}, "
                  f"plain :{ports['None']}) and HTTPS fakes ("
                  + ", ".join(f"{k} :{v.rsplit(':', 1)[1]}" for k, v in https.items())
                  + f") into {store.description}\n\n")
        render_report(report, out=out, output="table", dry_run=False)
        out.write("\n$ email-reconciler get -o wide\n")
        out.write(format_table(rows(store.list_accounts(), wide=True,
                                    now=dt.datetime.now(dt.UTC))))
        first = next((a for a in report.accounts if a.status.get("secretName")), None)
        if first is not None:
            secret = store.get_secret(first.namespace, first.status["secretName"])
            if secret is not None:
                out.write(f"\nPublished Secret {first.namespace}/{first.status['secretName']} "
                          "(credentials masked):\n")
                out.write(masked_secret(secret))
        failed_on_purpose = _explain_broken(report, out)
        if keep:
            out.write(f"\nKept the store and secrets under {work}\n")
        others_ready = all(a.ready for a in report.accounts if a.name != BROKEN_NAME)
        return 0 if report.accounts and others_ready and failed_on_purpose else 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _explain_broken(report: Any, out: IO[str]) -> bool:
    """Print the deliberate failure with its fix; True when it failed as it should."""
    from reconciler.model import status_condition
    from reconciler.troubleshooting import explain

    entry = next((a for a in report.accounts if a.name == BROKEN_NAME), None)
    if entry is None:
        return True  # no example to break (a trimmed accounts/ folder)
    ready = status_condition(entry.status, "Ready")
    out.write(f"\n{entry.namespace}/{BROKEN_NAME} fails on purpose (its port is the plain "
              f"server's): {ready.get('reason')}: {ready.get('message')}\n"
              f"$ email-reconciler explain {ready.get('reason')}\n"
              f"{explain(str(ready.get('reason'))) or ''}\n")
    return ready.get("status") == "False" and ready.get("reason") == BROKEN_REASON


@contextlib.contextmanager
def _trusting(bundle: Path) -> Iterator[None]:
    """Trust only the demo CA for HTTPS (msal, requests, urllib) while the block runs."""
    saved = {name: os.environ.get(name) for name in CA_ENV}
    os.environ.update({name: str(bundle) for name in CA_ENV})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load(folder: Path) -> Any:
    from reconciler.manifest.load import load_paths

    return load_paths([str(folder)])
