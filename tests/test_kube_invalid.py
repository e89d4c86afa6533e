"""A 422 from the API server at run time (issue 13): Stalled, reason Invalid, with the server's
causes, and not sent again until the spec changes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import StoreInvalid
from reconciler.model import status_condition as condition
from reconciler.store.kubeclient import _causes
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
from tests.kubeapi import KubeAPIServer
from tests.manifests_factory import LoopbackServers as Servers
from tests.manifests_factory import loopback_servers
from tests.test_kube_store import CREDENTIAL, NS, Cluster


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with loopback_servers() as started:
        yield started


@pytest.fixture
def cluster(servers: Servers, tmp_path: Path) -> Iterator[Cluster]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as api:
        api.add_object("configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "ca", "namespace": NS, "labels": CREDENTIAL},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        yield Cluster(api, tmp_path, servers)


def _secret_applies(cluster: Cluster) -> int:
    return sum(1 for r in cluster.api.requests if (r.verb, r.resource) == ("patch", "secrets"))


def test_a_refused_secret_is_stalled_invalid_and_not_sent_again_until_the_spec_changes(
        cluster: Cluster) -> None:
    doc = cluster.account("billing")
    cluster.api.inject(422, verb="patch", resource="secrets")
    now = datetime.now(UTC)
    report = cluster.reconcile(clock=lambda: now)
    status = cluster.status("billing")
    for kind in ("Ready", "SecretPublished"):
        assert (condition(status, kind)["status"], condition(status, kind)["reason"]) == (
            "False", "Invalid"), status
    assert condition(status, "Stalled")["status"] == "True"
    assert "422" in condition(status, "Ready")["message"]
    assert not report.accounts[0].error
    # Later, probed again on its interval: the same spec's Secret is not sent again.
    cluster.api.clear_requests()
    later = now + timedelta(days=2)
    cluster.reconcile(clock=lambda: later)
    assert cluster.servers.starttls.connections > 0
    assert _secret_applies(cluster) == 0
    assert condition(cluster.status("billing"), "Stalled")["reason"] == "Invalid"
    # A changed spec is tried again, and admitted this time.
    doc["spec"]["smtp"]["identity"]["displayName"] = "Billing Department"
    cluster.write(doc)
    assert cluster.reconcile(clock=lambda: later).all_ready
    assert _secret_applies(cluster) == 1
    assert cluster.api.get_object("secrets", NS, "billing-sender") is not None


def test_a_refused_apply_marks_the_stored_account_stalled_invalid(cluster: Cluster) -> None:
    doc = cluster.account("billing")
    assert cluster.reconcile().all_ready
    doc["spec"]["smtp"]["identity"]["displayName"] = "Billing Department"
    cluster.write(doc)
    cluster.api.inject(422, verb="patch", resource="emailaccounts")
    report = cluster.reconcile()
    entry = report.accounts[0]
    assert condition(entry.status, "Ready")["reason"] == "Invalid"
    stored = cluster.status("billing")
    assert (condition(stored, "Stalled")["status"], condition(stored, "Stalled")["reason"]) == (
        "True", "Invalid")
    warnings = [e for e in cluster.api.objects("events", NS) if e["reason"] == "Invalid"]
    assert warnings and warnings[0]["type"] == "Warning"


class _Refusal:
    """What the client's ApiException carries for a 422 (status, body)."""

    status = 422
    reason = "Unprocessable Entity"
    body = ('{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Invalid",'
            '"code":422,"message":"Secret \\"x\\" is invalid: metadata.labels: Invalid value",'
            '"details":{"name":"x","kind":"Secret","causes":['
            '{"reason":"FieldValueInvalid","message":"Invalid value: \\"a b\\": a valid label '
            'must be ...","field":"metadata.labels"},'
            '{"reason":"FieldValueTooLong","message":"Too long: must have at most 63 bytes",'
            '"field":"metadata.labels"}]}}')


def test_the_server_causes_are_kept_field_by_field() -> None:
    causes = _causes(_Refusal())
    assert causes == ('metadata.labels: Invalid value: "a b": a valid label must be ...',
                      "metadata.labels: Too long: must have at most 63 bytes")
    assert StoreInvalid("refused", causes).causes == causes


def test_an_expired_continue_token_restarts_the_list_from_scratch(cluster: Cluster) -> None:
    """600 Secrets take two pages; the server expires the continue token just before the second
    page is asked for (compaction), so the LIST starts over and still returns each object once."""
    for i in range(600):
        cluster.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": f"s-{i:03d}", "namespace": NS}})
    api_client = cluster.api.api_client()
    rest = api_client.rest_client
    original = rest.request
    expired: list[str] = []

    def request(method: str, url: str, *args: object, **kwargs: object) -> object:
        query = dict(kwargs.get("query_params") or [])  # type: ignore[call-overload]
        if ("continue=" in url or "continue" in query) and not expired:
            expired.append(url)
            cluster.api.expire_continue_tokens()
            cluster.api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",  # life goes on
                                               "metadata": {"name": "late", "namespace": NS}})
        return original(method, url, *args, **kwargs)

    rest.request = request
    from reconciler.store.kube import KubeStore

    with KubeStore(api_client) as store:
        missing = [i for i in range(600) if store.get_secret(NS, f"s-{i:03d}") is None]
        late = store.get_secret(NS, "late")
    assert missing == []
    assert late is not None  # the restarted LIST is one consistent, newer snapshot
    assert expired, "the second page was never asked for"
    lists = [r for r in cluster.api.requests if (r.verb, r.resource) == ("list", "secrets")]
    assert [r.status for r in lists] == [200, 410, 200, 200]
