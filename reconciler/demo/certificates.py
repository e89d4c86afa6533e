"""The throwaway certificate authority every local stand-in's TLS certificate comes from.

`ThrowawayCA` (trustme, imported only when one is made) issues server certificates for the SMTP
servers and HTTPS fakes on loopback; its PEM is what a demo or test puts in a truststore. It also
holds `LOOPBACK`, the address every stand-in listens on and its certificates name by default.
"""

from __future__ import annotations

import datetime as dt
import ssl
import warnings

LOOPBACK = "127.0.0.1"


class ThrowawayCA:
    """A private CA (trustme) that issues server certificates for loopback servers."""

    def __init__(self, organization: str = "email-reconciler throwaway CA") -> None:
        import trustme

        self._ca = trustme.CA(organization_name=organization)

    @property
    def ca_pem(self) -> str:
        """The CA certificate as PEM text, the content of a truststore Secret."""
        return self._ca.cert_pem.bytes().decode("ascii")

    def server_context(
        self,
        *identities: str,
        min_version: ssl.TLSVersion | None = None,
        max_version: ssl.TLSVersion | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> ssl.SSLContext:
        """A server SSLContext with a fresh certificate for identities (default: loopback names).

        TLS 1.0/1.1 need OpenSSL security level 0 on OpenSSL 3; it is lowered automatically when
        max_version is below TLS 1.2.
        """
        cert = self._ca.issue_cert(*(identities or (LOOPBACK, "localhost")),
                                   not_before=not_before, not_after=not_after)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        with warnings.catch_warnings():  # TLSVersion.TLSv1/TLSv1_1 are deprecated in ssl
            warnings.simplefilter("ignore", DeprecationWarning)
            if max_version is not None and max_version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
                ctx.minimum_version = ssl.TLSVersion.TLSv1
            if min_version is not None:
                ctx.minimum_version = min_version
            if max_version is not None:
                ctx.maximum_version = max_version
        return ctx
