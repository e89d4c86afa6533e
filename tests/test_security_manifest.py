# ruff: noqa: F811  (pytest fixtures imported from tests.test_security are used as arguments)
"""Issue 23, the manifest side: what a committer could still do with what `validate` accepts.

Each attack runs beside a legitimate account that keeps working:
- `smtp.advanced` over the fields the probe tested (host, port, TLS, trust) rewrote the published
  configuration;
- `publish.labels` made a published Secret a credential another account could read; publish
  annotations had Reflector or kubed copy it to every namespace;
- a duration too long for a datetime crashed every run;
- a YAML merge key made `validate` and kubectl read different hosts;
- `.nan`, a trailing newline in a host and `--allowed-hosts 127.0.0.*` slipped through.
"""

from __future__ import annotations

import base64
import copy
import io
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import reasons
from reconciler.cli import main
from reconciler.manifest.crd import render_crd
from reconciler.manifest.load import load_bytes
from reconciler.manifest.patterns import compile_pattern
from reconciler.manifest.validate import validate_document
from reconciler.model import MANAGED_BY_LABEL, MANAGED_BY_VALUE, ProbeSettings, status_condition
from reconciler.policy import (
    CREDENTIAL_LABEL,
    Policy,
    SecretMeta,
    endpoint_refusal,
    host_matches,
    secret_refusal,
)
from reconciler.run.controller import parse_duration as flag_duration
from reconciler.state.render import render_data, render_secret
from reconciler.state.schedule import next_probe_time, probe_decision, probe_delay_seconds
from tests.manifests_factory import LoopbackServers, loopback_account, loopback_servers
from tests.recording_servers import RecordingSmtp, echo_forms
from tests.smtpservers import PASSWORD_REF, make_account
from tests.test_render import probe, props, smtp_account, text
from tests.test_security import (  # noqa: F401 - the fixtures, shared with the first round
    MARKER,
    NS,
    Cluster,
    attacker,
    ca,
    cluster,
    forms_absent,
    reason,
    smtp_doc,
)

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
LEGIT_PASSWORD = "Legit-pa55word-for-smtp"


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d.pointer, d.message) for d in validate_document(doc) if d.severity == "error"]


def _doc(name: str = "legit", port: int = 587, **spec_extra: Any) -> dict[str, Any]:
    return loopback_account(name, NS, port, **spec_extra)


# --------------------------------------------------------------------------- local runs


class LocalRun:
    """Real SMTP servers on loopback, a --secrets-dir, a local store; `reconcile` as the CLI."""

    def __init__(self, root: Path, servers: LoopbackServers) -> None:
        self.root, self.servers = root, servers
        self.secrets, self.accounts, self.store = root / "secrets", root / "accounts", root / "store"
        self._put("ca", "ca.crt", servers.ca.ca_pem)

    def _put(self, name: str, key: str, value: str) -> None:
        path = self.secrets / NS / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    def account(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (raw YAML text allowed), its password and its server login."""
        name = doc["metadata"]["name"]
        self._put(f"{name}-smtp", "password", LEGIT_PASSWORD)
        self.servers.users[f"{name}@example.com"] = LEGIT_PASSWORD
        self.accounts.mkdir(parents=True, exist_ok=True)
        (self.accounts / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        return doc

    def raw(self, name: str, text_: str) -> None:
        self.accounts.mkdir(parents=True, exist_ok=True)
        (self.accounts / f"{name}.yaml").write_text(text_)

    def reconcile(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
        code = main(["reconcile", str(self.accounts), "--store", f"local:{self.store}",
                     "--secrets-dir", str(self.secrets), *extra])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    def status(self, name: str) -> dict[str, Any]:
        path = self.store / NS / "emailaccounts" / f"{name}.yaml"
        obj = yaml.safe_load(path.read_text()) if path.exists() else {}
        return obj.get("status") or {}

    def refused(self, name: str, out: str, words: str) -> None:
        """An invalid manifest: never applied (or InvalidSpec if it was), nothing published."""
        assert reason(self.status(name)) in ("None", "InvalidSpec")
        assert self.published(name) is None
        assert f"{name}.yaml" in out and words in out

    def published(self, name: str) -> dict[str, str] | None:
        path = self.store / NS / "secrets" / f"{name}-sender.yaml"
        if not path.exists():
            return None
        secret = yaml.safe_load(path.read_text())
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in secret["data"].items()}


@pytest.fixture(scope="module")
def servers() -> Iterator[LoopbackServers]:
    with loopback_servers() as running:
        yield running


@pytest.fixture
def run(tmp_path: Path, servers: LoopbackServers) -> LocalRun:
    return LocalRun(tmp_path, servers)


# --------------------------------------------------------------------------- 1. advanced


TESTED_KEYS = {
    "mail.smtp.host": "evil.example.net", "mail.smtp.port": "2525",
    "mail.smtp.starttls.enable": "false", "mail.smtp.starttls.required": "false",
    "mail.smtp.ssl.enable": "false", "mail.smtp.ssl.trust": "*",
    "mail.smtp.ssl.checkserveridentity": "false", "mail.smtp.ssl.protocols": "TLSv1",
    "mail.smtp.socketFactory.class": "javax.net.SocketFactory",
    "mail.smtp.ssl.socketFactory.class": "x.TrustAll", "mail.smtp.proxy.host": "evil.example.net",
    "mail.smtp.socks.host": "evil.example.net", "mail.smtp.user": "someone-else",
    "mail.smtps.host": "evil.example.net", "mail.transport.protocol": "smtps",
    "mail.host": "evil.example.net", "MAIL.SMTP.HOST": "evil.example.net",
    "spring.mail.host": "evil.example.net", "spring.ssl.bundle.pem.x.truststore.certificate": "x",
    "host": "evil.example.net", "tls.rejectUnauthorized": "false", "ignoreTLS": "true",
}
APPLICATION_KEYS = {
    "mail.smtp.localhost": "app.example.com", "mail.smtp.auth.plain.disable": "true",
    "mail.smtp.timeout": "5000", "mail.smtp.from": "bounces@example.com", "mail.debug": "false",
    "mail.smtp.auth.mechanisms": "LOGIN PLAIN", "mail.mime.charset": "UTF-8",
    "mail.smtp.hostport": "x", "hostname": "x",
}


@pytest.mark.parametrize("key", sorted(TESTED_KEYS))
def test_validate_refuses_advanced_keys_over_tested_fields(key: str) -> None:
    doc = _doc()
    doc["spec"]["smtp"]["advanced"] = {key: TESTED_KEYS[key], **APPLICATION_KEYS}
    pointer = f"/spec/smtp/advanced/{key}"
    errors = _errors(doc)
    assert [p for p, _ in errors] == [pointer], errors
    assert "server, port, TLS, trust or login" in errors[0][1]


def test_advanced_application_settings_still_validate() -> None:
    doc = _doc()
    doc["spec"]["smtp"]["advanced"] = dict(APPLICATION_KEYS)
    assert _errors(doc) == []


def test_render_never_lets_advanced_override_a_tested_field() -> None:
    """Defence in depth: an Account that got past validate some other way."""
    acc = smtp_account(formats=("javamail", "spring", "json"),
                       advanced={**TESTED_KEYS, "mail.smtp.localhost": "app.example.com"})
    data = render_data(acc, probe())
    java = props(text(data, "javamail.properties"))
    assert java["mail.smtp.host"] == "smtp.example.com" and java["mail.smtp.port"] == "587"
    assert java["mail.smtp.starttls.enable"] == java["mail.smtp.starttls.required"] == "true"
    assert java["mail.smtp.ssl.checkserveridentity"] == "true"
    assert java["mail.smtp.user"] == "billing@example.com"
    assert java["mail.smtp.localhost"] == "app.example.com"
    assert not {k for k in java if "trust" in k or "socketFactory" in k or "proxy" in k
                or "socks" in k or k.startswith(("mail.smtps.", "mail.host"))}
    spring = props(text(data, "application.properties"))
    assert spring["spring.mail.host"] == "smtp.example.com"
    assert spring["spring.mail.properties.mail.smtp.starttls.enable"] == "true"
    assert "spring.mail.properties.mail.smtp.ssl.trust" not in spring
    assert "spring.mail.properties.spring.mail.host" not in spring
    import json

    sender = json.loads(text(data, "sender.json"))
    assert sender["smtp"]["advanced"] == {"mail.smtp.localhost": "app.example.com"}


def test_local_run_publishes_no_advanced_override_of_a_tested_field(
        run: LocalRun, capsys: pytest.CaptureFixture[str]) -> None:
    port = run.servers.starttls.port
    legit = run.account(_doc("legit", port))
    legit["spec"]["smtp"]["advanced"] = {"mail.smtp.localhost": "app.example.com"}
    run.account(legit)
    evil = _doc("evil", port)
    evil["spec"]["smtp"]["advanced"] = {"mail.smtp.host": "127.0.0.2", "mail.smtp.port": "2525",
                                        "mail.smtp.starttls.enable": "false",
                                        "mail.smtp.ssl.trust": "*"}
    run.account(evil)
    code, out = run.reconcile(capsys)
    assert reason(run.status("legit")) == "Ready"
    legit_java = props((run.published("legit") or {})["javamail.properties"])
    assert legit_java["mail.smtp.localhost"] == "app.example.com"
    assert code == 1
    run.refused("evil", out, "/spec/smtp/advanced/mail.smtp.host")


def test_admission_refuses_advanced_over_tested_fields_and_reserved_publish_keys() -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from tests.kube_fixtures import email_account_crd
    from tests.kubeapi import KubeAPIServer

    legit = _doc("legit")
    legit["spec"]["smtp"]["advanced"] = dict(APPLICATION_KEYS)
    legit["spec"]["publish"] = {"labels": {"team": "payments"},
                                "annotations": {"reloader.stakater.com/match": "true"}}
    attacks = []
    for i, key in enumerate(("mail.smtp.host", "mail.smtp.ssl.trust", "MAIL.SMTP.STARTTLS.ENABLE")):
        doc = copy.deepcopy(legit)
        doc["metadata"]["name"] = f"advanced-{i}"
        doc["spec"]["smtp"]["advanced"] = {key: "x"}
        attacks.append(doc)
    for i, field in enumerate(("labels", "annotations")):
        doc = copy.deepcopy(legit)
        doc["metadata"]["name"] = f"publish-{i}"
        doc["spec"]["publish"][field] = {CREDENTIAL_LABEL: "true"}
        attacks.append(doc)
    for i, (field, value) in enumerate((("interval", "100000000h"),
                                        ("authInterval", "100000000000h"),
                                        ("retryInterval", "8761h"))):
        doc = copy.deepcopy(legit)
        doc["metadata"]["name"] = f"duration-{i}"
        doc["spec"]["probe"] = {field: value}
        attacks.append(doc)
    newline = copy.deepcopy(legit)
    newline["metadata"]["name"] = "newline"
    newline["spec"]["smtp"]["connection"]["host"] = "smtp.example.com\n"
    attacks.append(newline)
    longest = copy.deepcopy(legit)
    longest["metadata"]["name"] = "longest"
    longest["spec"]["probe"] = {"interval": "8760h", "authInterval": "525600m",
                                "retryInterval": "1h30m"}
    with KubeAPIServer(crds=[email_account_crd()], namespaces=(NS,)) as api, \
            api.api_client() as api_client:
        custom = client.CustomObjectsApi(api_client)
        for doc in (legit, longest):
            assert _errors(doc) == []
            custom.create_namespaced_custom_object("email.reconciler.io", "v1alpha1", NS,
                                                   "emailaccounts", doc)
        for doc in attacks:
            assert _errors(doc), doc["metadata"]["name"]
            with pytest.raises(ApiException) as refused:
                custom.create_namespaced_custom_object("email.reconciler.io", "v1alpha1", NS,
                                                       "emailaccounts", doc)
            assert refused.value.status == 422, doc["metadata"]["name"]


# --------------------------------------------------------------------------- 2. publish


@pytest.mark.parametrize(("field", "key"), [
    ("labels", CREDENTIAL_LABEL), ("labels", "email.reconciler.io/account"),
    ("annotations", "email.reconciler.io/allowed-hosts"),
    ("annotations", "email.reconciler.io/data-hash"),
])
def test_validate_refuses_reserved_publish_keys(field: str, key: str) -> None:
    doc = _doc()
    doc["spec"]["publish"] = {field: {key: "true", "team.example.com/owner": "payments"}}
    assert [p for p, _ in _errors(doc)] == [f"/spec/publish/{field}/{key.replace('/', '~1')}"]
    doc["spec"]["publish"] = {field: {"team.example.com/owner": "payments"}}
    assert _errors(doc) == []


def test_render_never_publishes_a_reserved_label() -> None:
    acc = smtp_account(formats=("env",))
    import dataclasses

    acc = dataclasses.replace(acc, publish=dataclasses.replace(
        acc.publish, labels={CREDENTIAL_LABEL: "true", "team": "payments"},
        annotations={"email.reconciler.io/allowed-accounts": "*", "note": "hi"}))
    meta = render_secret(acc, probe(), owner_uid=None)["metadata"]
    assert CREDENTIAL_LABEL not in meta["labels"] and meta["labels"]["team"] == "payments"
    assert "email.reconciler.io/allowed-accounts" not in meta["annotations"]
    assert meta["annotations"]["note"] == "hi"


def test_a_published_secret_is_never_a_credential() -> None:
    account = make_account(name="thief")
    published = SecretMeta(labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE, CREDENTIAL_LABEL: "true",
                                   "email.reconciler.io/account": "victim"})
    why = secret_refusal(account, PASSWORD_REF, published)
    assert why is not None and "published" in why
    assert secret_refusal(account, PASSWORD_REF, SecretMeta(labels={CREDENTIAL_LABEL: "true"})) \
        is None


def test_cluster_published_secret_is_not_read_for_another_account(
        cluster: Cluster, attacker: RecordingSmtp) -> None:
    """A labelled published Secret (how round one's attacker laundered a bound password)."""
    cluster.secret("victim-sender", {"SMTP_PASSWORD": MARKER},
                   labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE, CREDENTIAL_LABEL: "true",
                           "email.reconciler.io/account": "victim"})
    cluster.secret("mail-credentials", {"password": "Own-pa55word-9c1d2e"},
                   labels={CREDENTIAL_LABEL: "true"})
    log = io.StringIO()
    cluster.reconcile(smtp_doc("thief", attacker.port, secret="victim-sender",
                               key="SMTP_PASSWORD"),
                      smtp_doc("mail-app", attacker.port, secret="mail-credentials"), log=log)
    status = cluster.status("thief")
    assert reason(status, "Authenticated") == "SecretNotAllowed"
    assert "published" in status_condition(status, "Authenticated")["message"]
    received = attacker.received.decode(errors="replace")
    assert all(form not in received for form in echo_forms(MARKER, "thief@example.com"))
    forms_absent(log.getvalue() + yaml.safe_dump(cluster.api.objects("emailaccounts", NS)))
    assert cluster.api.get_object("secrets", NS, "thief-sender") is None
    # the labelled credential beside it was used: the attacker's server refused it
    assert reason(cluster.status("mail-app"), "Authenticated") == "AuthenticationFailed"


COPY_ANNOTATIONS = ("reflector.v1.k8s.emberstack.com/reflection-allowed",
                    "reflector.v1.k8s.emberstack.com/reflection-auto-enabled",
                    "kubed.appscode.com/sync", "replicator.v1.mittwald.de/replicate-to",
                    "Replicator.v1.mittwald.de/replication-allowed")


@pytest.mark.parametrize("key", COPY_ANNOTATIONS)
def test_copy_annotations_are_refused_unless_the_admin_allows_them(key: str) -> None:
    import dataclasses

    from reconciler.policy import policy_refusal

    base = make_account()
    account = dataclasses.replace(base, publish=dataclasses.replace(
        base.publish, annotations={key: "true", "reloader.stakater.com/match": "true"}))
    refused = policy_refusal(account, Policy())
    assert refused is not None and refused.reason == reasons.PUBLISH_NOT_ALLOWED
    assert f"--allow-publish-annotations {key}" in refused.message
    allowed = Policy.from_flags(allow_publish_annotations=[key.split("/")[0] + "/*"])
    assert policy_refusal(account, allowed) is None
    legit = dataclasses.replace(base, publish=dataclasses.replace(
        base.publish, annotations={"reloader.stakater.com/match": "true"}))
    assert policy_refusal(legit, Policy()) is None


def test_local_run_copy_annotation_publishes_nothing_until_allowed(
        run: LocalRun, capsys: pytest.CaptureFixture[str]) -> None:
    port = run.servers.starttls.port
    run.account(_doc("legit", port, publish={"annotations": {"reloader.stakater.com/match":
                                                              "true"}}))
    reflected = {"reflector.v1.k8s.emberstack.com/reflection-allowed": "true",
                 "reflector.v1.k8s.emberstack.com/reflection-auto-enabled": "true"}
    run.account(_doc("copied", port, publish={"annotations": reflected}))
    code, _ = run.reconcile(capsys)
    assert code == 1
    assert reason(run.status("legit")) == "Ready" and run.published("legit") is not None
    assert reason(run.status("copied"), "Stalled") == "PublishNotAllowed"
    assert run.published("copied") is None
    code, _ = run.reconcile(capsys, "--allow-publish-annotations",
                            "reflector.v1.k8s.emberstack.com/*")
    assert code == 0 and reason(run.status("copied")) == "Ready"
    secret = yaml.safe_load((run.store / NS / "secrets" / "copied-sender.yaml").read_text())
    assert secret["metadata"]["annotations"][
        "reflector.v1.k8s.emberstack.com/reflection-allowed"] == "true"


# --------------------------------------------------------------------------- 4. durations


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("interval", "100000000h", False), ("authInterval", "100000000000h", False),
    ("retryInterval", "8761h", False), ("interval", "8760h", True),
    ("interval", "9999h9999h", False), ("authInterval", "99999999s", False),
    ("authInterval", "525600m", True), ("retryInterval", "30s", True),
])
def test_validate_bounds_durations(field: str, value: str, ok: bool) -> None:
    doc = _doc()
    doc["spec"]["probe"] = {field: value}
    errors = _errors(doc)
    assert [p for p, _ in errors] == ([] if ok else [f"/spec/probe/{field}"])
    assert all("at most 8760h (365 days)" in m for _, m in errors)


def test_schedule_never_overflows_whatever_the_durations() -> None:
    """Defence in depth: settings that did not go through validate."""
    import dataclasses

    for seconds in (3.6e11, 3.6e14, 1e300, math.inf, math.nan, -5.0):
        account = dataclasses.replace(make_account(), probe=ProbeSettings(
            interval_seconds=seconds, auth_interval_seconds=seconds,
            retry_interval_seconds=seconds))
        for failed in (0, 3):
            at = next_probe_time(account, now=NOW, failed_probes=failed)
            assert NOW < at <= NOW + timedelta(days=365 * 1.1 + 1)  # jitter: at most 10 %
            assert probe_delay_seconds(account, failed_probes=failed) >= 1.0
        old = {"lastProbeTime": "2026-11-25T07:00:00Z", "nextProbeTime": "2026-11-25T07:59:00Z",
               "lastAuthTime": "2026-11-24T08:00:00Z", "observedGeneration": 1,
               "secretVersions": {}}
        probe_decision(account=account, old_status=old, secret_versions={}, now=NOW)
    last = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    assert next_probe_time(make_account(), now=last, failed_probes=0) <= datetime.max.replace(
        tzinfo=UTC)


def test_local_runs_go_on_beside_durations_no_datetime_can_hold(
        run: LocalRun, capsys: pytest.CaptureFixture[str]) -> None:
    port = run.servers.starttls.port
    run.account(_doc("legit", port))
    run.account(_doc("forever", port, probe={"interval": "100000000h"}))
    run.account(_doc("never-auth", port, probe={"authInterval": "100000000000h"}))
    for _ in range(2):  # authInterval crashed the second run on the old code
        code, out = run.reconcile(capsys)
        assert code == 1 and "Traceback" not in out
        assert reason(run.status("legit")) == "Ready"
        for name in ("forever", "never-auth"):
            run.refused(name, out, "at most 8760h")


@pytest.mark.parametrize("text_", ["nan", "inf", "-1s", "100000000h", "1e400"])
def test_controller_interval_flag_is_bounded(text_: str) -> None:
    from reconciler.errors import UsageError

    with pytest.raises(UsageError):
        flag_duration(text_)
    assert flag_duration("10m") == 600


@pytest.mark.parametrize("flag", ["--lease-duration", "--renew-deadline", "--retry-period"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_controller_seconds_flags_refuse_nan_and_infinity(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["controller", flag, value]) == 2
    assert "must be a number of seconds" in capsys.readouterr().err


# --------------------------------------------------------------------------- 6. merge keys


MERGE_DOCS = {
    "plain": "      <<: {host: evil.example.net, port: 2525}\n",
    "quoted": '      "<<": {host: evil.example.net}\n',
    "tagged": "      !!merge <<: {host: evil.example.net}\n",
}


def _connection_yaml(extra: str) -> bytes:
    return (f"""apiVersion: email.reconciler.io/v1alpha1
kind: EmailAccount
metadata: {{name: merged, namespace: {NS}}}
spec:
  provider: custom
  smtp:
    identity: {{emailAddress: merged@example.com}}
    connection:
      host: smtp.example.com
      port: 587
{extra}    authentication: {{method: Password, passwordSecretRef: {{name: m, key: password}}}}
""").encode()


@pytest.mark.parametrize("kind", sorted(MERGE_DOCS))
def test_merge_keys_are_refused_like_aliases(kind: str) -> None:
    docs, errors = load_bytes(_connection_yaml(MERGE_DOCS[kind]), "merged.yaml")
    assert not errors and len(docs) == 1
    [diagnostic] = docs[0].diagnostics
    assert "merge keys (<<) are not allowed" in diagnostic.message
    assert (diagnostic.file, diagnostic.line, diagnostic.document) == ("merged.yaml", 11, 1)
    legit, _ = load_bytes(_connection_yaml(""), "legit.yaml")
    assert legit[0].valid


# --------------------------------------------------------------------------- 12. low


@pytest.mark.parametrize(("where", "value"), [
    (("smtp", "connection", "timeoutSeconds"), math.nan),
    (("smtp", "connection", "timeoutSeconds"), math.inf),
    (("smtp", "connection", "timeoutSeconds"), -math.inf),
    (("description",), math.nan),
])
def test_nan_and_infinity_are_refused(where: tuple[str, ...], value: float) -> None:
    doc = _doc()
    node = doc["spec"]
    for name in where[:-1]:
        node = node[name]
    node[where[-1]] = value
    pointer = "/spec/" + "/".join(where)
    assert (pointer, "must be a finite number (.nan and .inf are not numbers in JSON or to the "
                     "API server)") in _errors(doc)
    node[where[-1]] = 30 if where[-1] == "timeoutSeconds" else "a description"
    assert _errors(doc) == []


def test_nan_in_a_file_is_refused_with_its_line() -> None:
    text_ = _connection_yaml("      timeoutSeconds: .nan\n")
    docs, _ = load_bytes(text_, "nan.yaml")
    [d] = [d for d in docs[0].diagnostics if d.severity == "error"]
    assert (d.pointer, d.line) == ("/spec/smtp/connection/timeoutSeconds", 11)


@pytest.mark.parametrize("host", ["smtp.example.com\n", "127.0.0.1\n", "[::1]\n",
                                  "smtp.example.com\r", "smtp.example.com\n\n"])
def test_host_with_a_trailing_newline_is_refused(host: str) -> None:
    doc = _doc()
    doc["spec"]["smtp"]["connection"]["host"] = host
    assert [p for p, _ in _errors(doc)] == ["/spec/smtp/connection/host"]
    doc["spec"]["smtp"]["connection"]["host"] = host.strip()
    assert _errors(doc) == []


@pytest.mark.parametrize(("pattern", "converted"), [
    (r"^a$|^b$", r"^a\Z|^b\Z"),
    (r"^[$]$", r"^[$]\Z"),
    (r"^\$$", r"^\$\Z"),
    (r"^[]$]$", r"^[]$]\Z"),
    (r"^[^]$]x$", r"^[^]$]x\Z"),
    (r"^a\\$", r"^a\\\Z"),
    (r"^(a|b$)", r"^(a|b\Z)"),
])
def test_every_dollar_anchor_means_end_of_text(pattern: str, converted: str) -> None:
    from reconciler.manifest.patterns import end_of_text

    assert end_of_text(pattern) == converted


def test_no_schema_pattern_accepts_a_trailing_newline() -> None:
    from reconciler.manifest import load_schema

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema())
    crd = yaml.safe_load(render_crd())
    walk(crd)
    samples = ["smtp.example.com", "127.0.0.1", "eu-west-1", "30s", "a", "a@b.example",
               "https://x.example", "key", "name", ""]
    checked = 0
    for pattern in set(found):
        regex = compile_pattern(pattern)
        for sample in samples:
            if regex.search(sample):
                checked += 1
                assert not regex.search(sample + "\n"), (pattern, sample)
    assert checked >= 10


@pytest.mark.parametrize(("globs", "host", "port", "ok"), [
    ("127.0.0.*", "127.0.0.evil.example", 25, False),
    ("127.0.0.*", "127.0.0.1", 25, True),
    ("127.0.0.*:*", "127.0.0.evil.example", 25, False),
    ("127.0.0.*:587", "127.0.0.9", 587, True),
    ("10.?.0.1", "10.1.0.1.nip.io", 25, False),
    ("127.0.0.*", "127.0.0.010", 25, False),  # not an address Python reads the same way
    ("[::1]:*", "::1", 25, True),
    ("*.example.com", "smtp.example.com", 25, True),
    ("*", "127.0.0.evil.example", 25, True),
])
def test_allowed_hosts_address_globs_match_addresses_only(globs: str, host: str, port: int,
                                                          ok: bool) -> None:
    assert host_matches(Policy.from_flags(allowed_hosts=globs).allowed_hosts, host, port) is ok


def test_allowed_hosts_address_glob_refuses_the_dns_name() -> None:
    policy = Policy.from_flags(allowed_hosts="127.0.0.*")
    refused = endpoint_refusal(make_account(host="127.0.0.evil.example"), policy)
    assert refused is not None and refused.reason == reasons.ENDPOINT_NOT_ALLOWED
    assert endpoint_refusal(make_account(host="127.0.0.1"), policy) is None


def test_local_allowed_hosts_address_glob(run: LocalRun,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = run.servers.starttls.port
    run.account(_doc("legit", port))
    evil = _doc("evil", port)
    evil["spec"]["smtp"]["connection"]["host"] = "127.0.0.evil.example"
    run.account(evil)
    run.reconcile(capsys, "--allowed-hosts", "127.0.0.*")
    assert reason(run.status("legit")) == "Ready"
    assert reason(run.status("evil"), "Stalled") == "EndpointNotAllowed"


def test_the_security_readme_lists_the_new_rules() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Security model", 1)[1].split("\n## ", 1)[0]
    for words in ("smtp.advanced", "--allow-publish-annotations", "email.reconciler.io/",
                  "8760h", "merge keys", ".nan"):
        assert words in section, words
