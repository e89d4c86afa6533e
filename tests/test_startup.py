"""Start-up (issue 25): a command imports and builds only what it uses, the same CLI either way.

`validate` runs in pre-commit hooks, once per commit: its start-up is most of its cost there
(bench/README.md, benchmark 5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from reconciler.cli import build_parser
from tests.manifests_factory import loopback_account
from tests.smtpservers import RunningServer, ThrowawayCA, write_secret
from tests.test_cli import GOOD

REPO = Path(__file__).resolve().parents[1]


#: What `validate` of a valid file has no use for: logging (it never logs), the probe, the
#: stores and the runs, the Kubernetes client, crypto, TLS, asyncio, the OAuth libraries, and
#: jsonschema (jsonschema-rs checks the schema; reconciler/manifest/schema_errors.py words it).
NOT_FOR_VALIDATE = (
    "reconciler.log", "logging", "structlog", "reconciler.probe", "reconciler.run",
    "reconciler.store", "reconciler.state", "reconciler.relay", "reconciler.demo",
    "reconciler.policy", "kubernetes", "urllib3", "cryptography", "asn1crypto", "ssl",
    "asyncio", "msal", "jsonschema", "multiprocessing", "concurrent.futures", "http.client",
    "aiosmtpd", "prometheus_client", "smtplib",
)


def _modules_after(argv: list[str]) -> tuple[int, set[str], str]:
    """Runs the CLI in a fresh interpreter: its exit code, the modules it imported, its stdout."""
    script = ("import json, sys\n"
              "from reconciler.cli import main\n"
              f"code = main({argv!r})\n"
              "sys.stdout.flush()\n"
              "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
              "sys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    return done.returncode, set(json.loads(done.stderr.splitlines()[-1])), done.stdout


def test_validate_of_one_file_imports_only_what_it_uses(tmp_path: Path) -> None:
    (tmp_path / "billing.yaml").write_text(GOOD)
    code, modules, out = _modules_after(["validate", str(tmp_path / "billing.yaml")])
    assert code == 0, out
    assert "1 account, 0 errors" in out
    assert "reconciler.manifest.validate" in modules  # it did validate
    loaded = sorted(m for m in modules
                    if any(m == name or m.startswith(name + ".") for name in NOT_FOR_VALIDATE))
    assert loaded == []


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", sorted(_commands(build_parser())))
def test_the_lazy_parser_is_the_parser(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """main() adds a command's arguments only when that command is parsed; its help, usage and
    parsed values are those of the parser built at once, and the other commands stay unbuilt."""
    monkeypatch.setenv("COLUMNS", "100")
    eager, lazy = build_parser(), build_parser(lazy=True)
    assert lazy.format_help() == eager.format_help()
    unbuilt = {name: len(p._actions) for name, p in _commands(lazy).items()}
    assert set(unbuilt.values()) == {0}
    argv = {"validate": [command, "a.yaml", "-o", "json"], "probe": [command, "a", "--name", "x"],
            "reconcile": [command, "a", "--dry-run"], "describe": [command, "x"],
            "request": [command, "x"], "relay": [command, "--secret-dir", "d"],
            "explain": [command, "TLSVersionTooLow"]}.get(command, [command])
    argv = ["--log-level", "error", *argv, "--log-format", "json"]
    assert vars(lazy.parse_args(argv)) == vars(eager.parse_args(argv))
    built = {name: len(p._actions) for name, p in _commands(lazy).items()}
    assert [name for name in built if built[name]] == [command]
    assert built[command] == len(_commands(eager)[command]._actions)
    lazy_command, eager_command = _commands(build_parser(lazy=True))[command], _commands(eager)[command]
    assert lazy_command.format_usage() == eager_command.format_usage()
    assert lazy_command.format_help() == eager_command.format_help()


def test_the_lazy_parser_reports_usage_errors_alike(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["validate"], ["probe", "a", "--concurrency", "0"], ["get", "--bogus"]):
        texts = []
        for parser in (build_parser(), build_parser(lazy=True)):
            with pytest.raises(SystemExit) as exc:
                parser.parse_args(argv)
            texts.append((exc.value.code, capsys.readouterr().err))
        assert texts[0] == texts[1]
        assert texts[0][0] == 2 and "usage: email-reconciler" in texts[0][1]


#: What `probe -o json` of accounts without OAuth2 (not of Office 365) has no use for: the
#: identity providers' modules and the HTTP client they bring (the run's TokenCache is made, but
#: never asked for a token), structlog while nothing is logged at the level (the line per
#: account is info), and the table (and the CRD's printer columns it reads).
NOT_FOR_A_PROBE_WITHOUT_OAUTH = (
    "structlog", "reconciler.probe.httpclient", "reconciler.probe.tokenrequest",
    "reconciler.probe.google", "reconciler.probe.microsoft", "http.client", "msal",
    "urllib3", "kubernetes", "reconciler.run.table", "reconciler.manifest.crd",
)


def test_probe_without_oauth_imports_no_http_client_and_no_structlog(
        tmp_path: Path, smtp_server: Callable[..., RunningServer], ca: ThrowawayCA) -> None:
    server = smtp_server("STARTTLS", users={"login@example.com": "a-long-password-1"})
    plain = loopback_account("plain", "team", server.port)
    plain["spec"]["smtp"]["authentication"] = {"method": "None"}
    login = loopback_account("login", "team", server.port)
    (tmp_path / "accounts").mkdir()
    (tmp_path / "accounts" / "both.yaml").write_text(yaml.safe_dump_all([plain, login]))
    write_secret(tmp_path / "secrets", "team", "ca", "ca.crt", ca.ca_pem)
    write_secret(tmp_path / "secrets", "team", "login-smtp", "password", "a-long-password-1")
    code, modules, out = _modules_after(["probe", str(tmp_path / "accounts"), "--secrets-dir",
                                         str(tmp_path / "secrets"), "-o", "json"])
    assert code == 0, out
    ready = {e["name"]: e["status"]["conditions"][0] for e in json.loads(out)}
    assert {name: (c["type"], c["status"]) for name, c in ready.items()} == {
        "plain": ("Ready", "True"), "login": ("Ready", "True")}  # probed, AUTH included
    assert "reconciler.probe.tokencache" in modules  # the token cache was made
    loaded = sorted(m for m in modules if any(m == name or m.startswith(name + ".")
                                              for name in NOT_FOR_A_PROBE_WITHOUT_OAUTH))
    assert loaded == []
