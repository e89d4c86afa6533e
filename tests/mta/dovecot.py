"""A private Dovecot that only authenticates: Postfix's SASL backend (`smtpd_sasl_type = dovecot`).

No protocol listens on the network: the only listener is the auth socket in the instance's
directory. Users come from a passwd-file written by the test (plain-text passwords: they are
generated per session and never leave the temporary directory; one file per login). `auth_debug` puts every request
into the log file — the mechanism, the local port (which Postfix service asked), whether the
session was TLS-protected ("secured") and the result — with the password hidden, so a test can
judge the probe by what Dovecot saw.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.mta.process import stop_group, wait_for


@dataclass(frozen=True)
class AuthRequest:
    """One AUTH request as Dovecot's auth process received it (`client in: AUTH`)."""

    mechanism: str
    secured: bool  # the client (Postfix) said the session is TLS-protected


@dataclass(frozen=True)
class AuthResult:
    """One AUTH result as Dovecot logged its reply (`client passdb out: OK|FAIL`)."""

    user: str
    result: str  # "OK" or "FAIL"


class Dovecot:
    """One private dovecot (`dovecot -F -c DIR/dovecot.conf`), stopped by its process group."""

    def __init__(self, executable: str, root: Path, *, mechanisms: Sequence[str] = ("plain", "login"),
                 failure_delay: str = "2 secs") -> None:
        self.executable = executable
        self.root = root
        self.mechanisms = tuple(mechanisms)
        self.failure_delay = failure_delay
        self.users: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)

    @property
    def socket(self) -> Path:
        """The auth socket Postfix connects to (its smtpd_sasl_path)."""
        return self.root / "run" / "auth-client"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    def add_users(self, users: Mapping[str, str]) -> None:
        """Add logins, one passwd-file each (`users/<login>`): Dovecot stats a passwd-file at
        most once a second, so a login added to a shared file could go unseen for a second;
        a file of its own is read when its login is first asked for."""
        self.users.update(users)
        self._write_users()

    def _write_users(self) -> None:
        directory = self.root / "users"
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)
        for login, password in self.users.items():
            path = directory / login
            if not path.exists():
                tmp = directory / f".{login}.tmp"
                tmp.write_text(f"{login}:{{PLAIN}}{password}::::::\n")
                os.chmod(tmp, 0o644)
                tmp.replace(path)

    def start(self) -> None:
        self._write_users()
        conf = self.root / "dovecot.conf"
        conf.write_text(f"""\
# A private, auth-only Dovecot for the test suite (tests/mta/dovecot.py).
instance_name = email-reconciler-test-{os.getpid()}-{self.root.name}
base_dir = {self.root}/run
state_dir = {self.root}/state
protocols =
listen = 127.0.0.1
ssl = no
log_path = {self.log_path}
auth_mechanisms = {' '.join(self.mechanisms)}
auth_failure_delay = {self.failure_delay}
auth_verbose = yes
auth_debug = yes
auth_debug_passwords = no
auth_verbose_passwords = no
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/users/%u
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
""")
        with open(self.root / "dovecot.stderr", "wb") as stderr:
            self.process = subprocess.Popen(
                [self.executable, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        wait_for(lambda: self.socket.exists() or self.process.poll() is not None,  # type: ignore[union-attr]
                 timeout=20, what=f"dovecot auth socket {self.socket}")
        if self.process.poll() is not None:
            raise RuntimeError(f"dovecot did not start: {(self.root / 'dovecot.stderr').read_text()}"
                               f"{self.log_text()}")

    def stop(self) -> None:
        if self.process is not None:
            # SIGTERM to the master alone takes seconds (it waits for its log process);
            # SIGINT to the group is the same shutdown for every process at once.
            stop_group(self.process, signal.SIGINT, whole_group=True)
            self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def auth_log(self, since: int = 0) -> tuple[list[AuthRequest], list[AuthResult]]:
        """The AUTH requests and results logged after offset `since`, in order.

        Postfix's smtpd processes each open their own auth connection and all number their
        first request 1, so a request and its result cannot be paired when several run at
        once: tests look at results by user, and at mechanisms when one request ran."""
        return parse_auth_log(self.log_text()[since:])

    def log_size(self) -> int:
        return len(self.log_text())


_IN = re.compile(r"auth: Debug: client in: AUTH\t\d+\t(\S+)\t(.*)")
_OUT = re.compile(r"auth: Debug: client (?:passdb )?out: (OK|FAIL)\t\d+\t?(.*)")


def parse_auth_log(text: str) -> tuple[list[AuthRequest], list[AuthResult]]:
    """AUTH requests (`client in: AUTH`) and results (`client ... out: OK|FAIL`) of a debug log."""
    requests: list[AuthRequest] = []
    results: list[AuthResult] = []
    for line in text.splitlines():
        if m := _IN.search(line):
            fields = m.group(2).split("\t")
            requests.append(AuthRequest(m.group(1).upper(), "secured" in fields))
        elif m := _OUT.search(line):
            fields = dict(f.partition("=")[::2] for f in m.group(2).split("\t"))
            results.append(AuthResult(fields.get("user", ""), m.group(1)))
    return requests, results
