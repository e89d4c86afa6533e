"""Cost of one `redact_text` call as the number of registered secrets grows (issue 26 item 4).

    .venv/bin/python bench/redaction.py [--secrets 10,1000,10000,100000] [--shared-prefix]

Registers N random 20-character passwords (each in all its encoded forms, as the probe does;
with --shared-prefix `pw-bench-N`, as bench/blackbox.py's accounts, all in one bucket of the
index), then times `redact_text` over a 200-character log line holding no secret and one holding
one, and prints the CPU of a registration; with --memory, the registry's bytes per password
(tracemalloc, which also slows the registrations).
The registry must cost the same per call at any N: a sorted list of every form scanned per call
(the registry before issue 26) grew linearly, about 31 ms a call at 10,000 accounts.
"""

from __future__ import annotations

import argparse
import secrets
import string
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler import log  # noqa: E402

LINE = ('{"account": "shop/billing", "event": "probe failed", "error": "535 5.7.8 Username and '
        'Password not accepted. Learn more at https://support.example.com/mail/?p=BadCredentials '
        'x1-20020a05", "level": "warning"}')


def per_call(text: str, rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        log.redact_text(text)
    return (time.process_time() - start) / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", default="10,1000,10000,100000")
    parser.add_argument("--shared-prefix", action="store_true",
                        help="register pw-bench-N (one prefix) instead of random passwords")
    parser.add_argument("--memory", action="store_true", help="trace the registry's memory")
    args = parser.parse_args()
    alphabet = string.ascii_letters + string.digits + "-_:/%+"
    registered = 0
    last = ""
    cpu = size = 0.0
    if args.memory:
        tracemalloc.start()
    print(f"{'secrets':>8} {'forms':>9} {'no secret':>12} {'one secret':>12} {'register':>11}"
          f" {'bytes/password':>15}")
    for n in (int(x) for x in args.secrets.split(",")):
        values = [f"pw-bench-{i}" if args.shared_prefix
                  else "".join(secrets.choice(alphabet) for _ in range(20))
                  for i in range(registered, n)]
        before = tracemalloc.get_traced_memory()[0]
        start = time.process_time()
        for last in values:
            log.register_secret(last)
        cpu += time.process_time() - start
        size += tracemalloc.get_traced_memory()[0] - before
        registered = n
        with_secret = LINE.replace("x1-20020a05", last)
        assert last not in log.redact_text(with_secret)
        clean, dirty = per_call(LINE, 2000), per_call(with_secret, 2000)
        memory = f"{size / n:.0f}" if args.memory else "-"
        print(f"{n:>8} {len(log._hashes):>9} {clean * 1e6:>9.1f} us {dirty * 1e6:>9.1f} us"
              f" {cpu / n * 1e6:>8.1f} us {memory:>15}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
