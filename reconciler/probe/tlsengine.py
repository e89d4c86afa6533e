"""TLS for the SMTP wire client on the OpenSSL that `cryptography` bundles, through pyOpenSSL.

Python's `ssl` module is linked to the system's OpenSSL (3.0 on Debian 12), whose handshake was
8.0 M of the 11.4 M instructions of a probe, 3.07 M of them decoding the server's certificates
(OpenSSL 3.0's slow decoders; callgrind, bench/README.md, benchmark 7). The `cryptography` wheel
carries OpenSSL 4.0, which pyOpenSSL drives: a client handshake against the same chain costs
0.88-0.99 ms of CPU there against 1.19-1.37 ms through `ssl`.

The client above speaks the `ssl` module's dialect, and so does this engine: a `TlsSession` is
an `ssl.SSLObject` over memory BIOs (do_handshake, read, write, version, cipher, the DER leaf),
and it raises the `ssl` exceptions the session reads as outcomes: `ssl.SSLWantReadError`,
`ssl.SSLZeroReturnError`, `ssl.SSLEOFError`, `ssl.SSLCertVerificationError` with the OpenSSL
`verify_code` and the message CPython words, and `ssl.SSLError` with CPython's `library` and
`reason` names for the rest. Contexts are configured as `ssl.create_default_context()` does
(its options and cipher string, partial wildcards refused, the system's trust store where
`ssl.get_default_verify_paths()` finds it, SSL_CERT_FILE and SSL_CERT_DIR honoured).

pyOpenSSL owns the objects (contexts, sessions over memory BIOs, their lifetimes) and
configures them; what it has no call for (the host name checked inside the handshake, the BIOs
and SSL calls without an exception per empty read, the numeric error codes CPython names) goes to
the same OpenSSL through cryptography's binding, on the handles of pyOpenSSL's own objects.
OpenSSL is imported on first use: `validate` and `crd` never pay for it.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from typing import Any

# X509_V_ERR_* codes whose message CPython words itself (Modules/_ssl.c, fill_and_set_sslerror)
_HOSTNAME_MISMATCH = 62
_IP_ADDRESS_MISMATCH = 64
_ERR_LIB_SSL = 20
_SSL_R_CERTIFICATE_VERIFY_FAILED = 134
_SSL_R_UNEXPECTED_EOF_WHILE_READING = 294
_NO_PARTIAL_WILDCARDS = 0x4  # X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, as CPython sets it
# ssl.create_default_context()'s cipher string (CPython >= 3.10, Modules/_ssl.c): the same 17
# suites offered for TLS 1.2 on either OpenSSL
_CIPHERS = (b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:"
            b"!AESCCM")
_LEGACY_CIPHERS = b"DEFAULT:@SECLEVEL=0"  # OpenSSL 3+ refuses TLS 1.0/1.1 at its default level
# The groups OpenSSL 4.0 offers by default, in its order (its ClientHello; tests/test_tlsengine.py
# compares them), with a key share for X25519 alone
_SHARE_X25519_ONLY = (b"?X25519MLKEM768:?SecP256r1MLKEM768:?curveSM2MLKEM768 / ?*X25519:?secp256r1:"
                      b"?X448:?secp384r1:?secp521r1:?curveSM2 / ?ffdhe2048:?ffdhe3072")
_CHUNK = 16 * 1024  # a TLS record's plaintext at most; bytes moved by one call
# Protocol versions as OpenSSL numbers them (the wire's own), for the floor of a context
TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION = 0x301, 0x302, 0x303, 0x304

_binding: Any = None  # (SSL module, lib, ffi, allocator), once OpenSSL is loaded


def _openssl() -> Any:
    global _binding
    if _binding is None:
        from cryptography.hazmat.bindings.openssl.binding import Binding
        from OpenSSL import SSL

        ffi = Binding.ffi
        _binding = (SSL, Binding.lib, ffi, ffi.new_allocator(should_clear_after_alloc=False))
    return _binding


def openssl_version() -> str:
    """The OpenSSL the engine runs on ('OpenSSL 4.0.3 29 Sep 2026'): cryptography's own."""
    SSL = _openssl()[0]
    return str(SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())


class ClientContext:
    """A client configuration that sessions are made from; not changed once built (pyOpenSSL
    refuses changes to a context that has made a connection), so shared by every probe."""

    __slots__ = ("_ctx", "_verify")

    def __init__(self, ctx: Any, verify: bool) -> None:
        self._ctx = ctx
        self._verify = verify

    @property
    def verifies(self) -> bool:
        """True when sessions check the chain and the host name."""
        return self._verify

    def session(self, server_hostname: str) -> TlsSession:
        """A client session for `server_hostname`: SNI for a DNS name, and with verification,
        the name (or IP literal) the leaf certificate must carry."""
        return TlsSession(self, server_hostname)


def client_context(floor: int, ca_pem: str | None, *, credentials: bool = True) -> ClientContext:
    """A verifying context: `ca_pem` (else the system store), host name check, TLS `floor`
    (TLS1_VERSION..TLS1_3_VERSION), TLS 1.3 allowed. ssl.SSLError when ca_pem holds no usable
    certificate. `credentials`: whether its sessions will carry AUTH (see `_new_context`)."""
    SSL, lib = _openssl()[:2]
    ctx = _new_context(floor, credentials=credentials)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    lib.X509_VERIFY_PARAM_set_hostflags(lib.SSL_CTX_get0_param(ctx._context),
                                        _NO_PARTIAL_WILDCARDS)
    if ca_pem:
        _load_pem(ctx, ca_pem)
    else:
        # The system OpenSSL's places (and SSL_CERT_FILE / SSL_CERT_DIR), as the `ssl` module
        # finds them: the wheel's compiled-in OPENSSLDIR is not this system's.
        paths = ssl.get_default_verify_paths()
        if paths.cafile or paths.capath:
            try:
                ctx.load_verify_locations(paths.cafile, paths.capath)
            except SSL.Error:  # an unreadable store trusts nothing, as OpenSSL's default paths
                lib.ERR_clear_error()
    return ClientContext(ctx, verify=True)


def diagnostic_context() -> ClientContext:
    """Any version from TLS 1.0, any certificate: only to learn what the server negotiates."""
    SSL = _openssl()[0]
    ctx = _new_context(TLS1_VERSION, credentials=False)
    ctx.set_verify(SSL.VERIFY_NONE)
    return ClientContext(ctx, verify=False)


def _new_context(floor: int, *, credentials: bool) -> Any:
    SSL, lib = _openssl()[:2]
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    # ssl.SSLContext's options: OpenSSL's bug workarounds, but empty fragments kept (CBC in
    # TLS 1.0); no compression (CRIME).
    ctx.set_options((SSL.OP_ALL & ~SSL.OP_DONT_INSERT_EMPTY_FRAGMENTS) | SSL.OP_NO_COMPRESSION)
    ctx.set_cipher_list(_LEGACY_CIPHERS if floor < TLS1_2_VERSION else _CIPHERS)
    ctx.set_min_proto_version(floor)
    ctx.set_max_proto_version(0)  # the highest this OpenSSL speaks
    # Key exchange groups. A session that will carry AUTH keeps OpenSSL's default: its
    # ClientHello offers X25519MLKEM768 first, with a key share beside X25519's, so a server
    # that has it protects the credentials against decryption later (harvest now, decrypt
    # later) without a round trip more. A session that carries none (no AUTH: connect-only
    # accounts, endpoint checks, a re-probe whose AUTH is not due, the diagnostic) offers the
    # same groups in the same order with X25519's share alone: a server with ML-KEM still gets
    # it, asking for its share (HelloRetryRequest); one without (most MTAs today) picks X25519,
    # and the probe does not make an ML-KEM key and a second X25519 key it throws away: 0.85 M
    # instructions a probe, 9 % (callgrind, bench/README.md, benchmark 7). OPENSSL_CONF with a
    # Groups line changes the default for the whole process.
    if not credentials and lib.SSL_CTX_set1_curves_list(ctx._context, _SHARE_X25519_ONLY) != 1:
        lib.ERR_clear_error()  # an OpenSSL without these groups: its default, as before
    return ctx


def _load_pem(ctx: Any, ca_pem: str) -> None:
    """Trust the certificates of a PEM bundle (only those, as create_default_context(cadata=))."""
    from cryptography import x509
    from OpenSSL import crypto

    try:
        certificates = x509.load_pem_x509_certificates(ca_pem.encode("ascii", "replace"))
    except ValueError:
        raise ssl.SSLError("cadata does not contain a usable certificate (a CERTIFICATE block "
                           "is not valid base64 DER)") from None
    store = ctx.get_cert_store()
    try:
        for certificate in certificates:
            store.add_cert(crypto.X509.from_cryptography(certificate))
    except crypto.Error as exc:
        raise ssl.SSLError(f"cadata does not contain a usable certificate ({exc})") from None


class TlsSession:
    """One client TLS session over memory BIOs, as the client drives an ssl.SSLObject: bytes
    received go in with `feed`, bytes to send come out of `outgoing`."""

    __slots__ = ("_conn", "_ssl", "_into", "_from", "_buffer", "_host")

    def __init__(self, context: ClientContext, server_hostname: str) -> None:
        SSL, lib, _, allocate = _openssl()
        conn = SSL.Connection(context._ctx, None)  # None: memory BIOs
        self._conn = conn
        self._ssl, self._into, self._from = conn._ssl, conn._into_ssl, conn._from_ssl
        self._buffer = allocate("char[]", _CHUNK)
        self._host = server_hostname
        address, name = _server_name(server_hostname)
        if address is None:
            conn.set_tlsext_host_name(name)
        if context.verifies:
            param = lib.SSL_get0_param(self._ssl)
            done = (lib.X509_VERIFY_PARAM_set1_ip(param, address, len(address)) if address
                    else lib.X509_VERIFY_PARAM_set1_host(param, name, len(name)))
            if done != 1:  # OpenSSL 4 takes no one-letter name, empty label or final dot
                lib.ERR_clear_error()
                raise _unusable_name(server_hostname)
        conn.set_connect_state()

    # ------------------------------------------------------------ the memory BIOs
    def feed(self, data: bytes) -> None:
        """Bytes received from the server, for OpenSSL to read."""
        lib = _binding[1]
        lib.BIO_write(self._into, data, len(data))

    def feed_eof(self) -> None:
        """The server closed the connection: OpenSSL reads the end of the stream."""
        _binding[1].BIO_set_mem_eof_return(self._into, 0)

    def outgoing(self) -> bytes:
        """What OpenSSL has written for the server (b"" when nothing)."""
        lib, ffi = _binding[1], _binding[2]
        chunks: list[bytes] = []
        while True:
            got = lib.BIO_read(self._from, self._buffer, _CHUNK)
            if got <= 0:
                return b"".join(chunks)
            chunks.append(ffi.buffer(self._buffer, got)[:])

    # ------------------------------------------------------------ TLS
    def do_handshake(self) -> None:
        lib = _binding[1]
        lib.ERR_clear_error()  # SSL_get_error reads the thread's queue: stale entries mislead
        result = lib.SSL_do_handshake(self._ssl)
        if result != 1:
            self._fail(result)

    def read(self, size: int = _CHUNK) -> bytes:
        """Decrypted bytes, at most `size` (and one record's worth)."""
        lib, ffi = _binding[1], _binding[2]
        lib.ERR_clear_error()
        got = lib.SSL_read(self._ssl, self._buffer, min(size, _CHUNK))
        if got > 0:
            return ffi.buffer(self._buffer, got)[:]  # type: ignore[no-any-return]
        self._fail(got)
        return b""  # not reached: _fail raises

    def write(self, data: bytes) -> None:
        """Encrypt all of `data` into the outgoing BIO (which grows as needed)."""
        lib, ffi = _binding[1], _binding[2]
        view = memoryview(data)
        while view:
            lib.ERR_clear_error()
            with ffi.from_buffer(view) as pointer:
                sent = lib.SSL_write(self._ssl, pointer, len(view))
            if sent <= 0:
                self._fail(sent)
            view = view[sent:]

    def version(self) -> str | None:
        """'TLSv1.3', 'TLSv1.2', ... as ssl.SSLObject.version() names them."""
        name = self._conn.get_protocol_version_name()
        return None if name == "Unknown" else str(name)

    def cipher(self) -> str | None:
        """The OpenSSL name of the negotiated cipher suite."""
        name = self._conn.get_cipher_name()
        return None if name is None else str(name)

    def peer_certificate(self) -> bytes | None:
        """The server's leaf certificate, DER."""
        from OpenSSL import crypto

        certificate = self._conn.get_peer_certificate()
        if certificate is None:
            return None
        return bytes(crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate))

    def _fail(self, result: int) -> None:
        """Raise the `ssl` exception CPython raises for this outcome of an SSL call."""
        lib, ffi = _binding[1], _binding[2]
        kind = lib.SSL_get_error(self._ssl, result)
        if kind == lib.SSL_ERROR_WANT_READ:
            raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ,
                                       "The operation did not complete (read)")
        if kind == lib.SSL_ERROR_ZERO_RETURN:
            raise ssl.SSLZeroReturnError(ssl.SSL_ERROR_ZERO_RETURN,
                                         "TLS/SSL connection has been closed (EOF)")
        code = last = lib.ERR_get_error()
        while last:  # the queue's last entry, as CPython reports
            code, last = last, lib.ERR_get_error()
        if code == 0:  # no reason given: with memory BIOs, the end of the stream
            raise _error(ssl.SSLEOFError, ssl.SSL_ERROR_EOF, None, None,
                         "EOF occurred in violation of protocol")
        library, reason = (code >> 23) & 0xFF, code & 0x7FFFFF
        text = lib.ERR_reason_error_string(code)
        detail = ffi.string(text).decode("ascii", "replace") if text else f"error {code:#x}"
        if (library, reason) == (_ERR_LIB_SSL, _SSL_R_UNEXPECTED_EOF_WHILE_READING):
            raise _error(ssl.SSLEOFError, ssl.SSL_ERROR_EOF, library, reason,
                         "EOF occurred in violation of protocol")
        if (library, reason) == (_ERR_LIB_SSL, _SSL_R_CERTIFICATE_VERIFY_FAILED):
            verify_code = lib.SSL_get_verify_result(self._ssl)
            if verify_code != 0:
                raise _verify_error(verify_code, self._host, library, reason, detail)
        raise _error(ssl.SSLError, ssl.SSL_ERROR_SSL, library, reason, detail)


@functools.lru_cache(maxsize=1024)
def _server_name(host: str) -> tuple[bytes | None, bytes]:
    """(the packed address of an IP literal, else None; the IDNA name), as the `ssl` module
    reads server_hostname: an IP literal is checked as an address and gets no SNI (RFC 6066
    allows only DNS names there). Cached: parsing it was half of a session's set-up."""
    try:
        return ipaddress.ip_address(host).packed, b""
    except ValueError:
        return None, host.encode("idna")


def _names(library: int | None, reason: int | None) -> tuple[str | None, str | None]:
    """CPython's names of an OpenSSL library and reason ('SSL', 'WRONG_VERSION_NUMBER'): its
    tables are OpenSSL's mnemonics, whose numbers OpenSSL never reuses."""
    import _ssl

    libraries: dict[int, str] = getattr(_ssl, "lib_codes_to_names", {})
    reasons: dict[tuple[int, int], str] = getattr(_ssl, "err_codes_to_names", {})
    if library is None or reason is None:
        return None, None
    return libraries.get(library), reasons.get((library, reason))


def _error(kind: type[ssl.SSLError], number: int, library: int | None, reason: int | None,
           detail: str) -> ssl.SSLError:
    library_name, reason_name = _names(library, reason)
    if reason_name is None and reason is not None:
        reason_name = detail.upper().replace(" ", "_")
    shown = (f"[{library_name}: {reason_name}] {detail}" if library_name
             else f"[{reason_name}] {detail}" if reason_name else detail)
    exc = kind(number, shown)
    exc.library = library_name  # type: ignore[assignment]  # None where CPython has none
    exc.reason = reason_name  # type: ignore[assignment]
    return exc


def _unusable_name(host: str) -> ssl.SSLCertVerificationError:
    """A name OpenSSL 4 will not check a certificate against ('x', 'mail.example.'): refused
    as a name mismatch before the handshake (the `ssl` module, on OpenSSL 3.0, checked it), so
    the account says to name the server as its certificate does; never unchecked."""
    message = (f"OpenSSL cannot check a certificate against the name '{host}' (no one-letter "
               "name, empty label or final dot)")
    exc = _error(ssl.SSLCertVerificationError, ssl.SSL_ERROR_SSL, None, None,
                 f"certificate verify failed: {message}")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    exc.verify_code, exc.verify_message = _HOSTNAME_MISMATCH, message
    return exc


def _verify_error(code: int, host: str, library: int, reason: int,
                  detail: str) -> ssl.SSLCertVerificationError:
    """As CPython words it: 'Hostname mismatch, certificate is not valid for 'x'.'"""
    lib, ffi = _binding[1], _binding[2]
    if code == _HOSTNAME_MISMATCH:
        message = f"Hostname mismatch, certificate is not valid for '{host}'."
    elif code == _IP_ADDRESS_MISMATCH:
        message = f"IP address mismatch, certificate is not valid for '{host}'."
    else:
        message = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    exc = _error(ssl.SSLCertVerificationError, ssl.SSL_ERROR_SSL, library, reason,
                 f"{detail}: {message}")
    assert isinstance(exc, ssl.SSLCertVerificationError)
    exc.verify_code = code
    exc.verify_message = message
    return exc
