"""A private Postfix: its own config, queue and data directories, smtpd services on 127.0.0.1.

One instance carries many server setups at once: each `Service` is an smtpd line in master.cf
with its own port, its own `-o` overrides and its own `syslog_name` (postfix/<name>), so the
log of one setup can be read apart from the others in the shared `maillog_file`.

The master runs in the foreground as our child (`master -d -c DIR`, in a process group of its
own) and is stopped by its PID; the group must be empty afterwards. Ports are picked free just
before the start; if another process takes one in between, master cannot bind it and the start
is retried on fresh ports.

Nothing may ever be queued: `queued()` lists every queue file, `postqueue()` asks Postfix.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.mta.process import stop_group, wait_for

DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")
META_DIRECTORY = Path("/etc/postfix")
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
START_ATTEMPTS = 5


@dataclass(frozen=True)
class Service:
    """One smtpd on 127.0.0.1: a name (its syslog_name postfix/<name>) and main.cf overrides."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)


def free_port() -> int:
    """A port nobody listens on right now (may be taken before master binds it: start retries)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: each socket stays bound until all are picked (one after the other,
    the OS may hand out a port it just got back, and master cannot bind one port twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open (/proc/PID/fd links socket:[N])."""
    inodes: set[str] = set()
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # the process is gone
        pass
    return inodes


def _listening_ports(owner: int | None = None) -> set[int]:
    """Local ports in LISTEN state on 127.0.0.1 (Linux /proc/net/tcp); with `owner`, only the
    listening sockets that process holds (another process may listen on a port we picked)."""
    inodes = _socket_inodes(owner) if owner is not None else None
    ports: set[int] = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address, port = local.split(":")
            if state == "0A" and address == "0100007F" and (inodes is None or inode in inodes):
                ports.add(int(port, 16))
    return ports


def _option(name: str, value: str) -> str:
    """A master.cf -o argument; values with spaces use the { name = value } form (Postfix 3.0+)."""
    return f"-o {{ {name} = {value} }}" if (" " in value or not value) else f"-o {name}={value}"


class Postfix:
    """A private Postfix instance under `root` with `services` (start() picks their ports)."""

    def __init__(self, root: Path, services: Sequence[Service], *,
                 main: Mapping[str, str] | None = None, files: Mapping[str, str] | None = None
                 ) -> None:
        self.root = root
        self.services = {s.name: s for s in services}
        self.main = dict(main or {})
        self.files = dict(files or {})  # lookup tables etc., written into the config directory
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.postfix = "/usr/sbin/postfix"
        self.postqueue_cmd = "/usr/sbin/postqueue"

    @property
    def config_directory(self) -> Path:
        return self.root / "etc"

    @property
    def queue_directory(self) -> Path:
        return self.root / "queue"

    @property
    def log_path(self) -> Path:
        return self.root / "maillog"

    def path(self, name: str) -> Path:
        """A file written from `files` (for lookup tables: `texthash:` + this path)."""
        return self.config_directory / name

    # ------------------------------------------------------------------ configuration

    def _main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.root / "data"),
            "daemon_directory": str(DAEMON_DIRECTORY),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.mta.test",
            "mydomain": "mta.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_session_cache_database": "",
            "smtpd_tls_security_level": "may",
            "anvil_status_update_time": "1s",
            # nothing here ever delivers: refuse rather than queue if a message ever got through
            "default_transport": "error:the MTA test bed never delivers",
            "relay_transport": "error:the MTA test bed never delivers",
        }
        settings.update(self.main)
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def _master_cf(self) -> str:
        lines = []
        for name, service in self.services.items():
            # an idle smtpd leaves after 5 s (default 100 s): dozens of them would otherwise
            # stay for minutes, ~10 MB each, on a machine other test runs share
            opts = {"syslog_name": f"postfix/{name}", "max_idle": "5s", **service.options}
            args = " ".join(_option(k, v) for k, v in opts.items())
            lines.append(f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd {args}")
        # the daemons smtpd talks to, none chrooted (the queue directory has no chroot tree)
        lines += [
            "anvil unix - - n - 1 anvil",
            "cleanup unix n - n - 0 cleanup",
            "rewrite unix - - n - - trivial-rewrite",
            "proxymap unix - - n - - proxymap",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "showq unix n - n - - showq",
            "qmgr unix n - n 300 1 qmgr",
            "error unix - - n - - error",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        self.config_directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            self.path(name).write_text(text)
        (self.config_directory / "main.cf").write_text(self._main_cf())
        (self.config_directory / "master.cf").write_text(self._master_cf())
        # Postfix waits until a configuration file is at least a second old (a file still
        # being edited); date them back so the start takes milliseconds, not seconds.
        past = time.time() - 60
        for path in self.config_directory.iterdir():
            os.utime(path, (past, past))

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Write the configuration, create the queue, run master; retry if a port was taken."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._create_directories()
        last_error = ""
        for _attempt in range(START_ATTEMPTS):
            self.ports = dict(zip(self.services, free_ports(len(self.services)), strict=True))
            self._write_config()
            offset = self.log_size()
            with open(self.root / "master.stderr", "ab") as stderr:
                self.process = subprocess.Popen(
                    [str(DAEMON_DIRECTORY / "master"), "-d", "-c", str(self.config_directory)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True)
            process, wanted = self.process, set(self.ports.values())

            def up(process: subprocess.Popen[bytes] = process, wanted: set[int] = wanted) -> bool:
                # master's own listeners: a port another process took in between also shows
                # as listening, and master exits on it only after binding the others
                return process.poll() is not None or wanted <= _listening_ports(process.pid)

            wait_for(up, timeout=30, what="postfix master to listen")
            if process.poll() is None:
                return
            last_error = self.log_text()[offset:] + (self.root / "master.stderr").read_text()
            self.process = None
            # master's "bind ...: Address already in use" is fatal before its log service runs
            # (so it is often in no file); a picked port someone else listens on says the same
            if "in use" not in last_error and not wanted & _listening_ports():
                break
        raise RuntimeError(f"postfix master did not start:\n{last_error}")

    def _create_directories(self) -> None:
        """The queue and data directories with the owners and modes of Postfix's own manifest
        (postfix-files: what `postfix check` would create, without its seconds of subprocesses)."""
        names = {"$queue_directory": self.queue_directory, "$data_directory": self.root / "data"}
        owners = {"root": 0, "$mail_owner": pwd.getpwnam("postfix").pw_uid, "-": -1}
        groups = {"-": -1, "$setgid_group": grp.getgrnam("postdrop").gr_gid}
        for line in (META_DIRECTORY / "postfix-files").read_text().splitlines():
            fields = line.split(":")
            if len(fields) < 5 or fields[1] != "d":
                continue
            base, _, rest = fields[0].partition("/")
            if base not in names:
                continue
            path = names[base] / rest if rest else names[base]
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, owners[fields[2]], groups[fields[3]])
            os.chmod(path, int(fields[4], 8))

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, signal.SIGTERM)
            self.process = None

    def _run(self, *argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}{self.log_text()[-2000:]}")
        return done.stdout + done.stderr

    # ------------------------------------------------------------------ what it did

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines(self, service: str, since: int = 0) -> list[str]:
        """The lines of one service's smtpd (and its TLS library) logged after byte `since`."""
        tag = f" postfix/{service}/"
        data = self.log_path.read_bytes()[since:] if self.log_path.exists() else b""
        return [line for line in data.decode(errors="replace").splitlines() if tag in line]

    def queued(self) -> list[str]:
        """Every queue file, relative to the queue directory (must always be empty)."""
        found = []
        for queue in QUEUES:
            base = self.queue_directory / queue
            if base.is_dir():
                found += [str(p.relative_to(self.queue_directory))
                          for p in base.rglob("*") if p.is_file()]
        return found

    def postqueue(self) -> str:
        """`postqueue -p` as Postfix itself reports the queue ("Mail queue is empty")."""
        return self._run(self.postqueue_cmd, "-c", str(self.config_directory), "-p")


SESSION_END = re.compile(r"postfix/(?P<service>[^/]+)/smtpd\[(?P<pid>\d+)\]: "
                         r"(?P<how>disconnect|lost connection after \S+|timeout after \S+) from "
                         r"(?P<client>\S+)(?P<rest>.*)")


@dataclass(frozen=True)
class Session:
    """One SMTP session as Postfix's smtpd logged it (its lines from connect to disconnect)."""

    service: str
    lines: tuple[str, ...]

    @property
    def ended(self) -> str:
        """"disconnect" (the client said QUIT or at least closed cleanly) or "lost connection after X"."""
        for line in self.lines:
            if m := SESSION_END.search(line):
                return m.group("how")
        return ""

    @property
    def closed(self) -> bool:
        """Whether smtpd logged the end of the session (its "disconnect from" line)."""
        return any(" disconnect from " in line for line in self.lines)

    @property
    def commands(self) -> dict[str, str]:
        """The disconnect line's counters (Postfix 3.0+): {"ehlo": "2", "auth": "0/1", ...}."""
        for line in self.lines:
            if " disconnect from " in line:
                rest = line.split(" disconnect from ", 1)[1].split(" ", 1)[1:]
                return dict(kv.split("=", 1) for kv in (rest[0].split() if rest else ()) if "=" in kv)
        return {}

    def text(self) -> str:
        return "\n".join(self.lines)


def sessions(lines: Iterable[str]) -> list[Session]:
    """Group one service's smtpd lines into sessions (an smtpd process serves one at a time)."""
    open_by_pid: dict[str, list[str]] = {}
    done: list[tuple[str, list[str]]] = []
    pattern = re.compile(r"postfix/([^/]+)/smtpd\[(\d+)\]: (.*)")
    for line in lines:
        m = pattern.search(line)
        if not m:
            continue
        service, pid, message = m.groups()
        if message.startswith("connect from "):
            open_by_pid[pid] = [line]
            done.append((service, open_by_pid[pid]))
        elif pid in open_by_pid:
            open_by_pid[pid].append(line)
            if SESSION_END.search(line) and message.startswith("disconnect from "):
                del open_by_pid[pid]
    return [Session(service, tuple(lines)) for service, lines in done]
