"""Bounded HTTPS for token endpoints and Microsoft Graph: bytes, time, and no stuck threads.

Every request is one operation: it must complete (connect, TLS, request, the whole response)
within `timeout` seconds, and within the probe's deadline. A response body over `MAX_BODY_BYTES`
is cut off (`ResponseTooLarge`) as it streams in; nothing past the bound is buffered. http.client
itself bounds header lines (64 KiB) and their number (100).

The blocking work runs in a worker thread (`run_bounded`); the event loop watches the clock and,
when an operation's end passes, shuts its socket down, so the thread's `recv` returns at once and
the thread ends: a server that drips one byte a second holds no thread past the deadline, and the
process never waits for one at exit. `MsalHttpClient` gives msal (which would use requests, whose
timeout is per read) the same bounds, and sends nothing to a URL off the authority's host but
one on the endpoint allow-list of the policy `endpoint_scope` makes current (msal takes its
token_endpoint from the authority's OpenID discovery document), nor follows a redirect.
`https_context` is the verifying TLS context all of them use (the CA bundle named by
REQUESTS_CA_BUNDLE / SSL_CERT_FILE, as requests reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.policy import Policy, current_policy, endpoint_scope, url_refusal
from reconciler.probe.limits import DeadlineExceeded

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a token or a Graph user is a few KiB
_CHUNK = 64 * 1024
_WATCH_INTERVAL = 0.25  # how often the loop looks for operations past their end

T = TypeVar("T")


def https_context() -> ssl.SSLContext:
    """A verifying client context honouring REQUESTS_CA_BUNDLE / SSL_CERT_FILE, as requests does."""
    return ssl.create_default_context(cafile=ca_bundle())


def ca_bundle() -> str | None:
    """The CA bundle named by the environment, if any."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None


class ResponseTooLarge(Exception):
    """The response body passed MAX_BODY_BYTES; the connection was dropped."""


class RequestRefused(Exception):
    """A request not sent (its URL is off the endpoint allow-list), or a redirect not followed."""



class Cutoff:
    """The sockets of the operations one thread runs, each with its end (time.monotonic)."""

    def __init__(self, end: float) -> None:
        self.end = end  # the probe's deadline
        self._lock = threading.Lock()
        self._open: dict[int, tuple[socket.socket, float]] = {}
        self._cut: set[int] = set()
        self.fired = False

    def add(self, sock: socket.socket, end: float) -> None:
        with self._lock:
            if self.fired:
                _shutdown(sock)
                raise DeadlineExceeded("the probe's deadline passed")
            self._open[id(sock)] = (sock, min(end, self.end))

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(id(sock), None)

    def was_cut(self, sock: socket.socket | None) -> bool:
        with self._lock:
            return self.fired or (sock is not None and id(sock) in self._cut)

    def expire(self, now: float) -> None:
        """Shut down the sockets whose operation is past its end."""
        with self._lock:
            for key, (sock, end) in list(self._open.items()):
                if end <= now:
                    self._cut.add(key)
                    del self._open[key]
                    _shutdown(sock)

    def fire(self) -> None:
        """The deadline passed: shut every socket down; later operations fail at once."""
        with self._lock:
            self.fired = True
            for sock, _ in self._open.values():
                _shutdown(sock)
            self._open.clear()


def _shutdown(sock: socket.socket) -> None:
    # The plain socket's shutdown: an SSLSocket's would also drop its TLS object.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


async def run_bounded(work: Callable[[Cutoff], T], *, end: float) -> T:
    """Run blocking `work` in a thread; at `end` (or an operation's own end) cut its sockets.

    Raises DeadlineExceeded when `end` passes first. The thread is not waited for then: with its
    sockets shut down it ends by itself within moments.
    """
    loop = asyncio.get_running_loop()
    cutoff = Cutoff(end)
    ctx = contextvars.copy_context()
    fut = loop.run_in_executor(None, ctx.run, work, cutoff)
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                cutoff.fire()
                raise DeadlineExceeded("the probe's deadline passed")
            done, _ = await asyncio.wait({fut}, timeout=min(left, _WATCH_INTERVAL))
            if done:
                return fut.result()
            cutoff.expire(time.monotonic())
    finally:
        if not fut.done():
            cutoff.fire()
            fut.add_done_callback(_consume)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not log "never retrieved"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names, repeated ones joined with ", "
    body: bytes = field(repr=False)
    tls_version: str | None = None
    cipher: str | None = None
    peer_cert: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def fetch(cutoff: Cutoff, method: str, url: str, *, timeout: float,
          headers: Mapping[str, str] | None = None, body: bytes | None = None,
          context: ssl.SSLContext | None = None,
          max_bytes: int = MAX_BODY_BYTES) -> HttpResponse:
    """One bounded HTTP(S) request (blocking). TimeoutError past its end; ResponseTooLarge.

    Other failures are OSError or http.client.HTTPException, as http.client raises them.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    end = min(time.monotonic() + timeout, cutoff.end)
    left = end - time.monotonic()
    if left <= 0 or cutoff.fired:
        raise DeadlineExceeded("the probe's deadline passed")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=left,
                                           context=context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=left)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    sock: socket.socket | None = None
    try:
        conn.connect()
        sock = conn.sock
        assert sock is not None
        cutoff.add(sock, end)
        conn.request(method, target, body=body, headers=dict(headers or {}))
        tls_version = cipher = None
        peer: dict[str, Any] | None = None
        if isinstance(sock, ssl.SSLSocket):
            tls_version = sock.version()
            cipher = (sock.cipher() or (None,))[0]
            peer = sock.getpeercert() or None
        resp = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer within {timeout:g}s")
            sock.settimeout(left)
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"the response body is larger than {max_bytes} bytes")
            chunks.append(chunk)
        joined: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        return HttpResponse(status=resp.status, headers=joined, body=b"".join(chunks),
                            tls_version=tls_version, cipher=cipher, peer_cert=peer)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(exc, TimeoutError) or cutoff.was_cut(sock):
            raise TimeoutError(f"no complete answer within {timeout:g}s") from exc
        raise
    finally:
        if sock is not None:
            cutoff.remove(sock)
        conn.close()


# --------------------------------------------------------------------------- msal


class MsalResponse:
    """The response shape msal's HttpClient interface expects."""

    def __init__(self, resp: HttpResponse) -> None:
        self.status_code = resp.status
        self.text = resp.text
        self.headers = dict(resp.headers)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise http.client.HTTPException(f"HTTP {self.status_code}")


class MsalHttpClient:
    """msal's http_client: bounded requests, the environment's CA bundle, the authority's port,
    the endpoint policy for every URL, no redirects.

    msal builds the user-realm discovery URL from the authority's host name alone; an authority
    on a non-default port (a private or test identity platform) needs its port back. msal posts
    the client credential to whatever token_endpoint the authority's discovery document names:
    that URL must be on the authority's host, or on the allow-list like the authority itself
    (RequestRefused otherwise).
    """

    def __init__(self, cutoff: Cutoff, authority: str, timeout: float,
                 context: ssl.SSLContext, policy: Policy | None = None) -> None:
        parts = urllib.parse.urlsplit(authority)
        self._host, self._port = (parts.hostname or "").lower(), parts.port
        self._cutoff, self._timeout, self._context = cutoff, timeout, context
        self._policy = policy

    def _allowed(self, url: str) -> str:
        """`url` when msal may send to it: the authority's own host and port (which passed the
        policy before the probe began), or a URL the policy allows; else RequestRefused."""
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or 443
        except ValueError:
            port = None
        if (parts.scheme == "https" and (parts.hostname or "").lower() == self._host
                and port == (self._port or 443)):
            return url
        where = f"the identity platform's {url.split('?', 1)[0]}"
        why = (url_refusal(where, url, self._policy) if self._policy is not None
               else f"{where} is not on the authority's host {self._host}")
        if why is not None:
            raise RequestRefused(f"{why}; nothing was sent there")
        return url

    @staticmethod
    def _answer(url: str, resp: HttpResponse) -> MsalResponse:
        if 300 <= resp.status < 400:
            target = urllib.parse.urlsplit(resp.headers.get("location", ""))
            to = f" to {target.hostname}" if target.hostname else ""
            raise RequestRefused(f"{url.split('?', 1)[0]} answered HTTP {resp.status} (a "
                                 f"redirect{to}), and redirects are not followed: set the "
                                 "authority to the URL the identity platform answers at")
        return MsalResponse(resp)

    def _url(self, url: str, params: Mapping[str, Any] | None) -> str:
        parts = urllib.parse.urlsplit(url)
        if (self._port is not None and parts.port is None
                and (parts.hostname or "").lower() == self._host):
            parts = parts._replace(netloc=f"{parts.netloc}:{self._port}")
        if params:
            query = urllib.parse.urlencode(params)
            parts = parts._replace(query=f"{parts.query}&{query}" if parts.query else query)
        return parts.geturl()

    def post(self, url: str, params: Mapping[str, Any] | None = None,
             data: Mapping[str, Any] | str | bytes | None = None,
             headers: Mapping[str, str] | None = None, **_: Any) -> MsalResponse:
        hdrs = dict(headers or {})
        payload: bytes | None
        if isinstance(data, Mapping):
            payload = urllib.parse.urlencode(data).encode()
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif isinstance(data, str):
            payload = data.encode()
        else:
            payload = data
        target = self._allowed(self._url(url, params))
        return self._answer(target, fetch(self._cutoff, "POST", target, timeout=self._timeout,
                                          headers=hdrs, body=payload, context=self._context))

    def get(self, url: str, params: Mapping[str, Any] | None = None,
            headers: Mapping[str, str] | None = None, **_: Any) -> MsalResponse:
        target = self._allowed(self._url(url, params))
        return self._answer(target, fetch(self._cutoff, "GET", target, timeout=self._timeout,
                                          headers=headers, context=self._context))

    def close(self) -> None:
        """Nothing to close: every request has its own connection."""


__all__ = ["MAX_BODY_BYTES", "Cutoff", "HttpResponse", "MsalHttpClient", "RequestRefused",
           "ResponseTooLarge", "ca_bundle", "current_policy", "endpoint_scope", "fetch",
           "https_context", "run_bounded"]
