"""The SMTP wire client: replies read within bounds, commands, STARTTLS, QUIT.

A small asyncio SMTP client, because smtplib hides what we must report (the negotiated TLS
version, the exact step that failed) and blocks a thread per probe. Every operation (connect,
TLS handshake, one command and its whole reply) is bounded by the per-command timeout, cut by
what is left of the probe's deadline (reconciler.probe.limits). A reply is at most
`MAX_REPLY_LINES` lines and `MAX_REPLY_BYTES` bytes: past that the connection is dropped
(SmtpViolation). It also holds the EHLO vocabulary: the name we greet with and the extensions a
reply lists. It knows no account and no reason: the session (reconciler.probe.smtpsession)
reads its exceptions as outcomes.

It drives a non-blocking socket on the event loop itself (its own connect, readiness
callbacks) rather than asyncio streams, and after STARTTLS a TLS session over memory BIOs
(reconciler.probe.tlsengine: the OpenSSL of the `cryptography` wheel, in the `ssl` module's
exceptions) fed by one recv per readable event (an SSLSocket reads every record in two
syscalls): no transport, protocol and stream objects between the socket and OpenSSL, and a
reply of any number of lines parsed from one buffer without a coroutine per line. That was most
of the probe's own CPU beside the handshake (bench/README.md, benchmark 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.log import redact_text
from reconciler.probe.limits import Deadline
from reconciler.probe.tlsengine import ClientContext, TlsSession

MAX_REPLY_LINES = 512
MAX_REPLY_BYTES = 64 * 1024
_RECV = 64 * 1024  # bytes asked of one recv; the buffer never holds more than a reply and this


class SmtpClosed(Exception):
    """The server closed the connection or sent something that is not SMTP."""


class SmtpViolation(SmtpClosed):
    """The server's reply passed the bounds; the connection is dropped."""


class SmtpInjection(SmtpViolation):
    """Bytes were waiting before a TLS upgrade: read after the handshake, they would pass for
    replies of the TLS server (STARTTLS reply injection, CVE-2011-0411)."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line, redacted: '535 5.7.8 Authentication credentials invalid'."""
        return redact_text(f"{self.code} {' '.join(x for x in self.lines if x)}".strip())


class SmtpClient:
    """Line-level SMTP over a non-blocking socket, with STARTTLS upgrade, every step bounded.

    Each operation (connect, handshake, one command and its reply) gets `deadline.timeout`
    seconds, cut by what is left of the deadline. `usable` turns False once the session cannot
    carry another command (closed, desynchronised by a timeout or an oversized reply, failed TLS).
    """

    def __init__(self, sock: socket.socket, deadline: Deadline | None = None) -> None:
        self.sock = sock
        self.deadline = deadline or Deadline.start(30.0)
        self.usable = True
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()  # received, not yet read as a reply
        self._eof = False
        self._closed = False
        self._sockname = sock.getsockname()
        self._tls: TlsSession | None = None  # after STARTTLS (or SMTPS): the TLS session
        # The operation under way must end by this loop time: every wait is timed against it
        # (one timer a wait rather than an asyncio.timeout an operation).
        self._until = 0.0
        self._reader: asyncio.Future[None] | None = None  # a read waiting for the descriptor
        self._watched = -1  # the descriptor registered for reading, while it is
        self._patience: Callable[[], bool] | None = None  # during a command(patience=...)

    def _begin(self, timeout: float | None = None) -> None:
        """Start an operation of `timeout` (default: the per-command timeout), cut by what is
        left of the deadline; a wait past its end raises TimeoutError."""
        self._until = self._loop.time() + self.deadline.budget(timeout)

    @classmethod
    async def connect(cls, host: str, port: int, deadline: Deadline | None = None
                      ) -> SmtpClient:
        deadline = deadline or Deadline.start(30.0)
        async with asyncio.timeout(deadline.budget()):
            sock = await _open(host, port)
        return cls(sock, deadline)

    # ------------------------------------------------------------------ the socket
    async def _ready(self, readable: bool) -> None:
        """Wait until the socket is readable (or writable), at most until the operation's end.

        The descriptor stays registered for reading between waits (registering it for each one
        was two epoll_ctl calls and ~40 Python calls); bytes arriving while nobody reads make
        the callback unregister it, so a chatty server cannot spin the loop.
        """
        loop, fd = self._loop, self.sock.fileno()
        if fd < 0:
            raise SmtpClosed("the connection is closed")
        waiter = loop.create_future()
        if readable:
            if self._watched != fd:
                self._unwatch()
                loop.add_reader(fd, self._readable)
                self._watched = fd
            self._reader = waiter
        else:
            loop.add_writer(fd, _wake, waiter)
        timer = loop.call_at(self._until, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            # A reply the server delays on purpose (patience() says so): awaited until the
            # deadline rather than one operation's time; only reads, never a half-sent write.
            if not (readable and self._patience is not None and self.deadline.remaining() > 0
                    and self._patience()):
                raise
            self._until = loop.time() + self.deadline.remaining()
            self._patience = None  # asked once, as before
            await self._ready(readable)
        finally:
            timer.cancel()
            if readable:
                self._reader = None
            else:
                loop.remove_writer(fd)

    def _readable(self) -> None:
        waiter = self._reader
        if waiter is None:
            self._unwatch()
        elif not waiter.done():
            waiter.set_result(None)

    def _unwatch(self) -> None:
        if self._watched >= 0:
            self._loop.remove_reader(self._watched)
            self._watched = -1

    async def _recv(self) -> bytes:
        """The bytes the socket has now (waiting for some); b"" at the end of the stream."""
        while True:
            try:
                return self.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                await self._ready(True)

    async def _fill(self) -> None:
        """Read what the server sent next (decrypted after STARTTLS) into the buffer; at the
        end of the stream (a TLS close_notify, or a connection closed without one), mark EOF."""
        tls = self._tls
        if tls is None:
            data = await self._recv()
        else:
            while True:
                try:
                    data = tls.read(_RECV)
                    break
                except ssl.SSLWantReadError:
                    await self._flush()  # what TLS itself has to say first (a key update)
                    raw = await self._recv()
                    if raw:
                        tls.feed(raw)
                    else:
                        tls.feed_eof()
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""
                    break
        if data:
            self._buffer += data
        else:
            self._eof = True

    async def _send(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls.write(data)
            await self._flush()
        else:
            await self._send_raw(data)

    async def _flush(self) -> None:
        """Send what OpenSSL has written to the outgoing BIO."""
        if self._tls is not None:
            data = self._tls.outgoing()
            if data:
                await self._send_raw(data)

    async def _send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._ready(False)
                continue
            view = view[sent:]

    # ------------------------------------------------------------------ SMTP
    async def read_reply(self, timeout: float | None = None) -> Reply:
        try:
            self._begin(timeout)
            return await self._read_reply()
        except BaseException:
            self.usable = False
            raise

    async def _read_reply(self) -> Reply:
        buffer = self._buffer
        start = count = 0  # where the current line begins; lines seen
        while True:
            end = buffer.find(b"\n", start)
            if (end if end >= 0 else len(buffer)) - start > MAX_REPLY_BYTES + 1:
                raise SmtpViolation(f"the server sent a reply line longer than {MAX_REPLY_BYTES} "
                                    "bytes")
            if end < 0:
                if self._eof:
                    raise SmtpClosed("the server closed the connection")
                await self._fill()
                continue
            if end + 1 > MAX_REPLY_BYTES or count >= MAX_REPLY_LINES:
                raise SmtpViolation(f"the server sent a reply of more than {MAX_REPLY_LINES} "
                                    f"lines or {MAX_REPLY_BYTES} bytes")
            count += 1
            if not buffer[start:start + 3].isdigit():
                line = buffer[start:end + 1].decode("utf-8", "replace").rstrip("\r\n")
                raise SmtpClosed(f"the server sent a line that is not SMTP: {line[:60]!r}")
            if buffer[start + 3:start + 4] != b"-":
                break
            start = end + 1
        # The whole reply is in: decoded and split at once rather than line by line.
        code = int(buffer[start:start + 3])
        text = buffer[:end + 1].decode("utf-8", "replace")
        del buffer[:end + 1]
        return Reply(code, tuple(line.rstrip("\r")[4:] for line in text.split("\n")[:-1]))

    async def send(self, data: bytes, timeout: float | None = None) -> None:
        """Send raw bytes (a message after DATA) within one operation's time."""
        try:
            self._begin(timeout)
            await self._send(data)
        except BaseException:
            self.usable = False
            raise

    async def command(self, line: str, timeout: float | None = None,
                      patience: Callable[[], bool] | None = None) -> Reply:
        """Send one command and read its reply within one operation's time.

        With `patience`, a reply late past the operation's time is still awaited, until the
        deadline, when patience() says the server is delaying us on purpose.
        """
        try:
            self._begin(timeout)
            await self._send(line.encode("utf-8") + b"\r\n")
            self._patience = patience
            try:
                return await self._read_reply()
            finally:
                self._patience = None
        except BaseException:
            self.usable = False
            raise

    async def start_tls(self, ctx: ClientContext, server_hostname: str) -> None:
        """Upgrade to TLS; SmtpInjection when the server has sent anything not yet read.

        Nothing may precede the handshake: bytes received after the go-ahead and kept in the
        buffer would be handed out as the first replies inside TLS, so a forged `235` sent with
        the `220` to STARTTLS would pass for the TLS server's answer to AUTH (as Postfix, Exim
        and OpenSSL's s_client do, the session is dropped). Bytes received later are given to
        OpenSSL as TLS records, so they fail the handshake instead.
        """
        pending = len(self._buffer)
        if pending:
            self.usable = False
            raise SmtpInjection(f"the server sent {pending} bytes after its go-ahead, before the "
                                "TLS handshake")
        try:
            self._begin()
            self._tls = ctx.session(server_hostname)
            await self._handshake(self._tls)
        except BaseException:
            self.usable = False
            raise

    async def _handshake(self, tls: TlsSession) -> None:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                raw = await self._recv()
                if not raw:
                    raise SmtpClosed("the server closed the connection during the TLS "
                                     "handshake") from None
                tls.feed(raw)
            except ssl.SSLError:
                # OpenSSL's alert (a bad certificate, no common version) goes out if it can.
                with contextlib.suppress(OSError):
                    self.sock.send(tls.outgoing())
                raise
        await self._flush()  # the client's Finished

    def tls_facts(self) -> tuple[str | None, str | None, bytes | None]:
        """(version, cipher, DER leaf certificate) of the TLS session, if any."""
        tls = self._tls
        if tls is None:
            return None, None, None
        return tls.version(), tls.cipher(), tls.peer_certificate()

    def local_address(self) -> str | None:
        return str(self._sockname[0]) if self._sockname else None

    async def quit(self) -> None:
        """QUIT, when the session can still carry it; its reply is awaited briefly."""
        if not self.usable or self._closed:
            return
        with contextlib.suppress(SmtpClosed, OSError, TimeoutError, RuntimeError):
            self._begin(min(self.deadline.timeout, 2.0))  # past the deadline: sent if it can be
            await self._send(b"QUIT\r\n")
            if self.deadline.remaining() > 0:
                await self._read_reply()
        self.usable = False

    async def close(self) -> None:
        """Drop the connection at once (no TLS close_notify, no wait) and release the socket."""
        self.usable = False
        if self._closed:
            return
        self._closed = True
        self._unwatch()
        # What the server sent last (its close_notify after the 221) is read first, so the
        # kernel ends the connection with a FIN rather than a reset, as asyncio's transport did.
        with contextlib.suppress(OSError, ValueError):
            self.sock.recv(_RECV)
        self.sock.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _numeric(host: str, port: int) -> list[tuple[socket.AddressFamily, socket.SocketKind, int,
                                                  str, tuple[str, int] | tuple[str, int, int, int]]]:
    """The address of an IP literal, without a resolver round trip (as asyncio does)."""
    with contextlib.suppress(OSError):
        socket.inet_pton(socket.AF_INET, host)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    with contextlib.suppress(OSError):
        socket.inet_pton(socket.AF_INET6, host)
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return []


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                   address: tuple[Any, ...]) -> None:
    """`loop.sock_connect` for an address that is already numeric (from `_numeric` or
    getaddrinfo), with its errors: a failure at once raises connect's own error, a later one
    `OSError(errno, "Connect call failed ADDRESS")`. Without sock_connect's resolution step
    (the socket's family as an enum, an IP parse, IDNA) and its transport checks: 130,000
    instructions a probe, 1.1% (callgrind, bench/README.md, benchmark 7)."""
    try:
        sock.connect(address)
        return
    except (BlockingIOError, InterruptedError):
        pass
    fd = sock.fileno()
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err != 0:
        raise OSError(err, f"Connect call failed {address}")


async def _open(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket: each address of the host in turn, as
    asyncio.open_connection tries them, with the same errors."""
    loop = asyncio.get_running_loop()
    infos = _numeric(host, port) or await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await _connect(loop, sock, address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


def ehlo_name(advanced: Mapping[str, str], local_address: str | None) -> str:
    """The EHLO argument: mail.smtp.localhost, else an FQDN host name, else [address literal].

    As smtplib and JavaMail do: Postfix's reject_non_fqdn_helo_hostname refuses a bare "vm".
    """
    configured = advanced.get("mail.smtp.localhost", "").strip()
    if configured:
        return configured
    host = _host_name()
    if host:
        return host
    if local_address is None:
        return "[127.0.0.1]"
    return f"[IPv6:{local_address}]" if ":" in local_address else f"[{local_address}]"


@functools.lru_cache(maxsize=1)
def _host_name() -> str | None:
    """socket.gethostname() when it is a fully qualified name (no DNS lookup); else None."""
    name = socket.gethostname().rstrip(".")
    labels = name.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels) or labels[-1].isdigit():
        return None
    return name


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_ehlo(reply: Reply) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(extension keywords upper case, AUTH mechanisms) from an EHLO reply."""
    if len(reply.lines) > 64:  # not what servers answer; not worth keeping
        return _parse_ehlo_lines.__wrapped__(reply.lines)
    return _parse_ehlo_lines(reply.lines)


@functools.lru_cache(maxsize=256)
def _parse_ehlo_lines(lines: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    # A server answers every EHLO alike: parsed once per distinct reply, not once a probe.
    keywords: list[str] = []
    mechanisms: list[str] = []
    for line in lines[1:]:
        parts = line.replace("=", " ", 1).split() if line.upper().startswith("AUTH=") \
            else line.split()
        if not parts:
            continue
        keyword = parts[0].upper()
        if keyword not in keywords:
            keywords.append(keyword)
        if keyword == "AUTH":
            mechanisms += [m.upper() for m in parts[1:] if m.upper() not in mechanisms]
    return tuple(keywords), tuple(mechanisms)
