# ruff: noqa: F811  (pytest fixtures imported from tests.test_controller are used as arguments)
"""The controller under slow servers and an API outage (issue 12 items 4 and 7).

- 4 Microsoft Graph accounts whose identity endpoint answers one byte a second, beside 10
  healthy SMTP accounts whose password changes: all 10 are re-probed and Ready within
  timeoutSeconds + 5 s (a slow account holds only its own slot; changed accounts go first).
- HTTP 500 from the API server for every request of the workers for 5 rounds of backoff: about
  one request a round (issue 23 item 11), each account AUTHs once (the controller remembers the
  AUTH it could not record), and all converge afterwards.

Against tests/kubeapi/ over real HTTP, real SMTP servers and a real HTTPS server on loopback.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.demo.certificates import ThrowawayCA
from tests.fake_idp import LOOPBACK_POLICY
from tests.test_controller import (
    NEW_PASSWORD,
    NS,
    PASSWORD,
    Cluster,
    cluster,  # noqa: F401
    servers,  # noqa: F401
    wait_for,
)

GRAPH_TIMEOUT = 6  # timeoutSeconds of the slow Graph accounts


class DrippingHttps:
    """An HTTPS server on 127.0.0.1 that reads a request, then answers one byte a second."""

    def __init__(self) -> None:
        self.ca = ThrowawayCA()
        self.connections = 0
        self.open = 0
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  ssl=self.ca.server_context())
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
            self.open += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with self._lock:
                self.open -= 1
            # abort, not close: a TLS close waits for the client's close_notify, and the loop
            # stops at teardown before that, leaving the socket to the garbage collector (a
            # ResourceWarning that filterwarnings=error turns into a later test's failure)
            writer.transport.abort()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)  # the aborted transports close their sockets on the next turn

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def dripping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DrippingHttps]:
    server = DrippingHttps()
    bundle = tmp_path / "idp-ca.pem"
    bundle.write_text(server.ca.ca_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # how msal and requests trust it
    try:
        yield server
    finally:
        server.close()


def _graph_account(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"provider": "office365", "sendUsing": "MicrosoftGraph", "graph": {
            "userPrincipalName": f"{name}@example.com", "timeoutSeconds": GRAPH_TIMEOUT,
            "endpoint": url,
            "authentication": {"authority": url,
                               "tenantId": "00000000-0000-0000-0000-000000000001",
                               "clientId": "00000000-0000-0000-0000-000000000003",
                               "grantType": "ClientCredentials",
                               "clientSecretSecretRef": {"name": "graph-app",
                                                         "key": "client-secret"}}}},
    }


def _auths(cluster: Cluster, name: str, password: str | None = None) -> int:
    return sum(1 for a in list(cluster.servers.starttls.auth_attempts)
               if a.login == f"{name}@example.com" and (password is None or a.secret == password))


HEALTHY = [f"app-{i:02d}" for i in range(10)]


def test_slow_graph_accounts_hold_only_their_own_slots(cluster: Cluster,
                                                       dripping: DrippingHttps) -> None:
    ctl = cluster.controller(workers=4, policy=LOOPBACK_POLICY)  # the identity fake is on loopback
    for name in HEALTHY:
        cluster.account(name)
    wait_for(lambda: all(cluster.ready(n) for n in HEALTHY), 20, "10 healthy accounts Ready")
    cluster.secret("graph-app", "client-secret", "graph-client-s3cret")
    for i in range(4):
        cluster.api.add_object("emailaccounts", _graph_account(f"graph-{i}", dripping.url))
    # every worker's first pick is a slow Graph account, now stuck on the dripping endpoint
    # (the four share one client: one token request, which all four probes wait for)
    wait_for(lambda: dripping.open >= 1 and ctl.probe_loop.in_flight() >= 4, 20,
             "4 Graph probes on the dripping endpoint")
    graph = [(NS, f"graph-{i}") for i in range(4)]

    for name in HEALTHY:
        cluster.servers.users[f"{name}@example.com"] = NEW_PASSWORD
        cluster.secret(f"{name}-smtp", "password", NEW_PASSWORD)
    changed = time.monotonic()

    def rotated(name: str) -> bool:
        published = cluster.published(f"{name}-sender") or {}
        return published.get("SMTP_PASSWORD") == NEW_PASSWORD and cluster.ready(name)

    slow_at_the_end: list[int] = []

    def all_rotated() -> bool:
        still_dripping = sum(1 for key in graph if not ctl.reconciles[key])
        done = all(rotated(n) for n in HEALTHY)
        if done:
            slow_at_the_end.append(still_dripping)
        return done

    wait_for(all_rotated, GRAPH_TIMEOUT + 5,
             "all 10 changed accounts re-probed and Ready within timeoutSeconds + 5 s")
    took = time.monotonic() - changed
    assert all(_auths(cluster, n, NEW_PASSWORD) >= 1 for n in HEALTHY)  # really re-probed
    print(f"10 changed accounts Ready {took:.2f} s after the change, beside 4 dripping Graph "
          f"accounts ({slow_at_the_end[0]} still dripping)")
    # They did not wait for the slow ones: all four were still in their first probe.
    assert slow_at_the_end[0] >= 4


ROUNDS = 5  # backoff rounds the outage lasts (a condition, not a time)
WORKER_VERBS = ("get", "patch", "create", "delete", "update")  # the informers LIST and WATCH


def test_api_outage_costs_one_request_per_backoff_round(cluster: Cluster) -> None:
    """Issue 23 item 11: every request the workers send fails with 500 while 10 new accounts
    need their Secret and status written. Each round of the shared backoff sends one request
    (the first round: one per worker already under way), not two tries of each write per
    worker; each account AUTHs once (remembered across the outage); all converge after it."""
    workers = 4
    names = [f"acct-{i:02d}" for i in range(10)]
    ctl = cluster.controller(workers=workers, backoff_base=0.2)
    assert ctl.wait_synced(5)
    for verb in WORKER_VERBS:
        cluster.api.inject(500, count=10**9, verb=verb)
    cluster.api.clear_requests()
    for name in names:
        cluster.account(name)
    wait_for(lambda: ctl.api_backoff.failures >= ROUNDS, 60, f"{ROUNDS} rounds of backoff")
    sent = [r for r in list(cluster.api.requests) if r.verb in WORKER_VERBS]
    rounds = ctl.api_backoff.failures
    auths = {n: _auths(cluster, n) for n in names}
    cluster.api.clear_faults()
    wait_for(lambda: all(cluster.ready(n) and cluster.published(f"{n}-sender") for n in names),
             60, "every account Ready once the API server is back")
    print(f"{len(sent)} requests in {rounds} rounds of HTTP 500 for {len(names)} accounts, "
          f"{workers} workers; {sum(auths.values())} AUTHs during the outage, "
          f"{sum(_auths(cluster, n) for n in names)} in all")
    assert all(r.status == 500 for r in sent)
    # one per round, plus the reconciles already under way when the first failure came (one
    # per worker; twice that leaves room for a slow one whose slot was given back)
    assert len(sent) <= 2 * workers + rounds, [(r.verb, r.resource) for r in sent]
    assert all(auths[n] <= 1 for n in names)  # the retries did not AUTH again
    assert all(_auths(cluster, n) == 1 for n in names)  # nor the write after the outage
    published = cluster.published("acct-00-sender") or {}
    assert published.get("SMTP_PASSWORD") == PASSWORD
