"""Benchmark 3: requests to the Kubernetes API per reconcile, by verb (tests/kubeapi/ server)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from common import REPO, Row, unavailable
from generate import secret_objects
from probes import CONCURRENCY, _accounts, _corpus
from smtp_servers import ServerProcess

WRITES = ("create", "update", "patch", "delete", "deletecollection")
READS = ("get", "list", "watch")
TARGET_FIRST = "<= 3 writes/account"
TARGET_SECOND = "0 writes; reads flat in N"
PAGE = 500  # objects per LIST page (limit=500, as kubectl does)


def _crd() -> dict[str, Any]:
    generated = REPO / "deploy" / "crd.yaml"
    if generated.exists():
        crd: dict[str, Any] = yaml.safe_load(generated.read_text())
        return crd
    from tests.kube_fixtures import MINIMAL_CRD

    return MINIMAL_CRD


def _count(verbs: dict[str, int], kinds: tuple[str, ...]) -> int:
    return sum(n for verb, n in verbs.items() if verb in kinds)


def _two_runs(work: Path, count: int) -> tuple[dict[str, int], dict[str, int], int]:
    """Reconcile count accounts into a fresh API server twice; requests by verb per run."""
    from reconciler.manifest.load import load_paths
    from reconciler.run.reconcile import Reconciler, RunOptions
    from reconciler.store.kube import KubeStore
    from tests.kubeapi import KubeAPIServer

    with ServerProcess(count=1) as smtp, KubeAPIServer(crds=[_crd()], namespaces=("default", "bench")) as api:
        manifests, _secrets_dir, users = _corpus(work, f"api-{count}", count, smtp)
        _accounts(manifests)  # they validate
        for resource, obj in secret_objects(users, smtp.ca_pem):
            api.add_object(resource, obj)
        runs = []
        ready = 0
        for _ in range(2):  # the second run is a new process in real life: a fresh store
            api.clear_requests()
            with KubeStore(api.api_client()) as store:
                report = Reconciler(store, store.secret_reader(),
                                    RunOptions(concurrency=CONCURRENCY)).run(
                    load_paths([str(manifests)]))
            runs.append(api.count_by_verb())
            ready = sum(1 for a in report.accounts if a.ready)
        secrets = len(api.objects("secrets", "bench"))
    if ready != count or secrets < 2 * count:
        raise RuntimeError(f"only {ready} of {count} accounts Ready, {secrets} Secrets; "
                           "the API cost would not be representative")
    return runs[0], runs[1], ready


def api_cost(work: Path, count: int) -> list[Row]:
    """First run's writes per account; second run's writes and reads at N and N/4."""
    try:
        import reconciler.store.kube  # noqa: F401
        import tests.kubeapi  # noqa: F401
    except ImportError as exc:
        return [unavailable(f"3 API cost, {count} accounts", TARGET_FIRST, f"{exc}")]
    small = max(count // 4, 10)
    first, second, _ = _two_runs(work, count)
    first_small, second_small, _ = _two_runs(work, small)
    writes = _count(first, WRITES)
    per = writes / count
    # Writes that grow with the accounts (the slope between two sizes), apart from per-run ones
    # such as the inventory ConfigMap.
    slope = (writes - _count(first_small, WRITES)) / (count - small)
    fixed = writes - slope * count
    reads_n, reads_small = _count(second, READS), _count(second_small, READS)
    second_writes = _count(second, WRITES)
    # Reads must be LISTs, not a GET per object; a LIST of more than PAGE objects takes one more
    # request per page (three objects an account: the EmailAccount, its password, its Secret).
    pages = math.ceil(3 * (count - small) / PAGE)
    flat = second.get("get", 0) == 0 and reads_n <= reads_small + pages
    rows = [
        Row(f"3a API writes, first run, {count} accounts", f"{per:.2f}/account",
            f"{slope:.2f}/added account", "-", TARGET_FIRST, slope <= 3,
            f"{writes} writes = {slope:.2f} per account (EmailAccount apply, status, Secret) + "
            f"{fixed:.0f} per run (inventory); by verb: {json.dumps(first, sort_keys=True)}"),
        Row(f"3b API second run (nothing changed), {count} vs {small} accounts",
            f"{second_writes} writes, {reads_n} reads", f"{reads_small} reads at {small}",
            f"{reads_n / max(reads_small, 1):.2f}x reads", TARGET_SECOND,
            second_writes == 0 and flat,
            f"second run by verb at {count}: {json.dumps(second, sort_keys=True)}; at {small}: "
            f"{json.dumps(second_small, sort_keys=True)}; no GET per object, only LISTs, which "
            f"take one request per {PAGE} objects (up to {pages} more at {count})"),
    ]
    return rows
