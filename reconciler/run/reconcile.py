"""One reconcile run: validate -> probe -> conditions -> Secret -> status -> prune -> events.

Decide first, act once: every account's new status and Secret are computed from its inputs, then
written only when they differ from what the store holds. One account's failure never stops the
others; status is always written at the end of an account's turn (a `finally`), never half-done.

This module is the run over many accounts: apply from git (or take the controller's objects),
decide who is due, probe them concurrently, prune what left git. Each account's turn (its Secret,
status and events) is `run/account_writer.py`; what the run did is `run/report.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import reasons
from reconciler.errors import StoreError, StoreForbidden, StoreInvalid
from reconciler.log import get_logger, redact_text
from reconciler.manifest.load import InvalidDocument, LoadResult
from reconciler.model import (
    ACCOUNT_LABEL,
    MANAGED_BY_LABEL,
    Account,
    ProbeResult,
    SecretReader,
    SourceRef,
)
from reconciler.policy import DEFAULT_POLICY, Policy
from reconciler.run import inventory
from reconciler.run.account_writer import AccountWriter
from reconciler.run.report import AccountReport, RunReport
from reconciler.secretrefs import secret_versions
from reconciler.state import render, schedule
from reconciler.store.base import (
    Key,
    StateStore,
    account_object,
    is_ours,
    object_key,
)

log = get_logger("reconciler.run")


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    prune: bool = True
    concurrency: int = 32
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    policy: Policy = DEFAULT_POLICY  # endpoint allow-lists (reconciler.policy)
    #: Apply and prune only: no probe, no status, no Secret (a controller owns those).
    apply_only: bool = False
    #: The source's inventory (what prune considers); None: derived from the paths loaded.
    inventory: str | None = None
    #: Probe every account now, AUTH included, whatever its schedule says (`reconcile --force`).
    force: bool = False
    #: The controller: a write the API server answers with 429/5xx (or never answers) ends the
    #: account's turn, the status waiting with the Secret for the shared backoff.
    hold_writes_on_outage: bool = False
    #: Endpoint checks shared by the accounts of one endpoint (probe/endpoints.py): the
    #: controller keeps one for its life; None: one for this run.
    endpoints: Any = None
    #: The controller: lastAuthTime is kept in memory and written only with another change
    #: (state/status.py REMEMBERED_FIELDS). A run writes it when an AUTH ran: the next run,
    #: another process, knows only what is stored.
    auth_time_in_memory: bool = False
    #: The controller's probe event loop (run/probeloop.py), shared by its workers: the probes
    #: run there. None: this run makes its own loop.
    probe_loop: Any = None


class Reconciler:
    """Runs one reconcile pass over the accounts loaded from git against a store."""

    def __init__(self, store: StateStore, secrets: SecretReader, options: RunOptions,
                 tokens: Any = None) -> None:
        self.store = store
        self.secrets = secrets
        self.options = options
        self.tokens = tokens
        if options.endpoints is not None:
            self.endpoints = options.endpoints
        else:
            from reconciler.probe.endpoints import EndpointCache

            self.endpoints = EndpointCache()
        self.writer = AccountWriter(store, dry_run=options.dry_run,
                                    hold_on_outage=options.hold_writes_on_outage,
                                    auth_time_in_memory=options.auth_time_in_memory)

    # ------------------------------------------------------------------ the run
    def run(self, loaded: LoadResult) -> RunReport:
        now = self.options.clock()
        report = RunReport()
        stored = {object_key(o): o for o in self.store.list_accounts()}
        accounts = []
        for account in loaded.accounts:
            try:
                accounts.append(self._applied(account, stored, report))
            except StoreInvalid as exc:  # 422: Stalled until the manifest changes
                self.writer.refused(account, stored.get(account.key), report.accounts[-1], exc, now)
            except StoreError as exc:  # this account waits for the next run; the others go on
                entry = report.accounts[-1]
                entry.error = str(exc)
                reason = (reasons.FORBIDDEN if isinstance(exc, StoreForbidden)
                          else reasons.API_UNAVAILABLE)
                entry.status = {"conditions": [{"type": "Ready", "status": "Unknown",
                                                "reason": reason, "message": str(exc)}]}
                log.error("apply failed", account=f"{account.namespace}/{account.name}",
                          error=redact_text(str(exc)))
        if not self.options.apply_only:  # else the controller probes and writes status
            self._reconcile_accounts(accounts, stored, report, now)
            for doc in loaded.invalid:
                self.writer.mark_invalid(doc, stored, report, now)
        else:
            report.diagnostics += [str(d) for doc in loaded.invalid for d in doc.diagnostics
                                   if d.severity == "error"]
        self._prune(loaded, stored, report)
        return report

    def reconcile_objects(self, objects: Sequence[Mapping[str, Any]], *,
                          unpublished: Collection[Key] = (),
                          taken_over: Mapping[Key, datetime] | None = None) -> RunReport:
        """Reconcile EmailAccount objects as stored (controller mode): no apply, no prune.

        The objects were admitted by the API server; the semantic rules are checked again here
        and an object that breaks them gets Validated=False instead of a probe. `unpublished`:
        the accounts whose published Secret (status.secretName) the caller found missing.
        `taken_over`: when the controller took each account over (schedule.spread_auth_time).
        """
        from reconciler.manifest.account import account_from_manifest
        from reconciler.manifest.validate import validate_document

        now = self.options.clock()
        report = RunReport()
        stored = {object_key(o): dict(o) for o in objects}
        accounts = []
        for key, obj in stored.items():
            # Our own status (e.g. secretVersions digests) is not the manifest: validate the rest.
            manifest = {k: v for k, v in obj.items() if k != "status"}
            diagnostics = validate_document(manifest, file=f"{key[0]}/{key[1]}")
            errors = [d for d in diagnostics if d.severity == "error"]
            if errors:
                self.writer.mark_invalid(InvalidDocument(key[0], key[1],
                                                         SourceRef(f"{key[0]}/{key[1]}", 1),
                                                         errors, dict(obj)), stored, report, now)
                continue
            account = account_from_manifest(obj, warnings=tuple(diagnostics))
            report.accounts.append(AccountReport(
                account.namespace, account.name, status=dict(obj.get("status") or {}),
                provider=account.provider, send_using=account.send_using,
                created_at=(obj.get("metadata") or {}).get("creationTimestamp")))
            accounts.append(account)
        self._reconcile_accounts(accounts, stored, report, now, unpublished, taken_over or {})
        return report

    def _reconcile_accounts(self, accounts: Sequence[Account],
                            stored: Mapping[Key, Mapping[str, Any]], report: RunReport,
                            now: datetime, unpublished: Collection[Key] = (),
                            taken_over: Mapping[Key, datetime] | None = None) -> None:
        decisions = {}
        for account in accounts:
            old = (stored.get(account.key) or {}).get("status") or {}
            versions = secret_versions(account, self.secrets)
            decisions[account.key] = schedule.probe_decision(
                account=account, old_status=old, secret_versions=versions, now=now,
                published_secret_missing=account.key in unpublished,
                taken_over=(taken_over or {}).get(account.key))
            if self.options.force and not account.probe.suspend:
                decisions[account.key] = schedule.Decision(True, True, "forced (--force)")
        by_key = {(r.namespace, r.name): r for r in report.accounts}
        # Accounts not due first (no probe to wait for), then each probed account the moment
        # its own probe ends: a run killed halfway keeps everything that had finished.
        for account in accounts:
            if not decisions[account.key].probe:
                self.writer.finish(account, stored.get(account.key), None, by_key[account.key],
                                   now)
        # Changed accounts (spec, credentials, a request: AUTH wanted) are probed first.
        due = sorted((a for a in accounts if decisions[a.key].probe),
                     key=lambda a: not decisions[a.key].authenticate)
        last_probe = {a.key: schedule.last_probe_time((stored.get(a.key) or {}).get("status"))
                      for a in due}
        for account, result in self._probe(due, decisions, now, last_probe):
            self.writer.finish(account, stored.get(account.key), result, by_key[account.key],
                               now)

    def _applied(self, account: Account, stored: Mapping[Key, dict[str, Any]],
                 report: RunReport) -> Account:
        """Apply the git manifest to the store (or predict it in dry-run); return the account
        with the stored generation and uid."""
        old = stored.get(account.key)
        entry = AccountReport(account.namespace, account.name,
                              status=dict((old or {}).get("status") or {}),
                              provider=account.provider, send_using=account.send_using)
        report.accounts.append(entry)
        desired = account_object(account.manifest)
        entry.created = old is None
        entry.spec_changed = old is not None and old.get("spec") != desired["spec"]
        if self.options.dry_run:
            meta = (old or {}).get("metadata") or {}
            entry.created_at = meta.get("creationTimestamp")
            generation = int(meta.get("generation") or 0) + (1 if entry.spec_changed or old is None
                                                             else 0)
            return dataclasses.replace(account, generation=generation,
                                       uid=str(meta.get("uid") or ""))
        obj = self.store.apply_account(account.manifest)
        meta = obj.get("metadata") or {}
        entry.created_at = meta.get("creationTimestamp")
        return dataclasses.replace(account, generation=int(meta.get("generation") or 1),
                                   uid=str(meta.get("uid") or ""))

    def _probe(self, due: Sequence[Account], decisions: Mapping[Key, Any], now: datetime,
               last_probe: Mapping[Key, datetime | None]
               ) -> Iterator[tuple[Account, ProbeResult]]:
        """Probe `due` concurrently; yield each (account, result) as soon as its probe ends.

        An account probed without AUTH takes its endpoint's check when one was taken after its
        own last probe (probe/endpoints.py); one with AUTH runs its own session.

        The probes run on an event loop in another thread (the controller's shared one, else
        one for this run) while this thread writes the results one by one (the store is used
        from one thread only).
        """
        if not due:
            return
        from reconciler.probe import probe_accounts

        tokens = self.tokens
        if tokens is None:
            try:
                from reconciler.probe.tokencache import TokenCache

                tokens = TokenCache()
            except ImportError:  # pragma: no cover - OAuth support missing
                tokens = None

        def probe_all(on_result: Callable[[int, ProbeResult], None] | None = None) -> Any:
            return probe_accounts(
                due, self.secrets, now=now, concurrency=self.options.concurrency,
                authenticate=lambda a: decisions[a.key].authenticate, tokens=tokens,
                on_result=on_result, policy=self.options.policy, endpoints=self.endpoints,
                last_probe=lambda a: last_probe.get(a.key))

        finished: queue.SimpleQueue[tuple[int, ProbeResult] | None] = queue.SimpleQueue()

        def on_result(index: int, result: ProbeResult) -> None:
            finished.put((index, result))

        future: concurrent.futures.Future[Any]
        if self.options.probe_loop is not None:
            # The controller's loop, shared with the other workers' probes.
            future = self.options.probe_loop.submit(probe_all(on_result))
        elif len(due) == 1:  # nothing to overlap with: no thread
            yield due[0], asyncio.run(probe_all())[0]
            return
        else:
            future = concurrent.futures.Future()

            def run() -> None:
                future.set_running_or_notify_cancel()
                try:
                    future.set_result(asyncio.run(probe_all(on_result)))
                except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                    future.set_exception(exc)

            # A daemon: a probe stuck past every deadline must not keep the process alive.
            threading.Thread(target=run, name="probes", daemon=True).start()
        future.add_done_callback(lambda _: finished.put(None))
        while (item := finished.get()) is not None:
            index, result = item
            yield due[index], result
        if future.cancelled():
            from reconciler.run.probeloop import ProbesStopped

            raise ProbesStopped("the probes were cancelled: the controller is stopping")
        future.result()  # raises what ended the probes early

    # ------------------------------------------------------------------ prune
    def inventory_name(self, loaded: LoadResult) -> str:
        """This source's inventory: --inventory NAME, else derived from the paths loaded."""
        return self.options.inventory or inventory.default_name(loaded.paths)

    def _prune(self, loaded: LoadResult, stored: Mapping[Key, dict[str, Any]],
               report: RunReport) -> None:
        applied = {a.key: a.publish.secret_name for a in loaded.accounts}
        # An invalid document still names its account (which stays), unless the API server could
        # never hold an object of that name (`Alpha`, "alpha ", namespace `Team`): then it may be
        # a typo of a live account, and this run cannot tell which.
        named = [(d.namespace or "default", d.name) for d in loaded.invalid
                 if d.name and inventory.valid_identity(d.namespace, d.name)]
        unnamed = [d for d in loaded.invalid
                   if not d.name or not inventory.valid_identity(d.namespace, d.name)]
        if not self.options.prune:
            report.prune_skipped = "--no-prune"
        elif loaded.failed_files:
            # A file we could not read may hold accounts that still exist in git: deleting them
            # (and the Secrets applications mount) because of a typo would be the worst outcome.
            files = "; ".join(f"{d.file}: {d.message}" for d in loaded.failed_files)
            report.prune_skipped = (f"{len(loaded.failed_files)} file(s) could not be loaded "
                                    f"({files}); nothing was pruned this run")
            log.error("prune skipped", reason="files could not be loaded",
                      files=[d.file for d in loaded.failed_files])
        elif unnamed:
            # A document we could not identify might be an account that still exists in git.
            where = "; ".join(f"{d.source.file}:{d.source.line}" for d in unnamed)
            report.prune_skipped = (f"{len(unnamed)} document(s) have no valid name or namespace "
                                    f"({where}); nothing was pruned this run")
        name = self.inventory_name(loaded)
        inventories = self.store.read_inventories()
        mine = inventories.pop(name, None)
        failed: list[Key] = []
        if report.prune_skipped is None:
            plan = inventory.plan_prune(mine=mine, present=set(applied) | set(named),
                                        others=inventories, stored=stored, is_ours=is_ours)
            for (ns, account), other in plan.kept:
                report.prune_notes.append(f"not pruned: {ns}/{account} left this source but "
                                          f"inventory {other} still applies it")
                log.warning("not pruned", account=f"{ns}/{account}", inventory=other)
            for key, secret_name in plan.prune:
                try:
                    self._prune_one(key, secret_name, stored[key], report)
                except StoreError as exc:  # the next run tries again; the others go on
                    failed.append(key)
                    report.prune_notes.append(f"prune {key[0]}/{key[1]} failed: "
                                              f"{redact_text(str(exc))}")
                    log.error("prune failed", account=f"{key[0]}/{key[1]}",
                              error=redact_text(str(exc)))
        if not self.options.dry_run:
            keep = inventory.next_inventory(mine=mine, applied=applied, still_in_git=named,
                                            unpruned=failed,
                                            keep_all=report.prune_skipped is not None)
            scope = getattr(self.store, "namespace", None)
            if scope:  # a manifest of another namespace was refused: it has no inventory here
                keep = {k: v for k, v in keep.items() if k[0] == scope}
            if mine != keep:
                self.store.write_inventory(name, keep)

    def _prune_one(self, key: Key, secret_name: str, obj: Mapping[str, Any],
                   report: RunReport) -> None:
        """Delete the account; its Secret only when the Secret's owner label names it too."""
        ns, name = key
        publish = (obj.get("spec") or {}).get("publish") or {}
        secret = self.writer.published_secret(ns, secret_name) if secret_name else None
        report.pruned.append(key)
        if self.options.dry_run:
            return
        if inventory.secret_owned_by(secret, name):
            if publish.get("deletionPolicy") == "Orphan":
                orphan = dict(secret or {})
                orphan["metadata"] = {k: v for k, v in orphan["metadata"].items()
                                      if k != "ownerReferences"}
                labels = dict(orphan["metadata"].get("labels") or {})
                labels.pop(MANAGED_BY_LABEL, None)
                orphan["metadata"]["labels"] = labels
                self.store.apply_secret(orphan)
            else:
                self.store.delete_secret(ns, secret_name)
        elif secret is not None and render.is_managed(secret):
            owner = ((secret.get("metadata") or {}).get("labels") or {}).get(ACCOUNT_LABEL)
            report.prune_notes.append(f"pruned {ns}/{name} but kept Secret {ns}/{secret_name}: "
                                      f"it is published for EmailAccount {owner}")
            log.warning("Secret of another account kept", account=f"{ns}/{name}",
                        secret=f"{ns}/{secret_name}", owner=owner)
        self.store.delete_account(ns, name)
        log.info("pruned", account=f"{ns}/{name}")
