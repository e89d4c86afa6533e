"""Certificates for the private MTAs: a throwaway root with an intermediate, leaf files on disk.

Nothing is committed: every session issues what it needs (trustme). The root is what the
accounts trust (ConfigMap `ca/ca.crt`); leaves are issued by an intermediate, so "the full
chain" and "the leaf alone" (a missing intermediate) are two different server setups.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import trustme

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class ServerCertificates:
    """Issues server certificate files into `directory`: one key+chain PEM file per setup."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.root = trustme.CA(organization_name="email-reconciler MTA test root")
        self.intermediate = self.root.create_child_ca()

    @property
    def root_pem(self) -> str:
        """The trust anchor, the content of the accounts' truststore."""
        return self.root.cert_pem.bytes().decode("ascii")

    def issue(self, name: str, *identities: str, expired: bool = False,
              with_intermediate: bool = True) -> Path:
        """A file holding the key, the leaf and (unless told not to) the intermediate.

        Postfix reads it as `smtpd_tls_chain_files` (key first, then the chain)."""
        not_before = not_after = None
        if expired:
            not_after = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
            not_before = not_after - dt.timedelta(days=30)
        leaf = self.intermediate.issue_cert(*(identities or LOOPBACK_NAMES),
                                            not_before=not_before, not_after=not_after)
        chain = leaf.cert_chain_pems if with_intermediate else leaf.cert_chain_pems[:1]
        path = self.directory / f"{name}.pem"
        path.write_bytes(leaf.private_key_pem.bytes() + b"".join(c.bytes() for c in chain))
        path.chmod(0o600)
        return path
