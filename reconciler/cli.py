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
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.manifest.report import run_validate

    return run_validate(args.paths, output=args.output, show_effective=args.show_effective,
                        out=sys.stdout)


def cmd_crd(args: argparse.Namespace) -> int:
    from reconciler.manifest.crd import render_crd

    sys.stdout.write(render_crd())
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from reconciler.log import configure_logging

    configure_logging(fmt=args.log_format, level=args.log_level)
    return int(args.func(args))
