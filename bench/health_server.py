"""Health/metrics server under a connection flood (issue 18 item 7): threads and RSS.

    .venv/bin/python bench/health_server.py [CONNECTIONS]   # default 4000

Opens CONNECTIONS half-sent requests to an in-process HealthServer, then prints the thread count
and the RSS growth (VmRSS of /proc/self/status) against the target (< 10 MB). Client sockets are
in the same process, so their own cost is included: the figure is an upper bound.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.run.metrics import HealthServer  # noqa: E402


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(count: int = 4000) -> int:
    server = HealthServer("127.0.0.1:0", lambda: True)
    server.start()
    threads_before, rss_before = threading.active_count(), rss_kib()
    socks = []
    started = time.monotonic()
    for _ in range(count):
        s = socket.create_connection(server.address, timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    while server.evicted < count - server.max_connections and time.monotonic() - started < 30:
        time.sleep(0.01)
    threads_after, rss_after = threading.active_count(), rss_kib()
    growth_mb = (rss_after - rss_before) / 1024
    print(f"connections opened      {count}")
    print(f"open on the server      {server.active} (bound {server.max_connections})")
    print(f"threads before/after    {threads_before}/{threads_after}")
    print(f"RSS growth              {growth_mb:.1f} MB (target < 10 MB: "
          f"{'met' if growth_mb < 10 else 'MISSED'})")
    for s in socks:
        s.close()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4000))
