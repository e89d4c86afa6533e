"""The pure rules of what a run may prune (reconciler/run/inventory.py), as tables."""

from __future__ import annotations

import re
from typing import Any

import pytest

from reconciler.errors import UsageError
from reconciler.run import inventory
from reconciler.store.base import is_ours

OURS = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "email-reconciler"}}}
THEIRS: dict[str, Any] = {"metadata": {}}


@pytest.mark.parametrize("a,b", [
    (["accounts"], ["./accounts/"]),
    (["accounts"], ["/repo/accounts"]),
    (["accounts", "more"], ["more", "accounts", "./more"]),
    (["/git/current/accounts"], ["/git/current/./accounts"]),
])
def test_spellings_of_the_same_paths_are_one_inventory(a: list[str], b: list[str]) -> None:
    assert inventory.default_name(a, "/repo") == inventory.default_name(b, "/repo")


@pytest.mark.parametrize("a,b", [
    (["accounts"], ["accounts/billing.yaml"]),
    (["a/b"], ["a-b"]),  # the same slug, a different hash
    (["accounts"], ["/elsewhere/accounts"]),
    (["accounts"], ["accounts", "more"]),
])
def test_different_sources_are_different_inventories(a: list[str], b: list[str]) -> None:
    assert inventory.default_name(a, "/repo") != inventory.default_name(b, "/repo")


@pytest.mark.parametrize("paths", [["accounts/billing.yaml"], ["/" + "x" * 300], ["."], ["ÄÖ"],
                                   ["/git/current/accounts"]])
def test_a_derived_name_is_a_valid_inventory_name(paths: list[str]) -> None:
    name = inventory.default_name(paths, "/repo")
    assert inventory.check_name(name) == name
    assert re.fullmatch(r"[-a-z0-9]+-[0-9a-f]{8}", name)


def test_the_derived_name_keeps_the_specific_end_of_the_path() -> None:
    assert inventory.default_name(["accounts/billing.yaml"], "/repo").startswith(
        "accounts-billing-yaml-")


@pytest.mark.parametrize("name", ["Team", "team mail", "-team", "team-", "", "x" * 64, "a_b"])
def test_invalid_explicit_names_are_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="--inventory"):
        inventory.check_name(name)


@pytest.mark.parametrize("namespace,name,ok", [
    ("shop", "alpha", True), (None, "alpha", True), ("shop", "alpha.example", True),
    ("shop", "Alpha", False), ("shop", "alpha ", False), ("Team", "alpha", False),
    ("shop", "", False), ("shop", None, False), ("shop", "-alpha", False),
    ("shop.x", "alpha", False), (7, "alpha", False),
])
def test_identities_the_api_server_could_hold(namespace: Any, name: Any, ok: bool) -> None:
    assert inventory.valid_identity(namespace, name) is ok


def _secret(managed: bool, owner: str | None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "email-reconciler"} if managed else {}
    if owner is not None:
        labels["email.reconciler.io/account"] = owner
    return {"metadata": {"labels": labels}}


@pytest.mark.parametrize("secret,account,owned", [
    (_secret(True, "alpha"), "alpha", True),
    (_secret(True, "alpha"), "mallory", False),
    (_secret(True, None), "alpha", False),
    (_secret(False, "alpha"), "alpha", False),  # not ours: never touched
    (None, "alpha", False),
    ({"metadata": {"labels": ["not", "a", "map"]}}, "alpha", False),
])
def test_a_secret_is_deleted_only_for_the_account_its_owner_label_names(
        secret: Any, account: str, owned: bool) -> None:
    assert inventory.secret_owned_by(secret, account) is owned


A, B, C = ("shop", "a"), ("shop", "b"), ("shop", "c")


@pytest.mark.parametrize("mine,present,others,stored,prune,kept", [
    # no inventory yet (a first run, an upgrade): adopt, prune nothing
    (None, [A], {}, {A: OURS, B: OURS}, [], []),
    # left this source: pruned with the Secret name the inventory recorded
    ({A: "a-sender", B: "mail-b"}, [A], {}, {A: OURS, B: OURS}, [(B, "mail-b")], []),
    # never this source's: not pruned even though it is not here
    ({A: "a-sender"}, [A], {}, {A: OURS, B: OURS}, [], []),
    # another source still lists it
    ({A: "a-sender", B: "b-sender"}, [A], {"team-b": {B: "b-sender"}}, {A: OURS, B: OURS}, [],
     [(B, "team-b")]),
    # already gone, or not ours (made by hand): nothing to do
    ({A: "a-sender", B: "b", C: "c"}, [A], {}, {A: OURS, C: THEIRS}, [], []),
])
def test_plan_prune(mine: Any, present: list[Any], others: Any, stored: Any,
                    prune: list[Any], kept: list[Any]) -> None:
    plan = inventory.plan_prune(mine=mine, present=present, others=others, stored=stored,
                                is_ours=is_ours)
    assert (plan.prune, plan.kept) == (prune, kept)


@pytest.mark.parametrize("mine,applied,still,unpruned,keep_all,expected", [
    (None, {A: "a-sender"}, [], [], False, {A: "a-sender"}),
    ({A: "old", B: "b"}, {A: "a-sender"}, [], [], False, {A: "a-sender"}),
    # an invalid document still names b: its entry stays; a failed prune stays to be retried
    ({A: "a", B: "b", C: "c"}, {}, [B], [C], False, {B: "b", C: "c"}),
    # prune skipped (a broken file, --no-prune): everything stays
    ({A: "a", B: "b"}, {A: "a2"}, [], [], True, {A: "a2", B: "b"}),
    # an invalid document never applied by this source is not recorded
    (None, {}, [B], [], False, {}),
])
def test_next_inventory(mine: Any, applied: Any, still: list[Any], unpruned: list[Any],
                        keep_all: bool, expected: Any) -> None:
    assert inventory.next_inventory(mine=mine, applied=applied, still_in_git=still,
                                    unpruned=unpruned, keep_all=keep_all) == expected
