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


def test_secrets_are_private_and_read_per_namespace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "billing-sender", "namespace": "shop"}, "data": {"A": "Yg=="}}
    store.apply_secret(secret)
    path = tmp_path / "shop" / "secrets" / "billing-sender.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.get_secret("shop", "billing-sender") == secret
    assert store.get_secret("other", "billing-sender") is None
    store.delete_secret("shop", "billing-sender")
    assert not path.exists()


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f.yaml"
    assert write_atomic(tmp_path, ("d", "f.yaml"), b"one") is True
    assert write_atomic(tmp_path, ("d", "f.yaml"), b"one") is False
    assert write_atomic(tmp_path, ("d", "f.yaml"), b"two") is True
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.yaml"]


def test_inventory_and_events_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.read_inventories() == {}
    store.write_inventory("git", {("shop", "b"): "b-sender", ("shop", "a"): "mail-a"})
    store.write_inventory("one-file", {("shop", "a"): "mail-a"})
    assert store.read_inventories() == {"git": {("shop", "a"): "mail-a", ("shop", "b"): "b-sender"},
                                        "one-file": {("shop", "a"): "mail-a"}}
    # a namespaced store reads and rewrites only its namespace's entries of an inventory
    store.write_inventory("git", {("other", "c"): "c-sender", **store.read_inventories()["git"]})
    scoped = LocalStore(tmp_path, namespace="other")
    assert scoped.read_inventories()["git"] == {("other", "c"): "c-sender"}
    scoped.write_inventory("git", {})
    assert store.read_inventories()["git"] == {("shop", "a"): "mail-a", ("shop", "b"): "b-sender"}
    store.record_event(Event("shop", "a", "Warning", "Timeout", "no answer", "2026-11-25T08:00:00Z"))
    (event,) = store.read_events()
    assert event["reason"] == "Timeout" and event["involvedObject"]["name"] == "a"


@pytest.mark.parametrize("name", ["../escape", "", ".."])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError):
        LocalStore(tmp_path).delete_secret("shop", name)


def test_a_second_run_waits_bounded_then_exits_2(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    accounts = tmp_path / "accounts"
    accounts.mkdir()
    (accounts / "billing.yaml").write_text(yaml.safe_dump(MANIFEST))
    store = LocalStore(tmp_path / "store")
    with store.locked():  # another run holds the store
        assert main(["reconcile", str(accounts), "--store", f"local:{tmp_path / 'store'}",
                     "--lock-timeout", "0.3"]) == 2
        err = capsys.readouterr().err
        assert "in use by another reconcile run" in err and "--lock-timeout" in err
        assert not (tmp_path / "store" / "shop").exists()  # it wrote nothing
    with store.locked(timeout=0):  # released with the holder
        pass


def test_the_next_run_removes_a_killed_runs_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.apply_account(MANIFEST)
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "billing-sender", "namespace": "shop"}, "data": {}}
    store.apply_secret(secret)
    stale = [tmp_path / "shop" / "secrets" / ".tmp-k1ll3d00",
             tmp_path / "shop" / "emailaccounts" / ".tmp-k1ll3d01",
             tmp_path / "shop" / "secrets" / ".billing-sender.yaml.ab12cd34",  # older versions
             tmp_path / ".tmp-k1ll3d02"]
    for path in stale:
        path.write_text("half a Secret")
    keep = [tmp_path / "shop" / "secrets" / ".hidden-by-hand", tmp_path / "notes.txt"]
    for path in keep:
        path.write_text("not ours")
    with store.locked():
        pass
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in keep)
    assert store.get_secret("shop", "billing-sender") == secret
