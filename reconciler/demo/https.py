"""The HTTPS server every web stand-in of the demo is built on (token endpoints, Graph).

`HttpsFake` is a stdlib ThreadingHTTPServer on 127.0.0.1 in a daemon thread, with a certificate
from a `ThrowawayCA` (or a bare trustme.CA, as the tests pass). It records every request as a
`Seen` and answers JSON from its subclass's `handle(seen) -> (status, body)` (or `(status, body,
headers)`, for a redirect's Location). It is a context
manager; close() stops its thread and closes every socket.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self

from reconciler.demo.certificates import LOOPBACK, ThrowawayCA

if TYPE_CHECKING:
    import trustme

CERTIFICATE_LIFETIME = dt.timedelta(days=90)


@dataclass(frozen=True)
class Seen:
    """One request a fake received."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, fake: HttpsFake) -> None:
        self.context, self.fake = context, fake
        super().__init__((LOOPBACK, 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # The handshake happens in the handler thread, on the first read.
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, self.path, dict(self.headers.items()), body)
        fake = self.server.fake
        with fake.lock:
            fake.seen.append(seen)
        status, answer, *extra = fake.handle(seen)
        data = b"" if answer is None else json.dumps(answer).encode()  # None: no body (202)
        self.send_response(status)
        for name, value in (extra[0] if extra else {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve  # noqa: N815 (stdlib's names)


def _server_context(ca: ThrowawayCA | trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 and localhost from ca."""
    if isinstance(ca, ThrowawayCA):
        # As long-lived as public certificates, so the demo's CERT-EXPIRES reads like a real one.
        return ca.server_context(not_after=dt.datetime.now(dt.UTC) + CERTIFICATE_LIFETIME)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK, "localhost").configure_cert(context)
    return context


class HttpsFake:
    """Base: a ThreadingHTTPServer on 127.0.0.1 with a certificate from ca."""

    def __init__(self, ca: ThrowawayCA | trustme.CA) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self._server = _TLSServer(_server_context(ca), self)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self._server.server_address[1]}"

    def handle(self, req: Seen) -> tuple[int, Any] | tuple[int, Any, Mapping[str, str]]:
        raise NotImplementedError

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
