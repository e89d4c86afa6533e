"""The `probe`, `reconcile` and `get` commands: build the objects, run them, render the results."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from reconciler.errors import ExitCode, SecretNotFound, StoreError, UsageError
from reconciler.manifest.report import plural
from reconciler.model import KeyRef, SecretReader, status_condition
from reconciler.policy import Policy, guard
from reconciler.run.options import GetOptions, PolicyOptions, ProbeOptions, ReconcileOptions

EXIT_OK, EXIT_FAIL, EXIT_USAGE = ExitCode.OK, ExitCode.PROBLEMS, ExitCode.USAGE


class NoSecrets:
    """The secret reader when none is configured: every reference is missing, with a hint."""

    @staticmethod
    def _missing(namespace: str, ref: KeyRef) -> SecretNotFound:
        plain = SecretNotFound(namespace, ref.name, ref.key, ref.kind)
        return SecretNotFound(
            namespace, ref.name, ref.key, ref.kind,
            message=f"{plain}: no --secrets-dir was given, so no credential is read; pass "
                    f"--secrets-dir DIR holding DIR/{namespace}/{ref.name}/{ref.key}")

    def metadata(self, namespace: str, ref: KeyRef) -> Any:
        raise self._missing(namespace, ref)

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        raise self._missing(namespace, ref)

    def version(self, namespace: str, ref: KeyRef) -> str:
        raise self._missing(namespace, ref)


def _secret_reader(secrets_dir: str | None, store: Any = None, *,
                   dry_run: bool = False) -> SecretReader:
    if secrets_dir:
        if not Path(secrets_dir).is_dir():
            what = "not a directory" if Path(secrets_dir).exists() else "no such directory"
            full = Path(secrets_dir).absolute()
            looked = f" (looked for {full})" if str(full) != secrets_dir else ""
            raise UsageError(f"--secrets-dir {secrets_dir}: {what}{looked}")
        from reconciler.probe.credentials import DirSecretReader
        from reconciler.secretrefs import installation_key

        root = getattr(store, "root", None)  # a local store keeps the installation's key
        key = installation_key(root, create=not dry_run) if root is not None else None
        return DirSecretReader(secrets_dir, key)
    reader = store.secret_reader() if store is not None else None
    return reader if reader is not None else NoSecrets()


def policy_from(args: PolicyOptions | Any) -> Policy:
    """The policy of `--allowed-endpoints`, `--allowed-hosts` and `--allow-publish-annotations`."""
    return Policy.from_flags(getattr(args, "allowed_endpoints", None),
                             getattr(args, "allowed_hosts", None),
                             getattr(args, "allow_publish_annotations", None))


def _print_diagnostics(loaded: Any, err: IO[str] | None) -> None:
    import sys

    stream = err or sys.stderr
    for d in loaded.diagnostics:
        print(str(d), file=stream)


# --------------------------------------------------------------------------- probe


def run_probe(args: ProbeOptions, *, out: IO[str]) -> int:
    """`email-reconciler probe`: the seed's Test connectivity, no store at all."""
    from reconciler.manifest.load import load_paths

    loaded = load_paths(args.paths)
    with collector_quiet():
        return _probe_loaded(args, loaded, out)


def _probe_loaded(args: ProbeOptions, loaded: Any, out: IO[str]) -> int:
    from reconciler.probe import probe_accounts
    from reconciler.state.status import build_status

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
        write_json_list(entries, out)
    else:
        from reconciler.run.table import format_table, rows, table_object

        objects = [table_object(a.namespace, a.name, e["status"], provider=a.provider,
                                send_using=a.send_using) for a, e in zip(accounts, entries,
                                                                         strict=True)]
        if objects:
            out.write(format_table(rows(objects, wide=args.output == "wide", now=now)))
        _write_not_ready(entries, out)
    ready_all = all(status_condition(e["status"], "Ready").get("status") == "True" for e in entries)
    invalid = not loaded.ok
    return EXIT_OK if ready_all and sent_ok and not invalid and entries else EXIT_FAIL


#: The young generation's threshold while a run probes (CPython's default is 700).
PROBE_GC_THRESHOLD = 100_000


@contextlib.contextmanager
def collector_quiet() -> Iterator[None]:
    """The cyclic collector kept off what a one-shot run holds until it ends, while it probes.

    What is alive now (the modules, the loaded accounts) is frozen out of the collector's scans
    (`gc.freeze`): the loader made it with the collector paused, so otherwise the first passes
    after it rescanned all of it, young, middle and old (a full pass at 2,000 accounts). The
    young generation is collected every 100,000 net allocations instead of 700: a probe makes
    a few hundred objects, nearly all freed by reference counting. Together 0.06-0.09 ms of CPU a
    probe (bench/README.md, benchmark 7). The threshold is restored afterwards; what was frozen
    stays out (a run does not outlive its accounts).
    """
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(PROBE_GC_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def write_json_list(items: Sequence[Any], out: IO[str]) -> None:
    """A JSON array: indented on a terminal; piped, one item a line, written at once.

    json's indenting encoder is pure Python (~250 writes and 70 us an account); without indent
    the C encoder does an account in ~10 us, and a line per account still greps and diffs.
    """
    if _is_tty(out):
        out.write(json.dumps(items, indent=2) + "\n")
        return
    out.write("[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n"
              if items else "[]\n")


def _is_tty(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


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


def _write_not_ready(entries: Sequence[Mapping[str, Any]], out: IO[str]) -> None:
    """Below the table: each account that is not Ready, with its reason and whole message."""
    for e in entries:
        ready = status_condition(e["status"], "Ready")
        if ready.get("status") != "True" and ready.get("message"):
            out.write(f"{e['namespace']}/{e['name']}: {ready.get('reason')}: "
                      f"{ready['message']}\n")


# --------------------------------------------------------------------------- reconcile


def run_reconcile(args: ReconcileOptions, *, out: IO[str]) -> int:
    """`email-reconciler reconcile`: the GitOps run."""
    from reconciler.manifest.load import load_paths
    from reconciler.run.inventory import check_name, default_name
    from reconciler.run.reconcile import Reconciler, RunOptions
    from reconciler.store import open_store

    store = open_store(args.store, context=args.context, namespace=args.namespace)
    # kubectl's rule: a manifest without metadata.namespace goes to --namespace, else to the
    # kubeconfig context's namespace; with --namespace, one naming another namespace is an error.
    name = check_name(args.inventory) if args.inventory else default_name(args.paths)
    loaded = load_paths(args.paths, namespace=getattr(store, "default_namespace", None),
                        enforce_namespace=bool(args.namespace),
                        secret_owner=_secret_owner(store))
    _print_diagnostics(loaded, None)
    # Before anything is written: which store, which namespaces, which source's inventory.
    print(f"email-reconciler: {'dry run against' if args.dry_run else 'writing to'} "
          f"{store.description}; inventory {name}", file=sys.stderr)
    secrets = _secret_reader(args.secrets_dir, store, dry_run=args.dry_run)
    options = RunOptions(dry_run=args.dry_run, prune=not args.no_prune,
                         concurrency=args.concurrency, policy=policy_from(args),
                         apply_only=args.apply_only, inventory=name, force=args.force)
    locked = getattr(store, "locked", None)  # the local store: one writing run at a time
    with (locked(args.lock_timeout) if locked is not None and not args.dry_run
          else contextlib.nullcontext()):
        report = Reconciler(store, secrets, options).run(loaded)
    render_report(report, out=out, output=args.output, dry_run=args.dry_run)
    if args.output != "json" and not args.dry_run and not args.apply_only:
        _write_probed(report, out)
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
    if report.accounts:
        from reconciler.run.table import format_table, rows, table_object

        objects = [table_object(a.namespace, a.name, a.status, provider=a.provider,
                                send_using=a.send_using, created=a.created_at)
                   for a in report.accounts]
        table = rows(objects, wide=output == "wide", now=datetime.now(UTC), sort=False)
        table[0].append("WOULD CHANGE" if dry_run else "CHANGED")
        for row, a in zip(table[1:], report.accounts, strict=True):
            row.append(_changes(a))
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
    _write_not_ready([{"namespace": a.namespace, "name": a.name, "status": a.status}
                      for a in report.accounts], out)


def _write_probed(report: Any, out: IO[str]) -> None:
    """Say when accounts were not probed (not due yet), so a quiet second run is not a mystery."""
    probed = sum(1 for a in report.accounts if a.probed)
    skipped = len(report.accounts) - probed
    if skipped:
        out.write(f"probed {probed} of {plural(len(report.accounts), 'account')}; "
                  f"{'the other is' if skipped == 1 else 'the others are'} not due yet "
                  "(--force probes now)\n")


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


def select(objects: Sequence[Mapping[str, Any]], names: Sequence[str],
           namespace: str | None) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The objects named NAME or NAMESPACE/NAME (all when no name), and the names not found."""
    def key(o: Mapping[str, Any]) -> tuple[str, str]:
        meta = o.get("metadata") or {}
        return str(meta.get("namespace") or "default"), str(meta.get("name"))

    objects = [o for o in objects if namespace is None or key(o)[0] == namespace]
    if not names:
        return list(objects), []
    chosen: list[Mapping[str, Any]] = []
    missing: list[str] = []
    for wanted in names:
        ns, _, name = wanted.rpartition("/")
        found = [o for o in objects if key(o)[1] == name and (not ns or key(o)[0] == ns)]
        if not found:
            missing.append(wanted)
        chosen += [o for o in found if o not in chosen]
    return chosen, missing


def run_get(args: GetOptions, *, out: IO[str]) -> int:
    """`email-reconciler get [NAME...]`: the `kubectl get emailaccounts` table from either store."""
    import sys

    from reconciler.store import open_store

    store = open_store(args.store, context=args.context, namespace=args.namespace)
    objects, missing = select(store.list_accounts(), args.names, args.namespace)
    for name in missing:
        where = f" in namespace {args.namespace}" if args.namespace else ""
        print(f"email-reconciler get: emailaccount {name!r} not found{where} "
              f"({store.description})", file=sys.stderr)
    if args.output in ("yaml", "json"):
        doc = {"apiVersion": "v1", "kind": "List", "items": objects}
        if args.output == "json":
            json.dump(doc, out, indent=2)
            out.write("\n")
        else:
            out.write(yaml.safe_dump(doc, sort_keys=False))
    elif objects:
        from reconciler.run.table import format_table, rows

        out.write(format_table(rows(objects, wide=args.output == "wide", now=datetime.now(UTC))))
    elif not missing:
        out.write("No resources found\n")
    return EXIT_FAIL if missing else EXIT_OK
