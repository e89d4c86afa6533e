"""Which replica owns which account, and when it may act on it: pure rules, no I/O.

Membership. Each replica of the controller holds one coordination.k8s.io/v1 Lease of its own
(`<prefix>-<identity>`, labelled `email.reconciler.io/shard-group: <prefix>`), renews it every
retry period, and deletes it when it shuts down after finishing its work. A replica whose Lease
has not changed for the Lease's `leaseDurationSeconds`, measured on the observer's own monotonic
clock (as client-go's leader election does, so clock skew does not matter), is gone.

A dead replica's Lease is deleted by the first other member that sees it expired.

Assignment. An account `namespace/name` belongs to the live member with the highest
`hash(member, account)` (rendezvous or highest-random-weight hashing): when a member joins, it
takes about 1/n of the accounts, each from whichever member held it; when one leaves, only its own
accounts move, spread over the others. Nothing else moves.

Hand-over: at most one replica acts on (probes, writes) an account at any moment.
Every replica publishes in its Lease (annotation `email.reconciler.io/shard-members`) the member
set, its *view*, by which it claims accounts: it claims exactly the accounts that the view assigns
to it. The protocol:

1. A replica computes its next view from a LIST of the Leases (the live members, itself included).
2. Before publishing a view that takes accounts away from it, it stops starting reconciles of them
   and waits for those in flight to finish (the work queue runs one reconcile per account).
   Only then does it write the new view into its Lease: a claim is never dropped while in use.
   It publishes a new view only once a LIST has confirmed the one before (rule 3).
3. After every write it LISTs the Leases again. It starts a reconcile of account `a` only if
   (a) `a` is its own under the view it published, and under the view before if that one is not
   yet confirmed by a LIST made after it was written (a claim must be continuous since the read
   that checked it); (b) in the last LIST made after that write, no other live member claims `a`
   under the view that member published; (c) its own last successful renewal began less than
   `renew_deadline` ago (renew_deadline < lease_duration, as for leader election).

Why that is enough: each replica writes its claim, then reads the others'. Of two replicas that
claim the same account, the one that read later sees the other's claim (claims are written before
the reads that check them and kept while in use), so at most one of them starts; both may wait
until their views agree, which they do once the member set stops changing (a LIST a retry period
later). A member judged gone by the others had stopped acting before (c): its renew deadline ran
out before its Lease duration did. If a replica's renewals lapse (one completes after the
deadline the one before set) and then succeed again, its old LIST proves nothing (others may have
judged it gone meanwhile): it must LIST again first.
The one case this cannot cover is a reconcile already in flight when its replica's renew deadline
passes (a replica cut off from the API server mid-probe): it runs to its end, bounded by the
probe's own deadline (`timeoutSeconds`, up to 30 s), and its writes usually fail as the renewals
did. For a strict guarantee in that case too, make `--lease-duration` exceed `--renew-deadline`
by the longest probe deadline (e.g. 45 s and 10 s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.store.base import Key

GROUP_LABEL = "email.reconciler.io/shard-group"
MEMBERS_ANNOTATION = "email.reconciler.io/shard-members"

View = tuple[str, ...]  # a member set, sorted


def _weight(member: str, key: Key) -> int:
    digest = hashlib.blake2b(f"{member}\0{key[0]}/{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: Key, members: Iterable[str]) -> str | None:
    """The member that owns `key` (rendezvous hashing); None when there are no members."""
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (_weight(member, key), member)
        if best is None or candidate > best:
            best = candidate
    return best[1] if best else None


def view_of(members: Iterable[str]) -> View:
    """A member set in its canonical (published) form."""
    return tuple(sorted(set(members)))


def encode_view(view: View) -> str:
    return ",".join(view)


def decode_view(text: str | None) -> View:
    return view_of(m for m in (text or "").split(",") if m)


def claims(member: str, view: View, key: Key) -> bool:
    """Whether `member`, acting under `view`, claims `key`."""
    return member in view and owner(key, view) == member


def blocked_by(key: Key, others: Mapping[str, View]) -> str | None:
    """A live other member that claims `key` under the view it published, if any."""
    for member, view in sorted(others.items()):
        if claims(member, view, key):
            return member
    return None


def may_act(me: str, key: Key, published: View, confirmed: View,
            others: Mapping[str, View]) -> bool:
    """Rule 3 (a) and (b) of the module docstring: `key` is claimed by me continuously since
    the view a later LIST confirmed, and no other live member claims it."""
    return (claims(me, published, key) and claims(me, confirmed, key)
            and blocked_by(key, others) is None)


def lost(me: str, old: View, new: View, keys: Iterable[Key]) -> list[Key]:
    """Of `keys`, those I claim under `old` but not under `new`: to finish before publishing."""
    return [k for k in keys if claims(me, old, k) and not claims(me, new, k)]


# --------------------------------------------------------------------------- membership


@dataclass(frozen=True)
class Member:
    """One Lease of the group as last listed."""

    lease: str  # the Lease's name
    identity: str  # spec.holderIdentity; empty once released
    view: View  # the view it published
    version: str  # metadata.resourceVersion: a renewal changes it
    duration: float  # spec.leaseDurationSeconds


def member_of(lease: Mapping[str, Any]) -> Member:
    """A Lease object as a Member (missing fields read as empty)."""
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    return Member(lease=str(meta.get("name") or ""), identity=str(spec.get("holderIdentity") or ""),
                  view=decode_view((meta.get("annotations") or {}).get(MEMBERS_ANNOTATION)),
                  version=str(meta.get("resourceVersion") or ""),
                  duration=float(spec.get("leaseDurationSeconds") or 0))


class Liveness:
    """Who is alive, judged on this replica's own monotonic clock: a Lease is live until its
    `leaseDurationSeconds` have passed since we first saw its current resourceVersion."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, float]] = {}  # lease name -> (version, first seen)

    def observe(self, members: Sequence[Member], now: float) -> None:
        """Record a LIST made at `now` (monotonic seconds); forget Leases no longer listed."""
        seen: dict[str, tuple[str, float]] = {}
        for m in members:
            old = self._seen.get(m.lease)
            seen[m.lease] = old if old is not None and old[0] == m.version else (m.version, now)
        self._seen = seen

    def silent_for(self, member: Member, now: float) -> float:
        """Seconds since this member's Lease last changed, as far as we can tell."""
        version, since = self._seen.get(member.lease, (member.version, now))
        return now - since if version == member.version else 0.0

    def live(self, member: Member, now: float) -> bool:
        return bool(member.identity) and self.silent_for(member, now) < member.duration


def live_others(me: str, members: Sequence[Member], liveness: Liveness,
                now: float) -> dict[str, View]:
    """The other live members and the views they published."""
    return {m.identity: m.view for m in members
            if m.identity != me and liveness.live(m, now)}


def expired(members: Sequence[Member], liveness: Liveness, now: float, me: str) -> list[Member]:
    """Leases of others that are not live (silent for their duration, or released): a killed
    replica's, to delete, so that a replica starting now does not wait a Lease duration of its
    own clock for it to expire (it cannot know how long the Lease was silent before it came)."""
    return [m for m in members if m.identity != me and not liveness.live(m, now)]
