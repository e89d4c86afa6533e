"""Core v1 Events of EmailAccounts in a cluster: recorded by runs, read back by `describe`.

Functions over the store's `KubeClient` and CoreV1Api, so `kube.py` keeps only the objects.
"""

from __future__ import annotations

import os
import secrets as _random_token
import time
from typing import Any, cast

from reconciler.model import FIELD_MANAGER, GROUP_VERSION, KIND, Event
from reconciler.store.kubeclient import KubeClient

_PAGE = 500


def record_event(api: KubeClient, core: Any, event: Event, uid: str | None) -> None:
    """Create one Event on the EmailAccount (kubectl describe shows it)."""
    involved: dict[str, Any] = {"apiVersion": GROUP_VERSION, "kind": KIND,
                                "name": event.name, "namespace": event.namespace}
    if uid:
        involved["uid"] = uid

    def send() -> Any:
        # A fresh name per attempt: a 409 AlreadyExists is a name clash, not a conflict.
        name = f"{event.name}.{time.time_ns():x}{_random_token.token_hex(2)}"
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": event.namespace},
            "involvedObject": involved, "reason": event.reason, "message": event.message,
            "type": event.type, "source": {"component": FIELD_MANAGER},
            "firstTimestamp": event.time, "lastTimestamp": event.time, "count": 1,
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": os.environ.get("HOSTNAME", FIELD_MANAGER),
        }
        # the client takes a plain dict as well as its model (typed as the model only)
        return core.create_namespaced_event(event.namespace, cast(Any, body), **api.options())

    api.call("create", "events", event.namespace, send)


def account_events(api: KubeClient, core: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events of one EmailAccount, oldest first, as {time, type, reason, message, count}."""
    selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
    kw = api.options()
    items = api.list_all("events", namespace, lambda t: core.list_namespaced_event(
        namespace, field_selector=selector, limit=_PAGE, _continue=t, **kw))
    events = [{"time": e.get("lastTimestamp") or e.get("eventTime")
               or (e.get("metadata") or {}).get("creationTimestamp"), "type": e.get("type"),
               "reason": e.get("reason"), "message": e.get("message"),
               "count": e.get("count") or 1} for e in items]
    return sorted(events, key=lambda e: str(e["time"] or ""))
