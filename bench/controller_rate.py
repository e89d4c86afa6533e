"""The reconcile rate the controller sustains: N EmailAccounts against local servers.

    .venv/bin/python bench/controller_rate.py [--accounts 500] [--workers 8]

A fake Kubernetes API (tests/kubeapi/, real HTTP) and STARTTLS aiosmtpd servers on 127.0.0.1 with
a throwaway CA. Phase 1 creates the accounts with the controller running and times until every one
is Ready with its Secret published (each: a watch event, a full probe with TLS and AUTH, a status
patch, a Secret apply). Phase 2 changes every spec (a generation bump) and times until every
account reports the new observedGeneration. Not a test: it takes tens of seconds.
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
from reconciler.run.controller import Controller  # noqa: E402
from tests.kube_fixtures import email_account_crd  # noqa: E402
from tests.kubeapi import KubeAPIServer  # noqa: E402
from tests.manifests_factory import loopback_account  # noqa: E402

NS = "bench"
PASSWORD = "bench-pass-123"


def account(name: str, port: int) -> dict[str, Any]:
    return loopback_account(name, NS, port, timeout=10, password_secret="shared-smtp")


def count(api: KubeAPIServer, done: Any) -> int:
    return sum(1 for o in api.objects("emailaccounts", NS) if done(o.get("status") or {}))


def ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def wait_all(api: KubeAPIServer, n: int, done: Any, timeout: float) -> float:
    start = time.monotonic()
    while count(api, done) < n:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"only {count(api, done)}/{n} done after {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--servers", type=int, default=4)
    args = parser.parse_args()
    configure_logging(fmt="json", level="error")
    n = args.accounts
    ca = ThrowawayCA()
    with ServerLoop() as loop, KubeAPIServer(crds=[email_account_crd()], namespaces=("default", NS)) as api:
        users = {f"a{i:04d}@example.com": PASSWORD for i in range(n)}
        ports = [loop.smtp(SmtpServerOptions(mode="STARTTLS", tls_context=ca.server_context(),
                                             users=users)).port for _ in range(args.servers)]
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS},
                                      "data": {"ca.crt": ca.ca_pem}})
        api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "shared-smtp", "namespace": NS},
                                   "data": {"password": base64.b64encode(PASSWORD.encode()).decode()}})
        with api.api_client() as client:
            ctl = Controller(client, namespace=NS, workers=args.workers, interval=3600)
            ctl.start()
            try:
                assert ctl.wait_synced(10)
                start = time.monotonic()
                for i in range(n):
                    api.add_object("emailaccounts", account(f"a{i:04d}", ports[i % len(ports)]))
                created = time.monotonic() - start
                first = wait_all(api, n, ready, 600) + created
                published = sum(1 for s in api.objects("secrets", NS)
                                if s["metadata"]["name"].endswith("-sender"))
                for i in range(n):
                    obj = api.get_object("emailaccounts", NS, f"a{i:04d}")
                    assert obj is not None
                    obj["spec"]["description"] = "changed"
                    with_status = {k: v for k, v in obj.items() if k != "status"}
                    from kubernetes import client as k8s

                    k8s.CustomObjectsApi(client).replace_namespaced_custom_object(
                        "email.reconciler.io", "v1alpha1", NS, "emailaccounts", f"a{i:04d}",
                        with_status)
                second = wait_all(api, n, lambda s: s.get("observedGeneration") == 2, 600)
                reconciles = sum(ctl.reconciles.values())
            finally:
                ctl.stop()
    print(f"accounts={n} workers={args.workers} smtp_servers={args.servers}")
    print(f"create -> all Ready + Secret published: {first:.1f} s = {n / first:.1f} accounts/s "
          f"({published} Secrets)")
    print(f"spec change -> all re-probed, observedGeneration 2: {second:.1f} s = "
          f"{n / second:.1f} accounts/s")
    print(f"reconciles: {reconciles} for {2 * n} changes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
