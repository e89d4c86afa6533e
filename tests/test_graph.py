"""Microsoft Graph probe against local HTTPS fakes of the identity platform and Graph."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from reconciler import reasons
from reconciler.manifest.load import load_paths
from reconciler.model import Account, GraphSpec, KeyRef, ProbeResult, Publish
from reconciler.probe import probe_account
from reconciler.probe.credentials import MappingSecretReader
from reconciler.probe.graph import probe_graph
from reconciler.probe.tokencache import TokenCache
from tests.fake_idp import LOOPBACK_POLICY, Client, FakeGraph, MemorySecrets, MicrosoftIdentity

NS = "mail"
UPN = "billing@contoso.com"
CLIENT_SECRET = "graph~S3cret~value~0123456789"
USER_PASSWORD = "Tr0ub4dor&3-graph"
NOW = datetime.now(UTC)  # the wall clock, as OpenSSL checks the certificates against it
RSA_CA = trustme.CA(key_type=trustme.KeyType.RSA)  # Entra takes RSA client certificates only


@pytest.fixture(scope="module")
def idp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_env(idp_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bundle = tmp_path / "ca.pem"
    idp_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    return bundle


@pytest.fixture
def idp(idp_ca: trustme.CA, ca_env: Path) -> Iterator[MicrosoftIdentity]:
    with MicrosoftIdentity(ca=idp_ca, clients={"app-1": Client(secret=CLIENT_SECRET)}) as fake:
        yield fake


@pytest.fixture
def graph(idp_ca: trustme.CA, idp: MicrosoftIdentity) -> Iterator[FakeGraph]:
    with FakeGraph(ca=idp_ca, idp=idp, users={UPN}) as fake:
        yield fake


def account(idp: MicrosoftIdentity, endpoint: str, *, name: str = "billing", upn: str = UPN,
            grant: str = "ClientCredentials", secret: bool = True) -> Account:
    spec = GraphSpec(
        user_principal_name=upn, tenant_id=idp.tenant_id, client_id="app-1",
        grant_type=grant,  # type: ignore[arg-type]
        client_secret=KeyRef("graph-app", "client-secret") if secret else None,
        username=KeyRef("graph-user", "username") if grant == "Password" else None,
        password=KeyRef("graph-user", "password") if grant == "Password" else None,
        authority=idp.url, endpoint=endpoint, timeout_seconds=5)
    return Account(namespace=NS, name=name, provider="office365", send_using="MicrosoftGraph",
                   publish=Publish(secret_name=f"{name}-sender"), graph=spec)


SECRETS = MemorySecrets({
    (NS, "graph-app", "client-secret"): CLIENT_SECRET,
    (NS, "graph-user", "username"): UPN,
    (NS, "graph-user", "password"): USER_PASSWORD,
})


def probe(acc: Account, tokens: TokenCache | None = None) -> ProbeResult:
    return asyncio.run(probe_graph(acc, SECRETS, now=NOW, tokens=tokens))


def test_mailbox_found_with_mail_send(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    result = probe(account(idp, graph.url))
    assert result.ok
    assert result.connection.reason == reasons.SUCCEEDED and UPN in result.connection.message
    assert result.authentication is not None
    assert result.authentication.reason == reasons.SUCCEEDED
    assert "application permission Mail.Send" in result.authentication.message
    assert result.connectivity == "Microsoft Graph" and result.protocol == "MicrosoftGraph"
    assert result.tls_version in ("TLSv1.2", "TLSv1.3") and result.cipher
    assert result.certificate is not None
    assert "trustme" in result.certificate.issuer and result.certificate.days_remaining > 0
    # the client secret is published only with publish.clientCredentials (test_publishable.py)
    assert result.credentials == {}
    assert set(result.secret_versions) == {"Secret/graph-app/client-secret"}
    assert set(result.timings) == {"token", "mailbox"}
    [lookup] = graph.seen
    assert lookup.path == f"/v1.0/users/{UPN}"
    assert lookup.headers["Authorization"].removeprefix("Bearer ") in idp.issued
    assert CLIENT_SECRET not in repr(result)  # credentials are kept out of repr


def test_unknown_mailbox_is_mailbox_not_found(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    result = probe(account(idp, graph.url, upn="nobody@contoso.com"))
    assert not result.connection.ok and result.connection.reason == reasons.MAILBOX_NOT_FOUND
    assert "Request_ResourceNotFound" in result.connection.message
    assert "graph.userPrincipalName" in result.connection.message
    assert result.authentication is not None and result.authentication.ok  # token is fine


def test_forbidden_lookup_is_insufficient_permissions(idp: MicrosoftIdentity,
                                                      graph: FakeGraph) -> None:
    graph.forbidden.add(UPN)
    result = probe(account(idp, graph.url))
    assert result.connection.reason == reasons.INSUFFICIENT_PERMISSIONS
    assert "HTTP 403" in result.connection.message
    assert "Authorization_RequestDenied" in result.connection.message
    assert "User.Read.All" in result.connection.message


def test_application_token_without_mail_send(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    idp.clients["app-1"] = Client(secret=CLIENT_SECRET, roles=("User.Read.All",))
    result = probe(account(idp, graph.url))
    assert result.connection.ok
    assert result.authentication is not None and not result.authentication.ok
    assert result.authentication.reason == reasons.INSUFFICIENT_PERMISSIONS
    msg = result.authentication.message
    assert "application permission Mail.Send" in msg and "roles: User.Read.All" in msg
    assert "admin consent" in msg
    assert not result.ok


@pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")
def test_delegated_token_without_mail_send(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    idp.clients["app-1"] = Client(public=True)
    idp.users[UPN] = (USER_PASSWORD, "User.Read openid profile")
    result = probe(account(idp, graph.url, grant="Password", secret=False))
    assert result.connection.ok
    assert result.authentication is not None
    assert result.authentication.reason == reasons.INSUFFICIENT_PERMISSIONS
    assert "delegated permission Mail.Send" in result.authentication.message
    assert "scp: User.Read, openid, profile" in result.authentication.message
    assert result.credentials == {"username": UPN, "password": USER_PASSWORD}


@pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")
def test_delegated_token_with_mail_send(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    idp.clients["app-1"] = Client(public=True)
    idp.users[UPN] = (USER_PASSWORD, "Mail.Send User.Read")
    result = probe(account(idp, graph.url, grant="Password", secret=False))
    assert result.ok
    assert result.authentication is not None
    assert "delegated permission Mail.Send" in result.authentication.message


def test_graph_5xx_is_graph_unavailable(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    graph.status = 503
    result = probe(account(idp, graph.url))
    assert result.connection.reason == reasons.GRAPH_UNAVAILABLE
    assert "HTTP 503" in result.connection.message and "serviceNotAvailable" in (
        result.connection.message)


def test_unreachable_graph_is_graph_unavailable(idp: MicrosoftIdentity) -> None:
    result = probe(account(idp, "https://127.0.0.1:9"))
    assert result.connection.reason == reasons.GRAPH_UNAVAILABLE
    assert "cannot reach 127.0.0.1" in result.connection.message
    assert "graph.endpoint" in result.connection.message


def test_untrusted_graph_certificate_is_graph_unavailable(
        idp: MicrosoftIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    other = trustme.CA()  # Graph's certificate comes from a CA nobody configured
    with FakeGraph(ca=other, idp=idp, users={UPN}) as untrusted:
        result = probe(account(idp, untrusted.url))
    assert result.connection.reason == reasons.GRAPH_UNAVAILABLE
    assert "not trusted" in result.connection.message
    assert "REQUESTS_CA_BUNDLE" in result.connection.message


def test_token_failure_fails_both_stages(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    idp.clients["app-1"] = Client(secret="rotated-in-entra-but-not-in-the-secret")
    result = probe(account(idp, graph.url))
    assert result.connection.reason == reasons.TOKEN_REQUEST_FAILED
    assert result.authentication == result.connection
    assert "AADSTS7000215" in result.connection.message
    assert CLIENT_SECRET not in result.connection.message
    assert result.connectivity == "Microsoft Graph" and graph.seen == []


def test_missing_secret_is_secret_not_found(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    acc = account(idp, graph.url)
    empty = MemorySecrets({})
    result = asyncio.run(probe_graph(acc, empty, now=NOW))
    assert result.connection.reason == reasons.SECRET_NOT_FOUND
    assert "mail/graph-app" in result.connection.message
    # recorded as missing, as the run records it, so the next run sees no change until it appears
    assert set(result.secret_versions.values()) == {"missing"} and result.credentials == {}


def test_accounts_sharing_a_client_request_one_token(idp: MicrosoftIdentity,
                                                     graph: FakeGraph) -> None:
    graph.users.update({"a@contoso.com", "b@contoso.com"})
    tokens = TokenCache()
    accounts = [account(idp, graph.url, name=n, upn=u)
                for n, u in (("one", UPN), ("two", "a@contoso.com"), ("three", "b@contoso.com"))]

    async def run() -> list[ProbeResult]:
        return list(await asyncio.gather(
            *(probe_graph(a, SECRETS, now=NOW, tokens=tokens) for a in accounts)))

    results = asyncio.run(run())
    assert all(r.ok for r in results)
    assert len(idp.token_requests()) == 1
    assert len(graph.seen) == 3


# ---------------------------------------------------------------------- accounts/ examples


ACCOUNTS = Path(__file__).resolve().parent.parent / "accounts"


def _example(name: str, idp: MicrosoftIdentity, graph: FakeGraph) -> Account:
    """An example manifest, loaded and validated, pointed at the local fakes."""
    loaded = load_paths([str(ACCOUNTS / f"{name}.yaml")])
    assert loaded.ok, [str(d) for d in loaded.diagnostics]
    [acc] = loaded.accounts
    assert acc.graph is not None
    idp.tenant_id = acc.graph.tenant_id
    graph.users.add(acc.graph.user_principal_name)
    return dataclasses.replace(acc, graph=dataclasses.replace(
        acc.graph, authority=idp.url, endpoint=graph.url))


def test_graph_app_example_probes_green(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    """accounts/graph-app.yaml: client certificate, application Mail.Send."""
    leaf = RSA_CA.issue_cert("graph-app.example.com", key_type=trustme.KeyType.RSA)
    acc = _example("graph-app", idp, graph)
    assert acc.graph is not None and acc.graph.client_certificate is not None
    idp.clients[acc.graph.client_id] = Client(
        certificate=x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
    ref = acc.graph.client_certificate
    secrets = MappingSecretReader({(acc.namespace, ref.name, ref.key):
                                   leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes()})
    result = asyncio.run(probe_account(acc, secrets, now=NOW, tokens=TokenCache(),
                                       policy=LOOPBACK_POLICY))
    assert result.ok, (result.connection, result.authentication)
    assert (result.connectivity, result.protocol) == ("Microsoft Graph", "MicrosoftGraph")
    assert len(idp.assertions) == 1 and result.credentials == {}


@pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")
def test_graph_user_example_probes_green(idp: MicrosoftIdentity, graph: FakeGraph) -> None:
    """accounts/graph-user.yaml: password grant, delegated Mail.Send."""
    acc = _example("graph-user", idp, graph)
    assert acc.graph is not None
    idp.clients[acc.graph.client_id] = Client(public=True)
    idp.users[UPN] = (USER_PASSWORD, "Mail.Send User.Read")
    secrets = MappingSecretReader({(acc.namespace, "graph-user", "username"): UPN,
                                   (acc.namespace, "graph-user", "password"): USER_PASSWORD})
    result = asyncio.run(probe_account(acc, secrets, now=NOW, tokens=TokenCache(),
                                       policy=LOOPBACK_POLICY))
    assert result.ok, (result.connection, result.authentication)
    assert result.authentication is not None
    assert "delegated permission Mail.Send" in result.authentication.message
    assert result.credentials == {"username": UPN, "password": USER_PASSWORD}
