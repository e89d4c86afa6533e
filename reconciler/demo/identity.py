"""The demo's identity platforms together: Google, one Microsoft tenant and Graph on 127.0.0.1.

`DemoIdentity` starts the three fakes with the demo's CA, enrols what the example accounts need
(service accounts, app registrations, users, mailboxes) and tells an SMTP server whether an
XOAUTH2 bearer token is one they issued. The `demo` command and tests/test_demo.py use it.
"""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from reconciler.demo.graph import FakeGraph
from reconciler.demo.https import HttpsFake
from reconciler.demo.token_endpoints import (
    DEFAULT_TENANT,
    OUTLOOK_AUDIENCE,
    Client,
    GoogleTokenEndpoint,
    MicrosoftIdentity,
    rsa_key,
    service_account_json,
)

if TYPE_CHECKING:
    from cryptography import x509

    from reconciler.demo.certificates import ThrowawayCA


class DemoIdentity:
    """Google, one Microsoft tenant and Graph on 127.0.0.1, sharing the demo's CA."""

    def __init__(self, ca: ThrowawayCA, tenants: Iterable[str] = ()) -> None:
        names = list(dict.fromkeys(tenants)) or [DEFAULT_TENANT]
        self._servers: list[HttpsFake] = []
        try:
            self.google = self._start(GoogleTokenEndpoint(ca=ca))
            # One tenant answers to every tenant name the examples use (an id and a domain).
            self.microsoft = self._start(MicrosoftIdentity(ca=ca, tenant_id=names[0],
                                                           domains=set(names[1:])))
            self.graph = self._start(FakeGraph(ca=ca, idp=self.microsoft))
        except BaseException:
            self.close()
            raise

    def _start(self, server: Any) -> Any:
        self._servers.append(server)
        return server

    def enroll_service_account(self, subject: str) -> bytes:
        """Register a new service account allowed to impersonate subject; its key file."""
        key = rsa_key()
        email = f"demo-{pysecrets.token_hex(4)}@demo.iam.gserviceaccount.com"
        self.google.accounts[email] = key.public_key()
        self.google.subjects.add(subject)
        return service_account_json(email, key, token_uri=self.google.token_url)

    def enroll_app(self, client_id: str, *, secret: str | None = None,
                   certificate: x509.Certificate | None = None, public: bool = False,
                   roles: tuple[str, ...] = ("Mail.Send", "User.Read.All")) -> None:
        """Register an app (client) in the tenant."""
        self.microsoft.clients[client_id] = Client(secret=secret, certificate=certificate,
                                                   roles=roles, public=public)

    def enroll_user(self, upn: str, password: str, scp: str = "Mail.Send User.Read") -> None:
        """Add a user with delegated permissions scp, and their Graph mailbox."""
        self.microsoft.users[upn] = (password, scp)
        self.graph.users.add(upn)

    def enroll_mailbox(self, upn: str) -> None:
        """A mailbox Graph knows (for application permissions)."""
        self.graph.users.add(upn)

    def accepts_xoauth2(self, login: str, token: str) -> bool:
        """Whether an SMTP server should accept AUTH XOAUTH2 user=login with this bearer token."""
        with self.google.lock:
            google = self.google.issued.get(token)
        if google is not None:
            return bool(google.get("sub") == login)
        with self.microsoft.lock:
            microsoft = self.microsoft.issued.get(token)
        return microsoft is not None and microsoft.get("aud") == OUTLOOK_AUDIENCE

    def close(self) -> None:
        """Stop every server."""
        for server in reversed(self._servers):
            server.close()
        self._servers.clear()

    def __enter__(self) -> DemoIdentity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
