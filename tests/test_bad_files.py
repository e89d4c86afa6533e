# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""A broken file never deletes anything (issue 12 item 1).

Each kind of file that cannot be loaded — a YAML syntax error, a tab, over 1 MiB, a non-UTF-8
byte, a dangling symlink, a symlink loop, a FIFO, a device, an unreadable file — makes the run
apply and probe what did load, prune nothing, name the file and exit 1; `validate` reports it.
Local store and cluster (tests/kubeapi.py: the server must see no DELETE).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.cli import main
from reconciler.manifest.load import MAX_BYTES, load_paths
from reconciler.model import status_condition
from reconciler.run.reconcile import Reconciler, RunOptions
from reconciler.store.kube import KubeStore
from reconciler.store.kubeclient import RetryPolicy
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers, loopback_account, loopback_servers
from tests.world import NS, World, servers, world  # noqa: F401


def _unclosed_quote(path: Path) -> None:
    path.write_text(path.read_text().replace("kind: EmailAccount", 'kind: "EmailAccount', 1))


def _tab(path: Path) -> None:
    path.write_text(path.read_text().replace("\n  ", "\n\t", 1))


def _too_large(path: Path) -> None:
    with path.open("ab") as fh:  # a sparse file: its size is what counts, never its bytes
        fh.truncate(MAX_BYTES * 200)


def _not_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"Billing", b"Bill\xe9ng", 1))


def _dangling_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.with_name("gone.yaml"))


def _symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _device(path: Path) -> None:
    path.unlink()
    path.symlink_to(os.devnull)


def _unreadable(path: Path) -> None:
    path.chmod(0)


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "unclosed-quote": (_unclosed_quote, "YAML syntax error"),
    "tab": (_tab, "YAML syntax error"),
    "over-1-MiB": (_too_large, "larger than 1 MiB"),
    "not-utf8": (_not_utf8, "not valid UTF-8"),
    "dangling-symlink": (_dangling_symlink, "dangling symlink"),
    "symlink-loop": (_symlink_loop, "symlink loop"),
    "fifo": (_fifo, "a FIFO, not a regular file"),
    "device": (_device, "a device, not a regular file"),
    "unreadable": (_unreadable, "Permission denied"),
}


def _break(kind: str, path: Path) -> str:
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    action, message = BREAKS[kind]
    action(path)
    return message


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_loader_names_the_file_and_reads_no_big_file(kind: str, tmp_path: Path) -> None:
    good = loopback_account("alerts", NS, 2525)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(good))
    broken = tmp_path / "billing.yaml"
    broken.write_text(yaml.safe_dump(loopback_account("billing", NS, 2525,
                                                      display_name="Billing")))
    message = _break(kind, broken)
    result = load_paths([str(tmp_path)])
    assert [a.name for a in result.accounts] == ["alerts"]
    assert [d.file for d in result.failed_files] == [str(broken)]
    assert message in result.failed_files[0].message
    assert not result.ok


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_a_broken_file_prunes_nothing_locally(kind: str, world: World,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    world.account("billing")
    world.account("alerts", server=world.smtps, security="SMTPS")
    assert world.reconcile() == 0
    secret_file = world.store / NS / "secrets" / "billing-sender.yaml"
    before = secret_file.read_bytes()
    message = _break(kind, world.accounts / "billing.yaml")
    world.secret("alerts-smtp", "password", "rotated")  # the run still probes what loaded
    world.users["alerts@example.com"] = "rotated"
    capsys.readouterr()

    assert world.reconcile() == 1
    captured = capsys.readouterr()
    assert secret_file.read_bytes() == before
    assert (world.store / NS / "emailaccounts" / "billing.yaml").exists()
    assert "pruned" not in captured.out.replace("nothing was pruned", "")
    assert "prune skipped" in captured.out and "billing.yaml" in captured.out
    assert str(world.accounts / "billing.yaml") in captured.err and message in captured.err
    assert world.published_data("alerts-sender")["SMTP_PASSWORD"] == "rotated"
    assert status_condition(world.status("alerts"), "Ready")["status"] == "True"

    assert main(["validate", str(world.accounts)]) == 1
    out = capsys.readouterr()
    assert f"{world.accounts / 'billing.yaml'}:" in out.out + out.err


def test_validate_reports_every_broken_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    expected = {}
    for kind in sorted(BREAKS):
        if kind == "unreadable" and os.geteuid() == 0:
            continue
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(loopback_account(kind.lower(), NS, 2525,
                                                        display_name="Billing")))
        action, expected[str(path)] = BREAKS[kind]
        action(path)
    assert main(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for path, message in expected.items():
        assert any(line.startswith(f"{path}:") and message in line for line in text.splitlines()), (
            path, message, text)


def test_a_named_dangling_symlink_is_an_error_not_a_missing_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "billing.yaml"
    link.symlink_to(tmp_path / "gone.yaml")
    assert main(["validate", str(link)]) == 1
    captured = capsys.readouterr()
    assert "dangling symlink" in captured.out + captured.err


# --------------------------------------------------------------------------- cluster mode


@pytest.fixture(scope="module")
def smtp_pair() -> Iterator[LoopbackServers]:
    with loopback_servers() as started:
        yield started


@pytest.mark.parametrize("kind", ["unclosed-quote", "over-1-MiB", "dangling-symlink", "fifo"])
def test_a_broken_file_deletes_nothing_in_the_cluster(kind: str, smtp_pair: LoopbackServers,
                                                      tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS,
                                                   "labels": {"email.reconciler.io/credential": "true"}},
                                      "data": {"ca.crt": smtp_pair.ca.ca_pem}})
        for name in ("billing", "alerts"):
            smtp_pair.users[f"{name}@example.com"] = "pw-" + name
            api.add_object("secrets", {
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": f"{name}-smtp", "namespace": NS,
                             "labels": {"email.reconciler.io/credential": "true"}},
                "data": {"password": base64.b64encode(f"pw-{name}".encode()).decode()}})
            doc = loopback_account(name, NS, smtp_pair.starttls.port, display_name="Billing")
            (accounts / f"{name}.yaml").write_text(yaml.safe_dump(doc))

        def run() -> bool:
            with KubeStore(api.api_client(), retry=RetryPolicy(base_delay=0.005,
                                                               max_delay=0.02)) as store:
                loaded = load_paths([str(accounts)])
                report = Reconciler(store, store.secret_reader(), RunOptions()).run(loaded)
                return report.all_ready and loaded.ok

        assert run()
        assert api.get_object("secrets", NS, "billing-sender") is not None
        api.clear_requests()
        _break(kind, accounts / "billing.yaml")
        assert not run()
        deletes = [(r.resource, r.name) for r in api.requests if r.verb == "delete"]
        assert deletes == []
        assert api.get_object("secrets", NS, "billing-sender") is not None
        assert api.get_object("emailaccounts", NS, "billing") is not None
