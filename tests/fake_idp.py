"""Local HTTPS fakes of the identity providers and Microsoft Graph, for tests on 127.0.0.1.

The fakes live in `reconciler.demo` (token_endpoints, https, graph; the demo command uses them
too); this module re-exports them and adds what only tests need:

- FakeGraph: the demo's Graph plus fault injection (`forbidden` lookups answered 403, a `status`
  such as 503 for every request).
- MemorySecrets: an in-memory SecretReader that counts its reads.

Every server is a context manager; close() stops the thread and closes every socket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.demo import graph
from reconciler.demo.graph import graph_error
from reconciler.demo.https import HttpsFake, Seen
from reconciler.demo.token_endpoints import (
    CLIENT_ASSERTION_TYPE,
    JWT_BEARER,
    Client,
    GoogleTokenEndpoint,
    MicrosoftIdentity,
    b64url,
    b64url_decode,
    fake_access_token,
    rsa_key,
    service_account_json,
    split_jwt,
)
from reconciler.errors import SecretNotFound
from reconciler.model import KeyRef
from reconciler.policy import OPERATOR_SOURCE, Policy, SecretMeta

__all__ = [
    "CLIENT_ASSERTION_TYPE", "JWT_BEARER", "Client", "FakeGraph", "GoogleTokenEndpoint",
    "HttpsFake", "MemorySecrets", "MicrosoftIdentity", "Seen", "b64url", "b64url_decode",
    "fake_access_token", "rsa_key", "service_account_json", "split_jwt",
]


#: The endpoint policy of tests whose token and Graph fakes listen on loopback (as the demo's).
LOOPBACK_POLICY = Policy.from_flags("127.0.0.1:*,[::1]:*")

class MemorySecrets:
    """SecretReader over {(namespace, name, key): value}."""

    def __init__(self, values: Mapping[tuple[str, str, str], bytes | str]) -> None:
        self.values = {k: v.encode() if isinstance(v, str) else v for k, v in values.items()}
        self.reads = 0

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """In-memory secrets are the test's own: opted in."""
        return OPERATOR_SOURCE

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        self.reads += 1
        try:
            return self.values[(namespace, ref.name, ref.key)]
        except KeyError:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind) from None

    def version(self, namespace: str, ref: KeyRef) -> str:
        return hashlib.sha256(self.read(namespace, ref)).hexdigest()[:16]


@dataclass
class FakeGraph(graph.FakeGraph):
    """graph.microsoft.com's user lookup, with faults on demand."""

    forbidden: set[str] = field(default_factory=set)  # lookups answered 403
    status: int | None = None  # e.g. 503 for every request

    def handle(self, req: Seen) -> tuple[int, Any]:
        if self.status is not None:
            return self.status, graph_error("serviceNotAvailable", "Service unavailable.")
        return super().handle(req)

    def lookup(self, upn: str) -> tuple[int, Any]:
        if upn in self.forbidden:
            return 403, graph_error("Authorization_RequestDenied",
                                    "Insufficient privileges to complete the operation.")
        return super().lookup(upn)
