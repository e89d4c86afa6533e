"""The `probe`, `reconcile` and `get` commands: build the objects, run them, render the results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from reconciler.errors import SecretNotFound, StoreError, UsageError
from reconciler.model import KeyRef, SecretReader, status_condition
from reconciler.policy import Policy, guard
from reconciler.run.table import format_table, rows

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class NoSecrets:
    """The secret reader when none is configured: every reference is missing, with a hint."""

    def metadata(self, namespace: str, ref: KeyRef) -> Any:
        raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)

    def version(self, namespace: str, ref: KeyRef) -> str:
        raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)


def _secret_reader(secrets_dir: str | None, store: Any = None, *,
                   dry_run: bool = False) -> SecretReader:
    if secrets_dir:
        if not Path(secrets_dir).is_dir():
            raise UsageError(f"--secrets-dir {secrets_dir}: not a directory")
        from reconciler.probe.credentials import DirSecretReader
        from reconciler.secretrefs import installation_key

        root = getattr(store, "root", None)  # a local store keeps the installation's key
        key = installation_key(root, create=not dry_run) if root is not None else None
        return DirSecretReader(secrets_dir, key)
    reader = store.secret_reader() if store is not None else None
    return reader if reader is not None else NoSecrets()


def policy_from(args: argparse.Namespace) -> Policy:
    """The endpoint policy of `--allowed-endpoints` and `--allowed-hosts`."""
    return Policy.from_flags(getattr(args, "allowed_endpoints", None),
                             getattr(args, "allowed_hosts", None))


def _print_diagnostics(loaded: Any, err: IO[str] | None) -> None:
    import sys

    stream = err or sys.stderr
    for d in loaded.diagnostics:
        print(str(d), file=stream)


# --------------------------------------------------------------------------- probe


def run_probe(args: argparse.Namespace, *, out: IO[str]) -> int:
    """`email-reconciler probe`: the seed's Test connectivity, no store at all."""
    from reconciler.manifest.load import load_paths
    from reconciler.probe import probe_accounts
    from reconciler.state.status import build_status

    loaded = load_paths(args.paths)
    _print_diagnostics(loaded, None)
    policy = policy_from(args)
    accounts = list(loaded.accounts)
    if args.name:
        wanted = set(args.name)
        accounts = [a for a in accounts if a.name in wanted or f"{a.namespace}/{a.name}" in wanted]
        if not accounts:
            raise UsageError(f"no account named {', '.join(sorted(wanted))}")
    if args.secrets_from_cluster:
        if args.secrets_dir:
            raise UsageError("--secrets-dir and --secrets-from-cluster exclude each other")
        from reconciler.store import open_store

        secrets = _secret_reader(None, open_store("kube", context=args.context))
    else:
        secrets = _secret_reader(args.secrets_dir)
    now = datetime.now(UTC)
    tokens = _token_cache()
    results = asyncio.run(probe_accounts(accounts, secrets, now=now, concurrency=args.concurrency,
                                         authenticate=True, tokens=tokens, policy=policy))
    entries: list[dict[str, Any]] = []
    for account, result in zip(accounts, results, strict=True):
        status = build_status(account=account, old_status=None, result=result, published=None,
                              now=now, publishing=False)
        entries.append({"namespace": account.namespace, "name": account.name, "status": status})
    sent_ok = True
    if args.send_test_to:
        sent_ok = _send_tests(accounts, results, secrets, args.send_test_to, tokens, now, out)
    if args.output == "json":
        json.dump(entries, out, indent=2, sort_keys=False)
        out.write("\n")
    else:
        table = [["NAMESPACE", "NAME", "CONNECTIVITY", "TLS", "AUTH", "READY", "REASON", "MESSAGE"]]
        for e, r in zip(entries, results, strict=True):
            ready = status_condition(e["status"], "Ready")
            table.append([e["namespace"], e["name"], r.connectivity or "-", r.tls_version or "-",
                          r.auth_mechanism or (r.authentication.reason if r.authentication
                                               else "-"),
                          ready.get("status", "Unknown"), ready.get("reason", ""),
                          _short(ready.get("message", ""))])
        out.write(format_table(table))
    ready_all = all(status_condition(e["status"], "Ready").get("status") == "True" for e in entries)
    invalid = not loaded.ok
    return EXIT_OK if ready_all and sent_ok and not invalid and entries else EXIT_FAIL


def _send_tests(accounts: Sequence[Any], results: Sequence[Any], secrets: SecretReader,
                to: str, tokens: Any, now: datetime, out: IO[str]) -> bool:
    from reconciler.probe.send import send_test_message

    ok = True
    for account, result in zip(accounts, results, strict=True):
        if not result.ok or account.smtp is None:
            continue
        allowed = guard(secrets, account)  # the same opt-in rules as the probe
        outcome = asyncio.run(send_test_message(account, allowed, to, now=now, tokens=tokens,
                                                signer=_signer(account, allowed)))
        ok = ok and outcome.ok
        out.write(f"{account.namespace}/{account.name}: test message to {to}: "
                  f"{outcome.reason}: {outcome.message}\n")
    return ok


def _signer(account: Any, secrets: SecretReader) -> Any:
    """A function that S/MIME-signs a message with the account's key, or None without signing."""
    if account.smtp is None or account.smtp.signing is None:
        return None
    from reconciler.probe.keystore import SigningMaterial, load_signing_material
    from reconciler.probe.signing import sign_message

    material = load_signing_material(account, secrets)
    if not isinstance(material, SigningMaterial):
        return None  # the probe already reported why signing is not ready
    return lambda msg: sign_message(msg, material.key, [material.certificate, *material.chain])


def _token_cache() -> Any:
    try:
        from reconciler.probe.tokencache import TokenCache
    except ImportError:  # pragma: no cover
        return None
    return TokenCache()


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- reconcile


def run_reconcile(args: argparse.Namespace, *, out: IO[str]) -> int:
    """`email-reconciler reconcile`: the GitOps run."""
    from reconciler.manifest.load import load_paths
    from reconciler.run.inventory import check_name, default_name
    from reconciler.run.reconcile import Reconciler, RunOptions
    from reconciler.store import open_store

    try:
        store = open_store(args.store, context=args.context, namespace=args.namespace)
    except StoreError as exc:
        print(f"email-reconciler: store error: {exc}", file=__import__("sys").stderr)
        return EXIT_USAGE
    # kubectl's rule: a manifest without metadata.namespace goes to --namespace, else to the
    # kubeconfig context's namespace; with --namespace, one naming another namespace is an error.
    name = getattr(args, "inventory", None)
    name = check_name(name) if name else default_name(args.paths)
    loaded = load_paths(args.paths, namespace=getattr(store, "default_namespace", None),
                        enforce_namespace=bool(args.namespace),
                        secret_owner=_secret_owner(store))
    _print_diagnostics(loaded, None)
    # Before anything is written: which store, which namespaces, which source's inventory.
    print(f"email-reconciler: {'dry run against' if args.dry_run else 'writing to'} "
          f"{store.description}; inventory {name}", file=sys.stderr)
    try:
        secrets = _secret_reader(args.secrets_dir, store, dry_run=args.dry_run)
        options = RunOptions(dry_run=args.dry_run, prune=not args.no_prune,
                             concurrency=args.concurrency, policy=policy_from(args),
                             apply_only=args.apply_only, inventory=name)
        locked = getattr(store, "locked", None)  # the local store: one writing run at a time
        with (locked(args.lock_timeout) if locked is not None and not args.dry_run
              else contextlib.nullcontext()):
            report = Reconciler(store, secrets, options).run(loaded)
    except StoreError as exc:
        print(f"email-reconciler: store error: {exc}", file=__import__("sys").stderr)
        return EXIT_USAGE
    render_report(report, out=out, output=args.output, dry_run=args.dry_run)
    if args.dry_run:
        return EXIT_FAIL if report.changed else EXIT_OK
    if args.apply_only:  # readiness is the controller's to report
        return EXIT_OK if loaded.ok and not any(a.error for a in report.accounts) else EXIT_FAIL
    return EXIT_OK if report.all_ready and loaded.ok else EXIT_FAIL


def _secret_owner(store: Any) -> Callable[[str, str], str | None]:
    """Who already owns a published Secret (its owner label), for the loader to blame the
    newcomer of two documents publishing one Secret name; None when unknown."""
    from reconciler.run.inventory import secret_owner

    def owner(namespace: str, name: str) -> str | None:
        try:
            return secret_owner(store.get_secret(namespace, name))
        except StoreError:
            return None  # then the document that comes second is blamed, as without a store

    return owner


def render_report(report: Any, *, out: IO[str], output: str, dry_run: bool) -> None:
    """The run's summary: one row per account, what changed, what was pruned."""
    if output == "json":
        json.dump({
            "dryRun": dry_run,
            "changed": report.changed,
            "accounts": [{"namespace": a.namespace, "name": a.name, "ready": a.ready,
                          "probed": a.probed, "created": a.created, "specChanged": a.spec_changed,
                          "statusChanged": a.status_changed, "secretChanges": a.secret_changes,
                          "error": a.error, "status": a.status} for a in report.accounts],
            "pruned": [{"namespace": ns, "name": n} for ns, n in report.pruned],
            "pruneSkipped": report.prune_skipped,
            "pruneNotes": report.prune_notes,
        }, out, indent=2)
        out.write("\n")
        return
    table = [["NAMESPACE", "NAME", "READY", "REASON", "PROTOCOL", "TLS", "SECRET",
              "WOULD CHANGE" if dry_run else "CHANGED"]]
    for a in report.accounts:
        ready = status_condition(a.status, "Ready")
        table.append([a.namespace, a.name, ready.get("status", "Unknown"),
                      ready.get("reason", ""), str(a.status.get("protocol") or "-"),
                      str(a.status.get("tlsVersion") or "-"),
                      str(a.status.get("secretName") or "-"), _changes(a)])
    out.write(format_table(table))
    if dry_run:
        for a in report.accounts:
            details = _secret_details(a)
            if details:
                out.write(details + "\n")
    for ns, name in report.pruned:
        out.write(f"{'would prune' if dry_run else 'pruned'} {ns}/{name}\n")
    if report.prune_skipped:
        out.write(f"prune skipped: {report.prune_skipped}\n")
    for note in report.prune_notes:
        out.write(note + "\n")
    for a in report.accounts:
        ready = status_condition(a.status, "Ready")
        if ready.get("status") != "True" and ready.get("message"):
            out.write(f"{a.namespace}/{a.name}: {ready.get('reason')}: {ready['message']}\n")


def _changes(a: Any) -> str:
    parts = []
    if a.created:
        parts.append("created")
    elif a.spec_changed:
        parts.append("spec")
    if a.status_changed:
        parts.append("status")
    sc = a.secret_changes or {}
    counts = [f"{sign}{len(sc.get(kind) or [])}" for sign, kind in
              (("+", "added"), ("~", "changed"), ("-", "removed")) if sc.get(kind)]
    if counts:
        parts.append("secret " + " ".join(counts))
    return ", ".join(parts) or "-"


def _secret_details(a: Any) -> str | None:
    """Names (never values) of the Secret keys that change."""
    sc = a.secret_changes or {}
    keys = ([f"+{k}" for k in sc.get("added", [])] + [f"~{k}" for k in sc.get("changed", [])]
            + [f"-{k}" for k in sc.get("removed", [])])
    if not keys:
        return None
    return f"{a.namespace}/{a.name}: Secret {a.status.get('secretName')}: {' '.join(keys)}"


# --------------------------------------------------------------------------- get


def run_get(args: argparse.Namespace, *, out: IO[str]) -> int:
    """`email-reconciler get`: the `kubectl get emailaccounts` table from either store."""
    from reconciler.store import open_store

    try:
        store = open_store(args.store, context=args.context, namespace=args.namespace)
        objects = store.list_accounts()
    except StoreError as exc:
        raise UsageError(str(exc)) from exc
    if args.namespace:
        objects = [o for o in objects
                   if (o.get("metadata") or {}).get("namespace") == args.namespace]
    if args.output in ("yaml", "json"):
        doc = {"apiVersion": "v1", "kind": "List", "items": objects}
        if args.output == "json":
            json.dump(doc, out, indent=2)
            out.write("\n")
        else:
            out.write(yaml.safe_dump(doc, sort_keys=False))
        return EXIT_OK
    if not objects:
        out.write("No resources found\n")
        return EXIT_OK
    out.write(format_table(rows(objects, wide=args.output == "wide", now=datetime.now(UTC))))
    return EXIT_OK
