"""The pure rules of sharding (run/sharding.py): rendezvous assignment, claims, the act rule,
liveness on the observer's clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from reconciler.run.sharding import (
    Liveness,
    Member,
    blocked_by,
    claims,
    decode_view,
    encode_view,
    expired,
    live_others,
    lost,
    may_act,
    member_of,
    owner,
    view_of,
)

KEYS = [(f"ns{i % 7}", f"account-{i}") for i in range(3000)]


def assignment(members: list[str]) -> dict[tuple[str, str], str | None]:
    return {k: owner(k, members) for k in KEYS}


def test_owner_is_one_of_the_members_and_independent_of_their_order() -> None:
    for key in KEYS[:200]:
        assert owner(key, ["a", "b", "c"]) == owner(key, ["c", "a", "b"]) in {"a", "b", "c"}
    assert owner(("ns", "x"), []) is None


def test_three_members_share_the_accounts_about_evenly() -> None:
    counts = Counter(assignment(["a", "b", "c"]).values())
    assert set(counts) == {"a", "b", "c"}
    assert all(800 < n < 1200 for n in counts.values()), counts


@pytest.mark.parametrize(("before", "after"), [
    (["a", "b", "c"], ["a", "b", "c", "d"]),  # one joins
    (["a", "b", "c", "d"], ["a", "b", "d"]),  # one leaves
    (["a", "b"], ["a", "b", "c", "d", "e"]),  # three join at once
])
def test_only_the_accounts_that_must_move_do(before: list[str], after: list[str]) -> None:
    old, new = assignment(before), assignment(after)
    moved = [k for k in KEYS if old[k] != new[k]]
    joined, left = set(after) - set(before), set(before) - set(after)
    # every move is to a newcomer or away from a leaver
    assert all(new[k] in joined or old[k] in left for k in moved)
    if joined and not left:
        share = len(joined) / len(after)  # what the newcomers should take
        assert abs(len(moved) / len(KEYS) - share) < 0.05
    if left and not joined:
        assert {k for k in moved} == {k for k in KEYS if old[k] in left}


@pytest.mark.parametrize(("members", "text"), [
    ((), ""), (("a",), "a"), (("b", "a", "a"), "a,b"),
])
def test_views_encode_sorted_and_decode_back(members: tuple[str, ...], text: str) -> None:
    assert encode_view(view_of(members)) == text
    assert decode_view(text) == view_of(members)
    assert decode_view(None) == ()


def some_key(test) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The first key for which test(key) holds."""
    key = next((k for k in KEYS if test(k)), None)
    assert key is not None, "no such key"
    return key


ABC, AB, ABCD = ("a", "b", "c"), ("a", "b"), ("a", "b", "c", "d")


@pytest.mark.parametrize(("me", "published", "confirmed", "others", "key", "expected"), [
    # converged: each acts on its own accounts only
    ("a", ABC, ABC, {"b": ABC, "c": ABC}, lambda k: owner(k, ABC) == "a", True),
    ("a", ABC, ABC, {"b": ABC, "c": ABC}, lambda k: owner(k, ABC) == "b", False),
    # c left: a takes c's accounts while b, still on the old view, claims only its own
    ("a", AB, AB, {"b": ABC}, lambda k: owner(k, ABC) == "c" and owner(k, AB) == "a", True),
    # ... but not before a LIST made after a published the new view confirmed it
    ("a", AB, ABC, {"b": AB}, lambda k: owner(k, ABC) == "c" and owner(k, AB) == "a", False),
    # d joined: d waits while a, on the old view, still claims the account
    ("d", ABCD, ABCD, {"a": ABC, "b": ABCD, "c": ABCD},
     lambda k: owner(k, ABCD) == "d" and owner(k, ABC) == "a", False),
    # ... and takes one whose old owner, b, has moved to the new view
    ("d", ABCD, ABCD, {"a": ABC, "b": ABCD, "c": ABCD},
     lambda k: owner(k, ABCD) == "d" and owner(k, ABC) == "b", True),
    # a view I am not in claims nothing for me
    ("d", ABC, ABC, {}, lambda k: True, False),
])
def test_may_act(me: str, published: tuple[str, ...], confirmed: tuple[str, ...],
                 others: dict[str, tuple[str, ...]], key: Any, expected: bool) -> None:
    assert may_act(me, some_key(key), published, confirmed, others) is expected


def test_blocked_by_names_the_claimant() -> None:
    key = some_key(lambda k: owner(k, ABC) == "a" and owner(k, ABCD) == "d")
    assert blocked_by(key, {"a": ABC, "b": ABCD}) == "a"
    assert blocked_by(key, {"a": ABCD, "b": ABCD}) is None  # d is not among the others


def test_lost_lists_what_a_new_view_takes_away() -> None:
    keys = KEYS[:500]
    gone = lost("a", ABC, ABCD, keys)
    assert gone and all(owner(k, ABCD) == "d" and owner(k, ABC) == "a" for k in gone)
    assert lost("a", ABCD, ABC, keys) == []  # a leaving member gives nothing of a's away
    assert claims("a", ABC, gone[0]) and not claims("a", ABCD, gone[0])


def lease(name: str, holder: str, version: str, view: str = "a,b", duration: int = 10) -> dict:
    return {"metadata": {"name": name, "resourceVersion": version,
                         "annotations": {"email.reconciler.io/shard-members": view}},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration}}


def test_liveness_on_the_observers_clock() -> None:
    live = Liveness()
    b1 = member_of(lease("s-b", "b", "1"))
    c1 = member_of(lease("s-c", "c", "7", view="a,b,c"))
    gone = member_of(lease("s-x", "", "3"))  # released: holderIdentity emptied
    live.observe([b1, c1, gone], now=100.0)
    assert live_others("a", [b1, c1, gone], live, 100.0) == {"b": AB, "c": ABC}
    b2 = member_of(lease("s-b", "b", "2"))  # b renews, c does not
    live.observe([b2, c1], now=109.0)
    assert live_others("a", [b2, c1], live, 110.0) == {"b": AB}  # c silent for 10 s: gone
    assert live_others("a", [b2, c1], live, 109.9) == {"b": AB, "c": ABC}
    assert expired([b2, c1], live, 109.9, "a") == []
    assert expired([b2, c1, gone], live, 110.0, "a") == [c1, gone]
    assert expired([b2, c1], live, 110.0, "c") == []  # never one's own
    # a Lease first seen now counts as fresh, whatever its renewTime says
    d = member_of(lease("s-d", "d", "1"))
    live.observe([b2, c1, d], now=200.0)
    assert "d" in live_others("a", [d], live, 209.0)


def test_member_of_tolerates_missing_fields() -> None:
    assert member_of({}) == Member(lease="", identity="", view=(), version="", duration=0.0)
