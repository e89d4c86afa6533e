"""OAuth 2.0 tokens against local HTTPS fakes of Google and the Microsoft identity platform."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from reconciler import reasons
from reconciler.log import get_logger
from reconciler.manifest.load import load_paths
from reconciler.model import (
    Account,
    Authentication,
    Connection,
    GraphSpec,
    Identity,
    KeyRef,
    OAuth2,
    Outcome,
    Publish,
    SmtpSpec,
)
from reconciler.probe import probe_account
from reconciler.probe.credentials import MappingSecretReader
from reconciler.probe.microsoft import basic_auth_warning
from reconciler.probe.tokencache import GraphToken, TokenCache, jwt_claims
from tests.fake_idp import (
    LOOPBACK_POLICY,
    Client,
    GoogleTokenEndpoint,
    MemorySecrets,
    MicrosoftIdentity,
    rsa_key,
    service_account_json,
)
from tests.smtpservers import LOOPBACK, NOW, TRUSTSTORE_REF, RunningServer, ThrowawayCA

NS = "mail"
SA_EMAIL = "mailer@demo.iam.gserviceaccount.com"
SA_REF = KeyRef("gmail-sa", "key.json")
SECRET_REF = KeyRef("o365-app", "client-secret")
CERT_REF = KeyRef("o365-app", "client.pem")
CLIENT_SECRET = "s3cr3t~Q8Q~notarealsecretvalue123"
USER_PASSWORD = "Corr3ct-Horse-Battery"
ROPC_DEPRECATION = "ignore:This API has been deprecated:DeprecationWarning"


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def idp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def sa_key():  # type: ignore[no-untyped-def]
    return rsa_key()


@pytest.fixture
def ca_env(idp_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Trust the local CA the documented way: REQUESTS_CA_BUNDLE."""
    bundle = tmp_path / "ca.pem"
    idp_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    return bundle


@pytest.fixture
def google(idp_ca: trustme.CA, ca_env: Path, sa_key) -> Iterator[GoogleTokenEndpoint]:  # type: ignore[no-untyped-def]
    with GoogleTokenEndpoint(ca=idp_ca, accounts={SA_EMAIL: sa_key.public_key()},
                             subjects={"alice@example.com", "bob@example.com"}) as fake:
        yield fake


@pytest.fixture
def microsoft(idp_ca: trustme.CA, ca_env: Path) -> Iterator[MicrosoftIdentity]:
    with MicrosoftIdentity(ca=idp_ca) as fake:
        yield fake


# ---------------------------------------------------------------------- builders


def gmail_account(name: str, token_url: str, subject: str = "alice@example.com") -> Account:
    oauth2 = OAuth2(grant_type="JWTBearer", service_account_key=SA_REF, subject=subject,
                    token_url=token_url)
    return Account(
        namespace=NS, name=name, provider="gmail", send_using="SMTP",
        publish=Publish(secret_name=f"{name}-sender"),
        smtp=SmtpSpec(identity=Identity(subject),
                      connection=Connection(host="smtp.gmail.com", port=587, timeout_seconds=5),
                      authentication=Authentication(method="OAuth2", oauth2=oauth2)))


def o365_smtp_account(name: str, authority: str, tenant: str, client_id: str = "app-1",
                      ref: KeyRef = SECRET_REF) -> Account:
    is_cert = ref is CERT_REF
    oauth2 = OAuth2(grant_type="ClientCredentials", tenant_id=tenant, client_id=client_id,
                    client_secret=None if is_cert else ref,
                    client_certificate=ref if is_cert else None, authority=authority)
    return Account(
        namespace=NS, name=name, provider="office365", send_using="SMTP",
        publish=Publish(secret_name=f"{name}-sender"),
        smtp=SmtpSpec(identity=Identity("billing@contoso.com"),
                      connection=Connection(host="smtp.office365.com", port=587,
                                            timeout_seconds=5),
                      authentication=Authentication(method="OAuth2", oauth2=oauth2)))


def graph_account(name: str, authority: str, tenant: str, *, client_id: str = "app-1",
                  grant: str = "ClientCredentials", ref: KeyRef | None = SECRET_REF) -> Account:
    is_cert = ref is CERT_REF
    graph = GraphSpec(
        user_principal_name="billing@contoso.com", tenant_id=tenant, client_id=client_id,
        grant_type=grant,  # type: ignore[arg-type]
        client_secret=ref if ref is not None and not is_cert else None,
        client_certificate=ref if is_cert else None,
        username=KeyRef("o365-user", "username") if grant == "Password" else None,
        password=KeyRef("o365-user", "password") if grant == "Password" else None,
        authority=authority, timeout_seconds=5)
    return Account(namespace=NS, name=name, provider="office365", send_using="MicrosoftGraph",
                   publish=Publish(secret_name=f"{name}-sender"), graph=graph)


def google_secrets(key) -> MemorySecrets:  # type: ignore[no-untyped-def]
    return MemorySecrets({(NS, SA_REF.name, SA_REF.key): service_account_json(SA_EMAIL, key)})


def ms_secrets() -> MemorySecrets:
    values: dict[tuple[str, str, str], bytes | str] = {
        (NS, SECRET_REF.name, SECRET_REF.key): CLIENT_SECRET + "\n",
        (NS, "o365-user", "username"): "billing@contoso.com\n",
        (NS, "o365-user", "password"): USER_PASSWORD,
    }
    return MemorySecrets(values)


RSA_CA = trustme.CA(key_type=trustme.KeyType.RSA)  # Entra takes RSA client certificates only


def client_cert_pem(ca: trustme.CA = RSA_CA) -> tuple[bytes, trustme.LeafCert]:
    leaf = ca.issue_cert("app-1.contoso.example", key_type=trustme.KeyType.RSA)
    return leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes(), leaf


# ---------------------------------------------------------------------- Google JWT bearer


def test_google_jwt_bearer_exchanges_a_verified_assertion(google: GoogleTokenEndpoint,
                                                          sa_key) -> None:  # type: ignore[no-untyped-def]
    tokens = TokenCache()
    token = asyncio.run(tokens.smtp_token(gmail_account("a", google.token_url),
                                          google_secrets(sa_key)))
    assert isinstance(token, str) and token in google.issued
    claims = google.issued[token]  # the fake verified the RS256 signature and every claim
    assert claims["iss"] == SA_EMAIL
    assert claims["sub"] == "alice@example.com"
    assert claims["scope"] == "https://mail.google.com/"
    assert claims["aud"] == google.token_url
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    form = google.token_requests()[0].form()
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    header = json.loads(__import__("base64").urlsafe_b64decode(
        form["assertion"].split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}


def test_google_wrong_key_is_token_request_failed(google: GoogleTokenEndpoint) -> None:
    other = rsa_key()  # not the key Google holds for this service account
    secrets = google_secrets(other)
    got = asyncio.run(TokenCache().smtp_token(gmail_account("a", google.token_url), secrets))
    assert isinstance(got, Outcome) and not got.ok
    assert got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "invalid_grant: Invalid JWT Signature." in got.message
    assert "Secret mail/gmail-sa key 'key.json'" in got.message
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    assert pem.splitlines()[1] not in got.message


def test_google_subject_without_delegation_names_the_error(google: GoogleTokenEndpoint,
                                                           sa_key) -> None:  # type: ignore[no-untyped-def]
    account = gmail_account("a", google.token_url, subject="mallory@example.com")
    got = asyncio.run(TokenCache().smtp_token(account, google_secrets(sa_key)))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "HTTP 401 unauthorized_client" in got.message
    assert "mallory@example.com" in got.message  # says what to check


@pytest.mark.parametrize(("value", "expected"), [
    (b"not json", "is not JSON"),
    (b'{"type": "service_account"}', "has no client_email or private_key"),
])
def test_google_key_that_is_not_a_service_account(google: GoogleTokenEndpoint, value: bytes,
                                                  expected: str) -> None:
    secrets = MemorySecrets({(NS, SA_REF.name, SA_REF.key): value})
    got = asyncio.run(TokenCache().smtp_token(gmail_account("a", google.token_url), secrets))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert expected in got.message and "service-account key JSON" in got.message
    assert google.token_requests() == []


def test_missing_secret_is_secret_not_found(google: GoogleTokenEndpoint) -> None:
    got = asyncio.run(TokenCache().smtp_token(gmail_account("a", google.token_url),
                                              MemorySecrets({})))
    assert isinstance(got, Outcome) and got.reason == reasons.SECRET_NOT_FOUND
    assert "mail/gmail-sa" in got.message and "key.json" in got.message


def test_untrusted_token_endpoint_is_token_request_failed(
        google: GoogleTokenEndpoint, sa_key, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # only the system trust store: not our CA
    got = asyncio.run(TokenCache().smtp_token(gmail_account("a", google.token_url),
                                              google_secrets(sa_key)))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "CERTIFICATE_VERIFY_FAILED" in got.message and "REQUESTS_CA_BUNDLE" in got.message


# ---------------------------------------------------------------------- Microsoft (msal)


def test_client_secret_token_for_office365_smtp(microsoft: MicrosoftIdentity) -> None:
    microsoft.clients["app-1"] = Client(secret=CLIENT_SECRET)
    account = o365_smtp_account("a", microsoft.url, microsoft.tenant_id)
    token = asyncio.run(TokenCache().smtp_token(account, ms_secrets()))
    assert isinstance(token, str)
    assert jwt_claims(token)["aud"] == "https://outlook.office365.com"
    form = microsoft.token_requests()[0].form()
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "https://outlook.office365.com/.default"
    # msal really fetched the OpenID configuration and not the public cloud's discovery.
    assert any(s.path.endswith("/v2.0/.well-known/openid-configuration") for s in microsoft.seen)


def test_wrong_client_secret_reports_the_aadsts_code(microsoft: MicrosoftIdentity) -> None:
    microsoft.clients["app-1"] = Client(secret="the-real-one-is-different")
    account = o365_smtp_account("a", microsoft.url, microsoft.tenant_id)
    got = asyncio.run(TokenCache().smtp_token(account, ms_secrets()))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "invalid_client: AADSTS7000215: Invalid client secret provided." in got.message
    assert "client app-1" in got.message and microsoft.tenant_id in got.message
    assert "Trace ID" not in got.message
    assert CLIENT_SECRET not in got.message


def test_client_certificate_assertion_is_verified(idp_ca: trustme.CA,
                                                  microsoft: MicrosoftIdentity) -> None:
    pem, leaf = client_cert_pem()
    from cryptography import x509
    microsoft.clients["app-1"] = Client(
        certificate=x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
    secrets = MemorySecrets({(NS, CERT_REF.name, CERT_REF.key): pem})
    got = asyncio.run(TokenCache().graph_token(
        graph_account("a", microsoft.url, microsoft.tenant_id, ref=CERT_REF), secrets))
    assert isinstance(got, GraphToken)
    assert got.roles == ("Mail.Send", "User.Read.All") and not got.delegated
    [assertion] = microsoft.assertions  # signature checked against the certificate's key
    assert assertion["claims"]["aud"] == microsoft.token_endpoint
    assert assertion["claims"]["iss"] == assertion["claims"]["sub"] == "app-1"
    assert "client_secret" not in microsoft.token_requests()[0].form()


def test_unregistered_certificate_is_aadsts700027(idp_ca: trustme.CA,
                                                  microsoft: MicrosoftIdentity) -> None:
    from cryptography import x509
    registered = RSA_CA.issue_cert("app-1.contoso.example", key_type=trustme.KeyType.RSA)
    microsoft.clients["app-1"] = Client(
        certificate=x509.load_pem_x509_certificate(registered.cert_chain_pems[0].bytes()))
    pem, _ = client_cert_pem()  # another key pair
    secrets = MemorySecrets({(NS, CERT_REF.name, CERT_REF.key): pem})
    got = asyncio.run(TokenCache().graph_token(
        graph_account("a", microsoft.url, microsoft.tenant_id, ref=CERT_REF), secrets))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "AADSTS700027" in got.message and "invalid_client" in got.message


@pytest.mark.filterwarnings(ROPC_DEPRECATION)  # msal deprecates ROPC for public clients
def test_password_grant_gives_a_delegated_token(microsoft: MicrosoftIdentity) -> None:
    microsoft.clients["app-1"] = Client(public=True)
    microsoft.users["billing@contoso.com"] = (USER_PASSWORD, "Mail.Send User.Read")
    account = graph_account("a", microsoft.url, microsoft.tenant_id, grant="Password", ref=None)
    got = asyncio.run(TokenCache().graph_token(account, ms_secrets()))
    assert isinstance(got, GraphToken) and got.delegated
    assert got.scopes == ("Mail.Send", "User.Read")
    form = microsoft.token_requests()[0].form()
    assert form["grant_type"] == "password" and form["username"] == "billing@contoso.com"


def test_password_grant_with_client_secret_uses_the_confidential_client(
        microsoft: MicrosoftIdentity) -> None:
    microsoft.clients["app-1"] = Client(secret=CLIENT_SECRET)
    microsoft.users["billing@contoso.com"] = (USER_PASSWORD, "Mail.Send")
    account = graph_account("a", microsoft.url, microsoft.tenant_id, grant="Password")
    got = asyncio.run(TokenCache().graph_token(account, ms_secrets()))
    assert isinstance(got, GraphToken) and got.scopes == ("Mail.Send",)
    assert microsoft.token_requests()[0].form()["client_secret"] == CLIENT_SECRET


@pytest.mark.filterwarnings(ROPC_DEPRECATION)
def test_wrong_user_password_is_aadsts50126(microsoft: MicrosoftIdentity) -> None:
    microsoft.clients["app-1"] = Client(public=True)
    microsoft.users["billing@contoso.com"] = ("another-password", "Mail.Send")
    account = graph_account("a", microsoft.url, microsoft.tenant_id, grant="Password", ref=None)
    got = asyncio.run(TokenCache().graph_token(account, ms_secrets()))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "invalid_grant: AADSTS50126" in got.message
    assert "user billing@contoso.com" in got.message and USER_PASSWORD not in got.message


def test_unknown_tenant_is_token_request_failed(microsoft: MicrosoftIdentity) -> None:
    microsoft.clients["app-1"] = Client(secret=CLIENT_SECRET)
    account = graph_account("a", microsoft.url, "no-such-tenant")
    got = asyncio.run(TokenCache().graph_token(account, ms_secrets()))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert f"{microsoft.url}/no-such-tenant" in got.message
    assert microsoft.token_requests() == []


def test_unreachable_authority_is_token_request_failed(ca_env: Path) -> None:
    account = graph_account("a", "https://127.0.0.1:9", "t")
    got = asyncio.run(TokenCache().graph_token(account, ms_secrets()))
    assert isinstance(got, Outcome) and got.reason == reasons.TOKEN_REQUEST_FAILED
    assert "https://127.0.0.1:9/t" in got.message


# ---------------------------------------------------------------------- caching


def test_accounts_sharing_a_client_share_one_token_request(microsoft: MicrosoftIdentity,
                                                           google: GoogleTokenEndpoint,
                                                           sa_key) -> None:  # type: ignore[no-untyped-def]
    microsoft.clients["app-1"] = Client(secret=CLIENT_SECRET)
    tokens = TokenCache()
    graph = [graph_account(f"g{i}", microsoft.url, microsoft.tenant_id) for i in range(5)]
    gmail = [gmail_account(f"m{i}", google.token_url) for i in range(4)]
    gmail.append(gmail_account("bob", google.token_url, subject="bob@example.com"))
    ms, gs = ms_secrets(), google_secrets(sa_key)

    async def run() -> list[object]:
        first = await asyncio.gather(*(tokens.graph_token(a, ms) for a in graph),
                                     *(tokens.smtp_token(a, gs) for a in gmail))
        again = await tokens.graph_token(graph[0], ms)  # later in the run: still cached
        return [*first, again]

    got = asyncio.run(run())
    assert len(microsoft.token_requests()) == 1
    graph_tokens = [t for t in got[:5] + got[-1:] if isinstance(t, GraphToken)]
    assert len(graph_tokens) == 6 and len({t.access_token for t in graph_tokens}) == 1
    # One per (service account, subject): four mailboxes of alice share one, bob has his own.
    assert len(google.token_requests()) == 2
    assert len(set(got[5:9])) == 1 and got[9] != got[5]
    assert tokens.requests_sent == 3


# ---------------------------------------------------------------------- no secret anywhere


@pytest.mark.filterwarnings(ROPC_DEPRECATION)
def test_no_secret_or_token_in_logs_or_messages(
        microsoft: MicrosoftIdentity, google: GoogleTokenEndpoint, sa_key,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture, log_stream: io.StringIO) -> None:
    stream = log_stream  # structlog at debug level, JSON, into memory (tests/conftest.py)
    caplog.set_level(logging.DEBUG)
    microsoft.clients["app-1"] = Client(secret=CLIENT_SECRET)
    microsoft.clients["app-2"] = Client(secret="different-secret-value")
    microsoft.clients["app-3"] = Client(public=True)
    microsoft.users["billing@contoso.com"] = (USER_PASSWORD, "Mail.Send")
    tokens = TokenCache()
    gs, ms = google_secrets(sa_key), ms_secrets()

    async def run() -> list[object]:
        return list(await asyncio.gather(
            tokens.smtp_token(gmail_account("a", google.token_url), gs),
            tokens.graph_token(graph_account("b", microsoft.url, microsoft.tenant_id), ms),
            tokens.graph_token(graph_account("c", microsoft.url, microsoft.tenant_id,
                                             client_id="app-2"), ms),
            tokens.graph_token(graph_account("d", microsoft.url, microsoft.tenant_id,
                                             client_id="app-3", grant="Password", ref=None),
                               ms)))

    results = asyncio.run(run())
    for r in results:  # a careless log line: registered tokens are still redacted
        get_logger().info("after tokens", result=r if isinstance(r, str) else repr(r))
    issued = [*google.issued, *microsoft.issued]
    assert len(issued) == 3
    pem = json.loads(gs.values[(NS, SA_REF.name, SA_REF.key)])["private_key"]
    forbidden = [CLIENT_SECRET, USER_PASSWORD, *issued, *pem.splitlines()[1:3]]
    texts = [stream.getvalue(), caplog.text,
             *(r.message for r in results if isinstance(r, Outcome)),
             repr([r for r in results if not isinstance(r, str)])]  # GraphToken hides its token
    for text in texts:
        for value in forbidden:
            assert value not in text
    assert "token acquired" in stream.getvalue()  # the log ran at debug level


# ---------------------------------------------------------------------- basic auth warning


def _smtp(provider: str, host: str, method: str) -> Account:
    auth = (Authentication(method="Password", password=KeyRef("p", "password"))
            if method == "Password" else Authentication(method=method))  # type: ignore[arg-type]
    return Account(namespace=NS, name="x", provider=provider, send_using="SMTP",
                   publish=Publish(secret_name="x-sender"),
                   smtp=SmtpSpec(identity=Identity("a@b.c"),
                                 connection=Connection(host=host, port=587),
                                 authentication=auth))


@pytest.mark.parametrize(("account", "warned"), [
    (_smtp("office365", "smtp.office365.com", "Password"), True),
    (_smtp("custom", "smtp.office365.com", "Password"), True),
    (_smtp("office365", "smtp.office365.com", "None"), False),
    (_smtp("gmail", "smtp.gmail.com", "Password"), False),
    (graph_account("g", "https://login.microsoftonline.com", "t"), False),
])
def test_basic_auth_warning(account: Account, warned: bool) -> None:
    got = basic_auth_warning(account)
    assert (got is not None) == warned
    if got is not None:
        assert got.reason == reasons.BASIC_AUTH_DEPRECATED and not got.ok
        assert "ClientCredentials" in got.message and "MicrosoftGraph" in got.message


# ---------------------------------------------------------------------- end to end: SMTP XOAUTH2


def _on_local_server(acc: Account, port: int, **oauth2: Any) -> Account:
    """An example account pointed at the local SMTP server and identity provider fakes."""
    assert acc.smtp is not None and acc.smtp.authentication.oauth2 is not None
    smtp, current = acc.smtp, acc.smtp.authentication.oauth2
    return dataclasses.replace(acc, smtp=dataclasses.replace(
        smtp,
        connection=dataclasses.replace(smtp.connection, host=LOOPBACK, port=port,
                                       truststore=TRUSTSTORE_REF, timeout_seconds=5),
        authentication=dataclasses.replace(
            smtp.authentication,
            oauth2=dataclasses.replace(current, **oauth2))))


def _example(name: str) -> Account:
    loaded = load_paths([str(ACCOUNTS / f"{name}.yaml")])
    assert loaded.ok, [str(d) for d in loaded.diagnostics]
    [acc] = loaded.accounts
    return acc


ACCOUNTS = Path(__file__).resolve().parent.parent / "accounts"


def test_gmail_example_authenticates_with_xoauth2(
        google: GoogleTokenEndpoint, smtp_server: Callable[..., RunningServer],
        ca: ThrowawayCA) -> None:
    """accounts/gmail-oauth.yaml: JWT bearer at the token URL, then AUTH XOAUTH2 over STARTTLS."""
    acc = _example("gmail-oauth")
    subject = acc.smtp.authentication.oauth2.subject  # type: ignore[union-attr]
    sa = rsa_key()
    google.accounts["gmail-sender@demo.iam.gserviceaccount.com"] = sa.public_key()
    google.subjects.add(str(subject))

    def checker(mechanism: str, login: str, token: str) -> bool:
        # The server accepts only a token the token endpoint issued for this very mailbox.
        return mechanism == "XOAUTH2" and google.issued.get(token, {}).get("sub") == login

    server = smtp_server("STARTTLS", checker=checker)
    acc = _on_local_server(acc, server.port, token_url=google.token_url)
    secrets = MappingSecretReader({
        ("demo", "gmail-service-account", "key.json"):
            service_account_json("gmail-sender@demo.iam.gserviceaccount.com", sa),
        ("demo", TRUSTSTORE_REF.name, TRUSTSTORE_REF.key): ca.ca_pem})
    result = asyncio.run(probe_account(acc, secrets, now=NOW, tokens=TokenCache(),
                                       policy=LOOPBACK_POLICY))
    assert result.ok, (result.connection, result.authentication)
    assert result.auth_mechanism == "XOAUTH2" and result.authenticated_identity == subject
    [attempt] = server.auth_attempts
    assert (attempt.mechanism, attempt.login, attempt.accepted) == ("XOAUTH2", subject, True)
    assert len(google.token_requests()) == 1


def test_office365_example_authenticates_with_xoauth2(
        microsoft: MicrosoftIdentity, smtp_server: Callable[..., RunningServer],
        ca: ThrowawayCA) -> None:
    """accounts/office365-oauth.yaml: msal client credentials, then AUTH XOAUTH2 (lines of a few
    KB, which the test server accepts as Exchange Online does)."""
    acc = _example("office365-oauth")
    oauth2 = acc.smtp.authentication.oauth2  # type: ignore[union-attr]
    assert oauth2 is not None and oauth2.client_id and oauth2.tenant_id
    microsoft.tenant_id = oauth2.tenant_id
    microsoft.clients[oauth2.client_id] = Client(secret=CLIENT_SECRET, roles=("SMTP.SendAsApp",))

    def checker(mechanism: str, login: str, token: str) -> bool:
        claims = microsoft.issued.get(token, {})
        return mechanism == "XOAUTH2" and claims.get("aud") == "https://outlook.office365.com"

    server = smtp_server("STARTTLS", checker=checker)
    acc = _on_local_server(acc, server.port, authority=microsoft.url)
    secrets = MappingSecretReader({
        ("demo", "office365-app", "client-secret"): CLIENT_SECRET,
        ("demo", TRUSTSTORE_REF.name, TRUSTSTORE_REF.key): ca.ca_pem})
    result = asyncio.run(probe_account(acc, secrets, now=NOW, tokens=TokenCache(),
                                       policy=LOOPBACK_POLICY))
    assert result.ok, (result.connection, result.authentication)
    assert result.auth_mechanism == "XOAUTH2"
    assert [(a.mechanism, a.accepted) for a in server.auth_attempts] == [("XOAUTH2", True)]
    assert microsoft.token_requests()[0].form()["scope"] == "https://outlook.office365.com/.default"
