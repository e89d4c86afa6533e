"""Pure checks and rewrites of one relayed message (bytes in, verdicts or bytes out).

- `bare_line_ending(data)`: a CR or LF not part of CRLF, which SMTP smuggling relies on (a
  message that ends differently for two servers); Postfix refuses them the same way
  (smtpd_forbid_bare_newline).
- `header_senders(data)`: the addresses of the From (and Sender) headers, which must be the
  account's own.
- `graph_recipients(data, rcpts)`: the MIME for Graph's sendMail, whose recipients are read from
  the To, Cc and Bcc headers, not from an envelope: To and Cc keep only addresses the application
  gave as RCPT TO, and every other RCPT TO address is listed in Bcc, so Bcc and envelope-only
  recipients are delivered and no address that appears only in a header is. The body is
  untouched (byte for byte), only those header lines are replaced.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Sequence
from email.parser import BytesHeaderParser

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_RECIPIENT_HEADERS = ("to", "cc", "bcc")


def bare_line_ending(data: bytes) -> bool:
    """True when data holds a CR or an LF that is not part of a CRLF pair."""
    return _BARE.search(data) is not None


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(header block with its final CRLF, the rest from the empty line on)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data if data.endswith(b"\r\n") else data + b"\r\n", b""
    return data[:end + 2], data[end + 2:]


def _addresses(headers: bytes, *names: str) -> list[str]:
    msg = BytesHeaderParser(policy=email.policy.compat32).parsebytes(headers)
    values = [str(v) for name in names for v in msg.get_all(name, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def header_senders(data: bytes) -> list[str]:
    """The addresses of the From and Sender headers (lower case)."""
    head, _ = _split(data)
    return [a.lower() for a in _addresses(head, "From", "Sender")]


def _header_lines(head: bytes) -> list[bytes]:
    """The header block as whole fields (a folded field keeps its continuation lines)."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def _field(name: str, addresses: Sequence[str]) -> bytes:
    return f"{name}: {', '.join(addresses)}".encode()


def graph_recipients(data: bytes, rcpts: Sequence[str]) -> bytes:
    """The message with To/Cc limited to envelope recipients and the others in Bcc."""
    head, rest = _split(data)
    wanted = {r.lower(): r for r in rcpts}
    shown: set[str] = set()
    kept: dict[str, list[str]] = {"To": [], "Cc": []}
    for name in ("To", "Cc"):
        for addr in _addresses(head, name):
            if addr.lower() in wanted and addr.lower() not in shown:
                kept[name].append(addr)
                shown.add(addr.lower())
    hidden = [r for key, r in wanted.items() if key not in shown]
    fields = [f for f in _header_lines(head)
              if f.split(b":", 1)[0].strip().lower().decode("latin-1")
              not in _RECIPIENT_HEADERS]
    for name, addresses in (("To", kept["To"]), ("Cc", kept["Cc"]), ("Bcc", hidden)):
        if addresses:
            fields.append(_field(name, addresses))
    return b"\r\n".join(fields) + b"\r\n" + rest
