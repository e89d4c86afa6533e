# ruff: noqa: F811  (pytest fixtures imported from tests.test_controller are used as arguments)
"""The published Secret in controller mode is looked up in the Secret informer's cache, not read
per reconcile (issue 26 item 4): a Secret we publish carries the managed-by label the informer
selects, so a name the cache misses is created (POST) without a GET; a 409 AlreadyExists (an
unlabelled Secret of that name, or ours not yet watched) falls back to a read and the usual
decision. Against tests/kubeapi/, which counts requests by verb.
"""

from __future__ import annotations

import base64
from typing import Any

from reconciler.model import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from reconciler.run.reconcile import Reconciler, RunOptions
from reconciler.store.kube import KubeStore
from tests.manifests_factory import loopback_account
from tests.test_controller import (  # noqa: F401
    NS,
    PASSWORD,
    PATIENCE,
    Cluster,
    cluster,
    servers,
    wait_for,
)


def secret_requests(cluster: Cluster, verb: str) -> list[Any]:
    return [r for r in cluster.api.requests
            if r.resource == "secrets" and r.verb == verb and not r.subresource]


def test_creating_accounts_reads_no_published_secret(cluster: Cluster) -> None:
    ctl = cluster.controller(workers=2)
    assert ctl.wait_synced(PATIENCE)
    names = [f"new-{i}" for i in range(5)]
    for name in names:
        cluster.secret(f"{name}-smtp", "password", PASSWORD)
    wait_for(lambda: all((NS, f"{n}-smtp") in ctl.secrets.cached_keys() for n in names),
             PATIENCE, "the credentials in the cache")
    cluster.api.clear_requests()
    for name in names:
        cluster.account(name)
    wait_for(lambda: all(cluster.ready(n) and cluster.published(f"{n}-sender") for n in names),
             PATIENCE, "all Ready and published")
    assert secret_requests(cluster, "get") == []
    assert [r.status for r in secret_requests(cluster, "create")] == [201] * len(names)
    for name in names:
        secret = cluster.api.get_object("secrets", NS, f"{name}-sender")
        assert secret["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY_VALUE


def test_an_unlabelled_secret_the_cache_cannot_show_is_still_a_conflict(cluster: Cluster) -> None:
    cluster.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "taken-sender", "namespace": NS},
                                       "data": {"app": base64.b64encode(b"theirs").decode()}})
    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    cluster.account("taken")
    wait_for(lambda: cluster.status("taken").get("conditions"), PATIENCE, "a status")
    published = [c for c in cluster.status("taken")["conditions"]
                 if c["type"] == "SecretPublished"][0]
    assert published["reason"] == "SecretConflict", published
    assert cluster.published("taken-sender") == {"app": "theirs"}
    assert [r.status for r in secret_requests(cluster, "create")] == [409]
    assert len(secret_requests(cluster, "get")) == 1  # the read after the 409


def test_a_stale_cache_falls_back_to_a_read_and_updates_our_secret(cluster: Cluster) -> None:
    """Our Secret exists but the lookup (an informer lagging behind) does not hold it: the
    create answers 409, the Secret is read, and the new data is applied over it."""
    cluster.servers.users["late@example.com"] = PASSWORD
    cluster.secret("late-smtp", "password", PASSWORD)
    ctl = cluster.controller()
    cluster.api.add_object("emailaccounts", loopback_account(
        "late", NS, cluster.servers.starttls.port, timeout=5))
    wait_for(lambda: cluster.ready("late") and cluster.published("late-sender"), PATIENCE,
             "Ready and published")
    stop(cluster, ctl)
    obj = cluster.api.get_object("emailaccounts", NS, "late")
    obj["spec"]["smtp"]["identity"]["displayName"] = "Late Sender"
    obj["metadata"]["generation"] += 1
    cluster.api.clear_requests()
    with cluster.api.api_client() as api_client:
        store = KubeStore(api_client, NS)
        credentials = {(NS, "late-smtp"): cluster.api.get_object("secrets", NS, "late-smtp")}
        store.prime([obj], lambda ns, name: credentials.get((ns, name)))  # no published Secret
        report = Reconciler(store, store.secret_reader(), RunOptions(prune=False)
                            ).reconcile_objects([obj])
    assert report.accounts[0].error is None
    assert cluster.published("late-sender")["SMTP_FROM_NAME"] == "Late Sender"
    assert [(r.verb, r.status) for r in cluster.api.requests if r.resource == "secrets"
            and (r.name == "late-sender" or r.verb == "create")] == [
        ("create", 409), ("get", 200), ("patch", 200)]


def test_a_key_of_a_created_secret_goes_when_the_spec_drops_it(cluster: Cluster) -> None:
    """A create is an Update in managedFields, which a later apply by the same manager does not
    take away: the key, label and annotation the spec no longer wants are removed all the same,
    once, and the next probe writes nothing."""
    ctl = cluster.controller()
    assert ctl.wait_synced(PATIENCE)
    cluster.servers.users["named@example.com"] = PASSWORD
    cluster.secret("named-smtp", "password", PASSWORD)
    cluster.api.add_object("emailaccounts", loopback_account(
        "named", NS, cluster.servers.starttls.port, display_name="Named Sender",
        publish={"labels": {"team": "mail"}, "annotations": {"note": "x"}}))
    wait_for(lambda: (cluster.published("named-sender") or {}).get("SMTP_FROM_NAME")
             == "Named Sender", PATIENCE, "published with the display name")
    assert [r.status for r in secret_requests(cluster, "create")] == [201]
    cluster.patch("emailaccounts", "named", {"spec": {
        "smtp": {"identity": {"displayName": None}},
        "publish": {"labels": None, "annotations": None}}})

    def dropped() -> bool:
        secret = cluster.api.get_object("secrets", NS, "named-sender") or {}
        meta = secret.get("metadata") or {}
        return ("SMTP_FROM_NAME" not in (secret.get("data") or {})
                and "team" not in (meta.get("labels") or {})
                and "note" not in (meta.get("annotations") or {}))

    wait_for(dropped, PATIENCE, "the display name, label and annotation gone")
    key = (NS, "named")
    wait_for(lambda: cluster.status("named").get("observedGeneration") == 2, PATIENCE,
             "the change reconciled")
    # The controller's cache has caught up with its own writes (between the apply and the merge
    # patch the Secret holds the dropped key under the new hash: an edit, to the cache).
    wait_for(lambda: "SMTP_FROM_NAME" not in ((ctl.secrets.peek(NS, "named-sender") or {}).get(
        "data") or {"SMTP_FROM_NAME": ""}), PATIENCE, "the cache showing the final Secret")
    writes, turns = len(secret_requests(cluster, "patch")), ctl.reconciles[key]
    ctl.queue.add(key, urgent=True)
    wait_for(lambda: ctl.reconciles[key] > turns, PATIENCE, "one more reconcile")
    assert len(secret_requests(cluster, "patch")) == writes


def stop(cluster: Cluster, ctl: Any) -> None:
    """Stop `ctl` now (and not again at teardown)."""
    for entry in list(cluster.controllers):
        if entry[0] is ctl:
            cluster.controllers.remove(entry)
            ctl.stop()
            entry[1].close()
