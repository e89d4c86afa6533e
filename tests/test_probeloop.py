# ruff: noqa: F811  (pytest fixtures imported from tests.test_controller are used as arguments)
"""The controller's probe loop (run/probeloop.py): the workers' probes run together on one event
loop, and shutdown does not wait for a probe stuck on a silent server (issue 26 item 4).

The SMTP server is the suite's STARTTLS stand-in behind `Gate`, a TCP relay that holds every
connection (so the greeting) until the test opens it: what the test waits for is a condition
(how many sessions are connected, how many probes are in flight), never a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.run.probeloop import ProbeLoop, ProbesStopped
from tests.manifests_factory import loopback_account
from tests.test_controller import (  # noqa: F401
    NS,
    PASSWORD,
    PATIENCE,
    Cluster,
    cluster,
    servers,
    wait_for,
)


class Gate:
    """A TCP relay on 127.0.0.1 to `upstream`: each connection waits, not a byte relayed, until
    `open()`; `connected` counts the connections that arrived."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.connected = 0
        self._opened = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
                self.connected += 1
            self._spawn(self._relay, client)

    def _relay(self, client: socket.socket) -> None:
        while not self._opened.wait(0.05):
            if self._closing.is_set():
                return
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            return
        with self._lock:
            self._sockets.append(server)
        self._spawn(self._pipe, server, client)
        self._pipe(client, server)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def open(self) -> None:
        self._opened.set()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


@pytest.fixture
def gate(cluster: Cluster) -> Iterator[Gate]:
    g = Gate(cluster.servers.starttls.port)
    yield g
    g.close()


def account(cluster: Cluster, name: str, port: int) -> None:
    """An account on `port` whose probe may wait 30 s for each reply (a deadline of 120 s)."""
    cluster.servers.users[f"{name}@example.com"] = PASSWORD
    cluster.secret(f"{name}-smtp", "password", PASSWORD)
    cluster.api.add_object("emailaccounts", loopback_account(name, NS, port, timeout=30))


def probe_tasks(loop: ProbeLoop) -> int:
    """The tasks on the probe loop (each worker's probe is one)."""
    event_loop = loop.loop()
    assert event_loop is not None

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1  # not this one

    return asyncio.run_coroutine_threadsafe(count(), event_loop).result(PATIENCE)


def test_two_probes_overlap_on_the_shared_loop(cluster: Cluster, gate: Gate) -> None:
    """Two due accounts: both sessions are connected at once, both probes on the one loop, and
    only once both are held does the gate open; both then come Ready."""
    ctl = cluster.controller(workers=2)
    assert ctl.wait_synced(PATIENCE)
    account(cluster, "first", gate.port)
    account(cluster, "second", gate.port)
    wait_for(lambda: gate.connected >= 2, PATIENCE, "both sessions connected to the gate")
    assert ctl.probe_loop.in_flight() == 2
    assert probe_tasks(ctl.probe_loop) >= 2
    assert not [t for t in threading.enumerate() if t.name == "probes" and t is not
                ctl.probe_loop._thread]  # no loop of a reconcile's own
    gate.open()
    wait_for(lambda: cluster.ready("first") and cluster.ready("second"), PATIENCE, "both Ready")
    assert gate.connected == 2  # one session each, no retry
    assert ctl.probe_loop.submitted >= 2
    wait_for(lambda: ctl.probe_loop.in_flight() == 0, PATIENCE, "no probe in flight")


def test_shutdown_with_a_probe_in_flight_ends_promptly(cluster: Cluster, gate: Gate) -> None:
    """The server never greets: the probe would wait 30 s for the greeting (120 s in all);
    stop() gives it the grace, cancels it and returns, writing nothing for the account."""
    ctl = cluster.controller(workers=1, probe_grace=0.5)
    assert ctl.wait_synced(PATIENCE)
    account(cluster, "silent", gate.port)
    wait_for(lambda: gate.connected >= 1 and ctl.probe_loop.in_flight() == 1, PATIENCE,
             "the probe held at the gate")
    started = time.monotonic()
    ctl.stop()
    took = time.monotonic() - started
    assert took < 15, f"stop() took {took:.1f}s with a probe in flight"
    assert not ctl.probe_loop.running
    assert ctl.probe_loop.in_flight() == 0
    assert cluster.status("silent") == {}  # the cancelled turn wrote nothing
    assert cluster.published("silent-sender") is None
    cluster.controllers = [(c, a) for c, a in cluster.controllers if c is not ctl or a.close()]


def test_a_stopped_loop_refuses_new_probes() -> None:
    loop = ProbeLoop(io_threads=1)
    loop.start()

    async def answer() -> int:
        return 42

    assert loop.submit(answer()).result(PATIENCE) == 42
    loop.stop(grace=0)
    coro = answer()
    with pytest.raises(ProbesStopped):
        loop.submit(coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning


def test_stop_cancels_a_probe_that_outlives_the_grace() -> None:
    loop = ProbeLoop(io_threads=1)
    loop.start()

    async def forever() -> None:
        await asyncio.Event().wait()

    stuck = loop.submit(forever())
    wait_for(lambda: loop.in_flight() == 1, PATIENCE, "the probe running")
    loop.stop(grace=0.1)
    assert stuck.cancelled()
    assert not loop.running
    assert loop.in_flight() == 0
