"""The controller's informers for the namespaces it serves (run/scope.py says which, and why each
mode is watched the way it is).

`ServedInformers` builds the EmailAccount, Secret and ConfigMap informers for a `NamespaceScope`:
cluster-wide, namespaced, one set per listed namespace, or cluster-wide filtered by the served set
that a label-selected Namespace informer keeps. A namespace that starts matching makes the kind
informers relist; one that stops matching is dropped from their caches and handed to `on_unserved`
with the account keys it held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reconciler.log import get_logger
from reconciler.run.scope import NamespaceScope, ServedSet
from reconciler.store.base import Key

if TYPE_CHECKING:
    from reconciler.store.informers import InformerUnion
    from reconciler.store.watch import Handler, Informer

log = get_logger("reconciler.controller")


class ServedInformers:
    """The informers of the kinds the controller reads, limited to the namespaces it serves."""

    def __init__(self, api_client: Any, scope: NamespaceScope, *, on_account: Handler,
                 on_secret: Handler, on_configmap: Handler,
                 on_unserved: Callable[[str, list[Key]], None], watch_seconds: int = 300,
                 label_selector: str | None = None,
                 account_keep: Callable[[dict[str, Any]], bool] | None = None) -> None:
        """`label_selector` selects the EmailAccounts (a static shard, `--shard-selector`);
        `account_keep` admits only some of them to the cache (this replica's shard)."""
        from reconciler.store.informers import (
            InformerUnion,
            account_informer,
            configmap_informer,
            namespace_informer,
            secret_informer,
        )

        self.scope = scope
        self.served = ServedSet() if scope.selector is not None else None
        self._on_unserved = on_unserved
        self._stopping = threading.Event()
        kw: dict[str, Any] = {"watch_seconds": watch_seconds}
        if self.served is not None:
            kw["keep"] = self._keep
        account_kw = dict(kw)
        if account_keep is not None:
            served_keep = kw.get("keep")
            account_kw["keep"] = (account_keep if served_keep is None else
                                  lambda o: served_keep(o) and account_keep(o))
        self.namespaces: Informer | None = None
        self.accounts: Informer | InformerUnion
        self.secrets: InformerUnion
        self.configmaps: Informer | InformerUnion
        if len(scope.fixed) > 1:
            self.accounts = InformerUnion("emailaccounts", [
                account_informer(api_client, ns, on_account, label_selector=label_selector,
                                 **account_kw)
                for ns in scope.fixed])
            self.secrets = InformerUnion("secrets", [
                part for ns in scope.fixed
                for part in secret_informer(api_client, ns, on_secret, **kw).parts])
            self.configmaps = InformerUnion("configmaps", [
                configmap_informer(api_client, ns, on_configmap, **kw) for ns in scope.fixed])
        else:
            one = scope.fixed[0] if scope.fixed else None
            self.accounts = account_informer(api_client, one, on_account,
                                             label_selector=label_selector, **account_kw)
            self.secrets = secret_informer(api_client, one, on_secret, **kw)
            self.configmaps = configmap_informer(api_client, one, on_configmap, **kw)
        if scope.selector is not None:
            self.namespaces = namespace_informer(api_client, scope.selector, self._on_namespace,
                                                 watch_seconds=watch_seconds)

    @property
    def kinds(self) -> tuple[Any, ...]:
        """The informers of what is reconciled and read (not the Namespace informer)."""
        return (self.secrets, self.configmaps, self.accounts)

    @property
    def all(self) -> tuple[Any, ...]:
        return self.kinds + ((self.namespaces,) if self.namespaces is not None else ())

    def serves(self, namespace: str) -> bool:
        """Whether the controller serves `namespace` now."""
        if self.served is not None:
            return namespace in self.served
        return not self.scope.fixed or namespace in self.scope.fixed

    def start(self) -> None:
        """Start watching. With a selector the kind informers start once the served set is
        known, so their first LIST already keeps the right namespaces (no relist per
        namespace at start)."""
        if self.namespaces is None:
            for informer in self.kinds:
                informer.start()
            return
        self.namespaces.start()
        threading.Thread(target=self._start_kinds, name="served-namespaces", daemon=True).start()

    def _start_kinds(self) -> None:
        assert self.namespaces is not None
        while not self.namespaces.synced.wait(0.5):
            if self._stopping.is_set():
                return
        for informer in self.kinds:
            informer.start()

    def stop(self) -> None:
        self._stopping.set()
        for informer in self.all:
            informer.stop()

    # ------------------------------------------------------------------ selector mode
    def _keep(self, obj: dict[str, Any]) -> bool:
        assert self.served is not None
        return str((obj.get("metadata") or {}).get("namespace") or "") in self.served

    def _on_namespace(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        assert self.served is not None
        name = str((obj.get("metadata") or {}).get("name") or "")
        if etype == "DELETED":  # deleted, or its labels no longer match
            if self.served.discard(name):
                keys = self.accounts.forget_namespace(name)
                self.secrets.forget_namespace(name)
                self.configmaps.forget_namespace(name)
                log.warning("namespace no longer served", namespace=name, accounts=len(keys))
                self._on_unserved(name, keys)
        elif self.served.add(name):
            log.warning("namespace served", namespace=name)
            for informer in self.kinds:  # a no-op until started: the first LIST keeps it
                informer.request_relist()
