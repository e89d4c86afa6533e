"""Real clients configured only from the published Secret send through real TLS servers (issue 15).

Twelve clients × {STARTTLS, SMTPS, plain relay} = 36 sends, each checked on the server side: TLS
or not, the AUTH user, the envelope, the From name and address, Reply-To. Then each client that
holds the STARTTLS Secret meets a server that offers no STARTTLS and takes AUTH in clear, and
must refuse: no AUTH, no message. The password `p@ss:w/rd%?#&= é` and the display name
`Zoë Billing` go through every format; the Python smtplib clients (smtplib, Django and the two
EMAIL_URL parsers) get the same specials without `é`, since smtplib cannot send a non-ASCII
password: that is the PasswordNotASCII warning, checked at the end.

A missing client skips with what to install (fails with CI=true), see tests/system.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from reconciler import reasons
from reconciler.model import Outcome, ProbeResult
from reconciler.state.formats import format_warnings
from tests.clients.runners import SNIPPETS, Client, JavaBuild, Job, clients, symfony_can_refuse
from tests.clients.secret import (
    ASCII_PASSWORD,
    FROM_ADDRESS,
    FROM_NAME,
    PASSWORD,
    REPLY_TO,
    USERNAME,
    mount,
)
from tests.clients.servers import KINDS, ClientServers, Kind
from tests.smtpservers import ServerLoop, ThrowawayCA, make_account

NAMES = ("javamail", "spring", "nodemailer-json", "nodemailer-url", "symfony", "django",
         "dj-email-url", "django-environ", "smtplib", "ruby-mail", "msmtp", "swaks")
SENDS: tuple[Kind, ...] = ("starttls", "smtps", "relay")


@dataclass
class Outcomes:
    servers: ClientServers
    jobs: dict[Kind, Job]
    errors: dict[Kind, str | None]


@dataclass
class World:
    loop: ServerLoop
    ca: ThrowawayCA
    root: Path
    clients: dict[str, Client]
    done: dict[str, Outcomes] = field(default_factory=dict)

    def outcome(self, name: str) -> Outcomes:
        """Run all four sends of one client (once per module), concurrently where it can."""
        client = self.clients[name]
        client.requires()
        if name not in self.done:
            password = ASCII_PASSWORD if client.ascii_password_only else PASSWORD
            servers = ClientServers(self.loop, self.ca, {USERNAME: password})
            jobs = {kind: Job(kind, mount(self.root / name, kind, servers[kind].port,
                                          self.ca.ca_pem, password, client.host),
                              f"{name}-{kind}@rcpt.test", f"{name} via {kind}")
                    for kind in KINDS}
            errors = client.run(list(jobs.values()))
            self.done[name] = Outcomes(servers, jobs, dict(zip(jobs, errors, strict=True)))
        return self.done[name]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    loop = ServerLoop()
    try:
        build = JavaBuild(tmp_path_factory.mktemp("java-classes"))
        yield World(loop, ThrowawayCA(), tmp_path_factory.mktemp("mounts"), clients(build))
    finally:
        loop.close()


def _headers(content: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", content, maxsplit=1)[0]


@pytest.mark.parametrize("kind", SENDS)
@pytest.mark.parametrize("name", NAMES)
def test_client_sends_with_the_published_secret(world: World, name: str, kind: Kind) -> None:
    out = world.outcome(name)
    assert out.errors[kind] is None, f"{name} could not send via {kind}: {out.errors[kind]}"
    record, job = out.servers[kind], out.jobs[kind]
    assert len(record.messages) == 1
    got = record.messages[0]
    if kind == "relay":
        assert not got.tls and got.authenticated_as is None and record.auths == []
    else:
        assert got.tls and got.tls_version in ("TLSv1.2", "TLSv1.3")
        assert got.authenticated_as == USERNAME
        assert record.auths and all(a.tls and a.accepted and a.login == USERNAME
                                    for a in record.auths)
    assert got.mail_from == FROM_ADDRESS
    assert got.rcpt_tos == (job.to,)
    assert _headers(got.content).isascii(), "headers must be 7-bit (RFC 2047 for the name)"
    msg = BytesParser(policy=policy.default).parsebytes(got.content)
    sender = msg["From"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [(FROM_NAME, FROM_ADDRESS)]
    assert [a.addr_spec for a in msg["Reply-To"].addresses] == [REPLY_TO]
    assert msg["Subject"] == job.subject


REFUSERS = [n for n in NAMES if n != "symfony" or symfony_can_refuse()]


@pytest.mark.parametrize("name", REFUSERS)
def test_client_refuses_a_server_that_drops_starttls(world: World, name: str) -> None:
    out = world.outcome(name)
    record = out.servers["stripped"]
    assert record.connections >= 1, f"{name} never connected: {out.errors['stripped']}"
    assert out.errors["stripped"] is not None, f"{name} sent through a server without STARTTLS"
    assert record.auths == [], f"{name} sent its password in clear"
    assert record.messages == []


@pytest.mark.skipif(symfony_can_refuse(), reason="this Symfony Mailer honours require_tls")
def test_symfony_before_7_3_cannot_refuse_documented(world: World) -> None:
    """Symfony Mailer before 7.3 ignores require_tls: a known limitation, not counted above."""
    out = world.outcome("symfony")
    record = out.servers["stripped"]
    assert out.errors["stripped"] is None
    assert [a.tls for a in record.auths] == [False]  # the password went out in clear


def test_smtplib_cannot_send_a_non_ascii_password_as_the_warning_says(world: World,
                                                                      tmp_path: Path) -> None:
    servers = ClientServers(world.loop, world.ca, {USERNAME: PASSWORD})
    mounted = mount(tmp_path, "starttls", servers["starttls"].port, world.ca.ca_pem, PASSWORD)
    env = {"PATH": "/usr/bin:/bin", **mounted.env, "SSL_CERT_FILE": str(mounted.dir / "ca.crt")}
    proc = subprocess.run([sys.executable, str(SNIPPETS / "send-smtplib.py"), "x@rcpt.test", "s"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "UnicodeEncodeError" in proc.stderr
    assert servers["starttls"].auths == [] and servers["starttls"].messages == []
    account = make_account()
    result = ProbeResult(connection=Outcome(True, reasons.SUCCEEDED, ""),
                         credentials={"password": PASSWORD})
    assert [w.reason for w in format_warnings(account, result)] == [reasons.PASSWORD_NOT_ASCII]
