"""One account's turn in a run: from its probe result (or none) to its written status, its
published Secret and its events.

`AccountWriter` publishes the sender Secret from a passing probe (never over a Secret it does not
manage, keeping a PKCS#12 whose contents did not change), builds the status, writes it only when
it differs and records an Event per condition transition. A store failure becomes the account's
Ready reason instead of an exception; a status the API server refuses (422) makes it Stalled.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from reconciler import reasons
from reconciler.errors import (
    SecretExists,
    StoreError,
    StoreForbidden,
    StoreInvalid,
    StoreUnavailable,
)
from reconciler.log import get_logger, redact_text, register_secret
from reconciler.manifest.load import InvalidDocument
from reconciler.model import (
    ACCOUNT_LABEL,
    API_GROUP,
    HASH_ANNOTATION,
    KIND,
    ROTATE_RELAY_PASSWORD_ANNOTATION,
    Account,
    Event,
    Outcome,
    ProbeResult,
    status_condition,
)
from reconciler.run.inventory import secret_owned_by
from reconciler.run.report import AccountReport, RunReport
from reconciler.state import conditions, readiness, relay, render, schedule, status
from reconciler.store.base import Key, StateStore, owned_keys

log = get_logger("reconciler.run")


class AccountWriter:
    """Writes each account's outcome to a store (nothing in dry-run), one account at a time."""

    def __init__(self, store: StateStore, *, dry_run: bool = False,
                 hold_on_outage: bool = False, auth_time_in_memory: bool = False) -> None:
        self.store = store
        self.dry_run = dry_run
        #: The status fields written only with another change: the controller, which keeps
        #: lastAuthTime in memory, adds it (state/status.py REMEMBERED_FIELDS).
        self.quiet = status.REMEMBERED_FIELDS if auth_time_in_memory else status.SCHEDULE_FIELDS
        #: After the Secret's write failed with StoreUnavailable, do not send the status write
        #: (it would fail too): both wait for the controller's shared backoff.
        self.hold_on_outage = hold_on_outage
        #: Secrets looked up by name in this run ((namespace, name) -> the Secret, or None when
        #: there is none), kept current as this run writes them: an account reads only its own
        #: published Secret (and the one it published under an old name), never a whole
        #: namespace's (issue 26: cost per account independent of the number of accounts).
        self.published: dict[Key, dict[str, Any] | None] = {}

    def published_secret(self, namespace: str, name: str, *,
                         publishing: bool = False) -> dict[str, Any] | None:
        """The Secret `namespace/name` as the store holds it (looked up once a run), or None.
        `publishing`: the name this run publishes to, which a store watching our Secrets may
        answer from its cache (StateStore.get_published_secret)."""
        key = (namespace, name)
        if key not in self.published:
            self.published[key] = (self.store.get_published_secret(namespace, name) if publishing
                                   else self.store.get_secret(namespace, name))
        return self.published[key]

    def refused(self, account: Account, stored: Mapping[str, Any] | None,
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
        if stored is None or self.dry_run:
            return
        entry.status_changed = status.status_differs(old_status, entry.status,
                                                       quiet=self.quiet)
        if entry.status_changed:
            try:
                self.store.write_status(account.namespace, account.name, entry.status)
            except StoreError as write_exc:
                entry.error = redact_text(str(write_exc))
                return
            for etype, reason, message, _c in conditions.transitions(old_status, entry.status):
                self._event(account.namespace, account.name, etype, reason, message, now)

    def finish(self, account: Account, stored: Mapping[str, Any] | None,
               result: ProbeResult | None, entry: AccountReport, now: datetime) -> None:
        """`_finish`, with a store failure (an OSError included) made this account's reason."""
        try:
            self._finish(account, stored, result, entry, now)
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

    def _finish(self, account: Account, stored: Mapping[str, Any] | None,
                result: ProbeResult | None, entry: AccountReport, now: datetime) -> None:
        old_status = dict((stored or {}).get("status") or {})
        entry.probed = result is not None
        publish_outcome: Outcome | None = None
        held: StoreUnavailable | None = None
        try:
            if result is not None and readiness.probe_passed(account=account,
                                                             old_status=old_status,
                                                             result=result):
                publish_outcome = self._publish(account, result, old_status, entry)
        except StoreForbidden as exc:
            publish_outcome = Outcome(False, reasons.FORBIDDEN, str(exc))
        except StoreError as exc:
            publish_outcome = Outcome(False, _store_reason(exc), str(exc))
            if self.hold_on_outage and isinstance(exc, StoreUnavailable):
                held = exc
        finally:
            new_status = status.build_status(account=account, old_status=old_status,
                                             result=result, published=publish_outcome, now=now)
            entry.status = new_status
            if held is None:
                self._write_status(account, old_status, new_status, entry, now)
            else:
                entry.status_changed = status.status_differs(old_status, new_status,
                                                             quiet=self.quiet)
        if held is not None:
            raise held  # finish: the status decided is remembered, not written

    def _publish(self, account: Account, result: ProbeResult, old_status: Mapping[str, Any],
                 entry: AccountReport, *, again: bool = False) -> Outcome:
        ns, secret_name = account.namespace, account.publish.secret_name
        before = status_condition(old_status, "SecretPublished")
        if (before.get("reason") == reasons.INVALID and before.get("status") == "False"
                and before.get("observedGeneration") == account.generation):
            # The API server refused this spec's Secret (422): not again until the spec changes.
            return Outcome(False, reasons.INVALID, str(before.get("message") or ""))
        # Orphan: no ownerReference at all, so deleting the account by any means (kubectl, Flux,
        # Argo CD) leaves the Secret to its application instead of to the garbage collector.
        orphan = account.publish.deletion_policy == "Orphan"
        # Looked up by name, whoever owns it: an unlabelled Secret of that name is reported as
        # a conflict rather than taken over (a failed read raises: nothing is published).
        existing = self.published_secret(ns, secret_name, publishing=True)
        desired = render.render_secret(account, result,
                                       owner_uid=None if orphan else account.uid or None,
                                       relay_password=_relay_password(account, existing))
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
        # The data compared too: an edit by someone else leaves the hash annotation as it was
        # (a cached published Secret holds digests, which compare equal to their values).
        if (existing is None or old_hash != new_hash or meta_changed
                or any(diff.values())) and not self.dry_run:
            try:
                self.store.apply_secret(desired)
            except SecretExists:
                if again:
                    raise
                # The caches did not show it; the store has read it now: decide again from it.
                del self.published[(ns, secret_name)]
                return self._publish(account, result, old_status, entry, again=True)
            self.published[(ns, secret_name)] = desired
        if meta_changed and not any(diff.values()):
            entry.secret_changes = {"added": [], "changed": ["(metadata)"], "removed": []}
        old_name = old_status.get("secretName")
        if old_name and old_name != secret_name:
            self._delete_old_secret(ns, old_name, account, entry)
        return Outcome(True, reasons.PUBLISHED,
                       f"Secret {ns}/{secret_name} holds the sender configuration")

    def _delete_old_secret(self, ns: str, name: str, account: Account,
                           entry: AccountReport) -> None:
        old = self.published_secret(ns, name)
        if not secret_owned_by(old, account.name):  # never another account's Secret
            return
        entry.secret_changes.setdefault("removed", []).append(f"Secret {name}")
        if not self.dry_run:
            self.store.delete_secret(ns, name)
        self.published[(ns, name)] = None

    def _write_status(self, account: Account, old: Mapping[str, Any], new: Mapping[str, Any],
                      entry: AccountReport, now: datetime) -> None:
        entry.status_changed = status.status_differs(old, new, quiet=self.quiet)
        if not entry.status_changed or self.dry_run:
            return
        self.store.write_status(account.namespace, account.name, new)  # raises: finish
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

    def mark_invalid(self, doc: InvalidDocument, stored: Mapping[Key, Mapping[str, Any]],
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
        entry.status_changed = status.status_differs(old_status, new_status,
                                                       quiet=self.quiet)
        if entry.status_changed and not self.dry_run:
            try:
                self.store.write_status(key[0], key[1], new_status)
            except StoreError as exc:
                entry.error = str(exc)
                return
            for etype, reason, message, _c in conditions.transitions(old_status, new_status):
                self._event(key[0], key[1], etype, reason, message, now)


def _relay_password(account: Account, existing: Mapping[str, Any] | None) -> str | None:
    """The relay password: the published one, so it stays stable across runs (the application
    and its sidecar read it from the same Secret), unless the account asks for a new one with
    the rotate-relay-password annotation (a value the Secret has not seen yet)."""
    if not account.relay.enabled:
        return None
    meta = (existing or {}).get("metadata") or {}
    data = (existing or {}).get("data") or {}
    asked = account.annotations.get(ROTATE_RELAY_PASSWORD_ANNOTATION, "")
    done = (meta.get("annotations") or {}).get(ROTATE_RELAY_PASSWORD_ANNOTATION, "")
    if render.is_managed(existing or {}) and data.get(relay.PASSWORD_KEY) and asked == done:
        try:
            kept = base64.b64decode(data[relay.PASSWORD_KEY]).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            kept = ""
        if len(kept) >= 16:
            register_secret(kept)
            return kept
    fresh = relay.new_password()
    register_secret(fresh)
    return fresh


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
