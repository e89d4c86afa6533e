"""What a run did: one `AccountReport` per account, and the `RunReport` of the whole run.

Results are data: the commands render them as text or JSON, the controller reads its one
account's entry to decide when to reconcile it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.model import status_condition
from reconciler.store.base import Key


@dataclass
class AccountReport:
    """What happened to one account in this run."""

    namespace: str
    name: str
    status: dict[str, Any]
    probed: bool = False
    status_changed: bool = False
    secret_changes: dict[str, list[str]] = field(default_factory=dict)  # added/changed/removed
    spec_changed: bool = False
    created: bool = False
    #: metadata.creationTimestamp of the stored object (None: not stored yet), for the AGE column.
    created_at: str | None = None
    provider: str | None = None  # spec.provider and spec.sendUsing, for the table
    send_using: str | None = None
    error: str | None = None
    #: The status this run decided on but could not write (the store failed): what it knows,
    #: e.g. that it authenticated, for a caller that retries (the controller remembers it).
    unwritten: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return status_condition(self.status, "Ready").get("status") == "True"

    @property
    def changed(self) -> bool:
        return (self.status_changed or self.spec_changed or self.created
                or any(self.secret_changes.get(k) for k in ("added", "changed", "removed")))


@dataclass
class RunReport:
    accounts: list[AccountReport] = field(default_factory=list)
    pruned: list[Key] = field(default_factory=list)
    prune_skipped: str | None = None
    #: What prune left alone and why, and prunes that failed (one line each, no secret values).
    prune_notes: list[str] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)

    @property
    def all_ready(self) -> bool:
        return bool(self.accounts) and all(a.ready for a in self.accounts)

    @property
    def changed(self) -> bool:
        return bool(self.pruned) or any(a.changed for a in self.accounts)
