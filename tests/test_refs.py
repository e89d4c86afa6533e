"""The controller's reverse references (reconciler/run/refs.py): who reads which Secret/ConfigMap."""

from __future__ import annotations

import pytest

from reconciler.run.refs import (
    RefIndex,
    configmap_names,
    few_members,
    few_with,
    few_without,
    secret_names,
)


def test_secret_names_referenced_by_a_spec() -> None:
    spec = {"smtp": {"authentication": {"passwordSecretRef": {"name": "pw", "key": "p"}},
                     "connection": {"truststore": {"secretRef": {"name": "ca", "key": "c"}}},
                     "signing": {"keystoreSecretRef": {"name": "ks", "key": "k"},
                                 "keystorePasswordSecretRef": {"name": "ksp", "key": "k"}}},
            "graph": {"authentication": {"clientSecretSecretRef": {"name": "cs", "key": "k"}}},
            "publish": {"secretName": "out"}}
    assert sorted(secret_names(spec)) == ["ca", "cs", "ks", "ksp", "pw"]
    assert configmap_names(spec) == set()
    truststore = {"smtp": {"connection": {"truststore": {"configMapRef": {"name": "ca", "key": "c"}}}}}
    assert configmap_names(truststore) == {"ca"}
    assert secret_names(truststore) == set()


A, B, C = ("shop", "a"), ("shop", "b"), ("other", "a")


@pytest.mark.parametrize(("steps", "asked", "expected"), [
    ([(A, {"pw"})], ("shop", "pw"), [A]),
    ([(A, {"pw"}), (B, {"pw", "ca"})], ("shop", "pw"), [A, B]),
    ([(A, {"pw"}), (B, {"pw", "ca"})], ("shop", "ca"), [B]),
    # a name is read within the account's own namespace only
    ([(A, {"pw"}), (C, {"pw"})], ("other", "pw"), [C]),
    # a spec change replaces what the account reads
    ([(A, {"pw"}), (A, {"pw2"})], ("shop", "pw"), []),
    ([(A, {"pw"}), (A, {"pw2"})], ("shop", "pw2"), [A]),
    # a deleted account reads nothing
    ([(A, {"pw"}), (B, {"pw"}), (A, set())], ("shop", "pw"), [B]),
    ([], ("shop", "pw"), []),
])
def test_readers_follow_every_change(steps: list[tuple[tuple[str, str], set[str]]],
                                     asked: tuple[str, str], expected: list[tuple[str, str]]) -> None:
    index = RefIndex()
    for account, names in steps:
        index.set(account, names)
    assert index.readers(*asked) == expected


def test_a_dropped_account_leaves_nothing_behind() -> None:
    index = RefIndex()
    for i in range(100):
        index.set(("shop", f"a{i}"), {"shared", f"own-{i}"})
    for i in range(100):
        index.drop(("shop", f"a{i}"))
    assert index._readers == {} and index._reads == {}
    assert index.reads(("shop", "a1")) == frozenset()


@pytest.mark.parametrize(("few", "item", "expected"), [
    (None, A, A),
    (A, A, A),
    (A, B, {A, B}),
    ({A, B}, C, {A, B, C}),
    ({A, B}, A, {A, B}),
])
def test_few_with(few: object, item: object, expected: object) -> None:
    assert few_with(few, item) == expected


@pytest.mark.parametrize(("few", "item", "expected"), [
    (None, A, None),
    (A, A, None),
    (A, B, A),
    ({A, B}, A, B),  # one left: the member itself, not a set of one
    ({A, B, C}, A, {B, C}),
    ({A, B}, C, {A, B}),
])
def test_few_without(few: object, item: object, expected: object) -> None:
    assert few_without(few, item) == expected


@pytest.mark.parametrize(("few", "expected"), [(None, []), (A, [A]), ({A, B}, [A, B])])
def test_few_members(few: object, expected: list[object]) -> None:
    assert sorted(few_members(few)) == expected  # type: ignore[type-var]


def test_one_reader_and_one_name_are_stored_without_a_set() -> None:
    """Memory per account (issue 26): a set or frozenset of one costs 216 bytes; most accounts
    read one name and most names have one reader."""
    index = RefIndex()
    index.set(A, {"pw"})
    assert index._reads[A] == "pw" and index._readers[("shop", "pw")] == A
    index.set(B, {"pw", "ca"})
    assert index._reads[B] == ("ca", "pw") and index._readers[("shop", "pw")] == {A, B}
    assert index.reads(B) == frozenset({"ca", "pw"})
    index.drop(A)
    assert index._readers[("shop", "pw")] == B
