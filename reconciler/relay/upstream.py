"""Forward one message upstream the OAuth way, with no local queue: the answer is the upstream's.

Two ways, both reusing the probe's pieces rather than copies of them:
- SMTP with XOAUTH2 (Office 365 client credentials, Gmail JWT bearer): the probe's session
  (`reconciler.probe.smtp.run_session`: connect, TLS with the account's floor and truststore,
  EHLO, AUTH with a token from the run's `TokenCache`) runs MAIL FROM, RCPT TO and DATA as its
  transaction;
- Microsoft Graph `sendMail` with the MIME message (base64, text/plain), recipients taken from the
  envelope (`reconciler.relay.message.graph_recipients`), through the probe's bounded HTTPS client.

Every answer is a `Delivery` (an SMTP reply for the application): 250 once the upstream accepted
the message; a 4xx when the application should retry (upstream 4xx, Graph 429/5xx, the token
endpoint or the network down, timeouts); a 5xx with the upstream's reason when it refused the
message for good.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.log import redact_text
from reconciler.model import Account, Outcome, SecretReader
from reconciler.probe.httpclient import ResponseTooLarge, fetch, https_context, run_bounded
from reconciler.probe.send import dot_stuff
from reconciler.probe.smtp import run_session
from reconciler.probe.smtpclient import SmtpClient
from reconciler.probe.tokencache import TokenCache
from reconciler.relay.message import graph_recipients

#: Graph's limit for one sendMail request; a MIME message goes base64-encoded (4/3 larger).
GRAPH_MAX_REQUEST_BYTES = 4 * 1024 * 1024
GRAPH_MAX_MIME_BYTES = GRAPH_MAX_REQUEST_BYTES * 3 // 4
_GRAPH_TEMPORARY = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Delivery:
    """The relay's reply to the application's DATA: code and text (already redacted)."""

    code: int
    text: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300


def _temporary(text: str) -> Delivery:
    return Delivery(451, f"4.4.0 {redact_text(text)}; the message was not sent, retry later")


def _not_ready(outcome: Outcome, where: str) -> Delivery:
    """The upstream session failed before the message: always temporary (the operator fixes a
    credential or the network; the application's retry then succeeds)."""
    return _temporary(f"upstream {where} not ready ({outcome.reason}): {outcome.message}")


def _upstream_reply(code: int, text: str, where: str, what: str) -> Delivery:
    """A refusal by the upstream server, passed on: 4xx stays temporary, 5xx permanent."""
    text = redact_text(text)
    if 400 <= code < 500:
        return Delivery(451 if code == 421 else code,
                        f"4.4.0 upstream {where} deferred {what}: {text}; retry later")
    return Delivery(code if 500 <= code < 600 else 554,
                    f"5.0.0 upstream {where} refused {what}: {text}")


async def send_smtp(account: Account, secrets: SecretReader, tokens: TokenCache, *,
                    mail_from: str, rcpts: Sequence[str], data: bytes) -> Delivery:
    """Relay through the account's SMTP server, authenticated as the account (XOAUTH2)."""
    assert account.smtp is not None, "send_smtp needs an SMTP account"
    where = f"{account.smtp.connection.host}:{account.smtp.connection.port}"
    answer: list[Delivery] = []

    async def transaction(client: SmtpClient) -> Outcome:
        steps: list[tuple[str, tuple[int, ...], str]] = [
            (f"MAIL FROM:<{mail_from}>", (250,), "the sender")]
        steps += [(f"RCPT TO:<{r}>", (250, 251), f"recipient <{r}>") for r in rcpts]
        steps += [("DATA", (354,), "the message")]
        for line, ok_codes, what in steps:
            reply = await client.command(line)
            if reply.code not in ok_codes:
                answer.append(_upstream_reply(reply.code, reply.text, where, what))
                return Outcome(False, "Refused", reply.text)
        await client.send(dot_stuff(data))
        reply = await client.read_reply()
        if reply.code != 250:
            answer.append(_upstream_reply(reply.code, reply.text, where, "the message"))
            return Outcome(False, "Refused", reply.text)
        answer.append(Delivery(250, f"2.0.0 relayed to {where}: {redact_text(reply.text)}"))
        return Outcome(True, "Sent", reply.text)

    result, _ = await run_session(account, secrets, now=dt.datetime.now(dt.UTC),
                                  authenticate=True, tokens=tokens, transaction=transaction)
    if answer:
        return answer[0]
    if not result.connection.ok:
        return _not_ready(result.connection, where)
    if result.authentication is not None and not result.authentication.ok:
        return _not_ready(result.authentication, where)
    return _temporary(f"the session with {where} ended before the message was sent")


def _graph_error(body: bytes) -> str:
    try:
        error = json.loads(body).get("error") or {}
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")


async def send_graph(account: Account, secrets: SecretReader, tokens: TokenCache, *,
                     rcpts: Sequence[str], data: bytes) -> Delivery:
    """Relay through Graph's sendMail as the account's mailbox."""
    g = account.graph
    assert g is not None, "send_graph needs a Graph account"
    mime = graph_recipients(data, rcpts)
    body = base64.b64encode(mime)
    if len(body) > GRAPH_MAX_REQUEST_BYTES:
        return Delivery(552, f"5.3.4 the message is {len(mime)} bytes; Microsoft Graph's sendMail "
                             f"takes at most {GRAPH_MAX_REQUEST_BYTES} bytes a request, about "
                             f"{GRAPH_MAX_MIME_BYTES} bytes of MIME once base64-encoded")
    token = await tokens.graph_token(account, secrets)
    if isinstance(token, Outcome):
        return _not_ready(token, "token endpoint")
    base = urllib.parse.urlsplit(g.endpoint)
    path = (f"{base.path.rstrip('/')}/v1.0/users/"
            f"{urllib.parse.quote(g.user_principal_name, safe='@')}/sendMail")
    url = urllib.parse.urlunsplit(("https", base.netloc, path, "", ""))
    headers = {"Authorization": f"Bearer {token.access_token}", "Content-Type": "text/plain"}
    try:
        resp = await run_bounded(
            lambda cutoff: fetch(cutoff, "POST", url, timeout=g.timeout_seconds,
                                 headers=headers, body=body, context=https_context()),
            end=time.monotonic() + g.timeout_seconds)
    except (TimeoutError, ResponseTooLarge, OSError, http.client.HTTPException) as exc:
        return _temporary(f"Microsoft Graph ({base.hostname}) did not answer: "
                          f"{type(exc).__name__}: {exc}")
    where = f"Microsoft Graph ({base.hostname})"
    if resp.status == 202:
        return Delivery(250, f"2.0.0 accepted by {where} sendMail")
    reason = redact_text(f"HTTP {resp.status} {_graph_error(resp.body)}")
    if resp.status in _GRAPH_TEMPORARY or resp.status == 401:
        after = resp.headers.get("retry-after")
        return _temporary(f"{where} answered {reason}"
                          + (f" (Retry-After {after} s)" if after else ""))
    code = 552 if resp.status == 413 else 554
    return Delivery(code, f"5.7.0 {where} refused the message: {reason}")
