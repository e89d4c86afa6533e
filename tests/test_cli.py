"""The command line as people expect it (issue 22 item 9): help with defaults, global flags after
the command, validated choices, one table of exit codes, messages that fit the command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from reconciler.cli import _Formatter, _says_nothing, build_parser, main
from reconciler.errors import ExitCode, StoreBusy, StoreUnavailable, UsageError, exit_code_of

GOOD = """\
apiVersion: email.reconciler.io/v1alpha1
kind: EmailAccount
metadata: {name: billing, namespace: shop}
spec:
  provider: custom
  smtp:
    identity: {emailAddress: billing@example.com}
    connection: {host: mail.example.com, port: 587}
    authentication:
      method: Password
      passwordSecretRef: {name: billing-smtp, key: password}
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _flags() -> list[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    parser = build_parser()
    out = [("", parser, a) for a in parser._actions]
    for name, sub in _subparsers(parser).items():
        out += [(name, sub, a) for a in sub._actions]
    return [(n, p, a) for n, p, a in out if a.option_strings
            and not isinstance(a, argparse._HelpAction | argparse._VersionAction)]


@pytest.mark.parametrize(("command", "parser", "action"), _flags(),
                         ids=[f"{n or 'top'}:{a.option_strings[-1]}" for n, _, a in _flags()])
def test_every_flag_has_help_that_shows_its_default(command: str, parser: argparse.ArgumentParser,
                                                    action: argparse.Action) -> None:
    assert action.help and action.help.strip(), f"{command} {action.option_strings}: no help"
    assert parser.formatter_class is _Formatter
    if not _says_nothing(action.default):
        shown = parser._get_formatter()._expand_help(action)  # the text `--help` prints
        assert "default" in shown, f"{command} {action.option_strings}: {shown!r} has no default"


def test_global_flags_are_accepted_after_the_command(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "billing.yaml").write_text(GOOD)
    assert main(["validate", str(tmp_path), "--log-level", "debug", "--log-format", "json"]) == 0
    args = build_parser().parse_args(["--log-level", "error", "get", "--log-level", "info"])
    assert args.log_level == "info"  # after the command wins
    args = build_parser().parse_args(["--log-level", "error", "get"])
    assert args.log_level == "error"  # before it still works
    assert build_parser().parse_args(["get"]).log_level == "warning"


@pytest.mark.parametrize("argv", [["--log-level", "verbose", "crd"],
                                  ["crd", "--log-level", "verbose"],
                                  ["get", "-o", "xml"],
                                  ["probe", ".", "--concurrency", "many"]])
def test_choices_and_types_are_validated(argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "invalid choice" in err or "is not a whole number" in err, err


@pytest.mark.parametrize(("exc", "code"), [
    (UsageError("x"), 2), (StoreBusy("x"), 2), (StoreUnavailable("x"), 3), (ValueError("x"), 1)])
def test_exit_codes_are_defined_once(exc: BaseException, code: int) -> None:
    assert exit_code_of(exc) == code
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3]


def test_an_unreachable_cluster_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: shop}}]\n")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["get", "--store", "kube"]) == ExitCode.UNREACHABLE
    assert "email-reconciler get: store error:" in capsys.readouterr().err


def test_controller_without_a_kubeconfig_does_not_suggest_a_local_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["controller", "--metrics-addr", "", "--health-addr", ""]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "no usable Kubernetes configuration" in err and "--store" not in err
    # the commands that have --store still suggest it
    assert main(["get", "--store", "kube"]) == ExitCode.USAGE
    assert "--store local:DIR" in capsys.readouterr().err


def test_a_missing_secrets_dir_names_the_path_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "billing.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    assert main(["probe", "billing.yaml", "--secrets-dir", "secrets"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"--secrets-dir secrets: no such directory (looked for {tmp_path / 'secrets'})" in err


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_every_flag_reaches_its_command(command: str) -> None:
    """Each command's parsed flags all have a field in its typed options (no flag is dropped)."""
    from reconciler.run import options

    classes = {"probe": options.ProbeOptions, "reconcile": options.ReconcileOptions,
               "get": options.GetOptions, "describe": options.DescribeOptions,
               "request": options.RequestOptions, "controller": options.ControllerOptions}
    if command not in classes:
        return
    argv = {"probe": ["probe", "."], "reconcile": ["reconcile", "."], "describe": ["describe", "x"],
            "request": ["request", "x"]}.get(command, [command])
    args = build_parser().parse_args(argv)
    options.options_from(classes[command], args)  # raises TypeError for a flag without a field
    args.surprise = 1
    with pytest.raises(TypeError, match="no field for surprise"):
        options.options_from(classes[command], args)
