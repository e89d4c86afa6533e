"""The informer (reconciler/store/watch.py) against tests/kubeapi: a watch bounded per event, not
as a whole answer, and a relist that packs each page as it comes (issue 26: memory per account)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reconciler.store import bounded, watch
from reconciler.store.cacheform import Packer
from reconciler.store.watch import Informer
from tests.kubeapi import KubeAPIServer
from tests.test_cacheform import wait_for

NS = "mail"


def configmap(name: str, size: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "data": {"payload": "x" * size}}


class CountingPacker(Packer):
    def __init__(self) -> None:
        super().__init__()
        self.packed = 0

    def pack(self, obj: dict[str, Any]) -> bytes:
        self.packed += 1
        return super().pack(obj)


class Watched:
    """An informer over the ConfigMaps of NS, its calls of the list function and its events."""

    def __init__(self, api: KubeAPIServer, client: Any, **kwargs: Any) -> None:
        from kubernetes import client as k8s

        bounded.install(client)
        core = k8s.CoreV1Api(client)
        self.packer = CountingPacker()
        self.pages: list[int] = []  # objects packed when each LIST page was asked for
        self.watches = 0
        self.on_watch: Callable[[], None] = lambda: None  # called as each watch is sent
        self.events: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        self._lock = threading.Lock()

        def list_fn(*args: Any, **kw: Any) -> Any:
            if kw.get("watch"):
                self.watches += 1
                self.on_watch()
            else:
                self.pages.append(self.packer.packed)
            return core.list_namespaced_config_map(*args, **kw)

        self.informer = Informer("configmaps", list_fn, (NS,), self.handle,
                                 packer=self.packer, retry_delay=0.05, **kwargs)

    def handle(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        with self._lock:
            self.events.append((etype, obj, prev))

    def taken(self) -> list[tuple[str, str]]:
        """(event type, name) of the events so far, and forget them."""
        with self._lock:
            out = [(etype, obj["metadata"]["name"]) for etype, obj, _ in self.events]
            self.events.clear()
        return sorted(out)


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(namespaces=(NS,)) as server:
        yield server


def test_a_watch_longer_than_the_event_bound_is_followed_without_a_relist(
        api: KubeAPIServer) -> None:
    """The published Secrets' watch carried 9.5 KB an account: bounded as a whole answer, it
    failed after about 7,000 accounts, again on the resumed watch, and the informer relisted
    every Secret (twice in a 20,000-account create, six times at 100,000)."""
    with api.api_client() as client:
        w = Watched(api, client, watch_seconds=60, event_limit=16 * 1024)
        w.informer.start()
        try:
            assert w.informer.synced.wait(30)
            for i in range(40):  # about 2.2 KB an event, 88 KB in all: five times the bound
                api.add_object("configmaps", configmap(f"cm-{i:02d}", 2000))
            wait_for(lambda: len(w.informer) == 40, "every ConfigMap cached")
            assert w.informer.relists == 1
            assert w.watches == 1  # one watch answer carried them all
        finally:
            w.informer.stop()


def test_an_event_larger_than_the_bound_still_ends_the_watch(api: KubeAPIServer) -> None:
    """The bound holds per event: the watch fails on it, the resumed watch fails again, and
    the relist (a LIST page, bounded on its own) brings the object in."""
    with api.api_client() as client:
        w = Watched(api, client, watch_seconds=60, event_limit=16 * 1024)
        w.informer.start()
        try:
            assert w.informer.synced.wait(30)
            api.add_object("configmaps", configmap("large", 40_000))
            wait_for(lambda: w.informer.peek(NS, "large"), "the large ConfigMap cached")
            assert w.informer.relists == 2 and w.watches >= 2  # two failed, then the LIST
            api.add_object("configmaps", configmap("small", 10))
            wait_for(lambda: w.informer.peek(NS, "small"), "the next one watched")
        finally:
            w.informer.stop()


def test_a_relist_packs_each_page_as_it_comes_and_hands_out_only_the_changes(
        api: KubeAPIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relist held every object as a dict until the last page (about 1 GB at its peak for
    100,000 Secrets, beside the packed cache): each page is packed before the next is read."""
    monkeypatch.setattr(watch, "LIST_PAGE", 10)
    for i in range(35):
        api.add_object("configmaps", configmap(f"cm-{i:02d}", 100))
    with api.api_client() as client:
        w = Watched(api, client, watch_seconds=60)
        w.informer.start()
        try:
            assert w.informer.synced.wait(30)
            assert w.pages == [0, 10, 20, 30]
            assert w.taken() == sorted(("ADDED", f"cm-{i:02d}") for i in range(35))
            stored, cached = api.get_object("configmaps", NS, "cm-07"), w.informer.get((NS, "cm-07"))
            assert stored is not None and cached is not None and cached["data"] == stored["data"]
            assert cached["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
            # Then relists alone (the watch stopped): with nothing changed, nothing is handed
            # out; then one change of each kind, which no watch saw.
            from kubernetes import client as k8s

            w.informer.stop()
            w.informer._relist()
            assert w.taken() == [] and len(w.pages) == 8 and w.informer.relists == 2
            core = k8s.CoreV1Api(client)
            core.patch_namespaced_config_map("cm-03", NS, {"data": {"payload": "changed"}})
            core.delete_namespaced_config_map("cm-04", NS)
            api.add_object("configmaps", configmap("cm-new", 10))
            w.informer._relist()
            with w._lock:
                modified = [(obj, prev) for etype, obj, prev in w.events if etype == "MODIFIED"]
            assert w.taken() == [("ADDED", "cm-new"), ("DELETED", "cm-04"), ("MODIFIED", "cm-03")]
            (obj, prev), = modified
            assert obj["data"] == {"payload": "changed"} and prev is not None
            assert prev["data"] == {"payload": "x" * 100}
            assert len(w.informer) == 35 and w.informer.peek(NS, "cm-04") is None
        finally:
            w.informer.stop()



def test_a_relist_asked_for_while_the_watch_is_being_opened_is_not_lost(
        api: KubeAPIServer) -> None:
    """request_relist() cuts the open watch; asked for while the watch request was on its way
    (a namespace starting to match --namespace-selector), it found nothing to cut, and the
    relist waited for the next event or the watch's end (here 60 s)."""
    with api.api_client() as client:
        w = Watched(api, client, watch_seconds=60)
        asked: list[bool] = []

        def ask() -> None:
            if not asked:
                asked.append(True)
                w.informer.request_relist()

        w.on_watch = ask
        w.informer.start()
        try:
            assert w.informer.synced.wait(30)
            wait_for(lambda: w.informer.relists == 2, "the relist asked for", timeout=20)
            api.add_object("configmaps", configmap("after", 10))
            wait_for(lambda: w.informer.peek(NS, "after"), "the next watch")
        finally:
            w.informer.stop()
