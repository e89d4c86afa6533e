# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""Prune and deletion safety on the local store, through the CLI (issues 22 item 2, 23 items 3
and 10): a run prunes only what its own source applied before; a Secret is deleted or orphaned
only for the account its owner label names; a document whose identity the API server could never
hold prunes nothing. The same attacks against the Kubernetes API: tests/test_prune_kube.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.model import status_condition as condition
from tests.manifests_factory import loopback_account
from tests.world import NS, PASSWORD, World, servers, world  # noqa: F401


def run(world: World, *args: str) -> int:
    """`reconcile` of the given paths (default: the accounts folder) into the world's store."""
    paths = [a for a in args if not a.startswith("-")] or [str(world.accounts)]
    flags = [a for a in args if a.startswith("-")]
    return main(["reconcile", *paths, "--store", f"local:{world.store}",
                 "--secrets-dir", str(world.secrets), *flags])


def stored(world: World, name: str) -> bool:
    return (world.store / NS / "emailaccounts" / f"{name}.yaml").exists()


def secret_exists(world: World, name: str) -> bool:
    return (world.store / NS / "secrets" / f"{name}.yaml").exists()


def write(folder: Path, file: str, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(yaml.safe_dump(doc))
    return path


def ready(world: World, name: str) -> bool:
    return condition(world.status(name), "Ready")["status"] == "True"


# --------------------------------------------------------------------------- one source each


def test_reconciling_one_file_of_a_folder_prunes_nothing_of_the_rest(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts")
    assert run(world) == 0
    capsys.readouterr()
    assert run(world, str(world.accounts / "billing.yaml")) == 0
    captured = capsys.readouterr()
    assert stored(world, "alerts") and secret_exists(world, "alerts-sender")
    assert "pruned" not in captured.out
    # the store line, before anything is written: the folder, the namespaces, the inventory
    line = next(x for x in captured.err.splitlines() if "inventory" in x)
    assert f"local {world.store} (all namespaces)" in line
    assert re.search(r"; inventory [-a-z0-9]*-accounts-billing-yaml-[0-9a-f]{8}$", line), line


def test_a_document_removed_from_the_same_source_is_pruned(world: World) -> None:
    world.account("billing")
    world.account("alerts")
    assert run(world) == 0
    (world.accounts / "alerts.yaml").unlink()
    assert run(world, str(world.accounts / "billing.yaml")) == 0  # another source: not its own
    assert stored(world, "alerts")
    assert run(world) == 0
    assert not stored(world, "alerts") and not secret_exists(world, "alerts-sender")
    assert stored(world, "billing") and secret_exists(world, "billing-sender")


def test_the_inventory_can_be_named_so_paths_spelled_differently_are_one_source(
        world: World) -> None:
    world.account("billing")
    world.account("alerts")
    assert run(world, "--inventory=team-mail") == 0
    (world.accounts / "alerts.yaml").unlink()
    other_spelling = str(world.accounts / ".." / "accounts" / ".")
    assert run(world, other_spelling, "--inventory=team-mail") == 0
    assert not stored(world, "alerts")
    assert sorted(p.name for p in (world.store / ".inventories").iterdir()) == ["team-mail.yaml"]
    assert main(["reconcile", str(world.accounts), "--inventory=Team Mail",
                 "--store", f"local:{world.store}"]) == 2


def test_an_account_another_source_still_applies_is_not_pruned(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts")
    assert run(world) == 0
    # alerts moves to another folder, whose run applies it before the first folder's next run
    moved = world.root / "team-b"
    moved.mkdir()
    shutil.move(world.accounts / "alerts.yaml", moved / "alerts.yaml")
    assert run(world, str(moved)) == 0
    capsys.readouterr()
    assert run(world) == 0
    out = capsys.readouterr().out
    assert stored(world, "alerts") and secret_exists(world, "alerts-sender")
    assert ready(world, "alerts")
    assert re.search(rf"not pruned: {NS}/alerts left this source but inventory "
                     r"[-a-z0-9]*team-b-[0-9a-f]{8} still applies it", out), out


def test_accounts_applied_before_inventories_existed_are_adopted_not_pruned(
        world: World) -> None:
    """The upgrade path: the first run of a source with no inventory prunes nothing and records
    what it applied; from then on that source prunes what leaves it."""
    world.account("billing")
    world.account("alerts")
    world.account("legacy")
    assert run(world) == 0
    shutil.rmtree(world.store / ".inventories")  # as a store written before inventories
    (world.store / ".inventory.yaml").write_text(yaml.safe_dump(
        {"entries": [{"namespace": NS, "name": n} for n in ("alerts", "billing", "legacy")]}))
    (world.accounts / "legacy.yaml").unlink()
    assert run(world, str(world.accounts / "billing.yaml")) == 0
    assert run(world) == 0
    assert stored(world, "legacy") and stored(world, "alerts")
    (world.accounts / "alerts.yaml").unlink()
    assert run(world) == 0
    assert not stored(world, "alerts") and stored(world, "legacy")


# --------------------------------------------------------------------------- another's Secret


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_a_hijacking_manifest_that_sorts_first_is_blamed_and_the_victim_stays_ready(
        world: World, policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("victim")
    assert run(world) == 0
    before = world.published("victim-sender")
    hijack = loopback_account("mallory", NS, world.starttls.port, publish={
        "secretName": "victim-sender", "deletionPolicy": policy})
    world.secret("mallory-smtp", "password", PASSWORD)
    world.users["mallory@example.com"] = PASSWORD
    path = write(world.accounts, "0-first.yaml", hijack)  # sorts before victim.yaml
    capsys.readouterr()
    assert run(world) == 1
    err = capsys.readouterr().err
    blamed = [x for x in err.splitlines() if "victim-sender" in x and "already published" in x]
    assert len(blamed) == 1 and "0-first.yaml" in blamed[0], err
    assert "owns it now" in blamed[0]
    assert ready(world, "victim") and not stored(world, "mallory")
    path.unlink()
    assert run(world) == 0
    assert world.published("victim-sender") == before
    assert ready(world, "victim")


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_pruning_an_account_of_another_source_never_touches_the_victims_secret(
        world: World, policy: str, capsys: pytest.CaptureFixture[str]) -> None:
    """mallory, in a folder of its own (no cross-document check sees both), names the victim's
    Secret: it gets SecretConflict; removed again, it is pruned and the victim's Secret stays."""
    world.account("victim")
    assert run(world) == 0
    before = world.published("victim-sender")
    other = world.root / "team-m"
    world.secret("mallory-smtp", "password", PASSWORD)
    world.users["mallory@example.com"] = PASSWORD
    path = write(other, "mallory.yaml", loopback_account(
        "mallory", NS, world.starttls.port,
        publish={"secretName": "victim-sender", "deletionPolicy": policy}))
    assert run(world, str(other)) == 1
    assert condition(world.status("mallory"), "Ready")["reason"] == "SecretConflict"
    path.unlink()
    write(other, "keep.yaml", loopback_account("keep", NS, world.starttls.port))
    world.secret("keep-smtp", "password", PASSWORD)
    world.users["keep@example.com"] = PASSWORD
    capsys.readouterr()
    assert run(world, str(other)) == 0
    out = capsys.readouterr().out
    assert f"pruned {NS}/mallory\n" in out
    assert (f"pruned {NS}/mallory but kept Secret {NS}/victim-sender: it is published for "
            "EmailAccount victim") in out
    assert not stored(world, "mallory")
    assert world.published("victim-sender") == before
    assert run(world) == 0
    assert ready(world, "victim") and world.published("victim-sender") == before


# --------------------------------------------------------------------------- typo'd identity


@pytest.mark.parametrize("field,value", [("name", "Victim"), ("name", "victim "),
                                         ("namespace", "Shop")])
def test_an_identity_the_api_server_cannot_hold_prunes_nothing(
        world: World, field: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = world.account("victim")
    world.account("other")
    assert run(world) == 0
    doc["metadata"][field] = value
    write(world.accounts, "victim.yaml", doc)
    capsys.readouterr()
    assert run(world) == 1
    out = capsys.readouterr().out
    assert "prune skipped" in out and "victim.yaml" in out
    assert stored(world, "victim") and secret_exists(world, "victim-sender")
    assert ready(world, "victim")
