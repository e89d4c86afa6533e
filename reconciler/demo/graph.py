"""A local HTTPS fake of Microsoft Graph's user lookup and sendMail, for the demo and the tests.

`FakeGraph` answers GET /v1.0/users/{upn} for the mailboxes it knows and POST
/v1.0/users/{upn}/sendMail with a MIME message (base64, text/plain) or a JSON `message`, the two
forms Graph takes, accepting only access tokens its `MicrosoftIdentity`
(reconciler/demo/token_endpoints.py) issued for Graph, and sendMail only with the Mail.Send
permission (application `roles`, or delegated `scp` for that very user), with errors in Graph's
shape (`graph_error`). A sent message is recorded with the recipients Graph would deliver to: those
of its To, Cc and Bcc headers (Graph reads recipients from the MIME headers, not from any
envelope); a JSON message is recorded as the MIME Graph would make of it. `send_faults` answers
the next sendMail requests with the given statuses (429, 503, 400...); tests/fake_idp.py adds more
fault injection on top.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
import hashlib
import json
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from reconciler.demo.https import HttpsFake, Seen
from reconciler.demo.token_endpoints import MicrosoftIdentity

if TYPE_CHECKING:
    import trustme

    from reconciler.demo.certificates import ThrowawayCA


#: Graph's limit for one sendMail request (MIME messages count base64-encoded).
SEND_MAIL_MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: The audience of the access tokens Graph takes.
GRAPH_AUDIENCE = "https://graph.microsoft.com"


@dataclass(frozen=True)
class GraphSent:
    """One message Graph accepted: the mailbox it was sent as, the MIME, the delivered recipients."""

    sender: str
    mime: bytes
    recipients: tuple[str, ...]
    client_id: str = ""  # the app the token was issued to
    delegated: bool = False  # a user's token (scp) rather than the app's (roles)


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
        claims = self.claims(req)
        if claims is None or claims.get("aud") != GRAPH_AUDIENCE:
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

    def claims(self, req: Seen) -> dict[str, Any] | None:
        """The claims of the bearer token of a request, if our identity platform issued it."""
        auth = req.headers.get("Authorization", "")
        with self.idp.lock:
            return self.idp.issued.get(auth[7:]) if auth.startswith("Bearer ") else None

    def send_mail(self, upn: str, req: Seen) -> tuple[int, Any]:
        """POST /users/{upn}/sendMail with a base64 MIME body or a JSON message, as Graph
        checks it."""
        with self.lock:
            fault = self.send_faults.pop(0) if self.send_faults else None
        if fault is not None:
            return fault, graph_error({429: "ApplicationThrottled", 503: "ServiceUnavailable",
                                       504: "GatewayTimeout"}.get(fault, "ErrorInvalidRequest"),
                                      f"Injected fault {fault}.")
        if upn not in self.users:
            return 404, graph_error("ErrorInvalidUser",
                                    f"The requested user '{upn}' is invalid.")
        claims = self.claims(req) or {}
        delegated = "scp" in claims
        if not (("Mail.Send" in str(claims.get("scp", "")).split() and claims.get("upn") == upn)
                if delegated else "Mail.Send" in (claims.get("roles") or ())):
            return 403, graph_error("ErrorAccessDenied",
                                    "Access is denied. Check credentials and try again.")
        if len(req.body) > SEND_MAIL_MAX_REQUEST_BYTES:
            return 413, graph_error("ErrorRequestEntityTooLarge",
                                    "The request exceeds the maximum supported size.")
        content_type = next((v for k, v in req.headers.items()
                             if k.lower() == "content-type"), "")
        if content_type.startswith("application/json"):
            json_mime = _json_message(upn, req.body)
            if json_mime is None:
                return 400, graph_error("ErrorInvalidRequest", "The message is malformed.")
            mime = json_mime
        elif not content_type.startswith("text/plain"):
            return 400, graph_error("ErrorInvalidRequest",
                                    "MIME content must be sent as text/plain, base64-encoded.")
        else:
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
            self.sent.append(GraphSent(upn, mime, recipients, str(claims.get("appid", "")),
                                       delegated))
        return 202, None

    def lookup(self, upn: str) -> tuple[int, Any]:
        """The answer to an authorised GET /v1.0/users/{upn}."""
        if upn not in self.users:
            return 404, graph_error("Request_ResourceNotFound",
                                    f"Resource '{upn}' does not exist or one of its queried "
                                    f"reference-property objects are not present.")
        return 200, {"id": hashlib.md5(upn.encode()).hexdigest(),  # noqa: S324 (an id)
                     "userPrincipalName": upn, "mail": upn, "displayName": upn.split("@")[0]}


def _json_message(upn: str, body: bytes) -> bytes | None:
    """The MIME Graph makes of a JSON sendMail body {"message": {...}}; None when malformed."""
    def addresses(recipients: Any) -> str:
        return ", ".join(str(r["emailAddress"]["address"]) for r in recipients or ())

    try:
        message = json.loads(body)["message"]
        msg = EmailMessage()
        msg["From"] = upn
        for header, key in (("To", "toRecipients"), ("Cc", "ccRecipients"),
                            ("Bcc", "bccRecipients"), ("Reply-To", "replyTo")):
            if message.get(key):
                msg[header] = addresses(message[key])
        msg["Subject"] = str(message.get("subject", ""))
        msg.set_content(str((message.get("body") or {}).get("content", "")))
    except (ValueError, KeyError, TypeError):
        return None
    return msg.as_bytes()


def graph_error(code: str, message: str) -> dict[str, Any]:
    """An error body as graph.microsoft.com sends it."""
    return {"error": {"code": code, "message": message,
                      "innerError": {"date": "2026-01-01T00:00:00", "request-id": "r"}}}

