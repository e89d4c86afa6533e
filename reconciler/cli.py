"""Command line: parse arguments, build the objects, run them, return an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="email-reconciler",
        description="GitOps for outbound e-mail accounts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check manifests against the schema and semantic rules")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--output", "-o", choices=["text", "json"], default="text")
    p.add_argument("--show-effective", action="store_true",
                   help="print each account with presets and defaults applied")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("crd", help="print the CustomResourceDefinition generated from the schema")
    p.set_defaults(func=cmd_crd)

    p = sub.add_parser("probe", help="test connectivity of each account; no store needed")
    _probe_args(p)
    p.add_argument("--name", action="append", help="only this account (NAME or NAMESPACE/NAME)")
    p.add_argument("--send-test-to", metavar="ADDRESS",
                   help="also send one real test message through each account")
    p.add_argument("--secrets-from-cluster", action="store_true",
                   help="read credentials from the cluster's Secrets and ConfigMaps instead")
    p.add_argument("--context", help="kubeconfig context (with --secrets-from-cluster)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("reconcile", help="validate, probe, write status and publish Secrets")
    _probe_args(p)
    p.add_argument("--once", action="store_true", help="one pass, then exit (the default)")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing; print what would change; exit 1 if anything would")
    p.add_argument("--no-prune", action="store_true",
                   help="keep accounts that left git, and their Secrets")
    p.add_argument("--inventory", metavar="NAME",
                   help="the source's inventory: prune only what this source applied before "
                        "(default: derived from the paths)")
    p.add_argument("--apply-only", action="store_true",
                   help="apply and prune only; leave probes, status and Secrets to the "
                        "controller (one writer of status when both run)")
    p.add_argument("--lock-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="local store: how long to wait for another run to finish (default 30)")
    _store_args(p)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("get", help="the `kubectl get emailaccounts` table, from either store")
    _store_args(p)
    p.add_argument("--output", "-o", choices=["table", "wide", "yaml", "json"], default="table")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("demo", help="run the whole product against local SMTP servers")
    p.add_argument("--keep", metavar="DIR", help="keep the store and secrets under DIR")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("controller", help="watch EmailAccounts and reconcile them continuously")
    _store_args(p, local=False)
    p.add_argument("--workers", type=_positive_int, default=4)
    p.add_argument("--interval", default="10m", help="jittered resync interval")
    p.add_argument("--metrics-addr", default=":8080",
                   help="host:port for /metrics (admit monitoring only; empty: off)")
    p.add_argument("--health-addr", default=":8081",
                   help="host:port for /healthz and /readyz (the kubelet's probes; empty: off)")
    p.add_argument("--leader-elect", action="store_true")
    p.add_argument("--lease-name", default="email-reconciler")
    p.add_argument("--lease-namespace", default=None)
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    _politeness_args(p)
    _policy_args(p)
    p.set_defaults(func=cmd_controller)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _probe_args(p: argparse.ArgumentParser) -> None:
    """What every command that probes takes: manifests, credentials, parallelism, output."""
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--secrets-dir", metavar="DIR",
                   help="credentials laid out as DIR/<namespace>/<secret-name>/<key>")
    p.add_argument("--concurrency", type=_positive_int, default=32)
    p.add_argument("--output", "-o", choices=["table", "json"], default="table")
    _politeness_args(p)
    _policy_args(p)


def _politeness_args(p: argparse.ArgumentParser) -> None:
    """Limits towards each mail server (host, port), across the whole run or controller."""
    from reconciler.probe.limits import (
        DEFAULT_MAX_AUTH_PER_MINUTE,
        DEFAULT_MAX_SESSIONS_PER_SERVER,
    )

    p.add_argument("--max-sessions-per-server", type=_positive_int,
                   default=DEFAULT_MAX_SESSIONS_PER_SERVER,
                   help="concurrent SMTP sessions per server, TLS diagnostic sessions included "
                        f"(default {DEFAULT_MAX_SESSIONS_PER_SERVER})")
    p.add_argument("--max-auth-per-minute", type=_positive_int,
                   default=DEFAULT_MAX_AUTH_PER_MINUTE,
                   help="AUTH attempts per server and minute (default "
                        f"{DEFAULT_MAX_AUTH_PER_MINUTE}; a minute's worth may go at once)")


def _configure_politeness(args: argparse.Namespace) -> None:
    from reconciler.probe.limits import configure

    configure(max_sessions_per_server=args.max_sessions_per_server,
              max_auth_per_minute=args.max_auth_per_minute)


def _policy_args(p: argparse.ArgumentParser) -> None:
    """The admin's endpoint policy (README "Security model")."""
    p.add_argument("--allowed-endpoints", metavar="GLOB,...", action="append",
                   help="also allow these OAuth/Graph hosts (host or host:port globs) besides "
                        "the public and sovereign clouds")
    p.add_argument("--allowed-hosts", metavar="GLOB,...", action="append",
                   help="only these SMTP hosts (host or host:port globs; default: any)")


def _store_args(p: argparse.ArgumentParser, *, local: bool = True) -> None:
    if local:
        p.add_argument("--store", metavar="local:DIR|kube",
                       help="where status and Secrets live (default: kube when a kubeconfig or "
                            "in-cluster config exists, else local:.email-reconciler)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", "-n", help="only this namespace (default: all)")


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.manifest.report import run_validate

    return run_validate(args.paths, output=args.output, show_effective=args.show_effective,
                        out=sys.stdout)


def cmd_crd(args: argparse.Namespace) -> int:
    from reconciler.manifest.crd import render_crd

    sys.stdout.write(render_crd())
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    _configure_politeness(args)
    from reconciler.run.commands import run_probe

    return run_probe(args, out=sys.stdout)


def cmd_reconcile(args: argparse.Namespace) -> int:
    _configure_politeness(args)
    from reconciler.run.commands import run_reconcile

    return run_reconcile(args, out=sys.stdout)


def cmd_get(args: argparse.Namespace) -> int:
    from reconciler.run.commands import run_get

    return run_get(args, out=sys.stdout)


def cmd_demo(args: argparse.Namespace) -> int:
    from reconciler.demo.command import run_demo

    return run_demo(keep=args.keep, out=sys.stdout)


def cmd_controller(args: argparse.Namespace) -> int:
    _configure_politeness(args)
    from reconciler.run.controller import run_controller

    return run_controller(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from reconciler.errors import UsageError
    from reconciler.log import configure_logging

    configure_logging(fmt=args.log_format, level=args.log_level)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"email-reconciler: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
