"""reconciler.policy: endpoint allow-lists, opt-in Secrets, certificate-only truststores."""

from __future__ import annotations

import pytest

from reconciler import reasons
from reconciler.errors import SecretNotAllowed, UsageError
from reconciler.model import Account, GraphSpec, KeyRef, OAuth2, Publish
from reconciler.policy import (
    ALLOWED_ACCOUNTS_ANNOTATION,
    ALLOWED_HOSTS_ANNOTATION,
    CREDENTIAL_LABEL,
    GuardedReader,
    Policy,
    SecretMeta,
    certificates_only,
    endpoint_refusal,
    guard,
    host_matches,
    secret_refusal,
)
from reconciler.probe.credentials import MappingSecretReader
from tests.smtpservers import PASSWORD_REF, make_account

OPTED_IN = {CREDENTIAL_LABEL: "true"}


@pytest.mark.parametrize(("globs", "host", "port", "ok"), [
    (["127.0.0.1:*"], "127.0.0.1", 8443, True),
    (["127.0.0.1:*"], "127.0.0.2", 8443, False),
    (["127.0.0.1:8443"], "127.0.0.1", 9443, False),
    (["127.0.0.1"], "127.0.0.1.attacker.example", 443, False),
    (["*.example.com"], "smtp.example.com", 25, True),
    (["*.example.com"], "example.com.attacker.example", 25, False),
    (["[::1]:*"], "::1", 25, True),
    (["::1"], "[::1]", 25, True),
    (["login.microsoftonline.com"], "LOGIN.microsoftonline.com.", 443, True),
])
def test_host_matches(globs: list[str], host: str, port: int, ok: bool) -> None:
    assert host_matches(globs, host, port) is ok


def test_host_matches_answers_each_question_of_its_own() -> None:
    """host_matches is cached: asked in a row, questions that differ in the port, the globs or
    the host only get their own answers (a cache keyed on less would repeat the first)."""
    asked = [(["127.0.0.1:25"], "127.0.0.1", 25, True), (["127.0.0.1:25"], "127.0.0.1", 587, False),
             (["127.0.0.1:25"], "127.0.0.1", None, False), (["*.example.com"], "a.example.com", 25, True),
             (["*.example.org"], "a.example.com", 25, False), (["*.example.org", "*.example.com"],
                                                                "a.example.com", 25, True),
             (["*.example.com"], "a.example.net", 25, False)]
    for _ in range(2):
        assert [host_matches(g, h, p) for g, h, p, _ok in asked] == [ok for *_q, ok in asked]


def _graph(authority: str = "https://login.microsoftonline.com",
           endpoint: str = "https://graph.microsoft.com") -> Account:
    return Account(namespace="mail", name="app", provider="office365",
                   send_using="MicrosoftGraph", publish=Publish(secret_name="app-sender"),
                   graph=GraphSpec(user_principal_name="app@example.test", tenant_id="t",
                                   client_id="c", client_secret=KeyRef("graph", "secret"),
                                   authority=authority, endpoint=endpoint))


def _oauth(token_url: str) -> Account:
    return make_account(method="OAuth2", oauth2=OAuth2(grant_type="JWTBearer", subject="a@b.c",
                                                       service_account_key=KeyRef("sa", "k"),
                                                       token_url=token_url))


@pytest.mark.parametrize(("account", "refused"), [
    (_graph(), False),
    (_graph(authority="https://login.microsoftonline.us"), False),
    (_graph(endpoint="https://microsoftgraph.chinacloudapi.cn"), False),
    (_graph(authority="http://login.microsoftonline.com"), True),  # not https
    (_graph(endpoint="https://graph.attacker.example"), True),
    (_graph(authority="https://127.0.0.1:8443"), True),
    (_oauth("https://oauth2.googleapis.com/token"), False),
    (_oauth("http://oauth2.googleapis.com/token"), True),
    (_oauth("https://tokens.attacker.example/token"), True),
], ids=lambda v: getattr(v, "name", str(v)))
def test_endpoint_refusal_by_default(account: Account, refused: bool) -> None:
    outcome = endpoint_refusal(account, Policy())
    assert (outcome is not None) is refused
    if outcome is not None:
        assert outcome.reason == reasons.ENDPOINT_NOT_ALLOWED


def test_allowed_endpoints_widen_and_allowed_hosts_restrict() -> None:
    loopback = Policy.from_flags(["127.0.0.1:*"])
    assert endpoint_refusal(_graph(authority="https://127.0.0.1:8443"), loopback) is None
    assert endpoint_refusal(_graph(authority="http://127.0.0.1:8443"), loopback) is not None
    assert endpoint_refusal(_graph(), loopback) is None  # the defaults stay
    only = Policy.from_flags(allowed_hosts="smtp.example.com,*.mail.example.com")
    refused = endpoint_refusal(make_account(host="127.0.0.1"), only)
    assert refused is not None and "--allowed-hosts" in refused.message
    assert endpoint_refusal(make_account(host="eu.mail.example.com"), only) is None
    with pytest.raises(UsageError):
        Policy.from_flags(["https://example.com/"])


ACCOUNT = make_account(host="smtp.example.com", port=587)


@pytest.mark.parametrize(("meta", "needle"), [
    (SecretMeta(), f'label {CREDENTIAL_LABEL}: "true"'),
    (SecretMeta(labels={CREDENTIAL_LABEL: "yes"}), "kubectl label secret -n mail"),
    (SecretMeta(labels=OPTED_IN, type="kubernetes.io/service-account-token"), "never reads"),
    (SecretMeta(labels=OPTED_IN, type="kubernetes.io/dockerconfigjson"), "never reads"),
    (SecretMeta(opted_in=True, type="kubernetes.io/service-account-token"), "never reads"),
    (SecretMeta(labels=OPTED_IN, annotations={ALLOWED_HOSTS_ANNOTATION: "smtp.other.com"}),
     f"{ALLOWED_HOSTS_ANNOTATION} names (smtp.other.com)"),
    (SecretMeta(labels=OPTED_IN, annotations={ALLOWED_ACCOUNTS_ANNOTATION: "alerts, ops-*"}),
     "adds billing there"),
    (SecretMeta(labels=OPTED_IN), None),
    (SecretMeta(opted_in=True), None),
    (SecretMeta(labels=OPTED_IN, annotations={ALLOWED_HOSTS_ANNOTATION: "*.example.com",
                                              ALLOWED_ACCOUNTS_ANNOTATION: "bill*"}), None),
    (SecretMeta(labels=OPTED_IN, annotations={ALLOWED_HOSTS_ANNOTATION: "smtp.example.com:587"}),
     None),
])
def test_secret_refusal(meta: SecretMeta, needle: str | None) -> None:
    why = secret_refusal(ACCOUNT, PASSWORD_REF, meta)
    if needle is None:
        assert why is None
    else:
        assert why is not None and needle in why and "smtp-credentials" in why


def test_guarded_reader_reads_nothing_it_refuses() -> None:
    reader = MappingSecretReader({("mail", "smtp-credentials", "password"): "marker-value"},
                                 metadata={("mail", "smtp-credentials"): SecretMeta()})
    guarded = GuardedReader(reader, ACCOUNT)
    with pytest.raises(SecretNotAllowed) as info:
        guarded.read("mail", PASSWORD_REF)
    assert "marker-value" not in str(info.value) and info.value.reason == "SecretNotAllowed"
    with pytest.raises(SecretNotAllowed):
        guarded.version("mail", PASSWORD_REF)



def test_a_guarded_reader_keeps_what_it_allowed_for_its_probe_only() -> None:
    """One probe's reader checks a reference once (version, then read); the next probe's
    reader checks again, and a refusal is never kept."""
    key = ("mail", "smtp-credentials")
    reader = MappingSecretReader({(*key, "password"): "marker-value"},
                                 metadata={key: SecretMeta(labels=OPTED_IN)})
    probe = guard(reader, ACCOUNT)
    assert probe.version("mail", PASSWORD_REF)
    reader._meta[key] = SecretMeta()  # the owner takes the opt-in label off
    assert probe.read("mail", PASSWORD_REF) == b"marker-value"  # this probe checked already
    with pytest.raises(SecretNotAllowed):
        guard(reader, ACCOUNT).read("mail", PASSWORD_REF)  # the next probe checks again
    refused = guard(reader, ACCOUNT)
    with pytest.raises(SecretNotAllowed):
        refused.version("mail", PASSWORD_REF)
    reader._meta[key] = SecretMeta(labels=OPTED_IN)  # and puts it back
    assert refused.read("mail", PASSWORD_REF) == b"marker-value"  # a refusal was not kept

class _NoLabels:
    def read(self, namespace: str, ref: KeyRef) -> bytes:
        return b"x"

    def version(self, namespace: str, ref: KeyRef) -> str:
        return "1"


def test_a_reader_that_cannot_show_labels_is_refused() -> None:
    with pytest.raises(SecretNotAllowed):
        GuardedReader(_NoLabels(), ACCOUNT).read("mail", PASSWORD_REF)


CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\nMARKERKEY\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize(("pem", "ok"), [
    (CERT, True),
    (f"subject=CN=x\n{CERT}\n# comment\n{CERT}\n", True),
    (f"{CERT}\n{KEY}", False),
    (KEY.replace("PRIVATE KEY", "RSA PRIVATE KEY"), False),
    (KEY.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"), False),
    ("not a pem at all MARKERKEY", False),
])
def test_certificates_only(pem: str, ok: bool) -> None:
    certs, why = certificates_only(pem.encode())
    if ok:
        assert certs is not None and why is None
        assert certs.count("BEGIN CERTIFICATE") == pem.count("BEGIN CERTIFICATE")
        assert "subject=" not in certs and "comment" not in certs
    else:
        assert certs is None and why is not None and "MARKERKEY" not in why


def test_certificates_only_is_kept_per_content() -> None:
    # Cached (every account of a truststore asks): the same content again is not parsed again,
    # and a changed truststore is judged anew.
    first = certificates_only(CERT.encode())
    assert certificates_only(bytes(bytearray(CERT.encode()))) is first
    changed = certificates_only(f"{CERT}\n{KEY}".encode())
    assert changed[0] is None and changed != first
    assert certificates_only(f"{CERT}\n{CERT}".encode())[0] == f"{CERT}\n{CERT}\n"
