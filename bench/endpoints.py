"""Endpoint probes vs accounts (issue 26 items 2 and 7): sessions opened per interval for N accounts
on H hosts, computed from the product's own pure rules, no sockets.

    .venv/bin/python bench/endpoints.py [--accounts 100000] [--hosts 10] [--interval 600]
                                        [--auth-interval 86400]

Every account is Ready and in its steady state: its last probe and its last AUTH spread over
their intervals. One interval is simulated to warm up, the next one is counted. Each due probe is
decided by `state.schedule.probe_decision` (AUTH or not) and paced by `next_probe_time` (the
jittered interval); a probe with AUTH is its own session and refreshes its endpoint's result, one
without AUTH takes the endpoint's latest result when `probe.endpoints.usable` says it may (newer
than the account's last probe, younger than its interval), else opens the one endpoint session
the others then share. Probes run one after the other here; the controller's single flight makes
concurrent ones share too. Without sharing every probe is a session.
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.model import (  # noqa: E402
    Account,
    Authentication,
    Connection,
    Identity,
    KeyRef,
    ProbeSettings,
    Publish,
    SmtpSpec,
)
from reconciler.probe.endpoints import usable  # noqa: E402
from reconciler.state.schedule import next_probe_time, probe_decision, rfc3339  # noqa: E402

T0 = datetime(2026, 12, 1, tzinfo=UTC)
AUTHENTICATED = [{"type": "Authenticated", "status": "True", "reason": "Succeeded"}]


def _account(i: int, hosts: int, interval: float, auth_interval: float) -> Account:
    return Account(
        namespace=f"team-{i % 97}", name=f"a{i}", provider="custom", send_using="SMTP",
        uid=f"uid-{i}", publish=Publish(secret_name=f"a{i}-sender"),
        probe=ProbeSettings(interval_seconds=interval, auth_interval_seconds=auth_interval),
        smtp=SmtpSpec(identity=Identity(email_address=f"a{i}@example.com"),
                      connection=Connection(host=f"smtp{i % hosts}.example.com", port=587,
                                            security="STARTTLS"),
                      authentication=Authentication(method="Password",
                                                    password=KeyRef(f"a{i}-smtp", "password"))))


def simulate(n: int, hosts: int, interval: float, auth_interval: float) -> dict[str, float]:
    rng = random.Random(26)
    accounts = [_account(i, hosts, interval, auth_interval) for i in range(n)]
    last_probe: list[datetime] = []
    last_auth: list[datetime] = []
    due: list[tuple[datetime, int]] = []
    for i in range(n):
        last_probe.append(T0 - timedelta(seconds=int(rng.uniform(0, interval))))
        last_auth.append(T0 - timedelta(seconds=int(rng.uniform(0, auth_interval))))
        due.append((last_probe[i] + timedelta(seconds=interval), i))
    heapq.heapify(due)
    taken: dict[str, datetime] = {}  # host -> when its latest endpoint result was taken
    counted = dict(probes=0, endpoint_sessions=0, auth_sessions=0, shared=0)
    warm_up, end = T0 + timedelta(seconds=interval), T0 + timedelta(seconds=2 * interval)
    started = time.process_time()
    while due and due[0][0] < end:
        now, i = heapq.heappop(due)
        account = accounts[i]
        old = {"observedGeneration": 1, "lastProbeTime": rfc3339(last_probe[i]),
               "nextProbeTime": rfc3339(now), "lastAuthTime": rfc3339(last_auth[i]),
               "conditions": AUTHENTICATED}
        decision = probe_decision(account=account, old_status=old, secret_versions={}, now=now)
        assert decision.probe, decision.why
        host = account.smtp.connection.host  # type: ignore[union-attr]
        kind = "auth_sessions"
        if decision.authenticate:
            last_auth[i] = now
            taken[host] = now
        elif host in taken and usable(taken[host], after=last_probe[i], now=now,
                                      max_age_seconds=interval):
            kind = "shared"
        else:
            kind = "endpoint_sessions"
            taken[host] = now
        if now >= warm_up:
            counted["probes"] += 1
            counted[kind] += 1
        last_probe[i] = now
        heapq.heappush(due, (next_probe_time(account, now=now, failed_probes=0), i))
    return {**counted, "cpu_seconds": time.process_time() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--interval", type=float, default=600.0)
    parser.add_argument("--auth-interval", type=float, default=86400.0)
    args = parser.parse_args()
    got = simulate(args.accounts, args.hosts, args.interval, args.auth_interval)
    sessions = got["endpoint_sessions"] + got["auth_sessions"]
    print(f"{args.accounts:,} accounts on {args.hosts} hosts, interval {args.interval:g} s, "
          f"authInterval {args.auth_interval:g} s; one interval in steady state:")
    print(f"  probes                      {got['probes']:>9,}  (= sessions without sharing)")
    print(f"  endpoint sessions (no AUTH) {got['endpoint_sessions']:>9,}  "
          f"({got['endpoint_sessions'] / args.hosts:.1f} per host)")
    print(f"  full sessions (AUTH)        {got['auth_sessions']:>9,}")
    print(f"  endpoint results shared     {got['shared']:>9,}")
    print(f"  sessions in all             {sessions:>9,}  "
          f"({sessions / max(got['probes'], 1):.2%} of the probes; "
          f"{max(got['probes'], 1) / max(sessions, 1):.0f}x fewer)")
    print(f"  simulated in {got['cpu_seconds']:.1f} s of CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
