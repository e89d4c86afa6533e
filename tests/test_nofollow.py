"""Issue 23 item 13: the local store never writes through a planted symbolic link.

The default store `./.email-reconciler` may sit inside a checkout, where a committer can plant a
link at `events.jsonl` or at a folder of the store, pointing outside. Each attack below leaves the
file outside untouched (and says which link it refused), beside a legitimate account whose writes
still go through.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from reconciler.errors import StoreError
from reconciler.model import Event
from reconciler.store.local import LocalStore

OUTSIDE = b"precious: do not touch\n"


def manifest(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"provider": "custom", "smtp": {
                "identity": {"emailAddress": f"{name}@example.com"},
                "connection": {"host": "127.0.0.1", "port": 1, "timeoutSeconds": 2}}}}


def secret(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace}, "data": {"A": "Yg=="}}


def event(namespace: str, name: str) -> Event:
    return Event(namespace, name, "Warning", "ConnectionRefused", "hostile server text",
                 "2026-11-25T08:00:00Z")


def legitimate_account_works(store: LocalStore, root: Path) -> None:
    store.apply_account(manifest("fine", "ok"))
    store.write_status("ok", "fine", {"observedGeneration": 1})
    store.apply_secret(secret("fine-sender", "ok"))
    assert store.get_account("ok", "fine")["status"] == {"observedGeneration": 1}  # type: ignore[index]
    assert store.get_secret("ok", "fine-sender") is not None
    assert (root / "ok" / "secrets" / "fine-sender.yaml").is_file()


def test_a_link_at_events_jsonl_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside.txt"
    root.mkdir()
    outside.write_bytes(OUTSIDE)
    (root / "events.jsonl").symlink_to(outside)
    store = LocalStore(root)
    with pytest.raises(StoreError, match=r"events\.jsonl: a symbolic link"):
        store.record_event(event("ok", "fine"))
    assert outside.read_bytes() == OUTSIDE
    assert (root / "events.jsonl").is_symlink()
    legitimate_account_works(store, root)


def test_a_run_goes_on_past_a_linked_events_jsonl(tmp_path: Path) -> None:
    """A whole `reconcile` run: the refused event is a warning, the status is written."""
    from reconciler.cli import main

    accounts, root, outside = tmp_path / "accounts", tmp_path / "store", tmp_path / "outside.txt"
    accounts.mkdir()
    root.mkdir()
    (accounts / "a.yaml").write_text(yaml.safe_dump(manifest("fine", "ok")))
    outside.write_bytes(OUTSIDE)
    (root / "events.jsonl").symlink_to(outside)
    main(["reconcile", str(accounts), "--store", f"local:{root}",
          "--allowed-hosts", "127.0.0.1"])
    assert outside.read_bytes() == OUTSIDE
    stored = LocalStore(root).get_account("ok", "fine") or {}
    assert (stored.get("status") or {}).get("conditions")  # the run wrote its status


@pytest.mark.parametrize("linked", [("shop",), ("shop", "secrets"), ("shop", "emailaccounts")])
def test_a_linked_folder_is_refused_and_nothing_lands_outside(tmp_path: Path,
                                                              linked: tuple[str, ...]) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    for sub in ("secrets", "emailaccounts"):  # in case the link is at the namespace folder
        (outside / sub).mkdir()
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    link = root.joinpath(*linked)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside if len(linked) == 2 else outside)
    store = LocalStore(root)
    shown = str(link)
    with pytest.raises(StoreError, match="a symbolic link") as refused:
        if linked[-1] == "emailaccounts":
            store.apply_account(manifest("billing", "shop"))
        else:
            store.apply_secret(secret("billing-sender", "shop"))
    assert shown in str(refused.value)  # it names the link, not only the file
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before
    legitimate_account_works(store, root)


def test_delete_through_a_linked_folder_removes_nothing_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / "billing-sender.yaml").write_bytes(OUTSIDE)
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "secrets").symlink_to(outside)
    store = LocalStore(root)
    with pytest.raises(StoreError, match="a symbolic link"):
        store.delete_secret("shop", "billing-sender")
    assert (outside / "billing-sender.yaml").read_bytes() == OUTSIDE
    legitimate_account_works(store, root)


def test_a_link_at_a_secret_path_is_replaced_and_its_target_keeps_its_mode(tmp_path: Path) -> None:
    """Even when the target already holds exactly the Secret: no chmod through the link."""
    from reconciler.store.local import _dump

    root, outside = tmp_path / "store", tmp_path / "outside.yaml"
    outside.write_bytes(_dump(secret("billing-sender", "shop")))
    outside.chmod(0o644)
    before = outside.read_bytes()
    path = root / "shop" / "secrets" / "billing-sender.yaml"
    path.parent.mkdir(parents=True)
    path.symlink_to(outside)
    store = LocalStore(root)
    store.apply_secret(secret("billing-sender", "shop"))
    assert not path.is_symlink() and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert outside.read_bytes() == before
    legitimate_account_works(store, root)


def test_a_linked_default_store_in_a_checkout_is_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`.email-reconciler` committed as a link: the run stops at the lock, naming it, and writes
    nothing where it points."""
    from reconciler.cli import main
    from reconciler.store import DEFAULT_LOCAL_DIR

    checkout, outside = tmp_path / "checkout", tmp_path / "outside"
    (checkout / "accounts").mkdir(parents=True)
    outside.mkdir()
    (checkout / "accounts" / "a.yaml").write_text(yaml.safe_dump(manifest("fine", "ok")))
    (checkout / DEFAULT_LOCAL_DIR).symlink_to(outside)
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # the local store
    code = main(["reconcile", "accounts", "--allowed-hosts", "127.0.0.1"])
    assert code != 0
    assert f"{DEFAULT_LOCAL_DIR}: a symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []
    store = LocalStore(tmp_path / "store")  # a store that is a folder still works
    legitimate_account_works(store, tmp_path / "store")
