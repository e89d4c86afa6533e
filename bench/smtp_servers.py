"""Loopback SMTP servers in their own process, so the probing process has its own core.

Run by the benchmarks as `python bench/smtp_servers.py --count K --banner-delay S [--mode M]`.
Protocol on stdio, one JSON object per line:
  -> {"ports": [...], "ca_pem": "..."}          once the servers listen on 127.0.0.1
  <- {"users": "PATH"}                           a JSON file of login -> password to accept
  -> {"ok": true}
  <- EOF                                        stop the servers and exit
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from common import BENCH, env, stop_child


def serve(count: int, banner_delay: float, mode: str) -> int:
    from reconciler.demo.certificates import ThrowawayCA
    from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions

    ca = ThrowawayCA()
    users: dict[str, str] = {}  # filled in place once the parent has written the accounts
    with ServerLoop() as loop:
        servers = [loop.smtp(SmtpServerOptions(
            mode=mode,  # type: ignore[arg-type]
            tls_context=None if mode == "plain" else ca.server_context(),
            users=users, banner_delay=banner_delay, mechanisms=("PLAIN", "LOGIN")))
            for _ in range(count)]
        _send(sys.stdout, {"ports": [s.port for s in servers], "ca_pem": ca.ca_pem})
        for line in sys.stdin:
            request = json.loads(line)
            if "users" in request:
                users.update(json.loads(Path(request["users"]).read_text()))
                _send(sys.stdout, {"ok": True})
        for s in servers:
            s.close()
    return 0


def _send(stream: IO[str], message: Mapping[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


class ServerProcess:
    """The parent's handle: start, hand over the users, stop (also as a context manager)."""

    def __init__(self, count: int = 1, banner_delay: float = 0.0, mode: str = "STARTTLS") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "smtp_servers.py"), "--count", str(count),
             "--banner-delay", str(banner_delay), "--mode", mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline() or "{}")
        if "ports" not in hello:
            self.close()
            raise RuntimeError("the benchmark SMTP servers did not start")
        self.ports: list[int] = hello["ports"]
        self.ca_pem: str = hello["ca_pem"]

    def accept(self, users_file: Path) -> None:
        """Tell the servers which logins and passwords to accept."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _send(self.proc.stdin, {"users": str(users_file)})
        if not json.loads(self.proc.stdout.readline() or "{}").get("ok"):
            raise RuntimeError("the benchmark SMTP servers did not take the users")

    def close(self) -> None:
        stop_child(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--banner-delay", type=float, default=0.0)
    parser.add_argument("--mode", default="STARTTLS", choices=["STARTTLS", "SMTPS", "plain"])
    args = parser.parse_args()
    sys.exit(serve(args.count, args.banner_delay, args.mode))
