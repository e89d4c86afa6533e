"""Finished work is recorded at once (issue 12 items 4 and 5, store side).

A real `email-reconciler reconcile` subprocess probes accounts on SMTPS servers that answer after
varied delays (some never within the test); it is SIGKILLed at random moments. Every account
whose session had ended at its server (the server's own log) must then have its status and its
Secret. A write failing for one account becomes that account's reason; the others are written.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main
from reconciler.demo.certificates import ThrowawayCA
from reconciler.errors import StoreError
from reconciler.model import status_condition
from reconciler.store.local import LocalStore

NS = "shop"
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "kill-test p@ss"
KILLS = 10
#: An account's files are written within this long after its session ended (generous: the
#: machine is shared; a run that wrote nothing before the slowest probe misses it by minutes).
GRACE = 1.0


@dataclass
class SessionLog:
    """What the servers saw: when each account's session started and ended (monotonic)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    auths: Counter[str] = field(default_factory=Counter)

    def clear(self) -> None:
        with self.lock:
            self.started.clear()
            self.ended.clear()
            self.auths.clear()

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        with self.lock:
            return dict(self.started), dict(self.ended)


class DelayedServers:
    """One SMTPS server per account on 127.0.0.1, each sending its banner after a delay."""

    def __init__(self, ca: ThrowawayCA) -> None:
        self.ca = ca
        self.log = SessionLog()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.base_events.Server] = []

    def start(self, name: str, delay: float) -> int:
        context = self.ca.server_context()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with self.log.lock:
                self.log.started[name] = time.monotonic()
            try:
                await asyncio.sleep(delay)
                await self._session(name, reader, writer)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        async def listen() -> int:
            server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)

    async def _session(self, name: str, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-mail.test\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n")
            elif verb == b"AUTH":
                if len(line.split()) < 3:
                    writer.write(b"334 \r\n")
                    await writer.drain()
                    line = b"AUTH PLAIN " + await reader.readline()
                secret = base64.b64decode(line.split()[2]).split(b"\0")[-1]
                with self.log.lock:
                    self.log.auths[name] += 1
                writer.write(b"235 2.7.0 ok\r\n" if secret == PASSWORD.encode()
                             else b"535 5.7.8 no\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                with self.log.lock:
                    self.log.ended[name] = time.monotonic()
                return
            else:  # MAIL, RSET, NOOP
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _manifest(name: str, port: int, timeout: float) -> dict[str, Any]:
    return {
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"provider": "custom", "smtp": {
            "identity": {"emailAddress": f"{name}@example.com"},
            "connection": {"host": "127.0.0.1", "port": port, "security": "SMTPS",
                           "timeoutSeconds": timeout,
                           "truststore": {"secretRef": {"name": "ca", "key": "ca.crt"}}},
            "authentication": {"method": "Password",
                               "passwordSecretRef": {"name": "smtp", "key": "password"}}}},
    }


@pytest.fixture(scope="module")
def delayed() -> Iterator[tuple[DelayedServers, dict[str, float]]]:
    ca = ThrowawayCA()
    servers = DelayedServers(ca)
    delays = {f"fast-{i:02d}": 0.12 * i for i in range(16)}
    delays |= {f"slow-{i}": 3600.0 for i in range(4)}  # never answer while the test runs
    delays["lock-held"] = 3.0
    try:
        ports = {name: servers.start(name, delay) for name, delay in delays.items()}
        servers.ports = ports  # type: ignore[attr-defined]
        yield servers, delays
    finally:
        servers.close()


def _world(root: Path, servers: DelayedServers, only: tuple[str, ...] = ()) -> tuple[Path, Path]:
    accounts, secrets = root / "accounts", root / "secrets"
    accounts.mkdir(parents=True)
    for name, port in servers.ports.items():  # type: ignore[attr-defined]
        if only and name not in only or not only and name == "lock-held":
            continue
        timeout = 60 if name.startswith("slow") else 10
        (accounts / f"{name}.yaml").write_text(yaml.safe_dump(_manifest(name, port, timeout)))
    for secret, key, value in (("smtp", "password", PASSWORD), ("ca", "ca.crt", servers.ca.ca_pem)):
        path = secrets / NS / secret / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    return accounts, secrets


def _console_script() -> str:
    script = Path(sys.executable).with_name("email-reconciler")
    return str(script) if script.exists() else shutil.which("email-reconciler") or "email-reconciler"


def _recorded(store: Path) -> dict[str, bool]:
    """Account -> whether it is recorded Ready with its Secret (every file must parse)."""
    out = {}
    for path in sorted((store / NS / "emailaccounts").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if not status:
            continue
        secret = store / NS / "secrets" / f"{name}-sender.yaml"
        published = secret.exists() and yaml.safe_load(secret.read_text())["data"]
        out[name] = (status_condition(status, "Ready").get("status") == "True"
                     and bool(published))
    return out


def _wait(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_at_random_moments_keeps_every_finished_account(
        delayed: tuple[DelayedServers, dict[str, float]], tmp_path: Path) -> None:
    servers, delays = delayed
    accounts, secrets = _world(tmp_path / "world", servers)
    rng = random.Random(os.environ.get("KILL_SEED", "12"))
    outcomes = []
    for attempt in range(KILLS):
        store = tmp_path / f"store-{attempt}"
        servers.log.clear()
        proc = subprocess.Popen(
            [_console_script(), "reconcile", str(accounts), "--store", f"local:{store}",
             "--secrets-dir", str(secrets)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # The kill lands anywhere from the first connection to past the last fast session.
            _wait(lambda: servers.log.snapshot()[0], 30, "the run to connect")
            time.sleep(rng.uniform(0.0, 0.12 * 16 + 0.5))
            _started, ended = servers.log.snapshot()
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        recorded = _recorded(store)
        finished = {n for n, t in ended.items() if t <= killed_at - GRACE}
        missing = sorted(finished - {n for n, ok in recorded.items() if ok})
        outcomes.append((len(ended), len(recorded), missing))
        assert not missing, (attempt, outcomes)
        assert not any(n.startswith("slow") for n in recorded)
        _, ended_after = servers.log.snapshot()
        assert set(recorded) <= set(ended_after), "recorded without its session ending"
    # The kills landed at different stages of the run, some with work finished.
    assert len({e for e, _r, _m in outcomes}) > 1 and any(r for _e, r, _m in outcomes), outcomes
    print("SIGKILL outcomes (sessions ended, accounts recorded):",
          [(e, r) for e, r, _m in outcomes])


# --------------------------------------------------------------------------- store failures


def test_a_failing_write_is_that_accounts_reason_and_the_others_are_written(
        delayed: tuple[DelayedServers, dict[str, float]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    servers, _delays = delayed
    accounts, secrets = _world(tmp_path / "world", servers, only=("fast-00", "fast-01"))
    # fast-00 lives in namespace "broken", whose secrets folder is taken by a plain file:
    # writing its Secret fails with an OSError (FileExistsError), whatever the user.
    doc = yaml.safe_load((accounts / "fast-00.yaml").read_text())
    doc["metadata"]["namespace"] = "broken"
    (accounts / "fast-00.yaml").write_text(yaml.safe_dump(doc))
    shutil.copytree(secrets / NS, secrets / "broken")
    store = tmp_path / "store"
    (store / "broken").mkdir(parents=True)
    (store / "broken" / "secrets").write_text("not a folder")
    assert main(["reconcile", str(accounts), "--store", f"local:{store}", "--secrets-dir",
                 str(secrets), "-o", "json"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    report = {a["name"]: a for a in json.loads(captured.out)["accounts"]}
    published = status_condition(report["fast-00"]["status"], "SecretPublished")
    assert published["status"] == "False" and published["reason"] == "StoreWriteFailed"
    assert "fast-00-sender.yaml" in published["message"]
    assert not report["fast-00"]["ready"]
    assert report["fast-01"]["ready"] and report["fast-01"]["error"] is None
    assert _recorded(store) == {"fast-01": True}
    stored = yaml.safe_load((store / "broken" / "emailaccounts" / "fast-00.yaml").read_text())
    assert status_condition(stored["status"], "SecretPublished")["reason"] == "StoreWriteFailed"


def test_a_second_run_waits_for_the_first_and_authenticates_nothing_again(
        delayed: tuple[DelayedServers, dict[str, float]], tmp_path: Path) -> None:
    """Issue 12 item 8: two runs on one local store used to AUTH every account twice."""
    servers, _delays = delayed
    accounts, secrets = _world(tmp_path / "world", servers, only=("lock-held", "fast-00"))
    servers.log.clear()
    command = [_console_script(), "reconcile", str(accounts), "--store",
               f"local:{tmp_path / 'store'}", "--secrets-dir", str(secrets)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        _wait(lambda: "lock-held" in servers.log.snapshot()[0], 30, "the first run to connect")
        second = subprocess.Popen([*command, "--lock-timeout", "60"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert first.wait(60) == 0
        assert second.wait(60) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert dict(servers.log.auths) == {"lock-held": 1, "fast-00": 1}
    assert _recorded(tmp_path / "store") == {"lock-held": True, "fast-00": True}


def test_local_store_errors_name_the_file_not_an_oserror(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / NS / "emailaccounts").mkdir(parents=True)
    long = "a" * 300
    with pytest.raises(StoreError, match="File name too long"):
        store.apply_secret({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": long, "namespace": NS}, "data": {}})
    with pytest.raises(StoreError, match="File name too long"):
        store.write_status(NS, long, {})
    with pytest.raises(StoreError, match="File name too long"):
        store.delete_secret(NS, long)
