"""Command line: parse arguments into typed options, build the objects, run them, return an exit code.

Every flag has help text, and the help shows its default. `--log-level` and `--log-format` are
accepted before or after the command. Exit codes: `reconciler.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from reconciler import __version__
from reconciler.errors import ExitCode, ReconcilerError, exit_code_of

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")
#: Commands that never log: they skip reconciler.log and its imports (about 8 ms of a
#: `validate`'s start-up; tests/test_startup.py checks validate does not import it).
_NEVER_LOG = frozenset({"validate", "crd", "explain"})


def _says_nothing(default: object) -> bool:
    """None, False, [] or SUPPRESS: a default not worth showing (0 and 0.0 are shown)."""
    return default is None or default is False or default == [] or default == argparse.SUPPRESS


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where it says nothing (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if _says_nothing(action.default) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Command(argparse.ArgumentParser):
    """A command's parser that adds its arguments when it is first used (parse, usage, help).

    argparse makes a help formatter for each argument it adds (a terminal-size and gettext
    look-up): about 4 ms for every command's arguments at each start-up, where a run parses
    one command. The arguments are added in the order given, so the parser is the same.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._deferred: list[tuple[tuple[Any, ...], dict[str, Any]]] | None = []
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        if self._deferred is None:
            return super().add_argument(*args, **kwargs)
        self._deferred.append((args, kwargs))
        return None

    def _add_deferred(self) -> None:
        deferred, self._deferred = self._deferred, None
        for args, kwargs in deferred or ():
            super().add_argument(*args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._add_deferred()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_deferred()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_deferred()
        return super().format_help()


def _global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The flags every command takes; after the command they override those given before it."""
    default: Any = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default("warning"),
                        help="least severe log lines written to stderr" +
                             ("" if top else " (default: warning)"))
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=default("auto"),
                        help="auto: console on a terminal, else JSON" +
                             ("" if top else " (default: auto)"))


def build_parser(*, lazy: bool = False) -> argparse.ArgumentParser:
    """The parser; `lazy`: each command's arguments are added when that command is parsed."""
    parser = argparse.ArgumentParser(prog="email-reconciler", formatter_class=_Formatter,
                                     description="GitOps for outbound e-mail accounts.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=_Command if lazy else argparse.ArgumentParser)

    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int]
                ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        _global_flags(p, top=False)
        p.set_defaults(func=run)
        return p

    p = command("validate", "check manifests against the schema and semantic rules", cmd_validate)
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or folders")
    p.add_argument("--output", "-o", choices=["text", "json"], default="text",
                   help="output format")
    p.add_argument("--show-effective", action="store_true",
                   help="print each account with presets and defaults applied")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="processes for a large folder: 1 uses the least CPU, 0 one per CPU "
                        "(less wall time on an idle machine)")

    command("crd", "print the CustomResourceDefinition generated from the schema", cmd_crd)

    p = command("probe", "test connectivity of each account; no store needed", cmd_probe)
    _probe_args(p)
    p.add_argument("--name", action="append",
                   help="only this account (NAME or NAMESPACE/NAME; repeatable)")
    p.add_argument("--send-test-to", metavar="ADDRESS",
                   help="also send one real test message through each account")
    p.add_argument("--secrets-from-cluster", action="store_true",
                   help="read credentials from the cluster's Secrets and ConfigMaps instead")
    p.add_argument("--context", help="kubeconfig context (with --secrets-from-cluster)")

    p = command("reconcile", "validate, probe, write status and publish Secrets", cmd_reconcile)
    _probe_args(p)
    p.add_argument("--once", action="store_true", help="one pass, then exit (always the case)")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing; print what would change; exit 1 if anything would")
    p.add_argument("--force", action="store_true",
                   help="probe every account now, AUTH included, whatever its schedule says")
    p.add_argument("--no-prune", action="store_true",
                   help="keep accounts that left git, and their Secrets")
    p.add_argument("--inventory", metavar="NAME",
                   help="the source's inventory: prune only what this source applied before "
                        "(default: derived from the paths)")
    p.add_argument("--apply-only", action="store_true",
                   help="apply and prune only; leave probes, status and Secrets to the "
                        "controller (one writer of status when both run)")
    p.add_argument("--lock-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="local store: how long to wait for another run to finish")
    _store_args(p)

    p = command("get", "the `kubectl get emailaccounts` table, from either store", cmd_get)
    p.add_argument("names", nargs="*", metavar="NAME", help="only these accounts")
    _store_args(p)
    p.add_argument("--output", "-o", choices=["table", "wide", "yaml", "json"], default="table",
                   help="output format (wide adds the message)")

    p = command("describe", "one account in detail: conditions, last probe, events, Secret",
                cmd_describe)
    p.add_argument("name", metavar="NAME", help="the account (NAME or NAMESPACE/NAME)")
    p.add_argument("--events", type=int, default=10, metavar="N",
                   help="how many recent events to show")
    _store_args(p)

    p = command("request", "ask for a probe now (AUTH included): sets the "
                "email.reconciler.io/requested-at annotation, which the controller honours",
                cmd_request)
    p.add_argument("name", metavar="NAME", help="the account (NAME or NAMESPACE/NAME)")
    _store_args(p)

    p = command("demo", "run the whole product against local SMTP servers", cmd_demo)
    p.add_argument("--keep", metavar="DIR", help="keep the store and secrets under DIR")

    p = command("controller", "watch EmailAccounts and reconcile them continuously",
                cmd_controller)
    _store_args(p, local=False)
    p.add_argument("--namespaces", action="append", metavar="NS[,NS...]",
                   help="serve exactly these namespaces (comma-separated, repeatable; default: "
                        "all)")
    p.add_argument("--namespace-selector", metavar="LABELS",
                   help="serve the namespaces whose labels match this selector, as they gain or "
                        "lose them, e.g. email.reconciler.io/served=true (default: all)")
    p.add_argument("--workers", type=_positive_int, default=4,
                   help="accounts reconciled at the same time")
    p.add_argument("--interval", default="10m",
                   help="resync interval of each account, each at its own slot in it (30s, 10m, 1h)")
    p.add_argument("--metrics-addr", default=":8080",
                   help="host:port for /metrics (admit monitoring only; empty: off)")
    p.add_argument("--health-addr", default=":8081",
                   help="host:port for /healthz and /readyz (the kubelet's probes; empty: off)")
    p.add_argument("--leader-elect", action="store_true",
                   help="one replica reconciles, the others stand by (a leader Lease)")
    p.add_argument("--lease-name", default="email-reconciler",
                   help="name prefix of the replicas' Leases")
    p.add_argument("--lease-namespace", default=None,
                   help="namespace of the Leases (default: the pod's namespace)")
    p.add_argument("--lease-duration", type=_seconds, default=15.0, metavar="SECONDS",
                   help="how long a Lease holds without renewal")
    p.add_argument("--renew-deadline", type=_seconds, default=10.0, metavar="SECONDS",
                   help="a replica that cannot renew within this stops acting")
    p.add_argument("--retry-period", type=_seconds, default=2.0, metavar="SECONDS",
                   help="how often Leases are renewed or tried")
    p.add_argument("--shards", choices=["off", "auto"], default="off",
                   help="auto: the replicas divide the accounts among themselves (one Lease "
                        "each, a consistent hash); off: every replica reconciles all it watches")
    p.add_argument("--shard-lease-prefix", default="email-reconciler-shard", metavar="PREFIX",
                   help="name prefix (and group label) of the replicas' shard Leases")
    p.add_argument("--shard-selector", default=None, metavar="LABELS",
                   help="reconcile only EmailAccounts matching this label selector (static "
                        "shards, e.g. shard=blue)")
    _politeness_args(p)
    _policy_args(p)

    p = command("explain", "what a condition reason means and how to fix it (every reason with "
                "no argument)", cmd_explain)
    p.add_argument("reasons", nargs="*", metavar="REASON",
                   help="reasons as conditions show them, e.g. TLSVersionTooLow")

    p = command("relay", "an SMTP relay on 127.0.0.1 for applications that cannot do OAuth: "
                "runs beside the application and forwards upstream the OAuth way", cmd_relay)
    p.add_argument("--secret-dir", required=True, metavar="DIR",
                   help="where the account's published Secret is mounted (spec.relay.enabled)")
    p.add_argument("--listen-host", default=None,
                   help="address to listen on (default: the Secret's, 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=None,
                   help="port to listen on (default: the Secret's, spec.relay.port)")
    p.add_argument("--metrics-port", type=_positive_int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (default: off)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    """A number of seconds: finite and not negative (argparse's float takes "nan" and "inf")."""
    value = float(text)
    if not 0 <= value <= 86400 * 365:  # False for NaN
        raise argparse.ArgumentTypeError("must be a number of seconds from 0 to 31536000")
    return value


def _probe_args(p: argparse.ArgumentParser) -> None:
    """What every command that probes takes: manifests, credentials, parallelism, output."""
    p.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or folders")
    p.add_argument("--secrets-dir", metavar="DIR",
                   help="credentials laid out as DIR/<namespace>/<secret-name>/<key>")
    p.add_argument("--concurrency", type=_positive_int, default=32,
                   help="accounts probed at the same time")
    p.add_argument("--output", "-o", choices=["table", "wide", "json"], default="table",
                   help="output format (wide adds the message)")
    _politeness_args(p)
    _policy_args(p)


def _politeness_args(p: argparse.ArgumentParser) -> None:
    """Limits towards each mail server (its host, whatever the port), across the whole run or
    controller: what gets a client banned, not successful AUTHs."""
    from reconciler.model import MAX_AUTH_FAILURES_PER_MINUTE as DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE
    from reconciler.model import MAX_SESSIONS_PER_SERVER as DEFAULT_MAX_SESSIONS_PER_SERVER

    p.add_argument("--max-sessions-per-server", type=_positive_int, default=None,
                   help="concurrent SMTP sessions per server, TLS diagnostic sessions included "
                        "(default: the provider preset's, 16; else "
                        f"{DEFAULT_MAX_SESSIONS_PER_SERVER})")
    p.add_argument("--max-auth-failures-per-minute", type=_positive_int,
                   default=DEFAULT_MAX_AUTH_FAILURES_PER_MINUTE,
                   help="failed AUTHs per server and minute; once spent, the server's next AUTH "
                        "waits (a minute's worth may go at once)")


def _policy_args(p: argparse.ArgumentParser) -> None:
    """The admin's endpoint policy (README "Security model")."""
    p.add_argument("--allowed-endpoints", metavar="GLOB,...", action="append",
                   help="also allow these OAuth/Graph hosts (host or host:port globs) besides "
                        "the public and sovereign clouds")
    p.add_argument("--allowed-hosts", metavar="GLOB,...", action="append",
                   help="only these SMTP hosts (host or host:port globs; default: any)")
    p.add_argument("--allow-publish-annotations", metavar="GLOB,...", action="append",
                   help="let spec.publish.annotations carry these annotations that copy a Secret "
                        "elsewhere (Reflector, kubed, replicator; refused by default)")


def _store_args(p: argparse.ArgumentParser, *, local: bool = True) -> None:
    if local:
        p.add_argument("--store", metavar="local:DIR|kube",
                       help="where status and Secrets live (default: kube when a kubeconfig or "
                            "in-cluster config exists, else local:.email-reconciler)")
    p.add_argument("--context", help="kubeconfig context (default: the current context)")
    p.add_argument("--namespace", "-n", help="only this namespace (default: all)")


# --------------------------------------------------------------------------- run


def _configure_politeness(args: argparse.Namespace) -> None:
    from reconciler.probe.limits import configure

    configure(max_sessions_per_server=args.max_sessions_per_server,
              max_auth_failures_per_minute=args.max_auth_failures_per_minute)


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.manifest.report import run_validate

    return run_validate(args.paths, output=args.output, show_effective=args.show_effective,
                        out=sys.stdout, jobs=args.jobs)


def cmd_crd(args: argparse.Namespace) -> int:
    from reconciler.manifest.crd import render_crd

    sys.stdout.write(render_crd())
    return ExitCode.OK


def cmd_probe(args: argparse.Namespace) -> int:
    _configure_politeness(args)
    from reconciler.run.commands import run_probe
    from reconciler.run.options import ProbeOptions, options_from

    return run_probe(options_from(ProbeOptions, args), out=sys.stdout)


def cmd_reconcile(args: argparse.Namespace) -> int:
    _configure_politeness(args)
    from reconciler.run.commands import run_reconcile
    from reconciler.run.options import ReconcileOptions, options_from

    return run_reconcile(options_from(ReconcileOptions, args), out=sys.stdout)


def cmd_get(args: argparse.Namespace) -> int:
    from reconciler.run.commands import run_get
    from reconciler.run.options import GetOptions, options_from

    return run_get(options_from(GetOptions, args), out=sys.stdout)


def cmd_describe(args: argparse.Namespace) -> int:
    from reconciler.run.describe import run_describe
    from reconciler.run.options import DescribeOptions, options_from

    return run_describe(options_from(DescribeOptions, args), out=sys.stdout)


def cmd_request(args: argparse.Namespace) -> int:
    from reconciler.run.describe import run_request
    from reconciler.run.options import RequestOptions, options_from

    return run_request(options_from(RequestOptions, args), out=sys.stdout)


def cmd_demo(args: argparse.Namespace) -> int:
    from reconciler.demo.command import run_demo

    return run_demo(keep=args.keep, out=sys.stdout)


def cmd_controller(args: argparse.Namespace) -> int:
    _configure_politeness(args)
    from reconciler.run.controller import run_controller
    from reconciler.run.options import ControllerOptions, options_from

    return run_controller(options_from(ControllerOptions, args))


def cmd_explain(args: argparse.Namespace) -> int:
    from reconciler.run.options import ExplainOptions, options_from
    from reconciler.troubleshooting import FIXES, explain

    opts = options_from(ExplainOptions, args)
    status = 0
    for reason in opts.reasons or list(FIXES):
        text = explain(reason)
        if text is None:
            print(f"email-reconciler: unknown reason {reason!r}; `email-reconciler explain` "
                  "lists them all", file=sys.stderr)
            status = 2
        else:
            print(text)
    return status


def cmd_relay(args: argparse.Namespace) -> int:
    from reconciler.relay.serve import run_relay
    from reconciler.run.options import RelayOptions, options_from

    opts = options_from(RelayOptions, args)
    return run_relay(opts.secret_dir, opts.listen_host, opts.port, opts.metrics_port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(lazy=True)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args.command not in _NEVER_LOG:
        from reconciler.log import configure_logging

        configure_logging(fmt=args.log_format, level=args.log_level)
    try:
        return int(args.func(args))
    except ReconcilerError as exc:
        code = exit_code_of(exc)
        what = "error" if code == ExitCode.USAGE else "store error"
        print(f"email-reconciler {args.command}: {what}: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
