"""Real applications that cannot do OAuth send through the relay sidecar (issue 24, "Done when").

Each upstream account (Office 365 SMTP with XOAUTH2, and Microsoft Graph sendMail) is reconciled
by the CLI into a local store against the stand-ins on 127.0.0.1; its published Secret is laid
out as kubelet mounts it (one file a key, plus the envFrom variables); `email-reconciler relay
--secret-dir DIR` runs as its own process beside the application, reading only that folder. The
applications are configured from the Secret's keys alone:

- Prometheus Alertmanager (Debian's prometheus-alertmanager: PLAIN, LOGIN and CRAM-MD5 only)
  with an email receiver from SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD and SMTP_FROM,
  sending the notification of an alert posted to its API;
- swaks and msmtp with AUTH PLAIN, from the env keys (tests/clients/snippets);
- Jakarta Mail loading javamail.properties and the SMTP_PASSWORD file (the same snippet);
- Django's SMTP backend from the EMAIL_* keys and from EMAIL_URL (dj-email-url).

The upstream stand-ins: an aiosmtpd server taking only AUTH XOAUTH2 with a token the Microsoft
identity platform stand-in issued for outlook.office365.com, and the Graph stand-in recording
the MIME and the recipients it delivers to. The relay's refusals (429, 552, 535, 550, token
endpoint down, restart) are tests/test_relay.py's.

A missing application skips with what to install (fails with CI=true), see tests/system.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import smtplib
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.graph import FakeGraph
from reconciler.demo.smtp_servers import RunningServer, ServerLoop, SmtpServerOptions
from reconciler.demo.token_endpoints import Client, MicrosoftIdentity
from reconciler.model import status_condition
from tests.clients.runners import SNIPPETS, JavaBuild, Job, _need_python, _need_swaks
from tests.clients.secret import ENV_NAME, Mounted
from tests.mta.process import wait_for
from tests.smtpservers import LOOPBACK, ThrowawayCA, unused_port
from tests.system import require_executable

NS = "shop"
SENDER = "alerts@contoso.example"
TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT_ID = "00000000-0000-0000-0000-0000000000cc"
CLIENT_SECRET = "relay~clients~S3cret~0123456789"
OUTLOOK = "https://outlook.office365.com"
ROOT = Path(__file__).resolve().parent.parent
ALERTMANAGER = ("prometheus-alertmanager", "alertmanager")
Upstream = Literal["smtp", "graph"]
UPSTREAMS: tuple[Upstream, ...] = ("smtp", "graph")
DELIVERY_TIMEOUT = 60.0


@dataclass
class Delivered:
    """One message as the upstream took it: envelope recipients (Graph's: those it delivers to),
    the MIME, and for SMTP the AUTH it came with."""

    recipients: tuple[str, ...]
    message: Message
    mail_from: str | None = None
    authenticated_as: str | None = None


@dataclass
class Sidecar:
    """The relay process serving one account's mounted Secret."""

    upstream: Upstream
    mounted: Mounted
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Stage:
    ca: ThrowawayCA
    bundle: Path
    idp: MicrosoftIdentity
    graph: FakeGraph
    smtp: RunningServer
    root: Path
    sidecars: dict[Upstream, Sidecar] = field(default_factory=dict)

    def delivered(self, upstream: Upstream, rcpt: str) -> list[Delivered]:
        """What the upstream took for recipient rcpt."""
        if upstream == "graph":
            return [Delivered(s.recipients, _parse(s.mime), s.sender)
                    for s in list(self.graph.sent) if rcpt in s.recipients]
        return [Delivered(m.rcpt_tos, _parse(m.content), m.mail_from, m.authenticated_as)
                for m in list(self.smtp.messages) if rcpt in m.rcpt_tos]

    def wait_delivered(self, upstream: Upstream, rcpt: str, why: Callable[[], str]) -> Delivered:
        try:
            wait_for(lambda: self.delivered(upstream, rcpt), timeout=DELIVERY_TIMEOUT,
                     what=f"the {upstream} upstream to take the message for {rcpt}")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{why()}\nrelay: {self.sidecars[upstream].output()}")
        [got] = self.delivered(upstream, rcpt)
        return got


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.default)


# ---------------------------------------------------------------------- the published Secrets


def _account(upstream: Upstream, stage_urls: dict[str, str], relay_port: int) -> dict[str, Any]:
    relay = {"enabled": True, "port": relay_port}
    if upstream == "graph":
        spec: dict[str, Any] = {
            "provider": "office365", "sendUsing": "MicrosoftGraph", "relay": relay,
            "graph": {"userPrincipalName": SENDER, "endpoint": stage_urls["graph"],
                      "timeoutSeconds": 10, "authentication": {
                          "tenantId": TENANT, "clientId": CLIENT_ID,
                          "grantType": "ClientCredentials", "authority": stage_urls["idp"],
                          "clientSecretSecretRef": {"name": "o365-app", "key": "secret"}}}}
    else:
        spec = {"provider": "office365", "relay": relay, "smtp": {
            "identity": {"emailAddress": SENDER},
            "connection": {"host": LOOPBACK, "port": int(stage_urls["smtp"]),
                           "security": "STARTTLS", "timeoutSeconds": 10,
                           "truststore": {"configMapRef": {"name": "ca", "key": "ca.crt"}}},
            "authentication": {"method": "OAuth2", "oauth2": {
                "grantType": "ClientCredentials", "tenantId": TENANT, "clientId": CLIENT_ID,
                "authority": stage_urls["idp"],
                "clientSecretSecretRef": {"name": "o365-app", "key": "secret"}}}}}
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": f"alerts-{upstream}", "namespace": NS}, "spec": spec}


def _write(path: Path, value: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value.encode() if isinstance(value, str) else value)


def reconcile_and_mount(root: Path, doc: dict[str, Any], ca_pem: str) -> Mounted:
    """`email-reconciler reconcile` into a local store; the published Secret laid out as kubelet
    mounts it (one file a key) and its envFrom variables."""
    name = doc["metadata"]["name"]
    _write(root / "accounts" / f"{name}.yaml", yaml.safe_dump(doc))
    _write(root / "secrets" / NS / "ca" / "ca.crt", ca_pem)
    _write(root / "secrets" / NS / "o365-app" / "secret", CLIENT_SECRET)
    code = main(["reconcile", str(root / "accounts"), "--store", f"local:{root / 'store'}",
                 "--secrets-dir", str(root / "secrets"), "--allowed-endpoints", "127.0.0.1:*"])
    status = yaml.safe_load((root / "store" / NS / "emailaccounts" / f"{name}.yaml").read_text())
    assert code == 0, status.get("status")
    for condition in ("Ready", "RelayReady"):
        got = status_condition(status["status"], condition)
        assert got is not None and got["status"] == "True", (condition, status["status"])
    published = yaml.safe_load((root / "store" / NS / "secrets" / f"{name}-sender.yaml")
                               .read_text())
    folder, env = root / "mounted", {}
    for key, value in published["data"].items():
        raw = base64.b64decode(value)
        _write(folder / key, raw)
        if ENV_NAME.match(key):
            env[key] = raw.decode("utf-8")
    return Mounted(folder, env)


def start_sidecar(upstream: Upstream, mounted: Mounted, bundle: Path, log: Path) -> Sidecar:
    """`email-reconciler relay --secret-dir DIR` as its own process, as in the application's pod.
    Its only other input is HTTPS trust for the stand-ins' CA (the cluster's system trust store
    gives it for the real Microsoft services)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(mounted.dir.parent),
           "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT), "REQUESTS_CA_BUNDLE": str(bundle)}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "reconciler", "relay", "--secret-dir",
                                    str(mounted.dir)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    port = int(mounted.env["SMTP_PORT"])
    sidecar = Sidecar(upstream, mounted, port, process, log)
    wait_for(lambda: listening(port) or process.poll() is not None, timeout=60,
             what=f"the relay sidecar to listen on {port}")
    assert process.poll() is None, f"the relay exited {process.returncode}: {sidecar.output()}"
    return sidecar


def listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:port (/proc/net/tcp, without connecting)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(f[1] == f"0100007F:{port:04X}" and f[3] == "0A"
               for f in (ln.split() for ln in lines))


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    root = tmp_path_factory.mktemp("relay-clients")
    ca = ThrowawayCA("relay clients CA")
    bundle = root / "ca.pem"
    bundle.write_text(ca.ca_pem)
    with pytest.MonkeyPatch.context() as mp, \
            MicrosoftIdentity(ca=ca, tenant_id=TENANT) as idp, \
            FakeGraph(ca=ca, idp=idp, users={SENDER}) as graph, ServerLoop() as loop:
        mp.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # the reconciler's own trust (the probe)
        mp.delenv("SSL_CERT_FILE", raising=False)
        idp.clients[CLIENT_ID] = Client(secret=CLIENT_SECRET,
                                        roles=("SMTP.SendAsApp", "Mail.Send", "User.Read.All"))

        def exchange_online(mechanism: str, login: str, token: str) -> bool:
            with idp.lock:
                claims = idp.issued.get(token, {})
            return mechanism == "XOAUTH2" and login == SENDER and claims.get("aud") == OUTLOOK

        smtp = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                           checker=exchange_online, mechanisms=("XOAUTH2",)))
        stage = Stage(ca, bundle, idp, graph, smtp, root)
        urls = {"idp": idp.url, "graph": graph.url, "smtp": str(smtp.port)}
        try:
            for upstream in UPSTREAMS:
                where = root / upstream
                mounted = reconcile_and_mount(where, _account(upstream, urls, unused_port()),
                                              ca.ca_pem)
                stage.sidecars[upstream] = start_sidecar(upstream, mounted, bundle,
                                                         where / "relay.log")
            yield stage
        finally:
            for sidecar in stage.sidecars.values():
                sidecar.process.terminate()
                sidecar.process.wait(60)


def _check(stage: Stage, upstream: Upstream, got: Delivered, rcpt: str) -> None:
    """Delivered once, to that recipient, as the account, the upstream's way."""
    assert got.recipients == (rcpt,)
    assert [a.addr_spec for a in got.message["From"].addresses] == [SENDER]
    if upstream == "smtp":
        assert got.mail_from == SENDER and got.authenticated_as == SENDER
        assert {a.mechanism for a in stage.smtp.auth_attempts} == {"XOAUTH2"}
    else:
        assert got.mail_from == SENDER  # the mailbox Graph sent as


def _env(mounted: Mounted) -> dict[str, str]:
    """An application's environment: the Secret's keys (envFrom) and where it is mounted."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(mounted.dir.parent),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **mounted.env,
            "SENDER_DIR": str(mounted.dir)}


def test_published_formats_point_at_the_sidecar(stage: Stage) -> None:
    for upstream, sidecar in stage.sidecars.items():
        env = sidecar.mounted.env
        assert (env["SMTP_HOST"], env["SMTP_SECURITY"]) == (LOOPBACK, "None"), upstream
        assert env["SMTP_PASSWORD"] == (sidecar.mounted.dir / "relay-password").read_text()
        assert CLIENT_SECRET not in json.dumps(env)  # the application never sees it


# ---------------------------------------------------------------------- Prometheus Alertmanager


def alertmanager_config(env: dict[str, str], to: str) -> dict[str, Any]:
    """An email receiver from the Secret's keys alone; the relay is loopback-only plain SMTP."""
    return {"route": {"receiver": "relay", "group_by": ["alertname"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "relay", "email_configs": [{
                "to": to, "from": env["SMTP_FROM"],
                "smarthost": f"{env['SMTP_HOST']}:{env['SMTP_PORT']}",
                "auth_username": env["SMTP_USERNAME"], "auth_password": env["SMTP_PASSWORD"],
                "require_tls": False, "send_resolved": False}]}]}


@dataclass
class Alertmanager:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return "alertmanager: " + self.log.read_text(errors="replace")[-3000:]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Alertmanager]]:
    binary = require_executable(ALERTMANAGER[0], "apt-get install prometheus-alertmanager",
                                tuple(f"/usr/bin/{n}" for n in ALERTMANAGER))
    started: list[Alertmanager] = []

    def start(config: dict[str, Any]) -> Alertmanager:
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        port, log = unused_port(), tmp_path / "alertmanager.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary, f"--config.file={tmp_path / 'alertmanager.yml'}",
                 f"--storage.path={tmp_path / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{port}",
                 "--cluster.listen-address=",  # no gossip on 0.0.0.0:9094: one instance
                 "--log.level=debug"], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=tmp_path)
        am = Alertmanager(process, f"http://{LOOPBACK}:{port}", log)
        started.append(am)
        wait_for(lambda: process.poll() is not None or _ready(am.url), timeout=60,
                 what="alertmanager to be ready")
        assert process.poll() is None, am.output()
        return am

    yield start
    for am in started:
        am.process.terminate()
        am.process.wait(30)


@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_alertmanager_notification_through_the_relay(
        stage: Stage, upstream: Upstream, alertmanager: Callable[..., Alertmanager]) -> None:
    sidecar, rcpt = stage.sidecars[upstream], f"oncall-{upstream}@rcpt.example"
    am = alertmanager(alertmanager_config(sidecar.mounted.env, rcpt))
    alert = [{"labels": {"alertname": f"RelayCheck{upstream.title()}", "severity": "page"},
              "annotations": {"summary": "sent through the relay sidecar"}}]
    request = urllib.request.Request(f"{am.url}/api/v2/alerts", data=json.dumps(alert).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
    got = stage.wait_delivered(upstream, rcpt, am.output)
    _check(stage, upstream, got, rcpt)
    assert f"RelayCheck{upstream.title()}" in str(got.message["Subject"])


# ---------------------------------------------------------------------- swaks and msmtp, AUTH PLAIN


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("client", ["swaks", "msmtp"])
def test_plain_client_through_the_relay(stage: Stage, upstream: Upstream, client: str) -> None:
    if client == "swaks":
        _need_swaks()
    else:
        require_executable("msmtp", "apt-get install msmtp")
    sidecar, rcpt = stage.sidecars[upstream], f"{client}-{upstream}@rcpt.example"
    proc = subprocess.run(["sh", str(SNIPPETS / f"send-{client}.sh"), rcpt, f"{client} relay"],
                          env=_env(sidecar.mounted), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr + sidecar.output()
    got = stage.wait_delivered(upstream, rcpt, lambda: proc.stdout + proc.stderr)
    _check(stage, upstream, got, rcpt)
    assert got.message["Subject"] == f"{client} relay"


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("how", ["settings", "dj-email-url"])
def test_django_through_the_relay(stage: Stage, upstream: Upstream, how: str) -> None:
    """Django's SMTP backend from the EMAIL_* keys, or EMAIL_URL (the issue's fourth client)."""
    _need_python("django" if how == "settings" else "dj_email_url")()
    sidecar, rcpt = stage.sidecars[upstream], f"django-{how}-{upstream}@rcpt.example"
    proc = subprocess.run([sys.executable, str(SNIPPETS / "send-django.py"), how, rcpt,
                           f"django {how}"], env=_env(sidecar.mounted), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr + sidecar.output()
    got = stage.wait_delivered(upstream, rcpt, lambda: proc.stdout + proc.stderr)
    _check(stage, upstream, got, rcpt)
    assert got.message["Subject"] == f"django {how}"


# ---------------------------------------------------------------------- Jakarta Mail


@pytest.fixture(scope="module")
def java(tmp_path_factory: pytest.TempPathFactory) -> JavaBuild:
    return JavaBuild(tmp_path_factory.mktemp("java-classes"))


@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_jakarta_mail_through_the_relay(stage: Stage, upstream: Upstream,
                                        java: JavaBuild) -> None:
    sidecar, rcpt = stage.sidecars[upstream], f"javamail-{upstream}@rcpt.example"
    [error] = java.run("javamail", [Job("relay", sidecar.mounted, rcpt, "javamail relay")])
    assert error is None, f"{error}\n{sidecar.output()}"
    got = stage.wait_delivered(upstream, rcpt, lambda: "")
    _check(stage, upstream, got, rcpt)
    assert got.message["Subject"] == "javamail relay"


# ---------------------------------------------------------------------- what those clients need


def test_auth_login_prompts_as_exchange_online(stage: Stage) -> None:
    """AUTH LOGIN asks "Username:" and "Password:" (base64), as Exchange Online and Cyrus SASL
    do: clients that match the prompt (Alertmanager's loginAuth, which picks LOGIN when the
    server lists it before PLAIN) refused aiosmtpd's default "User Name\\0"."""
    env = stage.sidecars["graph"].mounted.env
    with socket.create_connection((env["SMTP_HOST"], int(env["SMTP_PORT"])), timeout=30) as s:
        replies = s.makefile("rb")

        def say(line: str) -> bytes:
            s.sendall(line.encode() + b"\r\n")
            while (reply := replies.readline())[3:4] == b"-":
                pass
            return reply.rstrip(b"\r\n")

        assert replies.readline().startswith(b"220")
        assert say("EHLO app.example").startswith(b"250")
        assert say("AUTH LOGIN") == b"334 " + base64.b64encode(b"Username:")
        assert say(base64.b64encode(env["SMTP_USERNAME"].encode()).decode()) == (
            b"334 " + base64.b64encode(b"Password:"))
        assert say(base64.b64encode(env["SMTP_PASSWORD"].encode()).decode()).startswith(b"235")
        say("QUIT")


def test_sidecar_log_holds_no_aiosmtpd_warning_per_session(stage: Stage) -> None:
    """Every session used to add two plain-text aiosmtpd warnings to the sidecar's JSON log."""
    sidecar = stage.sidecars["smtp"]
    env = sidecar.mounted.env
    with smtplib.SMTP(env["SMTP_HOST"], int(env["SMTP_PORT"]), timeout=30) as app:
        app.login(env["SMTP_USERNAME"], env["SMTP_PASSWORD"])
        app.sendmail(env["SMTP_FROM"], ["log@rcpt.example"],
                     f"From: {env['SMTP_FROM']}\r\nTo: log@rcpt.example\r\nSubject: log\r\n\r\n"
                     "x\r\n")
    log = sidecar.log.read_text()
    assert "auth_require_tls" not in log and "login_data" not in log, log[-2000:]
