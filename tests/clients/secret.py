"""The Secret a client gets, rendered by the reconciler and laid out as Kubernetes gives it.

`mount(...)` writes every key as a file (a Secret volume) and returns the envFrom variables
(every key that is a valid variable name). Nothing else reaches the client.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler import reasons
from reconciler.model import Outcome, ProbeResult
from reconciler.state.render import render_data
from tests.clients.servers import Kind
from tests.smtpservers import LOOPBACK, make_account

FROM_ADDRESS = "billing@example.test"
FROM_NAME = "Zoë Billing"
REPLY_TO = "help@example.test"
USERNAME = "smtp-user@example.test"
#: The password every format must carry intact (issue 15).
PASSWORD = "p@ss:w/rd%?#&= é"
#: The same specials without the non-ASCII letter, for clients built on Python's smtplib, which
#: cannot send a non-ASCII password (the PasswordNotASCII warning says so).
ASCII_PASSWORD = "p@ss:w/rd%?#&= e"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OK = Outcome(True, reasons.SUCCEEDED, "")


@dataclass(frozen=True)
class Mounted:
    dir: Path
    env: dict[str, str]


def mount(root: Path, kind: Kind, port: int, ca_pem: str, password: str,
          host: str = LOOPBACK) -> Mounted:
    """Render the account for a server kind and lay its Secret out under root/kind.

    `stripped` gets the STARTTLS account's Secret (the attacker's server sits where the
    STARTTLS server was), the relay an unauthenticated security-None account.
    """
    if kind == "relay":
        account = make_account(host=host, port=port, security="None", method="None", truststore=None,
                               display_name=FROM_NAME, email_address=FROM_ADDRESS)
        result = ProbeResult(connection=OK, authentication=OK)
    else:
        account = make_account(host=host, port=port, security="SMTPS" if kind == "smtps" else "STARTTLS",
                               display_name=FROM_NAME, email_address=FROM_ADDRESS,
                               user_id=USERNAME, timeout_seconds=20)
        result = ProbeResult(connection=OK, authentication=OK,
                             credentials={"password": password}, ca_pem=ca_pem)
    assert account.smtp is not None
    account = dataclasses.replace(account, smtp=dataclasses.replace(
        account.smtp, identity=dataclasses.replace(account.smtp.identity, reply_to=REPLY_TO)))
    data = render_data(account, result)
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    for key, value in data.items():
        (folder / key).write_bytes(value)
        if ENV_NAME.match(key):
            env[key] = value.decode("utf-8")
    return Mounted(folder, env)
