"""Issue 23 item 9: a hostile or broken API server gets a deadline and a size bound per call.

Small hostile HTTP servers on 127.0.0.1 answer the store's LIST with an endless body (as a 200, as
a 500 whose body the official client reads itself, chunked, and as a gzip bomb) and with a drip
(one byte at a time, in the status line or in the body). Each call fails with StoreUnavailable
("API server unavailable") after reading at most the bound, or at the deadline; beside them a
store with the same bounds works against tests/kubeapi.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import http.server
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.demo.smtp_servers import ServerLoop
from reconciler.errors import StoreUnavailable
from reconciler.model import status_condition as condition
from reconciler.policy import CREDENTIAL_LABEL as CREDENTIAL
from reconciler.store.kube import KubeStore
from reconciler.store.kubeclient import RetryPolicy
from tests.hostile import HostileServers
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd, valid_spec
from tests.kubeapi import KubeAPIServer
from tests.test_controller import wait_for

BOUND = 1 << 20  # the test's size bound: 1 MiB
SENT = 32 << 20  # what the endless servers send at most (a safety net for the old code)
DEADLINE = 1.0  # the test's deadline per call
BOUNDS = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, deadline=DEADLINE,
                     max_response_bytes=BOUND)
ITEM = b'{"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount"},'


@pytest.fixture
def hostile(server_loop: ServerLoop) -> Iterator[HostileServers]:
    servers = HostileServers(server_loop)
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        api.add_object("emailaccounts", {"apiVersion": "email.reconciler.io/v1alpha1",
                                         "kind": "EmailAccount",
                                         "metadata": {"name": "fine", "namespace": "shop"},
                                         "spec": valid_spec()})
        yield api


def store_at(port: int) -> KubeStore:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    return KubeStore(client.ApiClient(configuration), "shop", retry=BOUNDS)


def legitimate_call_works(kube: KubeAPIServer) -> None:
    with KubeStore(kube.api_client(), "shop", retry=BOUNDS) as store:
        assert [a["metadata"]["name"] for a in store.list_accounts()] == ["fine"]


async def _endless(writer: asyncio.StreamWriter, head: bytes, block: bytes, chunked: bool) -> None:
    writer.write(head)
    sent, first = 0, b'{"items": ['
    while sent < SENT and not writer.transport.is_closing():
        data, first = first + block, b""
        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        sent += len(data)
        await writer.drain()


def endless(hostile: HostileServers, kind: str) -> int:
    """A LIST answered with an endless body: `ok` (200, read to the close), `error` (500),
    `chunked` (200, chunked), `gzip` (a small gzip bomb of 64 MiB of zeros)."""
    bomb = gzip.compress(b"0" * (64 << 20), 1) if kind == "gzip" else b""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        status = b"500 Internal Server Error" if kind == "error" else b"200 OK"
        head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        if kind == "gzip":
            writer.write(head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                         % len(bomb) + bomb)
            await writer.drain()
            await reader.read()  # until the client goes
            return
        head += b"Transfer-Encoding: chunked\r\n\r\n" if kind == "chunked" else (
            b"Connection: close\r\n\r\n")
        await _endless(writer, head, ITEM * 1000, kind == "chunked")
    return hostile.start(handler)


def drip(hostile: HostileServers, where: str) -> int:
    """A LIST answered one byte every 0.2 s: from the status line on, or in the body."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        body = b'{"items": [' + b" " * 99989
        if where == "body":
            writer.write(head)
            answer = body
        else:
            answer = head + body
        for i in range(len(answer)):
            if writer.transport.is_closing():
                return
            writer.write(answer[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.2)
    return hostile.start(handler)


def outcome(call: Any) -> dict[str, Any]:
    """Run `call` in a thread; {"done": ...} fills in when it returns or raises."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        result["done"] = True

    threading.Thread(target=run, daemon=True).start()
    return result


@pytest.mark.parametrize("kind", ["ok", "error", "chunked", "gzip"])
def test_an_endless_list_fails_after_reading_at_most_the_bound(
        hostile: HostileServers, kube: KubeAPIServer, kind: str) -> None:
    store = store_at(endless(hostile, kind))
    tracemalloc.start()
    try:
        with pytest.raises(StoreUnavailable, match="API server unavailable") as failed:
            store.list_accounts()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()
    assert peak < 3 * BOUND, f"{peak} bytes held for a {BOUND}-byte bound"
    assert store.api.requests["list"] == 1  # a breach is not retried
    if kind != "gzip":
        assert f"larger than {BOUND} bytes" in str(failed.value)
    legitimate_call_works(kube)


@pytest.mark.parametrize("where", ["status line", "body"])
def test_a_dripped_list_ends_at_the_deadline(hostile: HostileServers, kube: KubeAPIServer,
                                             where: str) -> None:
    store = store_at(drip(hostile, where))
    try:
        result = outcome(store.list_accounts)
        wait_for(lambda: result.get("done"), 20, "the dripped LIST to return")
    finally:
        store.close()
    error = result.get("error")
    assert isinstance(error, StoreUnavailable), result
    assert f"no complete answer within {DEADLINE:g} s" in str(error)
    legitimate_call_works(kube)


# --------------------------------------------------------------------------- the run goes on


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to tests/kubeapi, except requests for namespace `team`: those get an answer
    dripped one byte every 0.2 s."""

    upstream: str
    stop: threading.Event
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/namespaces/team/" in self.path:
            self.close_connection = True
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b" " * 1000:
                if self.stop.wait(0.2):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        host, port = self.upstream.rsplit(":", 1)
        conn = http.client.HTTPConnection(host.split("//")[1], int(port), timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _serve


def test_a_dripping_namespace_does_not_hold_up_the_run(tmp_path: Path) -> None:
    """A whole reconcile run: the accounts of the namespace the server drips fail with
    ApiUnavailable at the deadline of each call; the run goes on and the other is Ready."""
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as kube:
        result = _run_behind_proxy(kube, tmp_path)
    report = result.get("value")
    assert report is not None, result
    entries = {a.name: a for a in report.accounts}
    assert entries["billing"].ready, entries["billing"].status
    evil = entries["evil"]
    assert evil.error and "no complete answer within" in evil.error, evil
    assert condition(evil.status, "Ready")["reason"] == "ApiUnavailable"


def _run_behind_proxy(kube: KubeAPIServer, tmp_path: Path) -> dict[str, Any]:
    from reconciler.manifest.load import load_paths
    from reconciler.run.reconcile import Reconciler, RunOptions
    from tests.manifests_factory import loopback_account, loopback_servers

    stop = threading.Event()
    handler = type("Proxy", (_Proxy,), {"upstream": kube.url, "stop": stop})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True).start()
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    with loopback_servers() as servers:
        kube.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "ca", "namespace": "shop",
                                                    "labels": {CREDENTIAL: "true"}},
                                       "data": {"ca.crt": servers.ca.ca_pem}})
        kube.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": "billing-smtp", "namespace": "shop",
                                                 "labels": {CREDENTIAL: "true"}},
                                    "data": {"password": base64.b64encode(b"pa55word").decode()}})
        servers.users["billing@example.com"] = "pa55word"
        for name, ns in (("billing", "shop"), ("evil", "team")):
            doc = loopback_account(name, ns, servers.starttls.port)
            (accounts / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        store = store_at(proxy.server_address[1])
        try:
            result = outcome(lambda: Reconciler(store, store.secret_reader(), RunOptions()).run(
                load_paths([str(accounts)])))
            wait_for(lambda: result.get("done"), 60, "the run to end")
        finally:
            stop.set()
            store.close()
            proxy.shutdown()
            proxy.server_close()
    return result


def test_a_dripped_lease_read_ends_at_its_deadline(hostile: HostileServers,
                                                   kube: KubeAPIServer) -> None:
    """The leader elector's reads are bounded too: its timeouts are its deadline."""
    from kubernetes import client

    from reconciler.store.lease import LeaseClient

    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{drip(hostile, 'status line')}"
    with client.ApiClient(configuration) as api_client:
        result = outcome(LeaseClient(api_client, "shop", "leader", timeout=(0.5, 0.5)).get)
        wait_for(lambda: result.get("done"), 20, "the dripped Lease read to return")
    error = result.get("error")
    assert isinstance(error, StoreUnavailable) and "no complete answer within 1 s" in str(error)
    with kube.api_client() as api_client:  # beside it, a Lease read and written as usual
        lease = LeaseClient(api_client, "shop", "leader", timeout=(0.5, 0.5))
        assert lease.get() is None
        lease.create({"holderIdentity": "me"})
        assert (lease.get() or {})["spec"]["holderIdentity"] == "me"
