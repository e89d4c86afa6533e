"""The controller's informers: one per kind it watches (EmailAccounts, the label-selected Secrets
and ConfigMaps, Namespaces for --namespace-selector), built on `reconciler.store.watch.Informer`,
and `InformerUnion`, several informers read as one (a Secret kind watched with two selectors, or
one informer per namespace of --namespaces)."""

from __future__ import annotations

import functools
import threading
from typing import Any

from reconciler.model import API_GROUP, API_VERSION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL
from reconciler.policy import CREDENTIAL_LABEL
from reconciler.store import bounded
from reconciler.store.base import Key
from reconciler.store.cacheform import Packer
from reconciler.store.watch import Handler, Informer, slim


def account_informer(api_client: Any, namespace: str | None, handler: Handler,
                     label_selector: str | None = None, **kwargs: Any) -> Informer:
    """An informer over EmailAccounts in one namespace, or cluster-wide; only those matching
    `label_selector` when given (a static shard, `--shard-selector`)."""
    from kubernetes import client

    bounded.install(api_client)
    custom = client.CustomObjectsApi(api_client)
    select: dict[str, Any] = {"label_selector": label_selector} if label_selector else {}
    kwargs.setdefault("packer", Packer(sample=_has_conditions))
    if namespace:
        return Informer(PLURAL, functools.partial(custom.list_namespaced_custom_object, **select),
                        (API_GROUP, API_VERSION, namespace, PLURAL), handler, **kwargs)
    return Informer(PLURAL, functools.partial(custom.list_cluster_custom_object, **select),
                    (API_GROUP, API_VERSION, PLURAL), handler, **kwargs)


def _has_conditions(obj: dict[str, Any]) -> bool:
    """An EmailAccount typical enough to be the packing dictionary: one with its status."""
    return len((obj.get("status") or {}).get("conditions") or []) >= 3


def namespace_informer(api_client: Any, label_selector: str, handler: Handler,
                       **kwargs: Any) -> Informer:
    """An informer over the Namespaces matching `label_selector` (`--namespace-selector`): the
    server sends only those, and a DELETED when one stops matching."""
    from kubernetes import client

    bounded.install(api_client)
    core = client.CoreV1Api(api_client)
    return Informer("namespaces", functools.partial(core.list_namespace,
                                                    label_selector=label_selector),
                    (), handler, **kwargs)


class InformerUnion:
    """Several informers of one kind (one per label selector) read as one cache."""

    def __init__(self, kind: str, parts: list[Informer]) -> None:
        self.kind = kind
        self.parts = parts
        self.synced = _AllSet([p.synced for p in parts])

    @property
    def relists(self) -> int:
        """Relists of the part that relisted least (each rebuilt at least this often)."""
        return min(p.relists for p in self.parts)

    def get(self, key: Key) -> dict[str, Any] | None:
        for part in self.parts:
            obj = part.get(key)
            if obj is not None:
                return obj
        return None

    def peek(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The cached object itself (shared: do not modify), the first part's when both hold
        it; no copy."""
        for part in self.parts:
            obj = part.peek(namespace, name)
            if obj is not None:
                return obj
        return None

    def cached_keys(self) -> list[Key]:
        return sorted({k for p in self.parts for k in p.cached_keys()})

    def __len__(self) -> int:
        """Objects cached, when the parts hold disjoint keys (one namespace each); with
        overlapping parts (Secrets by selector) an upper bound."""
        return sum(len(p) for p in self.parts)

    def forget_namespace(self, namespace: str) -> list[Key]:
        return sorted({k for p in self.parts for k in p.forget_namespace(namespace)})

    def request_relist(self) -> None:
        for part in self.parts:
            part.request_relist()

    def start(self) -> None:
        for part in self.parts:
            part.start()

    def stop(self, timeout: float = 10.0) -> None:
        for part in self.parts:
            part.stop(timeout)


class _AllSet:
    """`is_set`/`wait` over several events: set when all are."""

    def __init__(self, events: list[threading.Event]) -> None:
        self._events = events

    def is_set(self) -> bool:
        return all(e.is_set() for e in self._events)

    def wait(self, timeout: float | None = None) -> bool:
        import time

        end = None if timeout is None else time.monotonic() + timeout
        return all(e.wait(None if end is None else max(0.0, end - time.monotonic()))
                   for e in self._events)


#: The Secrets the controller watches: those opted in for e-mail use (the credential label)
#: and those it publishes. Nothing else of the namespace is cached (issue 18: Helm release
#: Secrets and the like are neither read nor held in memory); KubeStore GETs a name it misses.
#: The credential part comes first: a Secret in both is read from it, with its values.
SECRET_SELECTORS = (f"{CREDENTIAL_LABEL}=true", f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")


def published_secret(obj: dict[str, Any]) -> dict[str, Any]:
    """A published Secret as the cache keeps it (before packing): slim, its data digested except
    the keys the controller reads back (state/digests.py; a 12 KB Secret at 1,000 accounts,
    issue 26)."""
    from reconciler.state.digests import digested_secret

    return digested_secret(slim(obj, intern=False))


def published_packer() -> Packer:
    """Packs published Secrets, their digests as text (state/digests.py)."""
    from reconciler.state.digests import from_json, to_json

    return Packer(to_json=to_json, from_json=from_json)


def secret_informer(api_client: Any, namespace: str | None, handler: Handler,
                    **kwargs: Any) -> InformerUnion:
    """Informers over the Secrets of one namespace (or all) that carry one of SECRET_SELECTORS,
    packed: those we published as `published_secret` keeps them, credentials with their values
    (a credential Secret per account is common)."""
    from kubernetes import client

    bounded.install(api_client)
    core = client.CoreV1Api(api_client)
    parts = []
    for selector in SECRET_SELECTORS:
        list_fn = (functools.partial(core.list_namespaced_secret, label_selector=selector)
                   if namespace else
                   functools.partial(core.list_secret_for_all_namespaces, label_selector=selector))
        ours = selector == SECRET_SELECTORS[1]
        parts.append(Informer("secrets", list_fn, (namespace,) if namespace else (), handler,
                              transform=published_secret if ours else None,
                              packer=published_packer() if ours else Packer(), **kwargs))
    return InformerUnion("secrets", parts)


#: The ConfigMaps the controller watches: truststores opted in for e-mail use (issue 13 item 6).
#: Not the inventory ConfigMap (the controller never prunes, so never reads it); KubeStore GETs
#: a name this misses, so an unlabelled truststore still gets the opt-in refusal.
CONFIGMAP_SELECTOR = f"{CREDENTIAL_LABEL}=true"


def configmap_informer(api_client: Any, namespace: str | None, handler: Handler,
                       **kwargs: Any) -> Informer:
    """An informer over the ConfigMaps of one namespace (or all) that carry CONFIGMAP_SELECTOR."""
    from kubernetes import client

    bounded.install(api_client)
    core = client.CoreV1Api(api_client)
    list_fn = (functools.partial(core.list_namespaced_config_map, label_selector=CONFIGMAP_SELECTOR)
               if namespace else
               functools.partial(core.list_config_map_for_all_namespaces,
                                 label_selector=CONFIGMAP_SELECTOR))
    return Informer("configmaps", list_fn, (namespace,) if namespace else (), handler,
                    packer=Packer(), **kwargs)


# --------------------------------------------------------------------------- metrics hook
