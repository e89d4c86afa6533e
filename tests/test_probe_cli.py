# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""`email-reconciler probe`: Test connectivity from the command line, no store (issue 3)."""

from __future__ import annotations

import gc
import io
import json

import pytest

from reconciler.cli import main
from reconciler.model import status_condition as condition
from reconciler.run.commands import write_json_list
from tests.world import NS, PASSWORD, World, servers, world  # noqa: F401


def probe(world: World, *extra: str) -> int:
    return main(["probe", str(world.accounts), "--secrets-dir", str(world.secrets), *extra])


def test_probe_json_is_a_list_of_status_blocks(world: World,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert probe(world, "--output", "json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["namespace"], e["name"]) for e in entries] == [(NS, "alerts"), (NS, "billing")]
    billing = entries[1]["status"]
    assert billing["connectivity"] == "SMTP (Connect using STARTTLS)"
    assert billing["protocol"] == "STARTTLS"
    assert billing["tlsVersion"].startswith("TLSv1.")
    assert {c["type"] for c in billing["conditions"]} >= {"Ready", "Stalled", "Validated",
                                                          "Connected", "Authenticated"}
    assert "SecretPublished" not in {c["type"] for c in billing["conditions"]}
    assert condition(billing, "Ready")["status"] == "True"
    assert entries[0]["status"]["protocol"] == "SMTPS"


def test_probe_exit_code_and_table_for_a_failure(world: World,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.secret("billing-smtp", "password", "not the password")
    assert probe(world) == 1
    out = capsys.readouterr().out
    assert "AuthenticationFailed" in out
    assert "not the password" not in out and PASSWORD not in out


def test_probe_one_account_by_name(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert probe(world, "--name", "alerts", "-o", "json") == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["alerts"]
    assert probe(world, "--name", "nobody") == 2


def test_missing_secret_is_named(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    (world.secrets / NS / "billing-smtp" / "password").unlink()
    assert probe(world, "-o", "json") == 1
    status = json.loads(capsys.readouterr().out)[0]["status"]
    ready = condition(status, "Ready")
    assert ready["reason"] == "SecretNotFound"
    assert "billing-smtp" in ready["message"] and "password" in ready["message"]


def test_usage_errors_exit_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "/nonexistent/path"]) == 2
    assert main(["reconcile"]) == 2
    assert main(["probe", ".", "--concurrency", "0"]) == 2


def test_send_test_to_delivers_a_signed_message(world: World,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.keystores import TestCA, cryptography_pfx

    ca = TestCA.create()
    key, cert = ca.issue_smime("billing@example.com")
    world.secret("billing-signing", "keystore.p12", cryptography_pfx("billing", key, cert,
                                                                     [ca.cert], "changeit"))
    world.secret("billing-signing", "password", "changeit")
    doc = world.account("billing")
    doc["spec"]["smtp"]["signing"] = {
        "keystoreSecretRef": {"name": "billing-signing", "key": "keystore.p12"},
        "keystorePasswordSecretRef": {"name": "billing-signing", "key": "password"}}
    world.write(doc)
    assert probe(world, "--send-test-to", "ops@example.org") == 0
    out = capsys.readouterr().out
    assert "test message to ops@example.org" in out
    received = world.starttls.messages[-1]
    assert received.rcpt_tos == ("ops@example.org",)
    assert b"multipart/signed" in received.content
    assert b"pkcs7-signature" in received.content


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "expected"), [
    (io.StringIO, '[\n{"name": "a", "status": {"n": 1}},\n{"name": "b", "status": {}}\n]\n'),
    (_Terminal, '[\n  {\n    "name": "a",\n    "status": {\n      "n": 1\n    }\n  },\n'
                '  {\n    "name": "b",\n    "status": {}\n  }\n]\n'),
])
def test_json_output_is_one_account_a_line_unless_on_a_terminal(
        stream: type[io.StringIO], expected: str) -> None:
    items = [{"name": "a", "status": {"n": 1}}, {"name": "b", "status": {}}]
    out = stream()
    write_json_list(items, out)
    assert out.getvalue() == expected and json.loads(out.getvalue()) == items
    empty = stream()
    write_json_list([], empty)
    assert json.loads(empty.getvalue()) == []


def test_probing_keeps_the_collector_off_what_was_loaded(world: World,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """The loaded accounts are frozen out of the collector's scans while the run probes, with
    a higher young-generation threshold, and the threshold is restored afterwards."""
    world.account("billing")
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert probe(world, "-o", "json") == 0
    assert condition(json.loads(capsys.readouterr().out)[0]["status"], "Ready")["status"] == "True"
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() > frozen
