# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""Looking closer (issue 22 item 8): `get NAME`, `describe NAME`, `reconcile --force`, `request
NAME`, one table for get/reconcile/probe, and every problem of an account at once."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from reconciler.cli import main
from reconciler.model import REQUESTED_AT_ANNOTATION
from reconciler.model import status_condition as condition
from tests.world import NS, PASSWORD, World, servers, world  # noqa: F401

HEADER = ["NAMESPACE", "NAME", "PROVIDER", "VIA", "PROTOCOL", "TLS", "READY", "REASON", "SECRET",
          "AGE"]


def _store(world: World) -> list[str]:
    return ["--store", f"local:{world.store}"]


def test_get_probe_and_reconcile_share_one_table(world: World,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    reconciled = capsys.readouterr().out.splitlines()
    assert reconciled[0].split() == [*HEADER, "CHANGED"]
    assert main(["get", *_store(world)]) == 0
    got = capsys.readouterr().out.splitlines()
    assert got[0].split() == HEADER
    assert got[1].split()[:9] == [NS, "billing", "custom", "SMTP", "STARTTLS", got[1].split()[5],
                                  "True", "Ready", "billing-sender"]
    assert main(["probe", str(world.accounts), "--secrets-dir", str(world.secrets)]) == 0
    probed = capsys.readouterr().out.splitlines()
    assert probed[0].split() == HEADER
    assert main(["get", *_store(world), "-o", "wide"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-1] == "MESSAGE"


def test_get_by_name(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert world.reconcile() == 0
    capsys.readouterr()
    assert main(["get", "billing", *_store(world)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[1] for r in rows[1:]] == ["billing"]
    assert main(["get", f"{NS}/alerts", *_store(world), "-o", "json"]) == 0
    assert [i["metadata"]["name"] for i in json.loads(capsys.readouterr().out)["items"]] == \
        ["alerts"]
    assert main(["get", "nobody", *_store(world)]) == 1
    assert "emailaccount 'nobody' not found" in capsys.readouterr().err


def test_describe_shows_conditions_steps_references_keys_and_events(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("relay", security="None", server=world.starttls)
    assert world.reconcile() in (0, 1)
    capsys.readouterr()
    assert main(["describe", "billing", *_store(world)]) == 0
    out = capsys.readouterr().out
    assert "Name:         billing" in out and f"Namespace:    {NS}" in out
    assert "Ready:        True Ready" in out
    for ctype in ("Ready", "Stalled", "Validated", "Connected", "Authenticated",
                  "SecretPublished"):
        assert f"\n  {ctype} " in out, ctype
    assert "1. connect" in out and "2. authenticate" in out and "3. publish" in out
    assert f"Secret {NS}/billing-smtp key 'password': present  " \
           "(spec.smtp.authentication.passwordSecretRef)" in out
    assert f"ConfigMap {NS}/ca key 'ca.crt': present" in out
    assert f"SMTP_PASSWORD                {len(PASSWORD.encode())} bytes" in out
    assert PASSWORD not in out
    import base64

    assert base64.b64encode(PASSWORD.encode()).decode() not in out
    # events recorded by the run come back through the store
    assert main(["describe", f"{NS}/relay", *_store(world)]) == 0
    assert "InsecureConnection" in capsys.readouterr().out.split("Events:")[1]
    assert main(["describe", "nobody", *_store(world)]) == 1


def test_a_second_run_says_it_probed_nothing_and_force_probes_with_auth(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    seen = world.starttls.connections
    first_auth = world.status("billing")["lastAuthTime"]
    capsys.readouterr()
    assert world.reconcile() == 0
    assert world.starttls.connections == seen
    assert "probed 0 of 1 account; the other is not due yet (--force probes now)" in \
        capsys.readouterr().out
    world.users["billing@example.com"] = "changed on the server"  # AUTH must now fail
    assert world.reconcile("--force") == 1
    assert world.starttls.connections == seen + 1
    status = world.status("billing")
    assert condition(status, "Authenticated")["reason"] == "AuthenticationFailed"
    assert status["lastProbeTime"] >= first_auth


def test_request_sets_the_annotation_through_the_store(world: World,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    assert main(["request", "billing", *_store(world)]) == 0
    assert REQUESTED_AT_ANNOTATION in capsys.readouterr().out
    stored = yaml.safe_load((world.store / NS / "emailaccounts" / "billing.yaml").read_text())
    assert stored["metadata"]["annotations"][REQUESTED_AT_ANNOTATION].endswith("Z")
    assert main(["request", "nobody", *_store(world)]) == 1


def test_every_problem_before_the_first_failing_step_is_reported(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    doc = world.account("billing")
    doc["spec"]["smtp"]["connection"]["port"] = closed
    world.write(doc)
    (world.secrets / NS / "billing-smtp" / "password").unlink()
    assert main(["probe", str(world.accounts), "--secrets-dir", str(world.secrets),
                 "-o", "json"]) == 1
    ready = condition(json.loads(capsys.readouterr().out)[0]["status"], "Ready")
    assert ready["reason"] == "ConnectFailed"
    assert f"cannot connect to 127.0.0.1:{closed}" in ready["message"]
    assert "also Authenticated SecretNotFound: Secret shop/billing-smtp has no key 'password'" \
        in ready["message"]
    assert str(world.secrets / NS / "billing-smtp" / "password") in ready["message"]


@pytest.mark.parametrize(("provider", "connection", "what"), [
    ("custom", {"host": "mail.example.com", "port": 587}, ""),
    ("sendgrid", {}, ", the host of provider sendgrid"),
    ("sendgrid", {"host": "smtp.eu.sendgrid.net"}, ""),  # written in the manifest: name the field
])
def test_messages_about_preset_hosts_name_the_provider(provider: str, connection: dict[str, object],
                                                       what: str) -> None:
    from reconciler.manifest.account import account_from_manifest
    from reconciler.probe.smtpsession import host_hint

    smtp: dict[str, object] = {
        "identity": {"emailAddress": "a@example.com"},
        "authentication": {"method": "Password",
                           "passwordSecretRef": {"name": "s", "key": "password"}}}
    if connection:
        smtp["connection"] = connection
    account = account_from_manifest({
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
        "metadata": {"name": "a", "namespace": "shop"},
        "spec": {"provider": provider, "smtp": smtp}})
    hint = host_hint(account)
    assert hint[0] == what
    assert ("connection.host" not in hint[1]) and (bool(hint[1]) == bool(what))


@pytest.mark.parametrize(("not_after", "shown"), [
    ("2026-12-25T08:00:00Z", "until 2026-12-25T08:00:00Z (30 days)"),
    ("2026-11-24T08:00:00Z", "until 2026-11-24T08:00:00Z (-1 days)"),
    ("garbled", "until garbled\n"),  # no days when notAfter cannot be read
])
def test_describe_counts_certificate_days_from_not_after(not_after: str, shown: str) -> None:
    """The status keeps notAfter only (daysRemaining was a write per account per day)."""
    from datetime import UTC, datetime

    from reconciler.run.describe import render_description

    obj = {"metadata": {"namespace": NS, "name": "billing"}, "spec": {},
           "status": {"lastProbeTime": "2026-11-25T07:00:00Z",
                      "certificate": {"subject": "CN=mail", "notAfter": not_after}}}
    text = render_description(obj, events=[], secret=None,
                              now=datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC))
    assert f"certificate: CN=mail, {shown}" in text + "\n"
