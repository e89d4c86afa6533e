"""One reconcile run: validate -> probe -> conditions -> Secret -> status -> prune -> events.

Decide first, act once: every account's new status and Secret are computed from its inputs, then
written only when they differ from what the store holds. One account's failure never stops the
others; status is always written at the end of an account's turn (a `finally`), never half-done.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import reasons
from reconciler.errors import StoreError, StoreForbidden, StoreInvalid, StoreUnavailable
from reconciler.log import get_logger, redact_text
from reconciler.manifest.load import InvalidDocument, LoadResult
from reconciler.model import (
    ACCOUNT_LABEL,
    API_GROUP,
    HASH_ANNOTATION,
    KIND,
    MANAGED_BY_LABEL,
    Account,
    Event,
    Outcome,
    ProbeResult,
    SecretReader,
    SourceRef,
    status_condition,
)
from reconciler.policy import DEFAULT_POLICY, Policy
from reconciler.secretrefs import secret_versions
from reconciler.state import conditions, readiness, render, schedule, status
from reconciler.store.base import (
    Key,
    StateStore,
    account_object,
    is_ours,
    object_key,
    owned_keys,
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
    diagnostics: list[str] = field(default_factory=list)

    @property
    def all_ready(self) -> bool:
        return bool(self.accounts) and all(a.ready for a in self.accounts)

    @property
    def changed(self) -> bool:
        return bool(self.pruned) or any(a.changed for a in self.accounts)


class Reconciler:
    """Runs one reconcile pass over the accounts loaded from git against a store."""

    def __init__(self, store: StateStore, secrets: SecretReader, options: RunOptions,
                 tokens: Any = None) -> None:
        self.store = store
        self.secrets = secrets
        self.options = options
        self.tokens = tokens
        self.published: dict[Key, dict[str, Any]] = {}
        self.secrets_error: StoreError | None = None

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
                self._refused(account, stored.get(account.key), report.accounts[-1], exc, now)
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
                self._mark_invalid(doc, stored, report, now)
        else:
            report.diagnostics += [str(d) for doc in loaded.invalid for d in doc.diagnostics
                                   if d.severity == "error"]
        self._prune(loaded, stored, report)
        return report

    def reconcile_objects(self, objects: Sequence[Mapping[str, Any]], *,
                          unpublished: Collection[Key] = ()) -> RunReport:
        """Reconcile EmailAccount objects as stored (controller mode): no apply, no prune.

        The objects were admitted by the API server; the semantic rules are checked again here
        and an object that breaks them gets Validated=False instead of a probe. `unpublished`:
        the accounts whose published Secret (status.secretName) the caller found missing.
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
                self._mark_invalid(InvalidDocument(key[0], key[1], SourceRef(f"{key[0]}/{key[1]}", 1),
                                                   errors, dict(obj)), stored, report, now)
                continue
            account = account_from_manifest(obj, warnings=tuple(diagnostics))
            report.accounts.append(AccountReport(account.namespace, account.name,
                                                 status=dict(obj.get("status") or {})))
            accounts.append(account)
        self._reconcile_accounts(accounts, stored, report, now, unpublished)
        return report

    def _reconcile_accounts(self, accounts: Sequence[Account],
                            stored: Mapping[Key, Mapping[str, Any]], report: RunReport,
                            now: datetime, unpublished: Collection[Key] = ()) -> None:
        namespaces = {a.namespace for a in accounts} | {k[0] for k in stored}
        self.secrets_error = None
        try:
            self.published = self.store.list_secrets(namespaces)
        except StoreError as exc:  # without the list, conflicts cannot be seen: publish nothing
            self.secrets_error = exc
            self.published = {}
            log.error("cannot list Secrets", error=redact_text(str(exc)))
        decisions = {}
        for account in accounts:
            old = (stored.get(account.key) or {}).get("status") or {}
            versions = secret_versions(account, self.secrets)
            decisions[account.key] = schedule.probe_decision(
                account=account, old_status=old, secret_versions=versions, now=now,
                published_secret_missing=account.key in unpublished)
        by_key = {(r.namespace, r.name): r for r in report.accounts}
        # Accounts not due first (no probe to wait for), then each probed account the moment
        # its own probe ends: a run killed halfway keeps everything that had finished.
        for account in accounts:
            if not decisions[account.key].probe:
                self._finish_guarded(account, stored.get(account.key), None, by_key[account.key],
                                     now)
        # Changed accounts (spec, credentials, a request: AUTH wanted) are probed first.
        due = sorted((a for a in accounts if decisions[a.key].probe),
                     key=lambda a: not decisions[a.key].authenticate)
        for account, result in self._probe(due, decisions, now):
            self._finish_guarded(account, stored.get(account.key), result, by_key[account.key],
                                 now)

    def _refused(self, account: Account, stored: Mapping[str, Any] | None,
                 entry: AccountReport, exc: StoreInvalid, now: datetime) -> None:
        """The API server refused the account (422): Stalled/Invalid with the server's causes,
        written on the stored object when there is one (a refused create has none)."""
        text = redact_text(str(exc))
        meta = (stored or {}).get("metadata") or {}
        old_status = dict((stored or {}).get("status") or {})
        entry.status = status.refused_status(
            old_status=old_status, generation=int(meta.get("generation") or 0), message=text,
            now=now)
        log.error("the API server refused the account", account=f"{account.namespace}/"
                  f"{account.name}", error=text)
        if stored is None or self.options.dry_run:
            return
        entry.status_changed = status.status_differs(old_status, entry.status)
        if entry.status_changed:
            try:
                self.store.write_status(account.namespace, account.name, entry.status)
            except StoreError as write_exc:
                entry.error = redact_text(str(write_exc))
                return
            for etype, reason, message, _c in conditions.transitions(old_status, entry.status):
                self._event(account.namespace, account.name, etype, reason, message, now)

    def _finish_guarded(self, account: Account, stored: Mapping[str, Any] | None,
                        result: ProbeResult | None, entry: AccountReport, now: datetime) -> None:
        """`_finish`, with a store failure (an OSError included) made this account's reason."""
        try:
            self._finish(account, stored, result, self.published, entry, now)
        except StoreInvalid as exc:  # the status itself was refused: Stalled, no retry loop
            text = redact_text(str(exc))
            entry.status = status.refused_status(
                old_status=(stored or {}).get("status"), generation=account.generation,
                message=text, now=now)
            log.error("the API server refused the status", account=f"{account.namespace}/"
                      f"{account.name}", error=text)
        except (StoreError, OSError) as exc:
            text = redact_text(str(exc) if isinstance(exc, StoreError)
                               else f"{type(exc).__name__}: {exc.strerror or exc}")
            entry.error = text
            if entry.status_changed:  # decided, not written
                entry.unwritten = entry.status
            entry.status = {"conditions": [{"type": "Ready", "status": "Unknown",
                                            "reason": _store_reason(exc), "message": text}]}
            log.error("writing the account failed", account=f"{account.namespace}/{account.name}",
                      error=text)

    def _applied(self, account: Account, stored: Mapping[Key, dict[str, Any]],
                 report: RunReport) -> Account:
        """Apply the git manifest to the store (or predict it in dry-run); return the account
        with the stored generation and uid."""
        old = stored.get(account.key)
        entry = AccountReport(account.namespace, account.name,
                              status=dict((old or {}).get("status") or {}))
        report.accounts.append(entry)
        desired = account_object(account.manifest)
        entry.created = old is None
        entry.spec_changed = old is not None and old.get("spec") != desired["spec"]
        if self.options.dry_run:
            meta = (old or {}).get("metadata") or {}
            generation = int(meta.get("generation") or 0) + (1 if entry.spec_changed or old is None
                                                             else 0)
            return dataclasses.replace(account, generation=generation,
                                       uid=str(meta.get("uid") or ""))
        obj = self.store.apply_account(account.manifest)
        meta = obj.get("metadata") or {}
        return dataclasses.replace(account, generation=int(meta.get("generation") or 1),
                                   uid=str(meta.get("uid") or ""))

    def _probe(self, due: Sequence[Account], decisions: Mapping[Key, Any],
               now: datetime) -> Iterator[tuple[Account, ProbeResult]]:
        """Probe `due` concurrently; yield each (account, result) as soon as its probe ends.

        The probes run on an event loop in a thread of their own while this thread writes the
        results one by one (the store is used from one thread only).
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
                on_result=on_result, policy=self.options.policy)

        if len(due) == 1:  # nothing to overlap with (the controller's case): no thread
            yield due[0], asyncio.run(probe_all())[0]
            return
        finished: queue.SimpleQueue[tuple[int, ProbeResult] | BaseException | None] = (
            queue.SimpleQueue())

        def run() -> None:
            try:
                asyncio.run(probe_all(lambda i, r: finished.put((i, r))))
            except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                finished.put(exc)
            finally:
                finished.put(None)

        # A daemon: a probe stuck past every deadline must not keep the process alive at exit.
        threading.Thread(target=run, name="probes", daemon=True).start()
        while (item := finished.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            index, result = item
            yield due[index], result

    # ------------------------------------------------------------------ one account
    def _finish(self, account: Account, stored: Mapping[str, Any] | None,
                result: ProbeResult | None, published: dict[Key, dict[str, Any]],
                entry: AccountReport, now: datetime) -> None:
        old_status = dict((stored or {}).get("status") or {})
        entry.probed = result is not None
        publish_outcome: Outcome | None = None
        try:
            if result is not None and readiness.probe_passed(account=account,
                                                             old_status=old_status,
                                                             result=result):
                publish_outcome = self._publish(account, result, old_status, published, entry)
        except StoreForbidden as exc:
            publish_outcome = Outcome(False, reasons.FORBIDDEN, str(exc))
        except StoreError as exc:
            publish_outcome = Outcome(False, _store_reason(exc), str(exc))
        finally:
            new_status = status.build_status(account=account, old_status=old_status,
                                             result=result, published=publish_outcome, now=now)
            entry.status = new_status
            self._write_status(account, old_status, new_status, entry, now)

    def _publish(self, account: Account, result: ProbeResult, old_status: Mapping[str, Any],
                 published: dict[Key, dict[str, Any]], entry: AccountReport) -> Outcome:
        ns, secret_name = account.namespace, account.publish.secret_name
        if self.secrets_error is not None:
            raise self.secrets_error
        before = status_condition(old_status, "SecretPublished")
        if (before.get("reason") == reasons.INVALID and before.get("status") == "False"
                and before.get("observedGeneration") == account.generation):
            # The API server refused this spec's Secret (422): not again until the spec changes.
            return Outcome(False, reasons.INVALID, str(before.get("message") or ""))
        # Orphan: no ownerReference at all, so deleting the account by any means (kubectl, Flux,
        # Argo CD) leaves the Secret to its application instead of to the garbage collector.
        orphan = account.publish.deletion_policy == "Orphan"
        desired = render.render_secret(account, result,
                                       owner_uid=None if orphan else account.uid or None)
        existing = published.get((ns, secret_name))
        if existing is None:
            # The controller's Secret list holds only labelled Secrets: look the name up, so an
            # unlabelled Secret of it is reported as a conflict rather than taken over.
            existing = self.store.get_secret(ns, secret_name)
            if existing is not None:
                published[(ns, secret_name)] = existing
        _keep_published_pkcs12(existing, desired)
        if existing is not None and not render.is_managed(existing):
            return Outcome(False, reasons.SECRET_CONFLICT,
                           f"Secret {ns}/{secret_name} exists and is not managed by "
                           "email-reconciler; it was left untouched. Delete it, or set "
                           "spec.publish.secretName to another name.")
        owner = ((existing or {}).get("metadata") or {}).get("labels", {}).get(
            ACCOUNT_LABEL)
        if existing is not None and owner not in (None, account.name):
            return Outcome(False, reasons.SECRET_CONFLICT,
                           f"Secret {ns}/{secret_name} is published for EmailAccount {owner}; "
                           "set spec.publish.secretName to another name.")
        diff = render.secret_diff(existing, desired)
        entry.secret_changes = diff
        old_hash = (((existing or {}).get("metadata") or {}).get("annotations") or {}).get(
            HASH_ANNOTATION)
        new_hash = desired["metadata"]["annotations"].get(HASH_ANNOTATION)
        meta_changed = existing is not None and secret_metadata_differs(existing, desired)
        if (existing is None or old_hash != new_hash or meta_changed) and not self.options.dry_run:
            self.store.apply_secret(desired)
            published[(ns, secret_name)] = desired
        if meta_changed and not any(diff.values()):
            entry.secret_changes = {"added": [], "changed": ["(metadata)"], "removed": []}
        old_name = old_status.get("secretName")
        if old_name and old_name != secret_name:
            self._delete_old_secret(ns, old_name, account, published, entry)
        return Outcome(True, reasons.PUBLISHED,
                       f"Secret {ns}/{secret_name} holds the sender configuration")

    def _delete_old_secret(self, ns: str, name: str, account: Account,
                           published: dict[Key, dict[str, Any]], entry: AccountReport) -> None:
        old = published.get((ns, name))
        if old is None or not render.is_managed(old):
            return
        entry.secret_changes.setdefault("removed", []).append(f"Secret {name}")
        if not self.options.dry_run:
            self.store.delete_secret(ns, name)
        published.pop((ns, name), None)

    def _write_status(self, account: Account, old: Mapping[str, Any], new: Mapping[str, Any],
                      entry: AccountReport, now: datetime) -> None:
        entry.status_changed = status.status_differs(old, new)
        if not entry.status_changed or self.options.dry_run:
            return
        self.store.write_status(account.namespace, account.name, new)  # raises: _finish_guarded
        for etype, reason, message, _ctype in conditions.transitions(old, new):
            if etype == "Normal" and not old.get("conditions"):
                continue  # a new account that came up fine: its status says so, no event needed
            self._event(account.namespace, account.name, etype, reason, message, now)

    def _event(self, ns: str, name: str, etype: str, reason: str, message: str,
               now: datetime) -> None:
        try:
            self.store.record_event(Event(ns, name, etype, reason,  # type: ignore[arg-type]
                                          redact_text(message), schedule.rfc3339(now)))
        except StoreError as exc:
            log.warning("event not recorded", account=f"{ns}/{name}", error=str(exc))

    def _mark_invalid(self, doc: InvalidDocument, stored: Mapping[Key, Mapping[str, Any]],
                      report: RunReport, now: datetime) -> None:
        report.diagnostics += [str(d) for d in doc.diagnostics if d.severity == "error"]
        if not doc.name:
            return
        key = (doc.namespace or "default", doc.name)
        old_obj = stored.get(key)
        old_status = dict((old_obj or {}).get("status") or {})
        generation = int(((old_obj or {}).get("metadata") or {}).get("generation") or 0)
        new_status = status.invalid_status(old_status=old_status, generation=generation,
                                           diagnostics=doc.diagnostics, now=now)
        entry = AccountReport(key[0], key[1], status=new_status)
        report.accounts.append(entry)
        if old_obj is None:
            # Nothing stored yet: an invalid manifest is never applied, but it is reported.
            return
        entry.status_changed = status.status_differs(old_status, new_status)
        if entry.status_changed and not self.options.dry_run:
            try:
                self.store.write_status(key[0], key[1], new_status)
            except StoreError as exc:
                entry.error = str(exc)
                return
            for etype, reason, message, _c in conditions.transitions(old_status, new_status):
                self._event(key[0], key[1], etype, reason, message, now)

    # ------------------------------------------------------------------ prune
    def _prune(self, loaded: LoadResult, stored: Mapping[Key, dict[str, Any]],
               report: RunReport) -> None:
        published = self.published
        in_git: set[Key] = {a.key for a in loaded.accounts}
        in_git |= {(d.namespace or "default", d.name) for d in loaded.invalid if d.name}
        unnamed = [d for d in loaded.invalid if not d.name]
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
            report.prune_skipped = (f"{len(unnamed)} document(s) could not be read; nothing was "
                                    "pruned this run")
        else:
            inventory = self.store.read_inventory()
            for key, obj in sorted(stored.items()):
                if key in in_git or key not in inventory or not is_ours(obj):
                    continue
                try:
                    self._prune_one(key, obj, published, report)
                except StoreError as exc:  # the next run tries again; the others go on
                    report.diagnostics.append(f"prune {key[0]}/{key[1]} failed: {exc}")
                    log.error("prune failed", account=f"{key[0]}/{key[1]}",
                              error=redact_text(str(exc)))
        if not self.options.dry_run:
            keep = in_git if report.prune_skipped is None else in_git | self.store.read_inventory()
            scope = getattr(self.store, "namespace", None)
            if scope:  # a manifest of another namespace was refused: it has no inventory here
                keep = {k for k in keep if k[0] == scope}
            if self.store.read_inventory() != keep:
                self.store.write_inventory(keep)

    def _prune_one(self, key: Key, obj: Mapping[str, Any],
                   published: dict[Key, dict[str, Any]], report: RunReport) -> None:
        ns, name = key
        spec = obj.get("spec") or {}
        publish = spec.get("publish") or {}
        secret_name = ((obj.get("status") or {}).get("secretName")
                       or publish.get("secretName") or f"{name}-sender")
        secret = published.get((ns, secret_name))
        report.pruned.append(key)
        if self.options.dry_run:
            return
        if secret is not None and render.is_managed(secret):
            if publish.get("deletionPolicy") == "Orphan":
                orphan = dict(secret)
                orphan["metadata"] = {k: v for k, v in (secret.get("metadata") or {}).items()
                                      if k != "ownerReferences"}
                labels = dict(orphan["metadata"].get("labels") or {})
                labels.pop(MANAGED_BY_LABEL, None)
                orphan["metadata"]["labels"] = labels
                self.store.apply_secret(orphan)
            else:
                self.store.delete_secret(ns, secret_name)
        self.store.delete_account(ns, name)
        log.info("pruned", account=f"{ns}/{name}")


def _keep_published_pkcs12(existing: Mapping[str, Any] | None, desired: dict[str, Any]) -> None:
    """Keep the published signing.p12 when the new one holds the same key, certificates, alias
    and password: PKCS#12 files carry random salts, so rebuilding it on every probe would
    change the Secret (and restart its applications) with nothing changed."""
    old = (existing or {}).get("data") or {}
    new = desired.get("data") or {}
    key, password = "signing.p12", "SIGNING_P12_PASSWORD"
    if key not in old or key not in new or old[key] == new[key]:
        return
    if old.get(password) != new.get(password):
        return  # the keystore password changed: so does the published one
    from reconciler.probe.signing import same_pkcs12

    try:
        old_p12, new_p12 = base64.b64decode(old[key]), base64.b64decode(new[key])
        secret = base64.b64decode(new.get(password) or "").decode("utf-8")
    except (ValueError, TypeError):
        return
    if same_pkcs12(old_p12, new_p12, secret):
        new[key] = old[key]
        desired["metadata"]["annotations"][HASH_ANNOTATION] = render.data_hash(new)


def _store_reason(exc: BaseException) -> str:
    if isinstance(exc, StoreForbidden):
        return reasons.FORBIDDEN
    if isinstance(exc, StoreInvalid):
        return reasons.INVALID
    if isinstance(exc, StoreUnavailable):
        return reasons.API_UNAVAILABLE
    return reasons.STORE_WRITE_FAILED


def secret_metadata_differs(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether applying `desired` would change a metadata field we own on `existing`.

    Like server-side apply's field ownership: labels and annotations other managers added, and
    their ownerReferences, are theirs; only our keys (the desired ones, and keys under our own
    prefix, or in our managedFields, that we no longer want) and our ownerReference count.
    """
    em, dm = existing.get("metadata") or {}, desired.get("metadata") or {}
    for part in ("labels", "annotations"):
        have, want = em.get(part) or {}, dm.get(part) or {}
        if any(have.get(k) != v for k, v in want.items()):
            return True
        owned = owned_keys(existing, part)
        if owned is None:  # no managedFields (local store): keys under our prefix are ours
            owned = {k for k in have if k.startswith(_OUR_PREFIX)}
        if any(k in have and k not in want for k in owned):
            return True  # a key we applied has left the desired object: apply removes it
    return _our_owners(em.get("ownerReferences")) != _our_owners(dm.get("ownerReferences"))


_OUR_PREFIX = f"{API_GROUP}/"


def _our_owners(refs: Any) -> list[Any]:
    return [r for r in refs or [] if isinstance(r, Mapping)
            and str(r.get("apiVersion", "")).startswith(_OUR_PREFIX) and r.get("kind") == KIND]
