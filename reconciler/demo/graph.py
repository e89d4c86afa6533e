"""A local HTTPS fake of Microsoft Graph's user lookup, for the demo and the tests.

`FakeGraph` answers GET /v1.0/users/{upn} for the mailboxes it knows, accepting only access
tokens its `MicrosoftIdentity` (reconciler/demo/token_endpoints.py) issued, with errors in
Graph's shape (`graph_error`); tests/fake_idp.py adds fault injection on top.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.demo.https import HttpsFake, Seen
from reconciler.demo.token_endpoints import MicrosoftIdentity

if TYPE_CHECKING:
    import trustme

    from reconciler.demo.certificates import ThrowawayCA


@dataclass
class FakeGraph(HttpsFake):
    """graph.microsoft.com's user lookup."""

    ca: ThrowawayCA | trustme.CA
    idp: MicrosoftIdentity
    users: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        HttpsFake.__init__(self, self.ca)

    def handle(self, req: Seen) -> tuple[int, Any]:
        auth = req.headers.get("Authorization", "")
        with self.idp.lock:
            known = auth.startswith("Bearer ") and auth[7:] in self.idp.issued
        if not known:
            return 401, graph_error("InvalidAuthenticationToken",
                                    "Access token validation failure.")
        path = urllib.parse.unquote(urllib.parse.urlsplit(req.path).path)
        if req.method != "GET" or not path.startswith("/v1.0/users/"):
            return 400, graph_error("BadRequest", "Unsupported request.")
        return self.lookup(path.removeprefix("/v1.0/users/"))

    def lookup(self, upn: str) -> tuple[int, Any]:
        """The answer to an authorised GET /v1.0/users/{upn}."""
        if upn not in self.users:
            return 404, graph_error("Request_ResourceNotFound",
                                    f"Resource '{upn}' does not exist or one of its queried "
                                    f"reference-property objects are not present.")
        return 200, {"id": hashlib.md5(upn.encode()).hexdigest(),  # noqa: S324 (an id)
                     "userPrincipalName": upn, "mail": upn, "displayName": upn.split("@")[0]}


def graph_error(code: str, message: str) -> dict[str, Any]:
    """An error body as graph.microsoft.com sends it."""
    return {"error": {"code": code, "message": message,
                      "innerError": {"date": "2026-01-01T00:00:00", "request-id": "r"}}}

