"""reconciler.probe.publishable: client credentials are published only when the account asks
(publish.clientCredentials) and the credential's owner allows it (publishable annotation)."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler import reasons
from reconciler.model import Account, GraphSpec, KeyRef, OAuth2, Publish
from reconciler.policy import CREDENTIAL_LABEL, PUBLISHABLE_ANNOTATION, SecretMeta
from reconciler.probe.credentials import MappingSecretReader
from reconciler.probe.publishable import publishable_credentials
from tests.smtpservers import make_account

NS = "mail"
CLIENT_SECRET = "graph~S3cret~value~0123456789"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEv-marker\n-----END PRIVATE KEY-----\n"
SA_KEY = '{"type": "service_account", "private_key": "marker"}\n'
LABELLED = SecretMeta(labels={CREDENTIAL_LABEL: "true"})
ALLOWED = SecretMeta(labels={CREDENTIAL_LABEL: "true"},
                     annotations={PUBLISHABLE_ANNOTATION: "true"})
VALUES = {(NS, "app", "secret"): CLIENT_SECRET + "\n", (NS, "app", "tls.pem"): PEM,
          (NS, "sa", "key.json"): SA_KEY}


def _graph(publish: bool, *, certificate: bool = False) -> Account:
    spec = GraphSpec("notify@contoso.com", "tid", "cid",
                     client_secret=None if certificate else KeyRef("app", "secret"),
                     client_certificate=KeyRef("app", "tls.pem") if certificate else None)
    return Account(namespace=NS, name="notify", provider="office365",
                   send_using="MicrosoftGraph", graph=spec,
                   publish=Publish("notify-sender", client_credentials=publish))


def _smtp(publish: bool, oauth2: OAuth2) -> Account:
    account = make_account(namespace=NS, method="OAuth2", oauth2=oauth2)
    return dataclasses.replace(account, publish=dataclasses.replace(
        account.publish, client_credentials=publish))


JWT = OAuth2("JWTBearer", service_account_key=KeyRef("sa", "key.json"), subject="a@b.test")
CLIENT = OAuth2("ClientCredentials", tenant_id="tid", client_id="cid",
                client_secret=KeyRef("app", "secret"))


@pytest.mark.parametrize(("account", "meta", "expected", "refused"), [
    (_graph(False), None, {}, False),
    (_graph(True), None, {"clientSecret": CLIENT_SECRET}, False),  # --secrets-dir: opted in
    (_graph(True), ALLOWED, {"clientSecret": CLIENT_SECRET}, False),
    (_graph(True), LABELLED, {}, True),
    (_graph(True, certificate=True), ALLOWED, {"clientCertificate": PEM}, False),
    (_smtp(False, JWT), ALLOWED, {}, False),
    (_smtp(True, JWT), ALLOWED, {"serviceAccountKey": SA_KEY}, False),
    (_smtp(True, JWT), LABELLED, {}, True),
    (_smtp(True, CLIENT), ALLOWED, {"clientSecret": CLIENT_SECRET}, False),
], ids=["graph-not-asked", "graph-operator-folder", "graph-allowed", "graph-not-allowed",
        "graph-certificate", "jwt-not-asked", "jwt-allowed", "jwt-not-allowed",
        "client-credentials-allowed"])
def test_published_only_when_asked_and_allowed(account: Account, meta: SecretMeta | None,
                                               expected: dict[str, str], refused: bool) -> None:
    metadata = {} if meta is None else {(NS, "app"): meta, (NS, "sa"): meta}
    published, warnings = publishable_credentials(account, MappingSecretReader(VALUES, metadata))
    assert published == expected
    if refused:
        [warning] = warnings
        assert warning.reason == reasons.CREDENTIAL_NOT_PUBLISHED
        assert f"{PUBLISHABLE_ANNOTATION}=true" in warning.message
        assert "kubectl annotate secret -n mail" in warning.message
        assert CLIENT_SECRET not in warning.message and "marker" not in warning.message
    else:
        assert warnings == ()


def test_a_missing_secret_is_left_to_the_probe() -> None:
    published, warnings = publishable_credentials(_graph(True), MappingSecretReader({}))
    assert (published, warnings) == ({}, ())
