"""Requests the Kubernetes store sends, by verb, for a first and a second reconcile run.

    .venv/bin/python bench/kube_requests.py [N]      (default N=100 accounts)

Runs the real reconcile run (real SMTP probes against a loopback STARTTLS server with a
throwaway CA) through the official client against tests/kubeapi/, and prints the API server's
request log by verb for each run. Credentials come from Secrets in the fake cluster.
"""

from __future__ import annotations

import base64
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.demo.certificates import ThrowawayCA  # noqa: E402
from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions  # noqa: E402
from reconciler.log import configure_logging  # noqa: E402
from reconciler.manifest.load import load_paths  # noqa: E402
from reconciler.run.reconcile import Reconciler, RunOptions  # noqa: E402
from reconciler.store.kube import KubeStore  # noqa: E402
from tests.kube_fixtures import email_account_crd  # noqa: E402
from tests.kubeapi import KubeAPIServer  # noqa: E402
from tests.manifests_factory import loopback_account  # noqa: E402

NS = "bench"
PASSWORD = "bench-password-1"


def manifest(name: str, port: int) -> dict[str, object]:
    return loopback_account(name, NS, port, timeout=10, password_secret="smtp")


def main(n: int = 100) -> None:
    configure_logging(fmt="console", level="warning")
    with ServerLoop() as loop, KubeAPIServer(crds=[email_account_crd()], namespaces=("default", NS)) as api, \
            tempfile.TemporaryDirectory() as tmp:
        ca = ThrowawayCA()
        server = loop.smtp(SmtpServerOptions(
            mode="STARTTLS", tls_context=ca.server_context(),
            checker=lambda mechanism, login, secret: secret == PASSWORD))
        api.add_object("configmaps", {"metadata": {"name": "ca", "namespace": NS},
                                      "data": {"ca.crt": ca.ca_pem}})
        api.add_object("secrets", {"metadata": {"name": "smtp", "namespace": NS},
                                   "data": {"password": base64.b64encode(PASSWORD.encode())
                                            .decode()}})
        folder = Path(tmp)
        for i in range(n):
            (folder / f"a{i:03d}.yaml").write_text(yaml.safe_dump(manifest(f"a{i:03d}",
                                                                           server.port)))
        for label in ("first run", "second run"):
            api.clear_requests()
            started = time.perf_counter()
            with KubeStore(api.api_client()) as store:
                report = Reconciler(store, store.secret_reader(), RunOptions()).run(
                    load_paths([str(folder)]))
            elapsed = time.perf_counter() - started
            counts = dict(sorted(api.count_by_verb().items()))
            ready = sum(a.ready for a in report.accounts)
            print(f"{label}: {n} accounts, {ready} ready, {elapsed:.2f} s, requests by verb: "
                  f"{counts} (total {sum(counts.values())})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
