"""A published Secret cached as digests (issue 26): the pure parts as tables, and the account
writer over a store that answers as the controller's informer cache does (relay password and
signing keystore kept across runs, an edit by someone else put back)."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler import reasons
from reconciler.model import HASH_ANNOTATION, Outcome, ProbeResult, Relay, SigningResult
from reconciler.run.account_writer import AccountWriter
from reconciler.run.report import AccountReport
from reconciler.state.digests import READ_BACK, Digest, DigestedData, digested_data, edited
from reconciler.state.render import data_hash, render_secret, secret_diff
from reconciler.store.informers import published_secret
from reconciler.store.local import LocalStore
from tests.keystores import TestCA, cryptography_pfx
from tests.test_render import graph_account, smtp_account

OK = Outcome(True, reasons.SUCCEEDED, "")
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --------------------------------------------------------------------------- Digest


@pytest.mark.parametrize(("left", "right", "equal"), [
    (Digest.of(b64("a")), b64("a"), True),
    (b64("a"), Digest.of(b64("a")), True),  # reflected
    (Digest.of(b64("a")), Digest.of(b64("a")), True),
    (Digest.of(b64("a")), b64("b"), False),
    (Digest.of(b64("a")), Digest.of(b64("b")), False),
    (Digest.of("YQ=="), b"YQ==", False),  # bytes are not the base64 text
    (Digest.of("1"), 1, False),
])
def test_a_digest_equals_the_value_it_stands_for(left: Any, right: Any, equal: bool) -> None:
    assert (left == right) is equal
    assert (left != right) is not equal


@pytest.mark.parametrize("use", [
    lambda d: json.dumps({"data": {"k": d}}),
    lambda d: base64.b64decode(d),
    lambda d: base64.b64decode(d, validate=True),
    lambda d: d.encode(),
    lambda d: hash(d),
    lambda d: {d: 1},
    lambda d: bytes(d),
])
def test_a_digest_cannot_be_used_as_a_value(use: Any) -> None:
    with pytest.raises((TypeError, AttributeError)):
        use(Digest.of(b64("hunter2hunter2")))


def test_a_digest_shows_nothing_of_what_it_stands_for() -> None:
    d = Digest.of(b64("hunter2hunter2"))
    assert repr(d) == str(d) == f"{d}" == "<digest>"
    assert repr({"k": d}) == "{'k': <digest>}"
    with pytest.raises(AttributeError):
        d._d = b"x"  # type: ignore[misc]


# --------------------------------------------------------------------------- digested data

DATA = {"SMTP_HOST": b64("smtp.example.com"), "ca.crt": b64("CA PEM\n" * 100),
        "relay-password": b64("r" * 32), "signing.p12": b64("p12"),
        "SIGNING_P12_PASSWORD": b64("changeit")}


@pytest.mark.parametrize(("annotation", "intact"), [
    (data_hash(DATA), True),
    (None, False),  # the annotation removed: not ours as written
    (data_hash({**DATA, "SMTP_HOST": b64("evil.example")}), False),  # a key edited since
    (data_hash({k: v for k, v in DATA.items() if k != "ca.crt"}), False),  # a key added
])
def test_digested_data_keeps_what_is_read_back_and_knows_an_edit(annotation: str | None,
                                                                 intact: bool) -> None:
    out = digested_data(DATA, annotation)
    assert isinstance(out, DigestedData) and out.intact is intact
    assert sorted(out) == sorted(DATA)
    for key, value in out.items():
        if key in READ_BACK:
            assert type(value) is str and value == DATA[key]
        else:
            assert isinstance(value, Digest) and value == DATA[key]
    assert out == DATA  # compares as the data it stands for
    assert {**out, "SMTP_HOST": b64("evil.example")} != DATA


def test_read_back_names_the_keys_the_writer_reads() -> None:
    assert {"relay-password", "signing.p12", "SIGNING_P12_PASSWORD"} == READ_BACK


def secret(data: dict[str, str], annotation: str | None = "ours") -> dict[str, Any]:
    annotations = {HASH_ANNOTATION: data_hash(data) if annotation == "ours" else annotation}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "billing-sender", "namespace": "mail", "resourceVersion": "7",
                         "labels": {"app.kubernetes.io/managed-by": "email-reconciler"},
                         "annotations": annotations,
                         "managedFields": [{"manager": "kubectl", "operation": "Update",
                                            "fieldsV1": {"f:data": {"f:SMTP_HOST": {}}}}]},
            "data": data}


@pytest.mark.parametrize(("desired", "expected"), [
    (DATA, {"added": [], "changed": [], "removed": []}),
    ({**DATA, "SMTP_HOST": b64("other")}, {"added": [], "changed": ["SMTP_HOST"], "removed": []}),
    ({**DATA, "SMTP_PORT": b64("587")}, {"added": ["SMTP_PORT"], "changed": [], "removed": []}),
    ({k: v for k, v in DATA.items() if k != "ca.crt"},
     {"added": [], "changed": [], "removed": ["ca.crt"]}),
    ({**DATA, "signing.p12": b64("other p12")},
     {"added": [], "changed": ["signing.p12"], "removed": []}),
])
def test_secret_diff_against_the_cached_form(desired: dict[str, str],
                                             expected: dict[str, list[str]]) -> None:
    cached = published_secret(secret(DATA))
    assert secret_diff(cached, {"data": desired}) == expected
    assert secret_diff(secret(DATA), {"data": desired}) == expected  # as with the values


def test_published_secret_is_slim_and_digested_and_flags_an_edit() -> None:
    cached = published_secret(secret(DATA))
    assert "managedFields" not in cached["metadata"]
    assert not edited(cached)
    assert isinstance(cached["data"]["ca.crt"], Digest)
    tampered = published_secret(secret({**DATA, "ca.crt": b64("x")}, annotation=data_hash(DATA)))
    assert edited(tampered)
    assert not edited(secret(DATA)) and not edited(None)  # values, not the cached form


# --------------------------------------------------------------------------- the writer


class InformerLike(LocalStore):
    """A local store whose Secret reads answer as the controller's informer cache does (a
    published Secret digested); Secret writes go to the files as usual, statuses are kept
    here (no EmailAccount is stored)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.applied = 0
        self.statuses: dict[tuple[str, str], Any] = {}

    def write_status(self, namespace: str, name: str, status: Any) -> None:
        self.statuses[(namespace, name)] = status

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        stored = super().get_secret(namespace, name)
        return published_secret(stored) if stored is not None else None

    def apply_secret(self, secret: Any) -> None:
        self.applied += 1
        super().apply_secret(secret)

    def stored(self, name: str, namespace: str = "mail") -> dict[str, Any]:
        obj = LocalStore.get_secret(self, namespace, name)
        assert obj is not None
        return obj


def run(store: InformerLike, account: Any, result: ProbeResult,
        old: dict[str, Any] | None) -> dict[str, Any]:
    """One run's turn of `account`: the status it leaves (the next run's old status)."""
    entry = AccountReport(account.namespace, account.name, status={})
    stored = {"status": old} if old else None
    AccountWriter(store).finish(account, stored, result, entry, NOW)
    assert entry.error is None, entry.error
    return entry.status


def test_relay_password_is_kept_across_runs_from_the_cached_form(tmp_path: Path) -> None:
    store = InformerLike(tmp_path)
    account = dataclasses.replace(graph_account(), relay=Relay(enabled=True))
    result = ProbeResult(connection=OK, authentication=OK,
                         credentials={"clientSecret": "s3cr3t-value"})
    status = run(store, account, result, None)
    first = store.stored("notify-sender")["data"]
    assert store.applied == 1 and "relay-password" in first
    status = run(store, account, result, status)
    assert store.applied == 1  # nothing changed: nothing written
    assert store.stored("notify-sender")["data"] == first


def test_signing_keystore_is_kept_across_runs_from_the_cached_form(tmp_path: Path) -> None:
    """A PKCS#12 rebuilt with new salts holds the same key: the published one stays (its bytes
    are read back from the cache, so they are kept there as they are)."""
    ca = TestCA.create()
    key, cert = ca.issue_smime("billing@example.com")

    def signed() -> ProbeResult:
        p12 = cryptography_pfx("billing", key, cert, password="changeit")
        return ProbeResult(connection=OK, authentication=OK, credentials={"password": "pw"},
                           signing=SigningResult(outcome=OK, pkcs12=p12,
                                                 pkcs12_password="changeit"))

    store = InformerLike(tmp_path)
    account = smtp_account(formats=("env",), signing_format="PKCS12")
    status = run(store, account, signed(), None)
    first = store.stored("billing-sender")["data"]
    status = run(store, account, signed(), status)
    assert store.applied == 1
    assert store.stored("billing-sender")["data"]["signing.p12"] == first["signing.p12"]


def test_an_edit_by_someone_else_is_put_back(tmp_path: Path) -> None:
    store = InformerLike(tmp_path)
    account = smtp_account(formats=("env", "javamail"))
    result = ProbeResult(connection=OK, authentication=OK, credentials={"password": "pw"},
                         ca_pem=None)
    status = run(store, account, result, None)
    ours = store.stored("billing-sender")
    edited_copy = {**ours, "data": {**ours["data"], "SMTP_HOST": b64("evil.example")}}
    LocalStore.apply_secret(store, edited_copy)  # the hash annotation left as it was
    assert edited(store.get_secret("mail", "billing-sender"))
    run(store, account, result, status)
    assert store.applied == 2
    assert store.stored("billing-sender")["data"] == ours["data"]
    assert render_secret(account, result, owner_uid=None)["data"] == ours["data"]
