"""`--send-test-to`: one real test message through the account, reporting the server's answer.

It goes one step past the probe: the same session (TLS, AUTH — same rules, same timeout), then
MAIL FROM / RCPT TO / DATA, then QUIT. The message is signed when a signer is given.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP

from reconciler import reasons
from reconciler.model import Account, Outcome, SecretReader
from reconciler.probe import TokenProvider
from reconciler.probe.smtp import run_session
from reconciler.probe.smtpclient import SmtpClient

Signer = Callable[[EmailMessage], bytes]


def _bad_address(address: str) -> bool:
    return ("@" not in address or any(c in address for c in "\r\n\0<> ")
            or len(address) > 254)


def build_test_message(account: Account, to_address: str, now: dt.datetime) -> EmailMessage:
    """The test message: From the account's identity, to the given address."""
    assert account.smtp is not None
    ident = account.smtp.identity
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((ident.display_name or "", ident.email_address))
    msg["To"] = to_address
    if ident.reply_to:
        msg["Reply-To"] = ident.reply_to
    msg["Subject"] = f"email-reconciler test message for {account.namespace}/{account.name}"
    msg["Date"] = email.utils.format_datetime(now if now.tzinfo else now.replace(tzinfo=dt.UTC))
    msg["Message-ID"] = email.utils.make_msgid(domain=ident.email_address.rpartition("@")[2])
    msg.set_content(
        f"This is a test message sent by email-reconciler through the EmailAccount "
        f"{account.namespace}/{account.name} ({account.smtp.connection.host}:"
        f"{account.smtp.connection.port}, {account.smtp.connection.security}).\n"
        "If you received it, the account can send mail.\n")
    return msg


def dot_stuff(data: bytes) -> bytes:
    """CRLF line endings, leading dots doubled, terminated by CRLF.CRLF (RFC 5321 4.5.2)."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    return body + b"\r\n.\r\n"


async def send_test_message(account: Account, secrets: SecretReader, to_address: str, *,
                            now: dt.datetime, tokens: TokenProvider | None = None,
                            signer: Signer | None = None) -> Outcome:
    """Send one test message; the Outcome carries the server's final answer."""
    if account.smtp is None:
        return Outcome(False, reasons.INVALID_SPEC,
                       "--send-test-to works with sendUsing SMTP accounts only")
    if _bad_address(to_address):
        return Outcome(False, reasons.INVALID_SPEC,
                       f"{to_address!r} is not a usable e-mail address: pass one address "
                       "like someone@example.com")
    msg = build_test_message(account, to_address, now)
    data = signer(msg) if signer is not None else msg.as_bytes(policy=SMTP)
    sender = account.smtp.identity.email_address
    where = f"{account.smtp.connection.host}:{account.smtp.connection.port}"

    async def transaction(client: SmtpClient) -> Outcome:
        for line, ok_codes in ((f"MAIL FROM:<{sender}>", (250,)),
                               (f"RCPT TO:<{to_address}>", (250, 251)),
                               ("DATA", (354,))):
            reply = await client.command(line)
            if reply.code not in ok_codes:
                verb = line.split(":")[0].split()[0]
                return _refused(verb, reply.code, reply.text, where)
        await client.send(dot_stuff(data))
        reply = await client.read_reply()
        if reply.code != 250:
            return _refused("the message", reply.code, reply.text, where)
        return Outcome(True, reasons.SUCCEEDED,
                       f"test message to {to_address} accepted by {where}: {reply.text}")

    result, sent = await run_session(account, secrets, now=now, authenticate=True,
                                     tokens=tokens, transaction=transaction)
    if not result.connection.ok:
        return result.connection
    if result.authentication is not None and not result.authentication.ok:
        return result.authentication
    return sent or Outcome(False, reasons.CONNECT_FAILED, f"no session with {where}")


def _refused(what: str, code: int, text: str, where: str) -> Outcome:
    hint = ("retry later" if 400 <= code < 500 else
            "check the sender address (identity.emailAddress may need to match the login) "
            "and the recipient")
    return Outcome(False, reasons.SERVER_REJECTED, f"{where} refused {what}: {text}: {hint}")
