"""A local HTTPS fake of Microsoft Graph's user lookup, for the demo and the tests.

`FakeGraph` answers GET /v1.0/users/{upn} for the mailboxes it knows and POST
/v1.0/users/{upn}/sendMail with a MIME message (base64, text/plain, as Graph takes it), accepting
only access tokens its `MicrosoftIdentity` (reconciler/demo/token_endpoints.py) issued, with errors
in Graph's shape (`graph_error`). A sent message is recorded with the recipients Graph would
deliver to: those of its To, Cc and Bcc headers (Graph reads recipients from the MIME headers, not
from any envelope). `send_faults` answers the next sendMail requests with the given statuses (429,
503, 400...); tests/fake_idp.py adds more fault injection on top.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
import hashlib
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.demo.https import HttpsFake, Seen
from reconciler.demo.token_endpoints import MicrosoftIdentity

if TYPE_CHECKING:
    import trustme

    from reconciler.demo.certificates import ThrowawayCA


#: Graph's limit for one sendMail request (MIME messages count base64-encoded).
SEND_MAIL_MAX_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class GraphSent:
    """One message Graph accepted: the mailbox it was sent as, the MIME, the delivered recipients."""

    sender: str
    mime: bytes
    recipients: tuple[str, ...]


@dataclass
class FakeGraph(HttpsFake):
    """graph.microsoft.com's user lookup and sendMail."""

    ca: ThrowawayCA | trustme.CA
    idp: MicrosoftIdentity
    users: set[str] = field(default_factory=set)
    sent: list[GraphSent] = field(default_factory=list)
    send_faults: list[int] = field(default_factory=list)  # statuses for the next sendMail calls

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
        if req.method == "POST" and path.startswith("/v1.0/users/") \
                and path.endswith("/sendMail"):
            return self.send_mail(path.removeprefix("/v1.0/users/").removesuffix("/sendMail"),
                                  req)
        if req.method != "GET" or not path.startswith("/v1.0/users/"):
            return 400, graph_error("BadRequest", "Unsupported request.")
        return self.lookup(path.removeprefix("/v1.0/users/"))

    def send_mail(self, upn: str, req: Seen) -> tuple[int, Any]:
        """POST /users/{upn}/sendMail with a base64 MIME body, as Graph checks it."""
        with self.lock:
            fault = self.send_faults.pop(0) if self.send_faults else None
        if fault is not None:
            return fault, graph_error({429: "ApplicationThrottled", 503: "ServiceUnavailable",
                                       504: "GatewayTimeout"}.get(fault, "ErrorInvalidRequest"),
                                      f"Injected fault {fault}.")
        if upn not in self.users:
            return 404, graph_error("ErrorInvalidUser",
                                    f"The requested user '{upn}' is invalid.")
        if len(req.body) > SEND_MAIL_MAX_REQUEST_BYTES:
            return 413, graph_error("ErrorRequestEntityTooLarge",
                                    "The request exceeds the maximum supported size.")
        content_type = next((v for k, v in req.headers.items()
                             if k.lower() == "content-type"), "")
        if not content_type.startswith("text/plain"):
            return 400, graph_error("ErrorInvalidRequest",
                                    "MIME content must be sent as text/plain, base64-encoded.")
        try:
            mime = base64.b64decode(req.body, validate=True)
        except binascii.Error:
            return 400, graph_error("ErrorMimeContentInvalidBase64String",
                                    "Invalid base64 string for MIME content.")
        msg = email.message_from_bytes(mime, policy=email.policy.default)
        recipients = tuple(addr for _, addr in email.utils.getaddresses(
            [str(v) for name in ("To", "Cc", "Bcc") for v in msg.get_all(name, [])]) if addr)
        if not recipients:
            return 400, graph_error("ErrorInvalidRecipients",
                                    "At least one recipient isn't valid.")
        with self.lock:
            self.sent.append(GraphSent(upn, mime, recipients))
        return 202, None

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

