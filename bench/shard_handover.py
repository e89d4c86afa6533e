"""Time for a shard hand-over: sharded replicas (--shards auto) joining, leaving and dying.

    .venv/bin/python bench/shard_handover.py [--accounts 300] [--lease-duration 3]

Three in-process controllers, each on its own client, against tests/kubeapi (real HTTP) and
STARTTLS aiosmtpd servers on 127.0.0.1. Once every account is Ready, the member set changes three
times and each change is timed until the replicas agree on the new view (each has published and
confirmed it) and every account that moved has been reconciled by its new owner:

  leave  a replica stops (SIGTERM's path: finishes its work, deletes its Lease)
  kill   a replica stops without a word (its Lease stays until it expires)
  join   a new replica starts (it takes about 1/n of the accounts)

Expected: leave and join within a few renew periods; kill within one lease duration plus a few
renew periods (the Lease must go silent for its duration first). Also printed: how many accounts
moved against the share that had to (rendezvous hashing moves nothing else). Not a test.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reconciler.demo.certificates import ThrowawayCA  # noqa: E402
from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions  # noqa: E402
from reconciler.log import configure_logging  # noqa: E402
from reconciler.policy import CREDENTIAL_LABEL  # noqa: E402
from reconciler.probe import limits  # noqa: E402
from reconciler.run.controller import Controller  # noqa: E402
from reconciler.run.membership import ShardConfig  # noqa: E402
from reconciler.run.sharding import owner  # noqa: E402
from tests.kube_fixtures import email_account_crd  # noqa: E402
from tests.kubeapi import KubeAPIServer  # noqa: E402
from tests.manifests_factory import loopback_account  # noqa: E402

NS = "bench"
PASSWORD = "bench-pass-123"


def wait(predicate: Any, what: str, timeout: float = 300.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def converged(ctls: list[Controller]) -> bool:
    want = tuple(sorted(c.shard.me for c in ctls if c.shard))
    return all(c.shard is not None and c.shard.published == c.shard.confirmed == want
               and c.shard.acting for c in ctls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--lease-duration", type=float, default=3.0)
    args = parser.parse_args()
    limits.configure(max_sessions_per_server=64)
    configure_logging(fmt="json", level="error")
    n, lease = args.accounts, args.lease_duration
    renew = lease / 10
    ca = ThrowawayCA()
    names = [f"a{i:04d}" for i in range(n)]
    rows: list[tuple[str, float, int, float]] = []
    with ServerLoop() as loop, KubeAPIServer(crds=[email_account_crd()],
                                            namespaces=("default", NS)) as api:
        users = {f"{name}@example.com": PASSWORD for name in names}
        port = loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                           users=users)).port
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS,
                                                   "labels": {CREDENTIAL_LABEL: "true"}},
                                      "data": {"ca.crt": ca.ca_pem}})
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "shared-smtp", "namespace": NS,
                                                "labels": {CREDENTIAL_LABEL: "true"}},
                                   "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
        live: dict[str, tuple[Controller, Any]] = {}

        def start(identity: str) -> Controller:
            client = api.api_client()
            config = ShardConfig(namespace=NS, identity=identity, lease_duration=lease,
                                 renew_deadline=lease * 2 / 3, retry_period=renew)
            ctl = Controller(client, namespace=NS, workers=args.workers, interval=3600,
                             shards=config)
            ctl.start()
            live[identity] = (ctl, client)
            return ctl

        def stop(identity: str, release: bool) -> None:
            ctl, client = live.pop(identity)
            ctl.stop(release=release)
            client.close()

        def step(what: str, change: Any) -> None:
            before = sorted(live)
            counts = {i: dict(c.reconciles) for i, (c, _) in live.items()}
            started = time.monotonic()
            change()
            after = sorted(live)
            moved = [(NS, x) for x in names
                     if owner((NS, x), before) != owner((NS, x), after)]
            ctls = [c for c, _ in live.values()]
            wait(lambda: converged(ctls), f"{what}: the replicas agree")
            agree = time.monotonic() - started

            def taken_over() -> bool:
                for key in moved:
                    new = live[owner(key, after) or ""][0]
                    if new.reconciles[key] <= counts.get(new.shard.me if new.shard else "",
                                                         {}).get(key, 0):
                        return False
                return True

            wait(taken_over, f"{what}: the moved accounts reconciled by their new owners")
            rows.append((what, agree, len(moved), time.monotonic() - started))

        try:
            ctls = [start(x) for x in ("a", "b", "c")]
            wait(lambda: converged(ctls), "three replicas agree")
            for name in names:
                api.add_object("emailaccounts", loopback_account(
                    name, NS, port, timeout=10, password_secret="shared-smtp"))
            ready_in = wait(lambda: all(any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in ((api.get_object("emailaccounts", NS, x) or {}).get("status") or {}).get(
                    "conditions") or []) for x in names), "every account Ready")
            step("leave (c stops, releasing)", lambda: stop("c", True))
            step("kill (b dies)", lambda: stop("b", False))
            step("join (d starts)", lambda: start("d"))
            step("join (e starts)", lambda: start("e"))
        finally:
            for identity in list(live):
                stop(identity, True)
    print(f"accounts={n} lease duration={lease:.1f} s renew period={renew:.2f} s "
          f"(all Ready with 3 replicas in {ready_in:.1f} s)")
    print(f"{'change':<30} {'views agree':>12} {'moved':>7} {'moved reconciled':>17} "
          f"{'/ lease':>8}")
    for what, agree, moved, done in rows:
        print(f"{what:<30} {agree:>10.2f} s {moved:>7} {done:>15.2f} s {done / lease:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
