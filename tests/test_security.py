"""Issue 18: no confused deputy. Each attack, in local mode and against the Kubernetes store.

The attacker may write an EmailAccount (and run servers); the marker credential belongs to
someone else. Its servers (tests/recording_servers.py) record every byte they receive: the marker
never arrives, and never reaches status, events, logs, stdout or a published Secret.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.certificates import ThrowawayCA
from reconciler.log import configure_logging
from reconciler.manifest.load import load_paths
from reconciler.model import status_condition
from reconciler.policy import CREDENTIAL_LABEL
from reconciler.run.metrics import HealthServer, Metrics, MetricsServer
from reconciler.run.reconcile import Reconciler, RunOptions
from reconciler.secretrefs import KEY_FILE
from reconciler.store.kube import KubeStore
from tests.kube_fixtures import email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import write_manifests
from tests.recording_servers import RecordingSmtp, echo_forms, recording_https, recording_smtp

NS = "shop"
MARKER = "Marker-DB-pa55word-7f3e91"  # another team's database password
KEY_MARKER = "MARKERPRIVATEKEYMATERIAL"
LABELLED = {CREDENTIAL_LABEL: "true"}


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("security tests CA")


@pytest.fixture
def attacker(ca: ThrowawayCA) -> Iterator[RecordingSmtp]:
    with recording_smtp(ca.server_context()) as server:
        yield server


def smtp_doc(name: str, port: int, secret: str = "db-credentials", key: str = "password",
             **connection: Any) -> dict[str, Any]:
    """An account pointed at the attacker's SMTPS server, naming someone else's Secret."""
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"provider": "custom", "smtp": {
                "identity": {"emailAddress": f"{name}@example.com"},
                "connection": {"host": "127.0.0.1", "port": port, "security": "SMTPS",
                               "timeoutSeconds": 5,
                               "truststore": {"configMapRef": {"name": "ca", "key": "ca.crt"}},
                               **connection},
                "authentication": {"method": "Password",
                                   "passwordSecretRef": {"name": secret, "key": key}}}}}


def graph_doc(name: str, endpoint: str, authority: str = "https://login.microsoftonline.com"
              ) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"provider": "office365", "sendUsing": "MicrosoftGraph", "graph": {
                "userPrincipalName": f"{name}@example.com", "endpoint": endpoint,
                "authentication": {"tenantId": "contoso.onmicrosoft.com",
                                   "clientId": "11111111-2222-3333-4444-555555555555",
                                   "authority": authority, "grantType": "ClientCredentials",
                                   "clientSecretSecretRef": {"name": "db-credentials",
                                                             "key": "password"}}}}}


def oauth_doc(name: str, token_url: str, port: int) -> dict[str, Any]:
    doc = smtp_doc(name, port)
    doc["spec"]["provider"] = "gmail"
    doc["spec"]["smtp"]["authentication"] = {
        "method": "OAuth2", "oauth2": {
            "grantType": "JWTBearer", "subject": f"{name}@example.com", "tokenUrl": token_url,
            "serviceAccountKeySecretRef": {"name": "db-credentials", "key": "password"}}}
    return doc


def forms_absent(text: str, secret: str = MARKER) -> None:
    for form in echo_forms(secret, "x@example.com"):
        assert form not in text, f"{form!r} leaked"


# --------------------------------------------------------------------------- local mode


class Local:
    """A --secrets-dir, a manifests folder and a local store; `run` captures everything."""

    def __init__(self, root: Path, ca: ThrowawayCA) -> None:
        self.root = root
        self.secrets = root / "secrets"
        self.accounts = root / "accounts"
        self.store = root / "store"
        self.put("ca", "ca.crt", ca.ca_pem)

    def put(self, name: str, key: str, value: str, base: Path | None = None) -> Path:
        path = (base or self.secrets / NS) / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        return path

    def run(self, capsys: pytest.CaptureFixture[str], *docs: dict[str, Any], extra: tuple[str, ...] = ()
            ) -> tuple[int, str]:
        write_manifests(self.accounts, *docs)
        log = io.StringIO()
        configure_logging("console", "debug", log)
        code = main(["reconcile", str(self.accounts), "--store", f"local:{self.store}",
                     "--secrets-dir", str(self.secrets), *extra])
        captured = capsys.readouterr()
        stored = "".join(p.read_text(errors="replace") for p in self.store.rglob("*")
                         if p.is_file())
        return code, captured.out + captured.err + log.getvalue() + stored

    def status(self, name: str) -> dict[str, Any]:
        obj = yaml.safe_load((self.store / NS / "emailaccounts" / f"{name}.yaml").read_text())
        return obj.get("status") or {}


@pytest.fixture
def local(tmp_path: Path, ca: ThrowawayCA) -> Local:
    return Local(tmp_path, ca)


def reason(status: dict[str, Any], type_: str = "Ready") -> str:
    return str(status_condition(status, type_).get("reason"))


def test_local_folder_symlink_out_of_the_secrets_dir_is_not_read(
        local: Local, attacker: RecordingSmtp, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "etc"
    local.put("db", "password", MARKER, base=outside)
    os.symlink(outside / "db", local.secrets / NS / "db-credentials")
    code, everything = local.run(capsys, smtp_doc("evil", attacker.port))
    assert code == 1
    status = local.status("evil")
    assert reason(status, "Authenticated") == "SecretNotFound"
    assert "outside --secrets-dir" in status_condition(status, "Authenticated")["message"]
    assert MARKER.encode() not in attacker.received
    forms_absent(everything)


def test_local_echoed_credential_never_reaches_status_logs_or_terminal(
        local: Local, attacker: RecordingSmtp, capsys: pytest.CaptureFixture[str]) -> None:
    """The operator's own credential, sent to a server that echoes it in every encoding,
    wrapped in terminal escapes: redacted everywhere, escapes replaced."""
    local.put("db-credentials", "password", MARKER)
    code, everything = local.run(capsys, smtp_doc("echo", attacker.port))
    assert code == 1
    assert MARKER.encode() in base64.b64decode(  # it did go to this (allowed) server
        attacker.received.split(b"AUTH PLAIN ")[1].split(b"\r\n")[0])
    status = local.status("echo")
    assert reason(status, "Authenticated") == "AuthenticationFailed"
    forms_absent(everything)
    for char in ("\x1b", "\x07", "\x00", "\x9b"):
        assert char not in everything


def test_local_truststore_with_a_private_key_is_refused_and_not_published(
        local: Local, attacker: RecordingSmtp, ca: ThrowawayCA,
        capsys: pytest.CaptureFixture[str]) -> None:
    key = f"-----BEGIN PRIVATE KEY-----\n{KEY_MARKER}\n-----END PRIVATE KEY-----\n"
    local.put("tls-pair", "tls.pem", ca.ca_pem + key)
    local.put("db-credentials", "password", MARKER)
    doc = smtp_doc("pair", attacker.port, truststore={"secretRef": {"name": "tls-pair",
                                                                     "key": "tls.pem"}})
    code, everything = local.run(capsys, doc)
    assert code == 1
    assert reason(local.status("pair"), "Connected") == "TruststoreInvalid"
    assert reason(local.status("pair"), "Stalled") == "TruststoreInvalid"
    assert KEY_MARKER not in everything and "PRIVATE KEY-----" not in everything
    assert attacker.connections == 0


def test_local_http_and_unlisted_endpoints_receive_nothing(
        local: Local, attacker: RecordingSmtp, ca: ThrowawayCA,
        capsys: pytest.CaptureFixture[str]) -> None:
    local.put("db-credentials", "password", MARKER)
    with recording_https() as plain, recording_https(ca.server_context()) as tls:
        docs = (oauth_doc("plain-token", f"{plain.url}/token", attacker.port),
                graph_doc("graph-endpoint", tls.url),
                graph_doc("graph-authority", "https://graph.microsoft.com", authority=tls.url))
        code, everything = local.run(capsys, *docs)
        assert plain.connections == tls.connections == 0
    assert code == 1
    for doc in docs:
        status = local.status(doc["metadata"]["name"])
        assert reason(status) == "EndpointNotAllowed"
        assert reason(status, "Stalled") == "EndpointNotAllowed"
    assert attacker.connections == 0
    forms_absent(everything)


def test_local_graph_error_echoing_the_client_secret_is_redacted(
        local: Local, ca: ThrowawayCA, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Allowed by --allowed-endpoints: the token endpoint gets the secret (it is the one the
    admin allowed) and echoes it back with escapes: redacted, escapes replaced."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text(ca.ca_pem)
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(bundle))
    local.put("db-credentials", "password", MARKER)
    with recording_https(ca.server_context()) as idp:
        code, everything = local.run(
            capsys, graph_doc("echo-graph", idp.url, authority=idp.url),
            extra=("--allowed-endpoints", "127.0.0.1:*"))
        assert idp.connections >= 1
    assert code == 1
    assert reason(local.status("echo-graph")) not in ("EndpointNotAllowed", "Ready")
    forms_absent(everything)
    assert "\x1b" not in everything and "\x07" not in everything


def test_local_allowed_hosts_restricts_smtp(
        local: Local, attacker: RecordingSmtp, capsys: pytest.CaptureFixture[str]) -> None:
    local.put("db-credentials", "password", MARKER)
    code, _ = local.run(capsys, smtp_doc("elsewhere", attacker.port),
                        extra=("--allowed-hosts", "*.mail.example.com"))
    assert code == 1
    assert reason(local.status("elsewhere")) == "EndpointNotAllowed"
    assert attacker.connections == 0


def test_local_secret_versions_are_keyed(
        local: Local, attacker: RecordingSmtp, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import hmac

    local.put("db-credentials", "password", MARKER)
    local.run(capsys, smtp_doc("versions", attacker.port))
    versions = local.status("versions")["secretVersions"]
    key_file = local.store / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text())
    label = f"email-reconciler/v2\0{NS}/Secret/db-credentials/password\0".encode()
    expected = hmac.new(key, label + MARKER.encode(), hashlib.sha256).hexdigest()[:32]
    assert versions["Secret/db-credentials/password"] == f"hmac-sha256:{expected}"
    # Without the key, the digest cannot be tested against guesses: no plain hash matches.
    for guess in (hashlib.sha256(MARKER.encode()), hashlib.sha256(label + MARKER.encode())):
        assert guess.hexdigest()[:32] not in str(versions)


def test_local_short_secret_gets_a_warning(
        local: Local, attacker: RecordingSmtp, capsys: pytest.CaptureFixture[str]) -> None:
    local.put("db-credentials", "password", "abc1")
    local.run(capsys, smtp_doc("short", attacker.port))
    assert "shorter than 8 characters" in yaml.safe_dump(local.status("short"))


# --------------------------------------------------------------------------- cluster mode


class Cluster:
    def __init__(self, api: KubeAPIServer, root: Path, ca: ThrowawayCA) -> None:
        self.api, self.root = api, root
        self.configmap("ca", {"ca.crt": ca.ca_pem}, labels=LABELLED)

    def configmap(self, name: str, data: dict[str, str], labels: dict[str, str] | None = None
                  ) -> None:
        self.api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": name, "namespace": NS,
                                                        "labels": labels or {}},
                                           "data": data})

    def secret(self, name: str, data: dict[str, str], *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None, type_: str = "Opaque") -> None:
        self.api.add_object("secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"name": name, "namespace": NS, "labels": labels or {},
                         "annotations": annotations or {}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    def reconcile(self, *docs: dict[str, Any], log: io.StringIO) -> Any:
        folder = write_manifests(self.root / "accounts", *docs)
        configure_logging("json", "debug", log)
        with KubeStore(self.api.api_client()) as store:
            return Reconciler(store, store.secret_reader(), RunOptions()).run(
                load_paths([str(folder)]))

    def status(self, name: str) -> dict[str, Any]:
        obj = self.api.get_object("emailaccounts", NS, name)
        assert obj is not None
        return obj.get("status") or {}

    def everything(self, log: io.StringIO) -> str:
        """Status, events and every Secret we published, and the log."""
        text = log.getvalue()
        for obj in self.api.objects("emailaccounts", NS) + self.api.objects("events", NS):
            text += yaml.safe_dump(obj)
        for secret in self.api.objects("secrets", NS):
            if (secret["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by"):
                text += yaml.safe_dump(secret) + "".join(
                    base64.b64decode(v).decode(errors="replace")
                    for v in (secret.get("data") or {}).values())
        return text


@pytest.fixture
def cluster(tmp_path: Path, ca: ThrowawayCA) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()]) as api:
        api.create_namespace(NS)
        yield Cluster(api, tmp_path, ca)


@pytest.mark.parametrize(("labels", "annotations", "type_", "needle"), [
    ({}, {}, "Opaque",
     f"kubectl label secret -n {NS} db-credentials {CREDENTIAL_LABEL}=true"),
    (LABELLED, {}, "kubernetes.io/service-account-token", "never reads"),
    (LABELLED, {}, "kubernetes.io/dockerconfigjson", "never reads"),
    (LABELLED, {"email.reconciler.io/allowed-hosts": "smtp.example.com"}, "Opaque",
     "email.reconciler.io/allowed-hosts"),
    (LABELLED, {"email.reconciler.io/allowed-accounts": "billing"}, "Opaque",
     "email.reconciler.io/allowed-accounts"),
], ids=["unlabelled", "service-account-token", "dockerconfigjson", "other-host", "other-account"])
def test_cluster_secret_not_opted_in_never_leaves(
        cluster: Cluster, attacker: RecordingSmtp, labels: dict[str, str],
        annotations: dict[str, str], type_: str, needle: str) -> None:
    data = ({"password": MARKER, "token": MARKER} if type_ != "kubernetes.io/dockerconfigjson"
            else {"password": MARKER, ".dockerconfigjson": "{}"})
    cluster.secret("db-credentials", data, labels=labels, annotations=annotations, type_=type_)
    log = io.StringIO()
    report = cluster.reconcile(smtp_doc("evil", attacker.port), log=log)
    assert not report.all_ready
    status = cluster.status("evil")
    assert reason(status, "Authenticated") == "SecretNotAllowed"
    assert reason(status, "Stalled") == "SecretNotAllowed"
    message = status_condition(status, "Authenticated")["message"]
    assert "Secret shop/db-credentials" in message and needle in message
    assert MARKER.encode() not in attacker.received
    assert cluster.api.get_object("secrets", NS, "evil-sender") is None
    forms_absent(cluster.everything(log))


def test_cluster_labelled_secret_within_its_annotations_is_used(
        cluster: Cluster, attacker: RecordingSmtp) -> None:
    cluster.secret("db-credentials", {"password": MARKER}, labels=LABELLED,
                   annotations={"email.reconciler.io/allowed-hosts": "127.0.0.1",
                                "email.reconciler.io/allowed-accounts": "mail-*"})
    log = io.StringIO()
    cluster.reconcile(smtp_doc("mail-app", attacker.port), log=log)
    # It went where its owner allowed (the attacker's server here rejects it, echoing it).
    assert reason(cluster.status("mail-app"), "Authenticated") == "AuthenticationFailed"
    forms_absent(cluster.everything(log))


def test_cluster_truststore_key_pair_is_refused(cluster: Cluster, attacker: RecordingSmtp,
                                                ca: ThrowawayCA) -> None:
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{KEY_MARKER}\n-----END RSA PRIVATE KEY-----\n"
    cluster.secret("tls-pair", {"tls.crt": ca.ca_pem, "tls.key": key,
                                "bundle.pem": ca.ca_pem + key}, labels=LABELLED)
    cluster.secret("db-credentials", {"password": MARKER}, labels=LABELLED)
    log = io.StringIO()
    cluster.reconcile(smtp_doc("pair", attacker.port,
                               truststore={"secretRef": {"name": "tls-pair",
                                                         "key": "bundle.pem"}}), log=log)
    assert reason(cluster.status("pair"), "Connected") == "TruststoreInvalid"
    text = cluster.everything(log)
    assert KEY_MARKER not in text
    assert attacker.connections == 0


def test_cluster_endpoint_overrides_are_refused_before_any_read(
        cluster: Cluster, ca: ThrowawayCA) -> None:
    cluster.secret("db-credentials", {"password": MARKER}, labels=LABELLED)
    with recording_https(ca.server_context()) as tls, recording_https() as plain:
        log = io.StringIO()
        cluster.reconcile(graph_doc("g1", tls.url), graph_doc("g2", f"{plain.url}"), log=log)
        assert tls.connections == plain.connections == 0
    for name in ("g1", "g2"):
        assert reason(cluster.status(name)) == "EndpointNotAllowed"
    forms_absent(cluster.everything(log))


def test_probe_secrets_from_cluster_applies_the_same_rules(
        cluster: Cluster, attacker: RecordingSmtp, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.secret("db-credentials", {"password": MARKER})  # not opted in
    kubeconfig = cluster.api.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    folder = write_manifests(tmp_path / "probe", smtp_doc("evil", attacker.port))
    assert main(["probe", str(folder), "--secrets-from-cluster", "-o", "json"]) == 1
    out = capsys.readouterr().out
    assert "SecretNotAllowed" in out and CREDENTIAL_LABEL in out
    assert MARKER.encode() not in attacker.received
    forms_absent(out)


# --------------------------------------------------------------------------- health, metrics


def test_health_and_metrics_are_separate_ports_bounded_under_a_connection_flood() -> None:
    metrics = Metrics()
    health = HealthServer("127.0.0.1:0", lambda: True, max_connections=16, read_timeout=30)
    scrape = MetricsServer("127.0.0.1:0", metrics)
    health.start()
    scrape.start()
    socks: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(4000):  # half-sent requests that would each hold a thread
            s = socket.create_connection(health.address, timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        deadline = time.monotonic() + 10
        while health.evicted < 4000 - 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() == before  # no thread per connection
        assert health.active <= 16
        # A genuine probe still gets its answer (the oldest idle connection makes room).
        assert _get(health.address, "/healthz") == (200, b"ok\n")
        assert _get(health.address, "/metrics")[0] == 404
        assert _get(scrape.address, "/metrics")[0] == 200
        assert _get(scrape.address, "/healthz")[0] == 404
    finally:
        for s in socks:
            s.close()
        health.stop()
        scrape.stop()


def _get(addr: tuple[str, int], path: str) -> tuple[int, bytes]:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_network_policy_admits_metrics_from_monitoring_namespaces_only() -> None:
    docs = list(yaml.safe_load_all(
        (Path(__file__).parent.parent / "deploy" / "networkpolicy.yaml").read_text()))
    (policy,) = [d for d in docs if d and d.get("kind") == "NetworkPolicy"]
    rules = {p["port"]: rule for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert rules[8080]["from"] == [{"namespaceSelector": {"matchLabels": {
        "email.reconciler.io/monitoring": "true"}}}]
    assert "from" not in rules[8081]  # the kubelet probes from the node's address


def test_readme_shows_how_to_opt_a_secret_in() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Security model", 1)[1].split("\n## ", 1)[0]
    assert f"kubectl label secret -n mail billing-smtp {CREDENTIAL_LABEL}=true" in section
    for word in ("SecretNotAllowed", "EndpointNotAllowed", "TruststoreInvalid", "--allowed-endpoints",
                 "--allowed-hosts", "email.reconciler.io/monitoring", "HMAC-SHA-256"):
        assert word in section
