"""Issue 23, the probe side: what a mail server, an identity provider and a keystore can still do.

Each attack runs through `reconcile` in local mode beside a legitimate account that stays Ready:
- STARTTLS reply injection (CVE-2011-0411): forged replies sent with the `220` to STARTTLS.
- A PKCS#12 iteration bomb: a signing keystore whose MAC asks for 2x10^9 iterations.
- OpenID discovery moving a client secret off the allow-list: the authority's discovery document
  names another server's token_endpoint, or answers with a redirect.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.log import configure_logging
from reconciler.manifest.account import account_from_manifest
from reconciler.model import Outcome, status_condition
from reconciler.probe.tokencache import TokenCache
from tests.fake_idp import Client, FakeGraph, MemorySecrets, MicrosoftIdentity, Seen
from tests.hostile import HostileServers
from tests.keystores import PfxEntry, TestCA, build_pfx, with_mac_iterations
from tests.manifests_factory import loopback_account, write_manifests
from tests.smtpservers import PASSWORD, USER, RunningServer, ServerLoop, ThrowawayCA

NS = "shop"


class Local:
    """A --secrets-dir, a manifests folder and a local store; `run` returns the exit code and
    everything written (stdout, stderr, the log)."""

    def __init__(self, root: Path, ca: ThrowawayCA) -> None:
        self.secrets, self.accounts = root / "secrets", root / "accounts"
        self.store = root / "store"
        self.put("ca", "ca.crt", ca.ca_pem)

    def put(self, name: str, key: str, value: str | bytes) -> None:
        path = self.secrets / NS / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.encode() if isinstance(value, str) else value)

    def run_within(self, seconds: float, capsys: pytest.CaptureFixture[str],
                   *docs: dict[str, Any]) -> tuple[int, str]:
        """`run` in a daemon thread; fails (rather than hangs) when it has not ended in `seconds`
        (a generous bound: only an unbounded key derivation takes that long)."""
        out: list[tuple[int, str]] = []
        thread = threading.Thread(target=lambda: out.append(self.run(capsys, *docs)), daemon=True)
        thread.start()
        thread.join(seconds)
        assert out, f"reconcile still running after {seconds} s"
        return out[0]

    def run(self, capsys: pytest.CaptureFixture[str], *docs: dict[str, Any],
            extra: tuple[str, ...] = ()) -> tuple[int, str]:
        write_manifests(self.accounts, *docs)
        log = io.StringIO()
        configure_logging("console", "debug", log)
        code = main(["reconcile", str(self.accounts), "--store", f"local:{self.store}",
                     "--secrets-dir", str(self.secrets), *extra])
        captured = capsys.readouterr()
        return code, captured.out + captured.err + log.getvalue()

    def condition(self, name: str, type_: str = "Ready") -> dict[str, Any]:
        obj = yaml.safe_load((self.store / NS / "emailaccounts" / f"{name}.yaml").read_text())
        return status_condition(obj.get("status") or {}, type_)

    def published(self) -> set[str]:
        return {p.stem for p in (self.store / NS / "secrets").glob("*.yaml")}


@pytest.fixture
def local(tmp_path: Path, ca: ThrowawayCA) -> Local:
    return Local(tmp_path, ca)


@pytest.fixture
def hostile(server_loop: ServerLoop) -> Iterator[HostileServers]:
    servers = HostileServers(server_loop)
    yield servers
    servers.close()


# --------------------------------------------------------------------------- STARTTLS injection


def test_starttls_reply_injection_is_a_protocol_violation(
        local: Local, hostile: HostileServers, ca: ThrowawayCA,
        smtp_server: Callable[..., RunningServer], capsys: pytest.CaptureFixture[str]) -> None:
    """The forged `235` sent with the `220` is not read as the TLS server's answer to AUTH (it
    refuses the password): ProtocolViolation, no AUTH sent, nothing published."""
    received: list[str] = []
    evil = hostile.smtp_starttls_injection(ca.server_context(), received)
    good = smtp_server("STARTTLS", users={USER: PASSWORD})
    local.put("evil-smtp", "password", PASSWORD)
    local.put("good-smtp", "password", PASSWORD)
    code, everything = local.run(capsys, _as_user(loopback_account("evil", NS, evil)),
                                 _as_user(loopback_account("good", NS, good.port)))
    assert code == 1
    ready = local.condition("evil")
    assert ready["status"] == "False" and ready["reason"] == "ProtocolViolation"
    connected = local.condition("evil", "Connected")
    assert connected["reason"] == "ProtocolViolation"
    assert "before the TLS handshake" in connected["message"]
    assert "CVE-2011-0411" in connected["message"] and "no credentials were sent" in \
        connected["message"]
    assert "AUTH" not in received  # the TLS server never saw the password
    assert local.condition("good")["reason"] == "Ready"
    assert [name for name in local.published() if "evil" in name] == []
    assert [name for name in local.published() if "good" in name] != []
    assert PASSWORD not in everything and "Traceback" not in everything


def _as_user(doc: dict[str, Any]) -> dict[str, Any]:
    """The aiosmtpd stand-in knows USER: log in as USER rather than as the account's address."""
    doc["spec"]["smtp"]["identity"]["emailAddress"] = USER
    return doc


# --------------------------------------------------------------------------- PKCS#12 bomb


def test_keystore_iteration_bomb_is_refused_beside_a_signing_account(
        local: Local, smtp_server: Callable[..., RunningServer],
        capsys: pytest.CaptureFixture[str]) -> None:
    """2x10^9 MAC iterations: refused before any derivation (KeystoreUnreadable), not published;
    the same keystore with its real count signs, Ready."""
    key, cert = TestCA.create().issue_smime(USER)
    keystore = build_pfx([PfxEntry("mail", key, cert)], "k3ystore-Pa55")
    server = smtp_server("STARTTLS", users={USER: PASSWORD})
    docs = []
    for name, blob in (("signed", keystore), ("bomb", with_mac_iterations(keystore, 2 * 10**9))):
        local.put(f"{name}-smtp", "password", PASSWORD)
        local.put(f"{name}-signing", "keystore.p12", blob)
        local.put(f"{name}-signing", "password", "k3ystore-Pa55")
        doc = _as_user(loopback_account(name, NS, server.port))
        doc["spec"]["smtp"]["signing"] = {
            "keystoreSecretRef": {"name": f"{name}-signing", "key": "keystore.p12"},
            "keystorePasswordSecretRef": {"name": f"{name}-signing", "key": "password"}}
        docs.append(doc)
    code, everything = local.run_within(120, capsys, *docs)
    assert code == 1
    signing = local.condition("bomb", "SigningReady")
    assert signing["reason"] == "KeystoreUnreadable"
    assert "2,000,000,000 key-derivation iterations" in signing["message"]
    assert local.condition("bomb")["status"] == "False"
    assert local.condition("signed")["reason"] == "Ready", local.condition("signed")
    assert [name for name in local.published() if "bomb" in name] == []
    assert "k3ystore-Pa55" not in everything and "Traceback" not in everything


# --------------------------------------------------------------------------- OpenID discovery

CLIENT_SECRET = "graph~S3cret~discovery~4d1f"


@dataclass
class Discovering(MicrosoftIdentity):
    """An allowed authority whose discovery names `token_endpoint_at` for the token endpoint,
    or answers with a redirect to `redirect_to`."""

    token_endpoint_at: str | None = None
    redirect_to: str | None = None
    broken: bool = False  # a document without the endpoints msal needs

    def handle(self, req: Seen) -> tuple[int, Any] | tuple[int, Any, Mapping[str, str]]:
        answer = super().handle(req)
        if req.method != "GET" or "openid-configuration" not in req.path:
            return answer
        if self.redirect_to is not None:
            return 302, {}, {"Location": self.redirect_to}
        if self.broken:
            return 200, {"issuer": "nobody"}
        status, doc = answer[0], answer[1]
        if self.token_endpoint_at is not None:
            doc = {**doc, "token_endpoint": self.token_endpoint_at}
        return status, doc


def test_discovery_never_moves_the_client_secret_off_the_allow_list(
        local: Local, ca: ThrowawayCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Allowed: the authorities and Graph. Not allowed: `evil`, a token endpoint that would
    take the secret (and issue a token). It receives nothing; both tricked accounts are
    TokenRequestFailed with a message, no traceback; the legitimate account is Ready."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text(ca.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    clients = {"app-1": Client(secret=CLIENT_SECRET)}
    with MicrosoftIdentity(ca=ca, clients=clients) as idp, \
            MicrosoftIdentity(ca=ca, clients=clients) as evil, \
            Discovering(ca=ca, clients=clients, token_endpoint_at=evil.token_endpoint) as moved, \
            Discovering(ca=ca, clients=clients, redirect_to=f"{evil.url}/{evil.tenant_id}"
                        "/v2.0/.well-known/openid-configuration") as redirecting, \
            FakeGraph(ca=ca, idp=idp, users={"ok@example.com"}) as graph:
        local.put("graph-app", "client-secret", CLIENT_SECRET)
        docs = [_graph_doc(name, authority.url, graph.url, idp.tenant_id)
                for name, authority in (("good", idp), ("moved", moved),
                                        ("redirected", redirecting))]
        allowed = ",".join(f"{x.url.removeprefix('https://')}"
                           for x in (idp, moved, redirecting, graph))
        code, everything = local.run(capsys, *docs, extra=("--allowed-endpoints", allowed))
        assert evil.seen == []  # not the secret, not even a discovery request
        assert moved.token_requests() == [] and redirecting.token_requests() == []
    assert code == 1
    assert local.condition("good")["reason"] == "Ready", local.condition("good")
    for name, words in (("moved", "not on the reconciler's endpoint allow-list"),
                        ("redirected", "answered HTTP 302 (a redirect to 127.0.0.1)")):
        ready = local.condition(name)
        assert (ready["status"], ready["reason"]) == ("False", "TokenRequestFailed"), ready
        authenticated = local.condition(name, "Authenticated")
        assert authenticated["reason"] == "TokenRequestFailed"
        assert words in authenticated["message"], authenticated["message"]
    assert "nothing was sent there" in local.condition("moved", "Authenticated")["message"]
    assert CLIENT_SECRET not in everything
    assert "Traceback" not in everything and "ProbeError" not in everything


def _graph_doc(name: str, authority: str, endpoint: str, tenant: str) -> dict[str, Any]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"provider": "office365", "sendUsing": "MicrosoftGraph", "graph": {
                "userPrincipalName": "ok@example.com", "endpoint": endpoint,
                "timeoutSeconds": 5,
                "authentication": {"tenantId": tenant, "clientId": "app-1",
                                   "grantType": "ClientCredentials", "authority": authority,
                                   "clientSecretSecretRef": {"name": "graph-app",
                                                             "key": "client-secret"}}}}}


def test_outside_a_probe_msal_talks_to_the_authority_host_only(
        ca: ThrowawayCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token cache used without a probe's policy (the relay does): a token endpoint
    elsewhere is refused all the same; one on the authority's host works; a discovery document
    msal cannot use is TokenRequestFailed."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text(ca.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    clients = {"app-1": Client(secret=CLIENT_SECRET)}
    secrets = MemorySecrets({(NS, "graph-app", "client-secret"): CLIENT_SECRET})
    with MicrosoftIdentity(ca=ca, clients=clients) as idp, \
            MicrosoftIdentity(ca=ca, clients=clients) as evil, \
            Discovering(ca=ca, clients=clients, token_endpoint_at=evil.token_endpoint) as moved, \
            Discovering(ca=ca, clients=clients, broken=True) as broken:
        got = {}
        for name, authority in (("good", idp), ("moved", moved), ("broken", broken)):
            doc = _graph_doc(name, authority.url, "https://graph.microsoft.com", idp.tenant_id)
            account = account_from_manifest(doc)
            got[name] = asyncio.run(TokenCache().graph_token(account, secrets))
        assert evil.seen == []
    assert not isinstance(got["good"], Outcome)
    moved_outcome = got["moved"]
    assert isinstance(moved_outcome, Outcome) and moved_outcome.reason == "TokenRequestFailed"
    assert "is not on the authority's host 127.0.0.1" in moved_outcome.message
    broken_outcome = got["broken"]  # msal's KeyError, once a ProbeError with a traceback
    assert isinstance(broken_outcome, Outcome) and broken_outcome.reason == "TokenRequestFailed"
    assert "discovery document" in broken_outcome.message
    assert "is not usable (KeyError)" in broken_outcome.message
