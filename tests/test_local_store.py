"""The local store: layout of DESIGN §7, atomic writes only on change, Secrets 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from reconciler.errors import StoreError
from reconciler.model import Event
from reconciler.store.local import LocalStore, write_atomic

MANIFEST = {
    "apiVersion": "email.reconciler.io/v1alpha1",
    "kind": "EmailAccount",
    "metadata": {"name": "billing", "namespace": "shop", "labels": {"team": "payments"}},
    "spec": {"provider": "custom", "smtp": {"identity": {"emailAddress": "billing@example.com"},
                                           "connection": {"host": "mail.example.com"}}},
}


def test_apply_creates_object_with_generation_uid_and_our_label(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    obj = store.apply_account(MANIFEST)
    path = tmp_path / "shop" / "emailaccounts" / "billing.yaml"
    on_disk = yaml.safe_load(path.read_text())
    assert on_disk == obj
    assert obj["metadata"]["generation"] == 1
    assert obj["metadata"]["uid"]
    assert obj["metadata"]["labels"] == {"team": "payments",
                                         "app.kubernetes.io/managed-by": "email-reconciler"}


def test_generation_bumps_on_spec_change_only(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    uid = store.apply_account(MANIFEST)["metadata"]["uid"]
    assert store.apply_account(MANIFEST)["metadata"]["generation"] == 1
    relabelled = {**MANIFEST, "metadata": {**MANIFEST["metadata"], "labels": {"team": "x"}}}
    assert store.apply_account(relabelled)["metadata"]["generation"] == 1
    changed = {**MANIFEST, "spec": {**MANIFEST["spec"], "description": "new"}}
    obj = store.apply_account(changed)
    assert obj["metadata"]["generation"] == 2
    assert obj["metadata"]["uid"] == uid


def test_status_kept_across_apply_and_written_only_on_change(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.apply_account(MANIFEST)
    store.write_status("shop", "billing", {"observedGeneration": 1})
    path = tmp_path / "shop" / "emailaccounts" / "billing.yaml"
    writes, mtime = store.writes, path.stat().st_mtime_ns
    store.write_status("shop", "billing", {"observedGeneration": 1})
    store.apply_account(MANIFEST)
    assert store.writes == writes
    assert path.stat().st_mtime_ns == mtime
    assert store.list_accounts()[0]["status"] == {"observedGeneration": 1}


def test_status_of_unknown_account_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="shop/ghost"):
        LocalStore(tmp_path).write_status("shop", "ghost", {})


def test_secrets_are_private_and_listed_per_namespace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "billing-sender", "namespace": "shop"}, "data": {"A": "Yg=="}}
    store.apply_secret(secret)
    path = tmp_path / "shop" / "secrets" / "billing-sender.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.list_secrets(["shop", "other"]) == {("shop", "billing-sender"): secret}
    store.delete_secret("shop", "billing-sender")
    assert not path.exists()


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.yaml"
    assert write_atomic(target, b"one") is True
    assert write_atomic(target, b"one") is False
    assert write_atomic(target, b"two") is True
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.yaml"]


def test_inventory_and_events_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.read_inventory() == set()
    store.write_inventory([("shop", "b"), ("shop", "a")])
    assert store.read_inventory() == {("shop", "a"), ("shop", "b")}
    store.record_event(Event("shop", "a", "Warning", "Timeout", "no answer", "2026-11-25T08:00:00Z"))
    (event,) = store.read_events()
    assert event["reason"] == "Timeout" and event["involvedObject"]["name"] == "a"


@pytest.mark.parametrize("name", ["../escape", "", ".."])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError):
        LocalStore(tmp_path).delete_secret("shop", name)
