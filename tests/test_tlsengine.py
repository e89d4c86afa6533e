"""reconciler.probe.tlsengine: the SMTP probe's TLS on the OpenSSL of the `cryptography` wheel.

Against real TLS servers on 127.0.0.1 (Python's `ssl`, so the system's OpenSSL, as a mail
server's would be), certificates issued by throwaway CAs at test time, driven through the wire
client (SmtpClient.start_tls) as the probe drives it. Each server reports what its own side of
the handshake saw: the version, the SNI name, or the alert the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import queue
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reconciler.demo.certificates import ThrowawayCA
from reconciler.probe import probe_account, tls, tlsengine
from reconciler.probe.credentials import DirSecretReader
from reconciler.probe.limits import Deadline
from reconciler.probe.smtpclient import SmtpClient, SmtpClosed
from tests.smtpservers import NOW, make_account

_X25519MLKEM768 = 0x11EC  # the post-quantum hybrid group (IANA TLS Supported Groups)
_X25519 = 0x001D
_NOW = dt.datetime.now(dt.UTC)


@dataclass
class TlsServer:
    """A TLS server on 127.0.0.1 that handshakes each connection, greets with an SMTP 220 inside
    TLS and closes with close_notify; `outcomes` gets ("ok", version) or ("alert", reason)."""

    context: ssl.SSLContext
    port: int = 0
    outcomes: queue.Queue[tuple[str, str | None]] = field(default_factory=queue.Queue)
    names: queue.Queue[str | None] = field(default_factory=queue.Queue)  # SNI of each hello
    hellos: queue.Queue[bytes] = field(default_factory=queue.Queue)  # each ClientHello record
    _sock: socket.socket = field(default_factory=socket.socket)

    def start(self) -> TlsServer:
        self.context.sni_callback = self._sni
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _sni(self, _sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
             _ctx: ssl.SSLContext) -> None:
        self.names.put(name)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                self.hellos.put(_record(conn))
                try:
                    tls_conn = self.context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.outcomes.put(("alert", getattr(exc, "reason", None) or str(exc)))
                    continue
                self.outcomes.put(("ok", tls_conn.version()))
                with tls_conn, contextlib.suppress(OSError):  # the client may drop it at once
                    tls_conn.sendall(b"220 engine test\r\n")
                    tls_conn.unwrap()  # close_notify

    def outcome(self) -> tuple[str, str | None]:
        return self.outcomes.get(timeout=30)

    def close(self) -> None:
        self._sock.close()


def _record(conn: socket.socket) -> bytes:
    """The first TLS record the client sent (its ClientHello), left in the socket."""
    conn.settimeout(30)
    while True:
        head = conn.recv(65536, socket.MSG_PEEK)
        if len(head) >= 5 and len(head) >= 5 + struct.unpack(">H", head[3:5])[0]:
            conn.settimeout(None)
            return head[:5 + struct.unpack(">H", head[3:5])[0]]
        if not head:
            return b""


def _hello_groups(record: bytes) -> tuple[list[int], list[int]]:
    """(supported_groups, key_share groups) of a ClientHello record."""
    body = record[5:]
    at = 4 + 2 + 32
    at += 1 + body[at]  # session id
    at += 2 + struct.unpack(">H", body[at:at + 2])[0]  # cipher suites
    at += 1 + body[at]  # compression methods
    end = at + 2 + struct.unpack(">H", body[at:at + 2])[0]
    at += 2
    groups: list[int] = []
    shares: list[int] = []
    while at < end:
        kind, size = struct.unpack(">HH", body[at:at + 4])
        data = body[at + 4:at + 4 + size]
        if kind == 10:
            groups = [struct.unpack(">H", data[i:i + 2])[0] for i in range(2, len(data), 2)]
        if kind == 51:
            i = 2
            while i < len(data):
                group, length = struct.unpack(">HH", data[i:i + 4])
                shares.append(group)
                i += 4 + length
        at += 4 + size
    return groups, shares


@pytest.fixture
def server() -> Iterator[Callable[[ssl.SSLContext], TlsServer]]:
    """Factory: server(context) -> a started TlsServer, closed at teardown."""
    started: list[TlsServer] = []

    def start(context: ssl.SSLContext) -> TlsServer:
        started.append(TlsServer(context).start())
        return started[-1]

    yield start
    for one in started:
        one.close()


Server = Callable[[ssl.SSLContext], TlsServer]


async def _start_tls(port: int, host: str, ctx: tls.ClientContext
                     ) -> tuple[str | None, str | None, bytes | None, str]:
    """Handshake as the probe does; (version, cipher, DER leaf, the first reply inside TLS)."""
    client = await SmtpClient.connect("127.0.0.1", port, Deadline.start(30.0))
    try:
        await client.start_tls(ctx, host)
        version, cipher, der = client.tls_facts()
        reply = await client.read_reply()
        with pytest.raises(SmtpClosed):  # the server's close_notify ends the stream
            await client.read_reply()
        return version, cipher, der, reply.text
    finally:
        await client.close()


def _fail(port: int, host: str, ctx: tls.ClientContext) -> ssl.SSLError:
    with pytest.raises(ssl.SSLError) as failed:
        asyncio.run(_start_tls(port, host, ctx))
    return failed.value


# ------------------------------------------------------------------------------ which OpenSSL
def test_the_engine_runs_on_the_openssl_of_the_cryptography_wheel() -> None:
    assert tlsengine.openssl_version() == backend.openssl_version_text()
    assert tlsengine.openssl_version() != ssl.OPENSSL_VERSION  # not the system's (3.0 here)


def test_the_probe_offers_the_post_quantum_hybrid_key_share(ca: ThrowawayCA,
                                                              server: Server) -> None:
    # OpenSSL >= 3.5's default ClientHello: X25519MLKEM768 first, with a key share, X25519 beside
    # it (a server without ML-KEM picks X25519, no extra round trip); kept on purpose, since the
    # session carries AUTH credentials (harvest now, decrypt later). The system's OpenSSL 3.0
    # offers no such group: this fails on the `ssl` module.
    srv = server(ca.server_context())
    version, *_ = asyncio.run(_start_tls(srv.port, "127.0.0.1", tls.client_context("1.2", ca.ca_pem)))
    groups, shares = _hello_groups(srv.hellos.get(timeout=30))
    assert groups[0] == _X25519MLKEM768 and _X25519 in groups
    assert shares == [_X25519MLKEM768, _X25519]
    assert version == "TLSv1.3" and srv.outcome() == ("ok", "TLSv1.3")


def test_a_context_for_sessions_without_credentials_shares_x25519_alone(ca: ThrowawayCA,
                                                                        server: Server) -> None:
    # The same groups in the same order, ML-KEM's share left out: a server without ML-KEM (the
    # system OpenSSL 3.0 here, as most MTAs) picks X25519 at once.
    srv = server(ca.server_context())
    with_auth = tls.client_context("1.2", ca.ca_pem)
    without = tls.client_context("1.2", ca.ca_pem, credentials=False)
    assert with_auth is not without
    asyncio.run(_start_tls(srv.port, "127.0.0.1", with_auth))
    asyncio.run(_start_tls(srv.port, "127.0.0.1", without))
    (groups, shares), (bare_groups, bare_shares) = (_hello_groups(srv.hellos.get(timeout=30)),
                                                    _hello_groups(srv.hellos.get(timeout=30)))
    assert bare_groups == groups and bare_groups[0] == _X25519MLKEM768
    assert (shares, bare_shares) == ([_X25519MLKEM768, _X25519], [_X25519])
    assert srv.outcome() == srv.outcome() == ("ok", "TLSv1.3")


def test_a_server_with_ml_kem_still_gets_the_hybrid_group_without_the_share_up_front(
        tmp_path: Path) -> None:
    # A server on OpenSSL >= 3.5 (pyOpenSSL here) prefers X25519MLKEM768: offered without its
    # share, it asks for it (HelloRetryRequest) rather than settling for X25519.
    from OpenSSL import SSL

    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(tmp_path / "key.pem")
    leaf.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_privatekey_file(str(tmp_path / "key.pem"))
    context.use_certificate_file(str(tmp_path / "cert.pem"))
    listener = socket.create_server(("127.0.0.1", 0))
    groups: queue.Queue[str | None] = queue.Queue()

    def serve() -> None:
        for _ in range(2):
            sock, _ = listener.accept()
            with sock:
                conn = SSL.Connection(context, sock)
                conn.set_accept_state()
                conn.do_handshake()
                groups.put(conn.get_group_name())
                conn.sendall(b"220 engine test\r\n")
                conn.shutdown()

    threading.Thread(target=serve, daemon=True).start()
    ca_pem = authority.cert_pem.bytes().decode("ascii")
    port = listener.getsockname()[1]
    try:
        for credentials in (True, False):
            context_ = tls.client_context("1.2", ca_pem, credentials=credentials)
            version, *_ = asyncio.run(_start_tls(port, "127.0.0.1", context_))
            assert version == "TLSv1.3"
            assert groups.get(timeout=30) == "X25519MLKEM768"
    finally:
        listener.close()


@pytest.mark.parametrize(("method", "shares"), [("Password", [_X25519MLKEM768, _X25519]),
                                                ("None", [_X25519])])
def test_the_probe_shares_the_hybrid_key_up_front_only_when_it_will_authenticate(
        ca: ThrowawayCA, server: Server, secrets_dir: Path, method: str,
        shares: list[int]) -> None:
    srv = server(ca.server_context())  # SMTPS: a 220 inside TLS, then the server closes
    account = make_account(port=srv.port, security="SMTPS", method=method)
    asyncio.run(probe_account(account, DirSecretReader(secrets_dir), now=NOW))
    assert _hello_groups(srv.hellos.get(timeout=30))[1] == shares


# ------------------------------------------------------------------------------ what succeeds
@pytest.mark.parametrize(("variant", "version"), [
    ("default", "TLSv1.3"), ("tls12_only", "TLSv1.2"), ("tls11_only", "TLSv1.1")])
def test_handshake_facts_as_the_ssl_module_names_them(ca: ThrowawayCA, server: Server,
                                                      variant: str, version: str) -> None:
    from tests.smtpservers import server_context

    srv = server(server_context(ca, variant))
    floor = "1.1" if variant == "tls11_only" else "1.2"
    got, cipher, der, reply = asyncio.run(
        _start_tls(srv.port, "localhost", tls.client_context(floor, ca.ca_pem)))
    assert (got, reply) == (version, "220 engine test")
    assert srv.outcome() == ("ok", version)
    assert srv.names.get(timeout=30) == "localhost"  # SNI for a DNS name
    if version != "TLSv1.1":  # the suites ssl.create_default_context() offers
        assert cipher in {c["name"] for c in ssl.create_default_context().get_ciphers()}
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    assert leaf.subject.rfc4514_string() != leaf.issuer.rfc4514_string()  # the leaf, not the CA


def test_an_ip_literal_is_checked_as_an_address_and_sent_without_sni(
        ca: ThrowawayCA, server: Server) -> None:
    srv = server(ca.server_context("127.0.0.1"))
    version, *_ = asyncio.run(_start_tls(srv.port, "127.0.0.1", tls.client_context("1.2", ca.ca_pem)))
    assert version == "TLSv1.3" and srv.outcome() == ("ok", "TLSv1.3")
    assert srv.names.get(timeout=30) is None


def test_the_system_store_is_where_the_ssl_module_finds_it(ca: ThrowawayCA, server: Server,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # SSL_CERT_FILE is honoured as the system OpenSSL honours it (the wheel's compiled-in
    # OPENSSLDIR is not this system's); without the CA there, the same server is untrusted.
    srv = server(ca.server_context())
    bundle = tmp_path / "system.pem"
    bundle.write_text(ca.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    version, *_ = asyncio.run(_start_tls(srv.port, "localhost", tlsengine.client_context(
        tlsengine.TLS1_2_VERSION, None)))
    assert version == "TLSv1.3" and srv.outcome() == ("ok", "TLSv1.3")
    bundle.write_text(ThrowawayCA().ca_pem)
    failed = _fail(srv.port, "localhost", tlsengine.client_context(tlsengine.TLS1_2_VERSION, None))
    assert isinstance(failed, ssl.SSLCertVerificationError) and failed.verify_code == 20


def test_the_diagnostic_context_accepts_any_certificate_and_old_versions(
        ca: ThrowawayCA, server: Server) -> None:
    from tests.smtpservers import server_context

    srv = server(server_context(ca, "tls11_only"))
    version, *_ = asyncio.run(_start_tls(srv.port, "wrong.example.test", tls.diagnostic_context()))
    assert version == "TLSv1.1" and srv.outcome() == ("ok", "TLSv1.1")


# ------------------------------------------------------------------------------ what fails
@pytest.mark.parametrize(("host", "identity", "code", "message"), [
    ("mail.other.test", "mail.example.test", 62,
     "Hostname mismatch, certificate is not valid for 'mail.other.test'."),
    ("127.0.0.1", "127.0.0.2", 64,
     "IP address mismatch, certificate is not valid for '127.0.0.1'."),
    ("127.0.0.1", "localhost", 64,  # a DNS name does not stand for the address
     "IP address mismatch, certificate is not valid for '127.0.0.1'."),
])
def test_a_name_mismatch_is_a_verification_error_with_an_alert(
        ca: ThrowawayCA, server: Server, host: str, identity: str, code: int,
        message: str) -> None:
    srv = server(ca.server_context(identity))
    failed = _fail(srv.port, host, tls.client_context("1.2", ca.ca_pem))
    assert isinstance(failed, ssl.SSLCertVerificationError)
    assert (failed.verify_code, failed.verify_message) == (code, message)
    assert failed.reason == "CERTIFICATE_VERIFY_FAILED" and failed.library == "SSL"
    assert str(failed).startswith(  # CPython adds its source line after this
        f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    assert srv.outcome() == ("alert", "SSLV3_ALERT_BAD_CERTIFICATE")  # the client said why


def test_a_name_openssl_4_cannot_check_is_refused_as_a_mismatch_never_unchecked(
        ca: ThrowawayCA, server: Server) -> None:
    # OpenSSL 4's X509_VERIFY_PARAM_set1_host takes no one-letter name (3.0 under the ssl
    # module did); the schema allows one. The certificate names "m": still refused, with why.
    srv = server(ca.server_context("m"))
    failed = _fail(srv.port, "m", tls.client_context("1.2", ca.ca_pem))
    assert isinstance(failed, ssl.SSLCertVerificationError) and failed.verify_code == 62
    assert failed.verify_message == ("OpenSSL cannot check a certificate against the name 'm' "
                                     "(no one-letter name, empty label or final dot)")
    assert srv.hellos.get(timeout=30) == b""  # refused before any ClientHello


def test_an_expired_certificate(ca: ThrowawayCA, server: Server) -> None:
    past = _NOW - dt.timedelta(days=2)
    srv = server(ca.server_context(not_before=past - dt.timedelta(days=30),
                                   not_after=past))
    failed = _fail(srv.port, "localhost", tls.client_context("1.2", ca.ca_pem))
    assert isinstance(failed, ssl.SSLCertVerificationError)
    assert (failed.verify_code, failed.verify_message) == (10, "certificate has expired")
    assert srv.outcome() == ("alert", "SSLV3_ALERT_CERTIFICATE_EXPIRED")


def test_an_untrusted_certificate(ca: ThrowawayCA, server: Server) -> None:
    srv = server(ThrowawayCA().server_context())
    failed = _fail(srv.port, "localhost", tls.client_context("1.2", ca.ca_pem))
    assert isinstance(failed, ssl.SSLCertVerificationError)
    assert (failed.verify_code, failed.verify_message) == (20, "unable to get local issuer "
                                                               "certificate")
    assert srv.outcome() == ("alert", "TLSV1_ALERT_UNKNOWN_CA")


@pytest.mark.parametrize(("variant", "floor"), [("tls12_only", "1.3"), ("tls11_only", "1.2")])
def test_a_server_below_the_floor_fails_the_handshake(ca: ThrowawayCA, server: Server,
                                                      variant: str, floor: str) -> None:
    from tests.smtpservers import server_context

    srv = server(server_context(ca, variant))
    failed = _fail(srv.port, "localhost", tls.client_context(floor, ca.ca_pem))
    assert not isinstance(failed, ssl.SSLCertVerificationError)
    assert failed.reason and failed.reason == failed.reason.upper()  # CPython's mnemonic
    assert srv.outcome()[0] == "alert"


def test_a_truststore_without_a_usable_certificate_is_a_clear_error() -> None:
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ssl.SSLError, match="cadata does not contain a"):
        tls.client_context("1.2", broken)


# ------------------------------------------------------------------------------ the same verdicts
def _issuer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlsengine test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - dt.timedelta(days=1))
            .not_valid_after(_NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf_context(issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
                  names: tuple[x509.GeneralName, ...], tmp_path: Path) -> ssl.SSLContext:
    """A server context for a leaf with exactly these subjectAltNames (trustme refuses some)."""
    ca_key, ca_cert = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "leaf")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - dt.timedelta(days=1))
            .not_valid_after(_NOW + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = tmp_path / "leaf.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
                    + cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem)
    return ctx


def _ssl_module_verdict(port: int, host: str, cadata: str) -> int | None:
    """What Python's ssl (create_default_context) says: None, or the verify code."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            with ssl.create_default_context(cadata=cadata).wrap_socket(sock, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return int(exc.verify_code)


_DNS, _IP = x509.DNSName, x509.IPAddress


@pytest.mark.parametrize(("names", "host", "verdict"), [
    ((_DNS("mail.example.test"),), "MAIL.Example.TEST", None),  # names are case-blind
    ((_DNS("*.example.test"),), "mail.example.test", None),
    ((_DNS("*.example.test"),), "a.mail.example.test", 62),  # one label only
    ((_DNS("*.example.test"),), "example.test", 62),
    ((_DNS("m*.example.test"),), "mail.example.test", 62),  # partial wildcards refused
    ((_DNS("xn--bcher-kva.example"),), "bücher.example", None),  # IDNA, as ssl encodes it
    ((_IP(ipaddress.ip_address("127.0.0.1")),), "127.0.0.1", None),
    ((_DNS("127.0.0.1"),), "127.0.0.1", 64),  # an address is matched against IP names only
    ((_IP(ipaddress.ip_address("::1")),), "::1", None),
])
def test_host_names_get_the_verdicts_of_the_ssl_module(
        server: Server, tmp_path: Path, names: tuple[x509.GeneralName, ...], host: str,
        verdict: int | None) -> None:
    issuer = _issuer()
    cadata = issuer[1].public_bytes(serialization.Encoding.PEM).decode()
    srv = server(_leaf_context(issuer, names, tmp_path))
    try:
        asyncio.run(_start_tls(srv.port, host, tls.client_context("1.2", cadata)))
        ours = None
    except ssl.SSLCertVerificationError as exc:
        ours = exc.verify_code
    assert ours == verdict
    assert _ssl_module_verdict(srv.port, host, cadata) == verdict
