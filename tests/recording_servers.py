"""An attacker's servers for the security tests: they record every byte they receive.

`RecordingSmtp` speaks just enough SMTP (plain text or SMTPS) to take an AUTH PLAIN or LOGIN and
answer it with a 535 that echoes the credential back in every encoding an attacker might try,
wrapped in terminal control sequences. `RecordingHttps` is an HTTPS (or plain HTTP) server that
answers every request with a 401 echoing its Authorization header and body. Both run on
127.0.0.1, port chosen by the OS, in a thread of their own; `received` is everything after TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x00\x9b31m"  # OSC title + BEL, CSI clear, NUL, C1 CSI


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self, server: asyncio.Server | None = None,
              writers: set[asyncio.StreamWriter] | None = None) -> None:
        """Stop the server and drop its connections on the loop, then stop the loop.

        Closing the loop with a connection still open (a TLS close waits for the peer's
        close_notify) left its socket to the garbage collector: a ResourceWarning during some
        later test, which filterwarnings=error turns into that test's failure."""
        async def shutdown() -> None:
            if server is not None:
                server.close()
            for writer in list(writers or ()):
                writer.transport.abort()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)  # the aborted transports close their sockets on this turn

        with suppress(Exception):
            self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def echo_forms(secret: str, user: str = "") -> list[str]:
    """The credential as the attacker echoes it: raw, minus one character, percent- and
    form-encoded, base64 alone (AUTH LOGIN) and in the AUTH PLAIN blob."""
    plain = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
    return [secret, secret[:-1], secret[1:], urllib.parse.quote(secret, safe=""),
            urllib.parse.quote_plus(secret), base64.b64encode(secret.encode()).decode(), plain]


class RecordingSmtp:
    """An SMTP server that records every byte and echoes AUTH back (see the module docstring)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.received = bytearray()
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = _Loop()
        self._server = self._loop.call(asyncio.start_server(
            self._session, "127.0.0.1", 0, ssl=tls))
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)

        async def line() -> bytes:
            data = await reader.readline()
            self.received += data
            return data

        def send(text: str) -> None:
            writer.write(text.encode("utf-8", "surrogateescape") + b"\r\n")

        try:
            send(f"220 attacker.example ESMTP {ESCAPES}")
            while True:
                data = await line()
                if not data:
                    break
                verb = data.decode("utf-8", "replace").strip().split(" ")
                cmd = verb[0].upper()
                if cmd in ("EHLO", "HELO"):
                    send("250-attacker.example")
                    send("250-AUTH PLAIN LOGIN")
                    send("250 8BITMIME")
                elif cmd == "AUTH" and len(verb) > 1 and verb[1].upper() == "PLAIN":
                    blob = verb[2] if len(verb) > 2 else ""
                    if not blob:
                        send("334 ")
                        blob = (await line()).decode().strip()
                    self._reject(send, blob)
                elif cmd == "AUTH" and len(verb) > 1 and verb[1].upper() == "LOGIN":
                    send("334 VXNlcm5hbWU6")
                    user_b64 = (await line()).decode().strip()
                    send("334 UGFzc3dvcmQ6")
                    pw_b64 = (await line()).decode().strip()
                    self._reject(send, f"{user_b64} {pw_b64}")
                elif cmd == "QUIT":
                    send("221 bye")
                    break
                else:
                    send(f"250 ok {ESCAPES}")
                await writer.drain()
        except (ConnectionError, ssl.SSLError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _reject(send: Any, blob: str) -> None:
        """535 echoing the blob, what it decodes to, and its encoded forms."""
        decoded = ""
        for part in blob.split():
            with suppress(ValueError):
                decoded += base64.b64decode(part).decode("utf-8", "replace")
        secret = decoded.split("\0")[-1] if decoded else ""
        forms = " ".join(echo_forms(secret)) if secret else ""
        send(f"535-5.7.8 {ESCAPES}rejected {blob}")
        send(f"535 5.7.8 you sent {decoded!r} {forms}")

    def close(self) -> None:
        self._loop.close(self._server, self._writers)


class RecordingHttps:
    """Answers everything with 401 echoing what it was sent; records every byte."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.received = bytearray()
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = _Loop()
        self._server = self._loop.call(asyncio.start_server(
            self._session, "127.0.0.1", 0, ssl=tls))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.received += head
            length = 0
            for header in head.split(b"\r\n"):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            self.received += body
            echo = (head + body).decode("utf-8", "replace")[:4000]
            if b"/token" in head.split(b"\r\n", 1)[0]:  # an OAuth token endpoint's error
                answer: dict[str, Any] = {"error": "invalid_client",
                                          "error_description": f"{ESCAPES} you sent {echo}"}
            else:  # Graph's error shape
                answer = {"error": {"code": "InvalidAuthenticationToken",
                                    "message": f"{ESCAPES} you sent {echo}"}}
            payload = json.dumps(answer).encode()
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(payload)).encode() +
                         b"\r\nConnection: close\r\n\r\n" + payload)
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self._loop.close(self._server, self._writers)


@contextmanager
def recording_smtp(tls: ssl.SSLContext | None = None) -> Iterator[RecordingSmtp]:
    server = RecordingSmtp(tls)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def recording_https(tls: ssl.SSLContext | None = None) -> Iterator[RecordingHttps]:
    server = RecordingHttps(tls)
    try:
        yield server
    finally:
        server.close()
