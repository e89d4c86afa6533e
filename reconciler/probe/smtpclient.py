"""The SMTP wire client: replies read within bounds, commands, STARTTLS, QUIT.

A small asyncio SMTP client, because smtplib hides what we must report (the negotiated TLS
version, the exact step that failed) and blocks a thread per probe. Every operation (connect,
TLS handshake, one command and its whole reply) is bounded by the per-command timeout, cut by
what is left of the probe's deadline (reconciler.probe.limits). A reply is at most
`MAX_REPLY_LINES` lines and `MAX_REPLY_BYTES` bytes: past that the connection is dropped
(SmtpViolation). It also holds the EHLO vocabulary: the name we greet with and the extensions a
reply lists. It knows no account and no reason: the session (reconciler.probe.smtpsession)
reads its exceptions as outcomes.
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

from reconciler.log import redact_text
from reconciler.probe.limits import Deadline

MAX_REPLY_LINES = 512
MAX_REPLY_BYTES = 64 * 1024


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
    """Line-level SMTP over asyncio streams, with STARTTLS upgrade, every step bounded.

    Each operation (connect, handshake, one command and its reply) gets `deadline.timeout`
    seconds, cut by what is left of the deadline. `usable` turns False once the session cannot
    carry another command (closed, desynchronised by a timeout or an oversized reply, failed TLS).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 deadline: Deadline | None = None) -> None:
        self.reader, self.writer = reader, writer
        self.deadline = deadline or Deadline.start(30.0)
        self.usable = True

    @classmethod
    async def connect(cls, host: str, port: int, deadline: Deadline | None = None
                      ) -> SmtpClient:
        deadline = deadline or Deadline.start(30.0)
        async with asyncio.timeout(deadline.budget()):
            reader, writer = await asyncio.open_connection(host, port,
                                                           limit=MAX_REPLY_BYTES + 2)
        return cls(reader, writer, deadline)

    async def read_reply(self, timeout: float | None = None) -> Reply:
        try:
            async with asyncio.timeout(self.deadline.budget(timeout)):
                return await self._read_reply()
        except BaseException:
            self.usable = False
            raise

    async def _read_reply(self) -> Reply:
        lines: list[str] = []
        size = 0
        while True:
            try:
                raw = await self.reader.readline()
            except ValueError:  # one line past the stream's limit
                raise SmtpViolation(f"the server sent a reply line longer than {MAX_REPLY_BYTES} "
                                 "bytes") from None
            if not raw.endswith(b"\n"):
                raise SmtpClosed("the server closed the connection")
            size += len(raw)
            if size > MAX_REPLY_BYTES or len(lines) >= MAX_REPLY_LINES:
                raise SmtpViolation(f"the server sent a reply of more than {MAX_REPLY_LINES} lines "
                                 f"or {MAX_REPLY_BYTES} bytes")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit():
                raise SmtpClosed(f"the server sent a line that is not SMTP: {line[:60]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), tuple(lines))

    async def command(self, line: str, timeout: float | None = None,
                      patience: Callable[[], bool] | None = None) -> Reply:
        """Send one command and read its reply within one operation's time.

        With `patience`, a reply late past the operation's time is still awaited, until the
        deadline, when patience() says the server is delaying us on purpose.
        """
        try:
            budget = self.deadline.budget(timeout)
            async with asyncio.timeout(budget):
                self.writer.write(line.encode("utf-8") + b"\r\n")
                await self.writer.drain()
            if patience is None:
                return await self.read_reply(timeout)
            task = asyncio.ensure_future(self._read_reply())
            try:
                done, _ = await asyncio.wait({task}, timeout=self.deadline.budget(timeout))
                if not done and patience():
                    done, _ = await asyncio.wait({task}, timeout=max(0.0, self.deadline.remaining()))
                if not done:
                    raise TimeoutError("no reply in time")
                return task.result()
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        except BaseException:
            self.usable = False
            raise

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        """Upgrade to TLS; SmtpInjection when the server has sent anything not yet read.

        Nothing may precede the handshake: the StreamReader keeps unread plain-text bytes and
        would hand them out as the first replies inside TLS, so a forged `235` sent with the
        `220` to STARTTLS would pass for the TLS server's answer to AUTH (as Postfix, Exim and
        OpenSSL's s_client do, the session is dropped). Checked with no await before
        loop.start_tls pauses reading, so no byte can slip in between.
        """
        pending = len(self.reader._buffer)  # CPython's StreamReader; no public peek exists
        if pending:
            self.usable = False
            raise SmtpInjection(f"the server sent {pending} bytes after its go-ahead, before the "
                                "TLS handshake")
        try:
            async with asyncio.timeout(self.deadline.budget()):
                await self.writer.start_tls(ctx, server_hostname=server_hostname)
        except BaseException:
            self.usable = False
            raise

    def tls_facts(self) -> tuple[str | None, str | None, bytes | None]:
        """(version, cipher, DER leaf certificate) of the TLS session, if any."""
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None, None, None
        cipher = obj.cipher()
        return obj.version(), cipher[0] if cipher else None, obj.getpeercert(binary_form=True)

    def local_address(self) -> str | None:
        sockname = self.writer.get_extra_info("sockname")
        return str(sockname[0]) if sockname else None

    async def quit(self) -> None:
        """QUIT, when the session can still carry it; its reply is awaited briefly."""
        if not self.usable or self.writer.transport.is_closing():
            return
        with contextlib.suppress(SmtpClosed, OSError, TimeoutError, RuntimeError):
            self.writer.write(b"QUIT\r\n")
            if self.deadline.remaining() > 0:
                await self.read_reply(min(self.deadline.timeout, 2.0))
        self.usable = False

    async def close(self) -> None:
        """Drop the connection at once (no TLS close_notify wait) and release the transport."""
        self.usable = False
        self.writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


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
    keywords: list[str] = []
    mechanisms: list[str] = []
    for line in reply.lines[1:]:
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
