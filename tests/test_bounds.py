"""Every probe is bounded: hostile token endpoints and Graph (issue 12 items 2 and 3).

A server that drips one byte a second or sends an endless body cannot hold a probe past its
deadline, nor make it buffer more than the bound; the asyncio.run that ran the probe returns (so
no worker thread is left waiting on a socket).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from reconciler import reasons
from reconciler.model import Account, GraphSpec, KeyRef, Publish
from reconciler.policy import Policy
from reconciler.probe import probe_account
from reconciler.probe.limits import MAX_DEADLINE_SECONDS, overall_deadline
from reconciler.probe.tokencache import TokenCache
from tests.fake_idp import Client, FakeGraph, MemorySecrets, MicrosoftIdentity
from tests.hostile import HostileServers
from tests.smtpservers import LOOPBACK, NOW, ServerLoop
from tests.test_oauth import SA_EMAIL, SA_REF, gmail_account, rsa_key, service_account_json

NS = "mail"
UPN = "billing@contoso.com"
CLIENT_SECRET = "graph~S3cret~bounds~0123456789"
SECRETS = MemorySecrets({(NS, "graph-app", "client-secret"): CLIENT_SECRET})


@pytest.fixture(scope="module")
def http_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_env(http_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bundle = tmp_path / "ca.pem"
    http_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    return bundle


@pytest.fixture
def tls(http_ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    http_ca.issue_cert(LOOPBACK).configure_cert(ctx)
    return ctx


@pytest.fixture
def hostile(server_loop: ServerLoop) -> Iterator[HostileServers]:
    servers = HostileServers(server_loop)
    yield servers
    servers.close()


@pytest.fixture
def idp(http_ca: trustme.CA, ca_env: Path) -> Iterator[MicrosoftIdentity]:
    with MicrosoftIdentity(ca=http_ca, clients={"app-1": Client(secret=CLIENT_SECRET)}) as fake:
        yield fake


# The hostile servers are on loopback; graph.invalid names a Graph that is never reached.
POLICY = Policy.from_flags("127.0.0.1:*,graph.invalid")

def graph_account(authority: str, tenant: str, endpoint: str, timeout: float = 1.0,
                  name: str = "billing") -> Account:
    spec = GraphSpec(user_principal_name=UPN, tenant_id=tenant, client_id="app-1",
                     client_secret=KeyRef("graph-app", "client-secret"), authority=authority,
                     endpoint=endpoint, timeout_seconds=timeout)
    return Account(namespace=NS, name=name, provider="office365", send_using="MicrosoftGraph",
                   publish=Publish(secret_name=f"{name}-sender"), graph=spec)


def timed_probe(account: Account, secrets: MemorySecrets) -> tuple[float, object]:
    start = time.monotonic()
    result = asyncio.run(probe_account(account, secrets, now=NOW, tokens=TokenCache(),
                                       policy=POLICY))
    return time.monotonic() - start, result


def test_overall_deadline_is_four_timeouts_capped() -> None:
    assert overall_deadline(3) == 12
    assert overall_deadline(120) == MAX_DEADLINE_SECONDS


def test_dripping_graph_is_cut_at_its_timeout(idp: MicrosoftIdentity, hostile: HostileServers,
                                              tls: ssl.SSLContext) -> None:
    port = hostile.http_drip(tls)
    elapsed, result = timed_probe(graph_account(idp.url, idp.tenant_id,
                                                f"https://{LOOPBACK}:{port}"), SECRETS)
    assert not result.connection.ok  # type: ignore[attr-defined]
    assert result.connection.reason == reasons.GRAPH_UNAVAILABLE  # type: ignore[attr-defined]
    assert "no complete answer" in result.connection.message  # type: ignore[attr-defined]
    assert elapsed < 8  # generous: timeoutSeconds 1, deadline 4


def test_endless_graph_body_is_protocol_violation(idp: MicrosoftIdentity,
                                                  hostile: HostileServers,
                                                  tls: ssl.SSLContext) -> None:
    port = hostile.http_endless(tls)
    _, result = timed_probe(graph_account(idp.url, idp.tenant_id, f"https://{LOOPBACK}:{port}",
                                          timeout=5), SECRETS)
    assert result.connection.reason == reasons.PROTOCOL_VIOLATION  # type: ignore[attr-defined]
    assert "larger than 1048576 bytes" in result.connection.message  # type: ignore[attr-defined]


def test_dripping_microsoft_token_endpoint_is_timeout(ca_env: Path, hostile: HostileServers,
                                                      tls: ssl.SSLContext) -> None:
    port = hostile.http_drip(tls)
    url = f"https://{LOOPBACK}:{port}"
    elapsed, result = timed_probe(graph_account(url, "tenant-1", "https://graph.invalid"),
                                  SECRETS)
    assert result.connection.reason == reasons.TIMEOUT  # type: ignore[attr-defined]
    assert "token request" in result.connection.message  # type: ignore[attr-defined]
    assert elapsed < 8


@pytest.mark.parametrize("kind", ["drip", "endless"])
def test_hostile_google_token_endpoint(kind: str, ca_env: Path, hostile: HostileServers,
                                       tls: ssl.SSLContext) -> None:
    port = hostile.http_drip(tls) if kind == "drip" else hostile.http_endless(tls)
    account = gmail_account("a", f"https://{LOOPBACK}:{port}/token")
    assert account.smtp is not None
    account = dataclasses.replace(account, smtp=dataclasses.replace(
        account.smtp, connection=dataclasses.replace(account.smtp.connection, timeout_seconds=1)))
    key = rsa_key()
    secrets = MemorySecrets({(NS, SA_REF.name, SA_REF.key): service_account_json(SA_EMAIL, key)})
    tokens = TokenCache()
    start = time.monotonic()
    got = asyncio.run(tokens.smtp_token(account, secrets))
    elapsed = time.monotonic() - start
    expected = reasons.TIMEOUT if kind == "drip" else reasons.PROTOCOL_VIOLATION
    assert getattr(got, "reason", None) == expected
    assert elapsed < 8  # generous: timeoutSeconds 1, deadline 4


def test_healthy_graph_still_ready(idp: MicrosoftIdentity, http_ca: trustme.CA) -> None:
    with FakeGraph(ca=http_ca, idp=idp, users={UPN}) as graph:
        _, result = timed_probe(graph_account(idp.url, idp.tenant_id, graph.url, timeout=5),
                                SECRETS)
    assert result.ok, result  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- all of them at once


def test_hostile_servers_beside_twenty_healthy_accounts(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: each hostile server next to 20 healthy accounts: all 20 Ready, the run bounded.

    The run's time is printed (the benchmark records it, bench/hostile.py); the assertion on it
    is generous, for a loaded machine: timeoutSeconds 2 + 2 s is the target.
    """
    import io

    from reconciler.cli import main
    from tests.hostile import start_hostile_bed

    bed = start_hostile_bed(tmp_path, healthy=20, timeout=2.0)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bed.ca_bundle))
    out = io.StringIO()
    try:
        monkeypatch.setattr("sys.stdout", out)
        start = time.monotonic()
        code = main(["probe", str(bed.manifests), "--secrets-dir", str(bed.secrets_dir),
                     "--allowed-endpoints", "127.0.0.1:*", "-o", "json"])
        elapsed = time.monotonic() - start
    finally:
        bed.close()
    import json

    entries = {e["name"]: e["status"] for e in json.loads(out.getvalue())}
    ready = {name: next(c for c in status["conditions"] if c["type"] == "Ready")
             for name, status in entries.items()}
    assert code == 1  # the hostile ones are not Ready
    assert [n for n in bed.healthy_names if ready[n]["status"] == "True"] == bed.healthy_names
    assert {n: ready[n]["reason"] for n in bed.hostile_names} == {
        "endless-ehlo": reasons.PROTOCOL_VIOLATION,
        "endless-535": reasons.PROTOCOL_VIOLATION,
        "endless-graph": reasons.PROTOCOL_VIOLATION,
        "drip-token": reasons.TIMEOUT,
        "drip-graph": reasons.GRAPH_UNAVAILABLE,
    }
    print(f"hostile run: {elapsed:.2f} s (timeoutSeconds 2)", file=sys.stderr)
    assert elapsed < 2 + 2 + 10  # generous on a loaded machine; the target is 4 s
