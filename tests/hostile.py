"""Raw asyncio servers on 127.0.0.1 that misbehave on purpose, and a small configurable SMTP server.

Hosted on the session's ServerLoop (tests/conftest.py `server_loop`); `HostileServers.close()`
stops every server it started and drops their connections.

- HTTP(S): `http_drip` answers one byte a second; `http_endless` sends an endless body.
- SMTP: `smtp_endless_ehlo` (an endless `250-` EHLO reply), `smtp_endless_535` (an endless
  `535-` AUTH reply), `smtp_starttls_injection` (forged replies sent with the `220` to
  STARTTLS, then a TLS server refusing the password), and `MiniSmtp`: banner/AUTH delays, a
  concurrency limit answered with 421,
  Dovecot-like penalty delay after a wrong password, sender and TLS rules at MAIL FROM, 503 for
  AUTH when not advertised; it records every command and the EHLO names it saw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.demo.certificates import LOOPBACK
from reconciler.demo.smtp_servers import ServerLoop

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class HostileServers:
    def __init__(self, loop: ServerLoop) -> None:
        self.loop = loop
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self, handler: Handler, tls: ssl.SSLContext | None = None) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()

        async def start() -> int:
            server = await asyncio.start_server(serve, LOOPBACK, 0, ssl=tls)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return self.loop.call(start)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        with contextlib.suppress(Exception):
            self.loop.call(stop)

    # ---------------------------------------------------------------- HTTP
    def http_drip(self, tls: ssl.SSLContext) -> int:
        """Reads the request, then answers one byte a second, for ever."""
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000\r\n\r\n" + b" " * 1000000)
            for i in range(len(answer)):
                if writer.transport.is_closing():
                    return
                writer.write(answer[i:i + 1])
                await writer.drain()
                await asyncio.sleep(1.0)
        return self.start(handler, tls)

    def http_endless(self, tls: ssl.SSLContext) -> int:
        """Reads the request, then sends an endless body as fast as the client takes it."""
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n\r\n{\"access_token\": \"")
            block = b"A" * 65536
            await _flood(reader, writer, block)
        return self.start(handler, tls)

    # ---------------------------------------------------------------- SMTP
    def smtp_endless_ehlo(self) -> int:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 endless.test ESMTP\r\n")
            await writer.drain()
            await reader.readline()
            block = b"250-PIPELINING PIPELINING PIPELINING PIPELINING\r\n" * 1000
            await _flood(reader, writer, block)
        return self.start(handler)

    def smtp_endless_535(self) -> int:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 endless.test ESMTP\r\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.upper().startswith(b"EHLO"):
                    writer.write(b"250-endless.test\r\n250 AUTH PLAIN LOGIN\r\n")
                elif line.upper().startswith(b"AUTH"):
                    block = b"535-5.7.8 no no no no no no no no no no no no no no no\r\n" * 1000
                    await _flood(reader, writer, block)
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        return self.start(handler)

    def smtp_starttls_injection(self, tls: ssl.SSLContext, commands: list[str]) -> int:
        """STARTTLS answered `220` with forged `250` (EHLO) and `235` (AUTH) in the same write
        (CVE-2011-0411); then a real TLS server that refuses every password (535). `commands`
        gets what the TLS server receives (AUTH as its verb only)."""
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 inject.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line.strip().upper()
                if verb.startswith(b"EHLO"):
                    writer.write(b"250-inject.test\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
                elif verb == b"STARTTLS":
                    writer.write(b"220 go ahead\r\n250-inject.test\r\n250 AUTH PLAIN\r\n"
                                 b"235 2.7.0 Authentication successful\r\n")
                    await writer.drain()
                    await writer.start_tls(tls)
                    break
                else:
                    writer.write(b"500 5.5.1 unrecognized\r\n")
                await writer.drain()
            answers = {"EHLO": b"250-inject.test\r\n250 AUTH PLAIN\r\n",
                       "AUTH": b"535 5.7.8 Error: authentication failed\r\n",
                       "QUIT": b"221 2.0.0 Bye\r\n"}
            while line := await reader.readline():
                verb = line.decode(errors="replace").split(" ", 1)[0].strip().upper()
                commands.append(verb)
                writer.write(answers.get(verb, b"250 2.0.0 Ok\r\n"))
                await writer.drain()
                if verb == "QUIT":
                    return
        return self.start(handler)

    def mini_smtp(self, smtp: MiniSmtp) -> MiniSmtp:
        smtp.port = self.start(smtp.serve)
        return smtp


FLOOD_LIMIT = 32 << 20  # far past every bound of the probe (64 KiB SMTP, 1 MiB HTTP)


async def _flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, block: bytes) -> None:
    """Write block after block until the client goes away (or 32 MiB: a safety net)."""
    sent = 0
    while sent < FLOOD_LIMIT and not writer.transport.is_closing() and not reader.at_eof():
        writer.write(block)
        sent += len(block)
        await writer.drain()
        await asyncio.sleep(0)


@dataclass
class MiniSmtp:
    """A plain-text SMTP server with the behaviours real MTAs have, one knob each."""

    users: dict[str, str] = field(default_factory=dict)
    banner_delay: float = 0.0
    auth_delay: float = 0.0
    max_connections: int | None = None  # past it: 421 greeting (Exim smtp_accept_max)
    busy_first: int = 0  # the first N connections get a 421 greeting
    penalty_delay: float = 0.0  # after a wrong password, AUTH replies wait this long
    advertise_auth: bool = True
    answer_503: bool = False  # advertise AUTH, then answer it 503 (bad sequence)
    require_tls_at_mail: bool = False  # 530 5.7.0 at MAIL FROM (no STARTTLS offered here)
    senders: dict[str, set[str]] | None = None  # login -> allowed MAIL FROM addresses
    port: int = 0
    connections: int = 0
    active: int = 0
    peak: int = 0
    rejected_busy: int = 0
    commands: list[str] = field(default_factory=list)
    ehlo_names: list[str] = field(default_factory=list)
    quits: int = 0
    penalized: bool = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        if (self.max_connections is not None and self.active >= self.max_connections) \
                or number <= self.busy_first:
            self.rejected_busy += 1
            writer.write(b"421 4.7.0 mini.test Too many concurrent SMTP connections\r\n")
            await writer.drain()
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self._session(reader, writer)
        finally:
            self.active -= 1

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.banner_delay:
            await asyncio.sleep(self.banner_delay)
        writer.write(b"220 mini.test ESMTP\r\n")
        await writer.drain()
        login: str | None = None
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            self.commands.append(verb if verb == "AUTH" else line)
            if verb in ("EHLO", "HELO"):
                self.ehlo_names.append(line.split(" ", 1)[1] if " " in line else "")
                auth = b"250-AUTH PLAIN\r\n" if self.advertise_auth else b""
                writer.write(b"250-mini.test\r\n" + auth + b"250 8BITMIME\r\n")
            elif verb == "AUTH":
                if not self.advertise_auth or self.answer_503:
                    writer.write(b"503 5.5.1 Error: authentication not enabled\r\n")
                else:
                    login = await self._auth(line)
                    writer.write(b"235 2.7.0 Authentication successful\r\n" if login
                                 else b"535 5.7.8 Error: authentication failed\r\n")
            elif verb == "MAIL":
                address = line.partition(":")[2].strip().strip("<>")
                if self.require_tls_at_mail:
                    writer.write(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
                elif self.senders is not None and address not in self.senders.get(login or "",
                                                                                   set()):
                    writer.write(f"553 5.7.1 <{address}>: Sender address rejected: not owned "
                                 f"by user {login}\r\n".encode())
                else:
                    writer.write(b"250 2.1.0 Ok\r\n")
            elif verb in ("RSET", "NOOP"):
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                self.quits += 1
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()

    async def _auth(self, line: str) -> str | None:
        if self.auth_delay:
            await asyncio.sleep(self.auth_delay)
        if self.penalized and self.penalty_delay:
            await asyncio.sleep(self.penalty_delay)
        parts = line.split()
        try:
            _, user, password = base64.b64decode(parts[2]).decode().split("\0")
        except (IndexError, ValueError):
            return None
        ok = self.users.get(user) == password
        self.penalized = not ok
        return user if ok else None


# --------------------------------------------------------------------------- hostile + healthy


@dataclass
class HostileBed:
    """Five hostile servers beside healthy ones, with manifests and a --secrets-dir for them.

    Hostile: an endless `250-` EHLO reply, an endless `535-` AUTH reply, an endless Graph body,
    a token endpoint and a Graph that drip one byte a second. Healthy: `healthy` STARTTLS+AUTH
    accounts on aiosmtpd servers, five per server (the hostile token account uses the first), and a
    Microsoft identity platform for the Graph accounts' tokens. Used by tests/test_bounds.py and
    bench/hostile.py.
    """

    manifests: Path
    secrets_dir: Path
    ca_bundle: Path  # set REQUESTS_CA_BUNDLE to it
    healthy_names: list[str]
    hostile_names: list[str]
    timeout: float
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()


def start_hostile_bed(root: Path, *, healthy: int = 20, timeout: float = 2.0) -> HostileBed:
    import yaml

    from reconciler.demo.certificates import ThrowawayCA
    from reconciler.demo.graph import FakeGraph
    from reconciler.demo.smtp_servers import SmtpServerOptions
    from reconciler.demo.token_endpoints import Client, MicrosoftIdentity, rsa_key, service_account_json

    ns, password, secret = "bench", "healthy-Pa55-7c1e", "graph~S3cret~hostile~0123"
    ca = ThrowawayCA()
    loop = ServerLoop()
    bed = HostileBed(root / "manifests", root / "secrets", root / "ca.pem", [], [], timeout)
    bed.closers.append(loop.close)
    bed.manifests.mkdir(parents=True)
    bed.ca_bundle.write_text(ca.ca_pem)
    users = {f"user{i}@bench.test": password for i in range(healthy)}
    users["drip@bench.test"] = password
    smtps = [loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                         users=users, mechanisms=("PLAIN", "LOGIN", "XOAUTH2")))
             for _ in range(max(1, healthy // 5))]
    smtp = smtps[0]
    hostile = HostileServers(loop)
    bed.closers.append(hostile.close)
    idp = MicrosoftIdentity(ca=ca, clients={"app-1": Client(secret=secret)})
    bed.closers.append(idp.close)
    graph = FakeGraph(ca=ca, idp=idp, users={"ok@bench.test"})
    bed.closers.append(graph.close)
    tls = ca.server_context()

    def put(name: str, key: str, value: str | bytes) -> dict[str, str]:
        path = bed.secrets_dir / ns / name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.encode() if isinstance(value, str) else value)
        return {"name": name, "key": key}

    put("bench-ca", "ca.crt", ca.ca_pem)
    pw = put("smtp-password", "password", password)
    secret_ref = put("graph-app", "client-secret", secret)

    def doc(name: str, spec: dict[str, object]) -> None:
        body = {"apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}
        (bed.manifests / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))

    def smtp_spec(login: str, port: int, security: str, auth: dict[str, object],
                  t: float) -> dict[str, object]:
        conn: dict[str, object] = {"host": LOOPBACK, "port": port, "security": security,
                                   "timeoutSeconds": t}
        if security == "None":
            conn["allowInsecureAuth"] = True
        else:
            conn["truststore"] = {"configMapRef": {"name": "bench-ca", "key": "ca.crt"}}
        spec: dict[str, object] = {"provider": "custom", "smtp": {
            "identity": {"emailAddress": login}, "connection": conn, "authentication": auth}}
        if auth.get("method") == "OAuth2":  # the URL formats cannot carry a token
            spec["publish"] = {"formats": ["env", "json", "javamail"]}
        return spec

    def graph_spec(endpoint: str, upn: str) -> dict[str, object]:
        return {"provider": "office365", "sendUsing": "MicrosoftGraph", "graph": {
            "userPrincipalName": upn, "timeoutSeconds": timeout, "endpoint": endpoint,
            "authentication": {"tenantId": idp.tenant_id, "clientId": "app-1",
                               "grantType": "ClientCredentials", "clientSecretSecretRef": secret_ref,
                               "authority": idp.url}}}

    password_auth = {"method": "Password", "passwordSecretRef": pw}
    for i in range(healthy):
        name = f"healthy-{i:02d}"
        doc(name, smtp_spec(f"user{i}@bench.test", smtps[i % len(smtps)].port, "STARTTLS",
                            password_auth, 30))
        bed.healthy_names.append(name)
    sa = put("gmail-sa", "key.json", service_account_json("drip@demo.iam.gserviceaccount.com",
                                                          rsa_key()))
    drip_token = hostile.http_drip(tls)
    hostile_docs = {
        "endless-ehlo": smtp_spec("x@bench.test", hostile.smtp_endless_ehlo(), "None",
                                  password_auth, timeout),
        "endless-535": smtp_spec("x@bench.test", hostile.smtp_endless_535(), "None",
                                 password_auth, timeout),
        "drip-token": smtp_spec("drip@bench.test", smtp.port, "STARTTLS", {
            "method": "OAuth2", "oauth2": {
                "grantType": "JWTBearer", "serviceAccountKeySecretRef": sa,
                "subject": "drip@bench.test",
                "tokenUrl": f"https://{LOOPBACK}:{drip_token}/token"}}, timeout),
        "endless-graph": graph_spec(f"https://{LOOPBACK}:{hostile.http_endless(tls)}",
                                    "ok@bench.test"),
        "drip-graph": graph_spec(f"https://{LOOPBACK}:{hostile.http_drip(tls)}",
                                 "ok@bench.test"),
    }
    for name, spec in hostile_docs.items():
        doc(name, spec)
        bed.hostile_names.append(name)
    return bed
