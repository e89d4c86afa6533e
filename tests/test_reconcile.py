# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""The reconcile run on the local store, against real SMTP servers on loopback (issue 4)."""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.smtp_servers import RunningServer
from reconciler.model import status_condition as condition
from tests.world import NS, PASSWORD, World, mtimes, servers, world  # noqa: F401


def test_first_run_publishes_status_and_secret(world: World,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert world.reconcile() == 0
    out = capsys.readouterr().out
    assert "billing" in out and "alerts" in out

    status = world.status("billing")
    assert condition(status, "Ready")["status"] == "True"
    assert status["protocol"] == "STARTTLS"
    assert status["tlsVersion"].startswith("TLSv1.")
    assert status["connectivity"] == "SMTP (Connect using STARTTLS)"
    assert status["observedGeneration"] == 1
    assert world.status("alerts")["connectivity"] == "SMTP (Connect using SMTPS)"

    secret = world.published("billing-sender")
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "email-reconciler"
    assert secret["metadata"]["annotations"]["email.reconciler.io/data-hash"]
    data = world.published_data("billing-sender")
    for key in ("SMTP_HOST", "SMTP_PORT", "SMTP_SECURITY", "SMTP_USERNAME", "SMTP_PASSWORD",
                "SMTP_FROM", "SMTP_URL", "javamail.properties", "application.properties",
                "EMAIL_HOST", "EMAIL_USE_TLS", "EMAIL_USE_SSL", "sender.json", "ca.crt"):
        assert key in data, key
    assert data["SMTP_PASSWORD"] == PASSWORD
    assert (data["EMAIL_USE_TLS"], data["EMAIL_USE_SSL"]) == ("True", "False")
    assert world.published_data("alerts-sender")["EMAIL_USE_SSL"] == "True"
    assert PASSWORD not in out


def test_second_run_with_nothing_changed_rewrites_no_file(world: World) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    before = mtimes(world.store)
    assert world.reconcile() == 0
    assert mtimes(world.store) == before
    assert world.reconcile("--dry-run") == 0


def test_spec_change_reprobes_and_updates_status_and_secret(world: World) -> None:
    doc = world.account("billing")
    assert world.reconcile() == 0
    first_probe = world.status("billing")["lastProbeTime"]
    doc["spec"]["smtp"]["identity"]["displayName"] = "Billing Department"
    world.write(doc)
    assert world.reconcile("--dry-run") == 1  # something would change
    assert world.reconcile() == 0
    status = world.status("billing")
    assert status["observedGeneration"] == 2
    assert condition(status, "Ready")["observedGeneration"] == 2
    assert status["lastProbeTime"] >= first_probe
    assert world.published_data("billing-sender")["SMTP_FROM_NAME"] == "Billing Department"


def test_changed_password_updates_published_secret(world: World) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    world.users["billing@example.com"] = "a brand new one"
    world.secret("billing-smtp", "password", "a brand new one")
    assert world.reconcile() == 0
    assert world.published_data("billing-sender")["SMTP_PASSWORD"] == "a brand new one"


def test_probe_failure_keeps_the_last_good_secret(world: World) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    good = world.published("billing-sender")
    world.secret("billing-smtp", "password", "wrong password")  # server still wants the old one
    assert world.reconcile() == 1
    status = world.status("billing")
    ready = condition(status, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "AuthenticationFailed"
    assert "535" in ready["message"]
    assert "wrong password" not in json.dumps(status)
    assert world.published("billing-sender") == good


def test_removed_manifest_is_pruned_and_foreign_files_untouched(world: World) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert world.reconcile() == 0
    foreign = world.store / NS / "secrets" / "hand-made.yaml"
    foreign.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "hand-made", "namespace": NS}}))
    (world.accounts / "alerts.yaml").unlink()
    assert world.reconcile("--no-prune") == 0
    assert (world.store / NS / "emailaccounts" / "alerts.yaml").exists()
    assert world.reconcile() == 0
    assert not (world.store / NS / "emailaccounts" / "alerts.yaml").exists()
    assert not (world.store / NS / "secrets" / "alerts-sender.yaml").exists()
    assert (world.store / NS / "emailaccounts" / "billing.yaml").exists()
    assert foreign.exists()


def test_orphan_policy_keeps_the_secret_when_pruned(world: World) -> None:
    world.account("billing", publish={"deletionPolicy": "Orphan"})
    assert world.reconcile() == 0
    (world.accounts / "billing.yaml").unlink()
    world.account("other")
    assert world.reconcile() == 0
    assert not (world.store / NS / "emailaccounts" / "billing.yaml").exists()
    kept = world.published("billing-sender")
    assert "ownerReferences" not in kept["metadata"]


def test_foreign_secret_of_the_same_name_is_a_conflict(world: World) -> None:
    world.account("billing")
    path = world.store / NS / "secrets" / "billing-sender.yaml"
    path.parent.mkdir(parents=True)
    foreign = {"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "billing-sender", "namespace": NS}, "data": {"X": "eQ=="}}
    path.write_text(yaml.safe_dump(foreign))
    assert world.reconcile() == 1
    ready = condition(world.status("billing"), "Ready")
    assert ready["reason"] == "SecretConflict"
    assert condition(world.status("billing"), "Stalled")["status"] == "True"
    assert yaml.safe_load(path.read_text()) == foreign


def test_dry_run_writes_nothing_and_names_keys_not_values(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    assert world.reconcile("--dry-run") == 1
    out = capsys.readouterr().out
    assert not world.store.exists()
    assert "+SMTP_PASSWORD" in out
    assert PASSWORD not in out


def test_get_prints_the_kubectl_table(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    capsys.readouterr()
    assert main(["get", "--store", f"local:{world.store}", "-o", "wide"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PROVIDER", "VIA", "PROTOCOL", "TLS",
                                "READY", "REASON", "SECRET", "AGE", "EMAIL", "HOST", "CERT-EXPIRES",
                                "MESSAGE"]
    row = lines[1].split()
    assert row[:5] == [NS, "billing", "custom", "SMTP", "STARTTLS"]
    assert row[5].startswith("TLSv1.") and row[6] == "True"


def _published_client(world: World, server: RunningServer) -> tuple[dict[str, str], Any]:
    data = world.published_data("billing-sender")
    ctx = ssl.create_default_context(cadata=data["ca.crt"])
    return data, ctx


def test_a_real_client_sends_with_the_env_keys(world: World) -> None:
    world.account("billing")
    assert world.reconcile() == 0
    env, ctx = _published_client(world, world.starttls)
    assert env["SMTP_SECURITY"] == "STARTTLS"
    with smtplib.SMTP(env["SMTP_HOST"], int(env["SMTP_PORT"]), timeout=5) as client:
        client.starttls(context=ctx)
        client.login(env["SMTP_USERNAME"], env["SMTP_PASSWORD"])
        client.sendmail(env["SMTP_FROM"], ["someone@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
    received = world.starttls.messages[-1]
    assert received.mail_from == "billing@example.com"
    assert received.authenticated_as == "billing@example.com"


def test_a_real_client_sends_with_only_smtp_url(world: World) -> None:
    world.account("billing", server=world.smtps, security="SMTPS")
    assert world.reconcile() == 0
    data, ctx = _published_client(world, world.smtps)
    url = urllib.parse.urlsplit(data["SMTP_URL"])
    assert url.scheme == "smtps"
    user, password = urllib.parse.unquote(url.username or ""), urllib.parse.unquote(
        url.password or "")
    assert password == PASSWORD
    with smtplib.SMTP_SSL(url.hostname, url.port, context=ctx, timeout=5) as client:
        client.login(user, password)
        client.sendmail(user, ["someone@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
    assert world.smtps.messages[-1].authenticated_as == "billing@example.com"


def test_interval_suspend_and_requested_at_decide_when_to_probe(world: World) -> None:
    doc = world.account("billing")
    assert world.reconcile() == 0
    seen = world.starttls.connections
    assert world.reconcile() == 0  # within probe.interval: no new connection
    assert world.starttls.connections == seen
    doc["metadata"]["annotations"] = {"email.reconciler.io/requested-at": "2026-11-25T09:00:00Z"}
    world.write(doc)
    assert world.reconcile() == 0
    assert world.starttls.connections == seen + 1
    assert world.reconcile() == 0  # the same request is not served twice
    assert world.starttls.connections == seen + 1
    doc["spec"]["probe"] = {"suspend": True}
    world.write(doc)
    assert world.reconcile() in (0, 1)
    assert world.starttls.connections == seen + 1
    assert world.status("billing")["suspended"] is True


def test_signing_key_rotates_with_its_keystore(world: World) -> None:
    from cryptography import x509

    from tests.keystores import TestCA, cryptography_pfx

    ca = TestCA.create()

    def keystore(serial_holder: list[int]) -> None:
        key, cert = ca.issue_smime("billing@example.com")
        serial_holder.append(cert.serial_number)
        world.secret("billing-signing", "keystore.p12",
                     cryptography_pfx("billing", key, cert, [ca.cert], "changeit"))

    serials: list[int] = []
    keystore(serials)
    world.secret("billing-signing", "password", "changeit")
    doc = world.account("billing")
    doc["spec"]["smtp"]["signing"] = {
        "keystoreSecretRef": {"name": "billing-signing", "key": "keystore.p12"},
        "keystorePasswordSecretRef": {"name": "billing-signing", "key": "password"},
        "alias": "billing"}
    world.write(doc)
    assert world.reconcile() == 0
    status = world.status("billing")
    assert condition(status, "SigningReady")["status"] == "True"
    first = x509.load_pem_x509_certificate(world.published_data("billing-sender")["smime.crt"]
                                           .encode())
    assert first.serial_number == serials[0]
    assert "PRIVATE KEY" in world.published_data("billing-sender")["smime.key"]
    assert "PRIVATE KEY" not in json.dumps(status)

    keystore(serials)  # a new keystore in the same Secret
    assert world.reconcile() == 0
    data = world.published_data("billing-sender")
    rotated = x509.load_pem_x509_certificate(data["smime.crt"].encode())
    assert rotated.serial_number == serials[1]
    assert format(serials[0], "x") not in data["smime.crt"]
    assert format(serials[1], "x") in json.dumps(world.status("billing")).lower()


def test_demo_runs_as_a_subprocess_and_signs(tmp_path: Path) -> None:
    keep = tmp_path / "demo"
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "reconciler", "demo", "--keep", str(keep)],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ready_rows = [line for line in proc.stdout.splitlines() if " True " in f" {line} "]
    assert len(ready_rows) >= 4
    assert "(credentials masked)" in proc.stdout
    obj = yaml.safe_load((keep / "store" / "demo" / "emailaccounts" / "signed-invoices.yaml")
                         .read_text())
    assert condition(obj["status"], "SigningReady")["status"] == "True"
    assert obj["status"]["signing"]["notAfter"]


def test_no_secret_value_outside_the_published_secret(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert main(["--log-level", "debug", "--log-format", "json", "reconcile",
                 str(world.accounts), "--store", f"local:{world.store}",
                 "--secrets-dir", str(world.secrets), "-o", "json"]) == 0
    world.secret("alerts-smtp", "password", "another secret value")  # fails: server wants PASSWORD
    assert main(["--log-level", "debug", "--log-format", "json", "reconcile",
                 str(world.accounts), "--store", f"local:{world.store}",
                 "--secrets-dir", str(world.secrets)]) == 1
    captured = capsys.readouterr()
    assert "AuthenticationFailed" in captured.out
    everything = captured.out + captured.err + "".join(
        p.read_text() for p in world.store.rglob("*") if p.is_file() and "secrets" not in p.parts)
    for value in (PASSWORD, "another secret value"):
        assert value not in everything
    assert "probed" in captured.err  # the debug log did run


def test_renamed_secret_replaces_the_old_one_even_after_a_failed_probe(world: World) -> None:
    doc = world.account("billing")
    assert world.reconcile() == 0
    old = world.store / NS / "secrets" / "billing-sender.yaml"
    assert old.exists()
    doc["spec"]["publish"] = {"secretName": "billing-mail"}
    world.write(doc)
    world.secret("billing-smtp", "password", "wrong for now")
    assert world.reconcile() == 1  # the rename waits for a good probe
    assert old.exists() and not (world.store / NS / "secrets" / "billing-mail.yaml").exists()
    assert world.status("billing")["secretName"] == "billing-sender"
    world.secret("billing-smtp", "password", PASSWORD)
    assert world.reconcile() == 0
    assert not old.exists()
    assert world.published_data("billing-mail")["SMTP_PASSWORD"] == PASSWORD
    assert world.status("billing")["secretName"] == "billing-mail"


def test_a_missing_secret_is_not_reprobed_until_it_appears(world: World) -> None:
    world.account("billing")
    (world.secrets / NS / "billing-smtp" / "password").unlink()
    assert world.reconcile() == 1
    assert condition(world.status("billing"), "Ready")["reason"] == "SecretNotFound"
    seen = world.starttls.connections
    assert world.reconcile() == 1  # nothing changed: within retryInterval, no new probe
    assert world.starttls.connections == seen
    world.secret("billing-smtp", "password", PASSWORD)
    assert world.reconcile() == 0  # the Secret appeared: probed at once
    assert world.starttls.connections == seen + 1


@pytest.mark.parametrize("keystore_password", ["changeit", None])
def test_published_pkcs12_changes_only_with_its_keystore(world: World,
                                                         keystore_password: str | None) -> None:
    """Issue 12 item 6: signing.p12 and its password survive probes that change nothing."""
    from tests.keystores import TestCA, cryptography_pfx, pem_keystore

    ca = TestCA.create()

    def keystore(password: str | None, key: Any, cert: Any) -> None:
        if password is None:
            world.secret("billing-signing", "keystore.p12", pem_keystore(key, [cert, ca.cert]))
        else:
            world.secret("billing-signing", "keystore.p12",
                         cryptography_pfx("billing", key, cert, [ca.cert], password))
            world.secret("billing-signing", "password", password)

    key, cert = ca.issue_smime("billing@example.com")
    keystore(keystore_password, key, cert)
    doc = world.account("billing", publish={"signingFormat": "PKCS12"})
    signing: dict[str, Any] = {"keystoreSecretRef": {"name": "billing-signing",
                                                     "key": "keystore.p12"}}
    if keystore_password is not None:
        signing["keystorePasswordSecretRef"] = {"name": "billing-signing", "key": "password"}
    doc["spec"]["smtp"]["signing"] = signing

    def probe(request: str) -> dict[str, str]:
        doc["metadata"]["annotations"] = {"email.reconciler.io/requested-at": request}
        world.write(doc)
        assert world.reconcile() == 0
        assert world.status("billing")["lastRequestedAt"] == request  # it did probe
        return world.published_data("billing-sender")

    secret_file = world.store / NS / "secrets" / "billing-sender.yaml"
    first = probe("1")
    assert first["signing.p12"] and first["SIGNING_P12_PASSWORD"]
    written = secret_file.stat().st_mtime_ns
    assert probe("2") == first
    assert secret_file.stat().st_mtime_ns == written  # not even rewritten

    if keystore_password is not None:  # the same key under a new keystore password
        keystore("rotated-pass", key, cert)
        third = probe("3")
        assert third["SIGNING_P12_PASSWORD"] == "rotated-pass"
        assert third["signing.p12"] != first["signing.p12"]
        first = third
    new_key, new_cert = ca.issue_smime("billing@example.com")
    keystore(keystore_password and "rotated-pass", new_key, new_cert)
    fourth = probe("4")
    assert fourth["signing.p12"] != first["signing.p12"]
    if keystore_password is None:  # derived from the key: a new key, a new password
        assert fourth["SIGNING_P12_PASSWORD"] != first["SIGNING_P12_PASSWORD"]


def test_reconcile_of_a_folder_as_in_git_skips_other_kinds(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    (world.accounts / "kustomization.yaml").write_text("resources: [billing.yaml, ns.yaml]\n")
    (world.accounts / "ns.yaml").write_text(
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\n"
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: billing, namespace: {NS}}}\n"
        "stringData: {password: not-in-any-output}\n")
    assert world.reconcile() == 0
    captured = capsys.readouterr()
    assert "note: skipped: a Namespace (v1)" in captured.err
    assert "warning: a Secret with data is committed here" in captured.err
    assert "not-in-any-output" not in captured.out + captured.err
    assert condition(world.status("billing"), "Ready")["status"] == "True"
    assert not (world.store / NS / "emailaccounts" / "ns.yaml").exists()
