"""`describe NAME` (one account in detail) and `request NAME` (ask the controller for a probe now).

`describe` reads only the store: the object with its status, its recent events and the published
Secret, whose values it never prints (each key shows its size only). `render_description` is pure.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from reconciler.errors import ExitCode, UsageError
from reconciler.manifest.report import plural
from reconciler.model import REQUESTED_AT_ANNOTATION
from reconciler.run.options import DescribeOptions, RequestOptions
from reconciler.run.table import age

#: The probe's steps, in the order it takes them: the conditions each one sets.
STEPS = (("Connected", "connect"), ("Authenticated", "authenticate"),
         ("SigningReady", "signing key"), ("SecretPublished", "publish"))
_SUMMARY = (("Ready", "ready"), ("Stalled", "stalled"), ("Validated", "validated"))


def _one(store: Any, name: str, namespace: str | None) -> dict[str, Any]:
    """The stored account named NAME or NAMESPACE/NAME; UsageError when ambiguous."""
    from reconciler.run.commands import select

    found, missing = select(store.list_accounts(), [name], namespace)
    if missing:
        raise LookupError(f"emailaccount {name!r} not found in {store.description}")
    if len(found) > 1:
        spaces = ", ".join(sorted(str((o.get("metadata") or {}).get("namespace")) for o in found))
        raise UsageError(f"{name!r} is in several namespaces ({spaces}); name one as "
                         f"NAMESPACE/{name} or pass --namespace")
    return dict(found[0])


def _condition_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    lines = []
    for c in status.get("conditions") or []:
        since = age(c.get("lastTransitionTime"), now)
        lines.append(f"  {c.get('type', '?'):<16} {c.get('status', '?'):<7} "
                     f"{c.get('reason', ''):<24} {since:>5}  {c.get('message', '')}")
    return lines


def _probe_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    if not status.get("lastProbeTime"):
        return ["  never probed"]
    lines = [f"  at {status['lastProbeTime']} ({age(status['lastProbeTime'], now)} ago); "
             f"last AUTH {status.get('lastAuthTime') or 'never'}; "
             f"next probe {status.get('nextProbeTime') or '-'}; "
             f"failed probes in a row {status.get('failedProbes', 0)}"]
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for number, (ctype, step) in enumerate((s for s in STEPS if s[0] in conditions), 1):
        c = conditions[ctype]
        lines.append(f"  {number}. {step:<13} {c.get('reason', '')}: {c.get('message', '')}")
    facts = [(k, status.get(k)) for k in ("connectivity", "protocol", "tlsVersion", "cipher")]
    cert = status.get("certificate") or {}
    if cert:
        from reconciler.state.schedule import days_until

        days = days_until(cert.get("notAfter"), now)
        facts.append(("certificate", f"{cert.get('subject')}, until {cert.get('notAfter')}"
                                     + ("" if days is None else f" ({days} days)")))
    if status.get("authMechanisms"):
        facts.append(("authMechanisms", ", ".join(status["authMechanisms"])))
    lines += [f"     {k}: {v}" for k, v in facts if v]
    return lines


def _reference_lines(obj: Mapping[str, Any]) -> list[str]:
    """What the account reads, and what the last probe found of each (never a value)."""
    from reconciler.manifest.account import account_from_manifest

    try:
        account = account_from_manifest({k: v for k, v in obj.items() if k != "status"})
    except Exception:  # noqa: BLE001 - an invalid stored object: its status says why
        return ["  (the stored spec is not valid; see the Validated condition)"]
    versions = (obj.get("status") or {}).get("secretVersions") or {}
    lines = []
    for ref in account.secret_refs():
        seen = versions.get(f"{ref.kind}/{ref.name}/{ref.key}")
        state = {"missing": "missing", "not-allowed": "not allowed for this account (opt-in)",
                 "unavailable": "could not be read", None: "not read yet"}.get(
            seen, "present")
        where = ref.field.lstrip("/").replace("/", ".")
        lines.append(f"  {ref.kind} {account.namespace}/{ref.name} key {ref.key!r}: {state}"
                     + (f"  ({where})" if where else ""))
    return lines or ["  nothing (no credential, truststore or keystore)"]


def _secret_lines(secret: Mapping[str, Any] | None, name: str | None) -> list[str]:
    if not name:
        return ["  none yet"]
    if secret is None:
        return [f"  {name}: not found"]
    data = secret.get("data") or {}
    lines = [f"  {name} ({plural(len(data), 'key')}; values masked, as kubectl describe "
             "shows them)"]
    lines += [f"    {key:<28} {_size(value)}" for key, value in sorted(data.items())]
    return lines


def _size(value: Any) -> str:
    import base64
    import binascii

    try:
        return f"{len(base64.b64decode(str(value), validate=True))} bytes"
    except (binascii.Error, ValueError):
        return "? bytes"


def _event_lines(events: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    if not events:
        return ["  <none>"]
    return [f"  {age(e.get('time'), now):>5}  {e.get('type', ''):<8} {e.get('reason', ''):<24} "
            f"{e.get('message', '')}" for e in events]


def render_description(obj: Mapping[str, Any], *, events: Sequence[Mapping[str, Any]],
                       secret: Mapping[str, Any] | None, now: datetime) -> str:
    """`describe`'s text for one stored account: pure, from what the store returned."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    via = "Microsoft Graph" if spec.get("sendUsing") == "MicrosoftGraph" else "SMTP"
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    lines = [f"Name:         {meta.get('name')}",
             f"Namespace:    {meta.get('namespace')}",
             f"Provider:     {spec.get('provider')} (via {via})",
             f"Created:      {meta.get('creationTimestamp') or '-'} "
             f"({age(meta.get('creationTimestamp'), now)} ago)",
             f"Generation:   {meta.get('generation', '-')} "
             f"(observed {status.get('observedGeneration', '-')})"]
    annotations = meta.get("annotations") or {}
    if annotations:
        lines.append("Annotations:  " + "\n              ".join(
            f"{k}={v}" for k, v in sorted(annotations.items())))
    lines += [f"Ready:        {ready.get('status', 'Unknown')} {ready.get('reason', '')}",
              f"Message:      {ready.get('message', '')}",
              "Conditions:",
              f"  {'TYPE':<16} {'STATUS':<7} {'REASON':<24} {'AGE':>5}  MESSAGE",
              *_condition_lines(status, now),
              "Last probe:", *_probe_lines(status, now),
              "References:", *_reference_lines(obj),
              "Published Secret:", *_secret_lines(secret, status.get("secretName")),
              "Events:", *_event_lines(events, now)]
    return "\n".join(lines) + "\n"


def run_describe(args: DescribeOptions, *, out: IO[str]) -> int:
    """`email-reconciler describe NAME`."""
    from reconciler.store import open_store

    store = open_store(args.store, context=args.context, namespace=args.namespace)
    try:
        obj = _one(store, args.name, args.namespace)
    except LookupError as exc:
        print(f"email-reconciler describe: {exc}", file=sys.stderr)
        return ExitCode.PROBLEMS
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    events = store.account_events(namespace, name)[-args.events:] if args.events > 0 else []
    secret_name = (obj.get("status") or {}).get("secretName")
    secret = store.get_secret(namespace, secret_name) if secret_name else None
    out.write(render_description(obj, events=events, secret=secret, now=datetime.now(UTC)))
    return ExitCode.OK


def run_request(args: RequestOptions, *, out: IO[str],
                now: datetime | None = None) -> int:
    """`email-reconciler request NAME`: set the requested-at annotation through the store."""
    from reconciler.state.schedule import rfc3339
    from reconciler.store import open_store

    store = open_store(args.store, context=args.context, namespace=args.namespace)
    try:
        obj = _one(store, args.name, args.namespace)
    except LookupError as exc:
        print(f"email-reconciler request: {exc}", file=sys.stderr)
        return ExitCode.PROBLEMS
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    when = rfc3339(now or datetime.now(UTC))
    store.annotate_account(namespace, name, {REQUESTED_AT_ANNOTATION: when})
    if getattr(store, "root", None) is not None:  # the local store: no controller watches it
        then = ("no controller watches a local store, and a GitOps run reads the manifests from "
                "git: `email-reconciler reconcile PATH --force` probes now")
    else:
        then = ("the controller probes it now, AUTH included (`reconcile --force` does the same "
                "for a GitOps run)")
    out.write(f"emailaccount {namespace}/{name} annotated {REQUESTED_AT_ANNOTATION}={when}: "
              f"{then}\n")
    return ExitCode.OK
