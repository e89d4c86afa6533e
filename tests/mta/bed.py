"""The MTA test bed: one private Postfix carrying every server setup, Dovecot behind it.

    bed = start_bed(root)          # a few hundred milliseconds
    port = bed.port("authonly")    # the smtpd service of that setup
    bed.stop()                     # stops every process by PID; nothing may be left running

Setups (`SERVICES`, one smtpd line each in master.cf, all on 127.0.0.1):

  authonly    AUTH offered only after STARTTLS (smtpd_tls_auth_only)
  smtps       wrapper-mode TLS (smtpd_tls_wrappermode)
  tls12       TLS at most 1.2            tls13     TLS 1.3 only
  wronghost   certificate for another name
  expired     certificate expired two days ago
  nochain     leaf certificate without its intermediate   fullchain  the same with it
  relay       no AUTH at all; 127.0.0.0/8 may relay
  loginonly   SASL through a Dovecot offering only LOGIN
  fqdnhelo    reject_non_fqdn_helo_hostname, answered at EHLO (smtpd_delay_reject = no);
              every EHLO name is logged (a WARN action)
  sendermap   reject_sender_login_mismatch, answered at MAIL FROM (smtpd_delay_reject = no)
  connlimit   smtpd_client_connection_count_limit = 20, loopback not exempt; no AUTH
  busy        smtpd_client_connection_count_limit = 2 (a test holds both: 421 to the probe)
  penalty     SASL through a Dovecot of its own (its failure delay and penalty are per client
              address, so a wrong password here must not slow the other setups' logins)
  tlsrequired STARTTLS required before MAIL FROM (smtpd_tls_security_level = encrypt); no AUTH
  nostarttls  no TLS at all; AUTH only to the plain session

With `smtpd_delay_reject = yes` (Postfix's default) the HELO and sender restrictions are answered
at RCPT TO, which the probe never sends: those two setups answer early on purpose, as servers that
reject at EHLO and MAIL FROM do.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.mta.dovecot import AuthRequest, AuthResult, Dovecot
from tests.mta.pki import ServerCertificates
from tests.mta.postfix import DAEMON_DIRECTORY, Postfix, Service, Session, sessions
from tests.mta.process import wait_for

TLS_AT_MOST_12 = "!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.3"
TLS_13_ONLY = "!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.2"
NO_AUTH = {"smtpd_sasl_auth_enable": "no"}
#: smtpd_sender_login_maps of the sendermap setup: address -> the login that owns it
#: (read by smtpd when it starts, so fixed for the session).
SENDER_LOGINS = {"sendas@example.com": "sendas@example.com"}


def _services(certs: dict[str, Path], dovecots: dict[str, Dovecot], etc: Path) -> list[Service]:
    return [
        Service("authonly", {"smtpd_tls_auth_only": "yes"}),
        Service("smtps", {"smtpd_tls_wrappermode": "yes", "smtpd_tls_security_level": "encrypt"}),
        Service("tls12", {"smtpd_tls_protocols": TLS_AT_MOST_12,
                          "smtpd_tls_mandatory_protocols": TLS_AT_MOST_12}),
        Service("tls13", {"smtpd_tls_protocols": TLS_13_ONLY,
                          "smtpd_tls_mandatory_protocols": TLS_13_ONLY}),
        Service("wronghost", {"smtpd_tls_chain_files": str(certs["wronghost"])}),
        Service("expired", {"smtpd_tls_chain_files": str(certs["expired"])}),
        Service("nochain", {"smtpd_tls_chain_files": str(certs["nochain"])}),
        Service("fullchain", {"smtpd_tls_chain_files": str(certs["fullchain"])}),
        Service("relay", {**NO_AUTH, "smtpd_relay_restrictions": "permit_mynetworks,reject"}),
        Service("loginonly", {"smtpd_sasl_path": str(dovecots["login"].socket)}),
        Service("fqdnhelo", {"smtpd_delay_reject": "no", "smtpd_helo_required": "yes",
                             "smtpd_helo_restrictions":
                                 f"check_helo_access regexp:{etc / 'helo_seen'},"
                                 "reject_invalid_helo_hostname,reject_non_fqdn_helo_hostname"}),
        Service("sendermap", {"smtpd_delay_reject": "no",
                              "smtpd_sender_login_maps": f"texthash:{etc / 'sender_logins'}",
                              "smtpd_sender_restrictions": "reject_sender_login_mismatch"}),
        Service("connlimit", {**NO_AUTH, "smtpd_client_connection_count_limit": "20",
                              "smtpd_client_event_limit_exceptions": ""}),
        Service("busy", {**NO_AUTH, "smtpd_client_connection_count_limit": "2",
                         "smtpd_client_event_limit_exceptions": ""}),
        Service("penalty", {"smtpd_sasl_path": str(dovecots["penalty"].socket)}),
        Service("tlsrequired", {**NO_AUTH, "smtpd_tls_security_level": "encrypt"}),
        Service("nostarttls", {"smtpd_tls_security_level": "none"}),
    ]


@dataclass
class Bed:
    """The running instances, the certificates and the generated logins."""

    root: Path
    certs: ServerCertificates
    postfix: Postfix
    dovecots: dict[str, Dovecot]
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def ca_pem(self) -> str:
        return self.certs.root_pem

    def port(self, service: str) -> int:
        return self.postfix.ports[service]

    def user(self, login: str, dovecot: str = "main") -> str:
        """Create a login in a Dovecot's passwd-file; returns its generated password."""
        password = self.passwords.setdefault(login, f"pw-{secrets.token_urlsafe(12)}")
        self.dovecots[dovecot].add_users({login: password})
        return password

    def sessions(self, service: str, since: int, *, at_least: int, timeout: float = 20
                 ) -> list[Session]:
        """The service's SMTP sessions logged after byte `since`, once at least `at_least` have
        ended and none is still open (Postfix logs the disconnect after the client is gone)."""
        found: list[Session] = []

        def settled() -> bool:
            nonlocal found
            found = sessions(self.postfix.log_lines(service, since))
            return len(found) >= at_least and all(s.closed for s in found)

        try:
            wait_for(settled, timeout=timeout, what=f"{at_least} ended sessions of {service}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; logged:\n" + "\n".join(
                self.postfix.log_lines(service, since))) from None
        return found

    def max_connection_count(self, service: str, since: int, timeout: float = 20) -> int:
        """The most simultaneous connections from 127.0.0.1 that Postfix's anvil counted on the
        service after byte `since` (anvil logs its statistics each anvil_status_update_time)."""
        ident = f"(127.0.0.1:{self.port(service)}:127.0.0.1)"
        counts: list[int] = []

        def logged() -> bool:
            data = self.postfix.log_path.read_bytes()[since:].decode(errors="replace")
            counts[:] = [int(m.group(1)) for m in re.finditer(
                rf"anvil\[\d+\]: statistics: max connection count (\d+) for {re.escape(ident)}",
                data)]
            return bool(counts)

        wait_for(logged, timeout=timeout, what=f"anvil statistics for {service}")
        return max(counts)

    def auth_log(self, dovecot: str, since: int, timeout: float = 20
                 ) -> tuple[list[AuthRequest], list[AuthResult]]:
        """A Dovecot's AUTH requests and results logged after offset `since`, once every
        request has its result (the log process writes a little after the reply went out)."""
        found: tuple[list[AuthRequest], list[AuthResult]] = ([], [])

        def complete() -> bool:
            nonlocal found
            found = self.dovecots[dovecot].auth_log(since)
            return len(found[0]) == len(found[1])

        try:
            wait_for(complete, timeout=timeout, what=f"dovecot {dovecot} to log AUTH results")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{self.dovecots[dovecot].log_text()[since:]}") from None
        return found

    def stop(self) -> None:
        """Stop every instance in parallel (Dovecot takes a few seconds to wind down)."""
        errors: list[BaseException] = []

        def stop(instance: Postfix | Dovecot) -> None:
            try:
                instance.stop()
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=stop, args=(i,))
                   for i in (self.postfix, *self.dovecots.values())]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]


def missing_tools() -> list[str]:
    """What the bed needs and does not have (empty: it can run)."""
    gone = [name for name in ("postfix", "postqueue", "dovecot") if shutil.which(name) is None]
    if not (DAEMON_DIRECTORY / "master").exists():
        gone.append(str(DAEMON_DIRECTORY / "master"))
    return gone


@contextmanager
def running_bed() -> Iterator[Bed]:
    """Start the bed in a fresh directory; stop it and remove the directory afterwards.

    The directory is made with mkdtemp under the system temporary directory rather than
    pytest's tmp_path: Postfix's and Dovecot's unprivileged processes must traverse it, and
    pytest's base directory is private to the user (mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="email-reconciler-mta-"))
    root.chmod(0o755)
    bed = None
    try:
        bed = start_bed(root)
        yield bed
    finally:
        if bed is not None:
            bed.stop()
        if not os.environ.get("MTA_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


def start_bed(root: Path) -> Bed:
    dovecot = shutil.which("dovecot") or "dovecot"
    certs = ServerCertificates(root / "certs")
    files = {
        "fullchain": certs.issue("fullchain"),
        "nochain": certs.issue("nochain", with_intermediate=False),
        "wronghost": certs.issue("wronghost", "mail.other-host.test"),
        "expired": certs.issue("expired", expired=True),
    }
    default = certs.issue("default")
    dovecots = {
        "main": Dovecot(dovecot, root / "dovecot-main"),
        "login": Dovecot(dovecot, root / "dovecot-login", mechanisms=("login",)),
        "penalty": Dovecot(dovecot, root / "dovecot-penalty"),
    }
    postfix = Postfix(root / "postfix", [], main={
        "smtpd_tls_chain_files": str(default),
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": str(dovecots["main"].socket),
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_relay_restrictions": "permit_mynetworks,permit_sasl_authenticated,reject",
    }, files={
        "sender_logins": "".join(f"{a} {o}\n" for a, o in SENDER_LOGINS.items()),
        # WARN logs the EHLO name ("NOQUEUE: warn: EHLO from ...; helo=<NAME>") and goes on
        "helo_seen": "/./ WARN EHLO name seen\n",
    })
    postfix.services = {s.name: s for s in _services(files, dovecots,
                                                       postfix.config_directory)}
    bed = Bed(root, certs, postfix, dovecots)
    started: list[Postfix | Dovecot] = []
    try:
        for d in dovecots.values():
            d.start()
            started.append(d)
        postfix.start()
        started.append(postfix)
    except BaseException:
        for instance in started:
            instance.stop()
        raise
    return bed
