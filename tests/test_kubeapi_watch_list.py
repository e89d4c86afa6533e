"""Watch BOOKMARK events and LIST continue tokens that expire (410 Gone, reason Expired)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kube_fixtures import kube_api
from tests.kubeapi import KubeAPIServer

__all__ = ["kube_api"]


@pytest.fixture
def core(kube_api: KubeAPIServer) -> Iterator[client.CoreV1Api]:
    with kube_api.api_client() as api:
        yield client.CoreV1Api(api)


def config_map(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"k": name}}


def test_bookmarks_only_when_allowed_and_on_demand(kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team", config_map("a"))
    start = kube_api.resource_version
    seen: list[tuple[str, str]] = []
    bookmarked = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_config_map, "team", resource_version=start,
                              allow_watch_bookmarks=True, timeout_seconds=30):
            seen.append((event["type"], event["raw_object"]["metadata"]["resourceVersion"]))
            if event["type"] == "BOOKMARK":
                assert event["raw_object"]["kind"] == "ConfigMap"
                bookmarked.set()
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    core.create_namespaced_config_map("team", config_map("b"))
    core.create_namespaced_config_map("other", config_map("elsewhere"))  # not this watch's, still counted
    while not bookmarked.is_set() and thread.is_alive():
        kube_api.send_bookmarks()
        bookmarked.wait(0.05)
    thread.join()
    assert seen[0][0] == "ADDED" and seen[-1][0] == "BOOKMARK"
    assert int(seen[-1][1]) >= int(seen[0][1])


def test_no_bookmark_without_allow_and_one_before_a_watch_times_out(kube_api: KubeAPIServer) -> None:
    kube_api.send_bookmarks()
    lines = _watch_lines(kube_api, "/api/v1/namespaces/team/configmaps?watch=true&timeoutSeconds=1")
    assert lines == []
    lines = _watch_lines(kube_api, "/api/v1/namespaces/team/configmaps?watch=true&timeoutSeconds=1"
                                   "&allowWatchBookmarks=true")
    assert [e["type"] for e in lines] == ["BOOKMARK"]
    assert lines[0]["object"]["metadata"]["resourceVersion"] == kube_api.resource_version


def test_send_initial_events_ends_with_an_annotated_bookmark(kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("team", config_map("a"))
    lines = _watch_lines(kube_api, "/api/v1/namespaces/team/configmaps?watch=true&timeoutSeconds=1"
                                   "&allowWatchBookmarks=true&sendInitialEvents=true"
                                   "&resourceVersionMatch=NotOlderThan")
    assert [e["type"] for e in lines][:2] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def _watch_lines(api: KubeAPIServer, path: str) -> list[dict[str, Any]]:
    import urllib.request

    from tests.kubeapi import ADMIN_TOKEN

    request = urllib.request.Request(api.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def test_continue_pages_resume_after_the_last_key_and_expire_with_410(
        kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    for name in "abcde":
        core.create_namespaced_config_map("team", config_map(name))
    first = core.list_namespaced_config_map("team", limit=2)
    assert [c.metadata.name for c in first.items] == ["a", "b"]
    core.delete_namespaced_config_map("a", "team")  # keys, not offsets: nothing is skipped
    second = core.list_namespaced_config_map("team", limit=2, _continue=first.metadata._continue)
    assert [c.metadata.name for c in second.items] == ["c", "d"]
    assert second.metadata.resource_version == first.metadata.resource_version
    kube_api.expire_continue_tokens()
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_config_map("team", limit=2, _continue=second.metadata._continue)
    status = json.loads(caught.value.body)
    assert (caught.value.status, status["reason"]) == (410, "Expired")
    assert "too old to display a consistent list result" in status["message"]
    fresh = core.list_namespaced_config_map("team", limit=10)  # a new LIST works
    assert [c.metadata.name for c in fresh.items] == ["b", "c", "d", "e"] and not fresh.metadata._continue


def test_compaction_expires_continue_tokens_too_and_a_bad_token_is_400(
        kube_api: KubeAPIServer, core: client.CoreV1Api) -> None:
    for name in "abc":
        core.create_namespaced_config_map("team", config_map(name))
    page = core.list_namespaced_config_map("team", limit=1)
    kube_api.expire_history()
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_config_map("team", limit=1, _continue=page.metadata._continue)
    assert caught.value.status == 410
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_config_map("team", limit=1, _continue="not-a-token")
    assert bad.value.status == 400
