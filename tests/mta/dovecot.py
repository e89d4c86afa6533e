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
    """One AUTH exchange as Dovecot logged it."""

    mechanism: str
    local_port: int
    secured: bool
    user: str | None  # the login Dovecot resolved (None before the result line)
    result: str  # "OK" or "FAIL" (or "" if the reply was not logged yet)


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

    def auth_requests(self, since: int = 0) -> list[AuthRequest]:
        """The AUTH requests logged after byte offset `since`, in order."""
        return parse_auth_log(self.log_text()[since:])

    def log_size(self) -> int:
        return len(self.log_text())


_IN = re.compile(r"auth: Debug: client in: AUTH\t(\d+)\t(\S+)\t(.*)")
_OUT = re.compile(r"auth: Debug: client (?:passdb )?out: (OK|FAIL)\t(\d+)\t?(.*)")


def parse_auth_log(text: str) -> list[AuthRequest]:
    """AUTH requests from Dovecot's debug log: `client in: AUTH` lines joined to their replies."""
    pending: dict[str, dict[str, object]] = {}
    done: list[dict[str, object]] = []
    for line in text.splitlines():
        if m := _IN.search(line):
            fields = dict(f.partition("=")[::2] for f in m.group(3).split("\t"))
            entry: dict[str, object] = {"mechanism": m.group(2).upper(),
                                        "local_port": int(fields.get("lport", "0") or 0),
                                        "secured": "secured" in fields, "user": None, "result": ""}
            pending[m.group(1)] = entry
            done.append(entry)
        elif (m := _OUT.search(line)) and m.group(2) in pending:
            entry = pending.pop(m.group(2))
            entry["result"] = m.group(1)
            fields = dict(f.split("=", 1) for f in m.group(3).split("\t") if "=" in f)
            entry["user"] = fields.get("user")
    return [AuthRequest(**e) for e in done]  # type: ignore[arg-type]
