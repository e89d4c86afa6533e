"""Bounded answers from the API server: an overall deadline and a size bound per request.

urllib3's read timeout is per socket read: a LIST dripped one byte every 5 s never times out, and
an endless body is read whole (both the store's answers and the error bodies the official client
reads itself). So `install(api_client)` gives the client's pools a connection class whose
responses read the socket through `_BoundedSocketIO`: before each read the socket's timeout
becomes min(read timeout, time left to the deadline), and the bytes read (status line and
headers included) are counted against the size bound. The bounds are those of the
`bounded(...)` block the request is sent in (a thread-local, read once when the answer begins);
outside any block a request is unbounded as before.

A breach raises `BoundExceeded` (an OSError, which urllib3 wraps in its own errors) and is
recorded on the `Bounds`, so the caller can tell it from a dropped connection: it is "API server
unavailable" for that call, and not retried. A compressed answer (we never ask for one) is not
decompressed, so it cannot expand past the bound; it then fails as JSON.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

_current = threading.local()

#: The size bound of one answer unless the caller says otherwise: a LIST page of 500 objects
#: averaging 128 KiB (Helm release Secrets are the large ones we may meet).
DEFAULT_LIMIT = 64 << 20


class BoundExceeded(OSError):
    """An answer broke its deadline or its size bound."""


class Bounds:
    """The deadline (monotonic) and the size bound of one call, and what broke them."""

    def __init__(self, seconds: float, limit: int = DEFAULT_LIMIT,
                 deadline: float | None = None) -> None:
        """`seconds` from now, or up to `deadline` (monotonic) when one call spans retries."""
        self.seconds, self.limit = seconds, limit
        self.deadline = time.monotonic() + seconds if deadline is None else deadline
        self.read = 0
        self.breach: str | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise when the deadline has passed."""
        if self.left() <= 0:
            self.fail(f"no complete answer within {self.seconds:g} s")

    def count(self, n: int) -> None:
        self.read += n
        if self.read > self.limit:
            self.fail(f"answer larger than {self.limit} bytes")

    def fail(self, why: str) -> None:
        self.breach = self.breach or why
        raise BoundExceeded(why)

    def why(self) -> str | None:
        """What broke the bounds (a read timeout past the deadline counts), else None."""
        if self.breach is None and self.left() <= 0:
            self.breach = f"no complete answer within {self.seconds:g} s"
        return self.breach


@contextlib.contextmanager
def bounded(bounds: Bounds) -> Iterator[Bounds]:
    """Requests sent in this block (in this thread) are read within `bounds`."""
    outer = getattr(_current, "bounds", None)
    _current.bounds = bounds
    try:
        yield bounds
    finally:
        _current.bounds = outer


class _BoundedSocketIO(io.RawIOBase):
    """The raw reader under http.client's buffer: each read within the deadline, all counted."""

    def __init__(self, sock: socket.socket, bounds: Bounds) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._timeout = sock.gettimeout()  # the per-read timeout urllib3 set
        self._bounds = bounds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._bounds.check()
        left = self._bounds.left()
        self._sock.settimeout(left if self._timeout is None else min(self._timeout, left))
        n = self._raw.readinto(buffer)
        if n:
            self._bounds.count(n)
        return n

    def close(self) -> None:
        self._raw.close()  # the socket's own reference count, as http.client's makefile
        super().close()


class _BoundedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        bounds = getattr(_current, "bounds", None)
        if bounds is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_BoundedSocketIO(sock, bounds))

    def begin(self) -> None:
        super().begin()
        # Never asked for: urllib3 would decompress it past any bound (a gzip bomb).
        del self.msg["Content-Encoding"]


_POOLS: dict[str, type] = {}


def _pool_classes() -> dict[str, type]:
    if not _POOLS:
        from urllib3.connection import HTTPConnection, HTTPSConnection
        from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

        class Connection(HTTPConnection):
            response_class = _BoundedResponse

        class TLSConnection(HTTPSConnection):
            response_class = _BoundedResponse

        class Pool(HTTPConnectionPool):
            ConnectionCls = Connection

        class TLSPool(HTTPSConnectionPool):
            ConnectionCls = TLSConnection

        _POOLS.update(http=Pool, https=TLSPool)
    return _POOLS


def install(api_client: Any) -> None:
    """Make the client's connections read their answers within the current `bounded` block."""
    pool = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
    if pool is None or not hasattr(pool, "pool_classes_by_scheme"):
        return
    classes = _pool_classes()
    if pool.pool_classes_by_scheme.get("http") is not classes["http"]:
        pool.pool_classes_by_scheme = dict(classes)
        pool.clear()  # pools made before keep unbounded connections: drop the idle ones
