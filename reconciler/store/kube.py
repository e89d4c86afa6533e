"""The Kubernetes store: EmailAccounts, status, Secrets, Events and the inventory in a cluster.

Reads are LISTs, one per kind and namespace per run, cached for the run (a run starts with
`list_accounts`); writes are server-side apply under field manager `email-reconciler`, or a merge
patch of the `status` subresource, and are skipped when the stored object already says the same
thing. Every request goes through `kubeclient.KubeClient`, which retries it and translates the
client's errors into ours; `kubernetes` is imported lazily, so `validate` stays fast.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reconciler.errors import SecretExists, StoreError
from reconciler.model import (
    API_GROUP,
    API_VERSION,
    FIELD_MANAGER,
    GROUP_VERSION,
    KIND,
    PLURAL,
    Event,
)
from reconciler.store import kubeevents
from reconciler.store.base import Inventory, Key, account_object, object_key, owned_keys
from reconciler.store.clustersecrets import ClusterSecretReader
from reconciler.store.kubeclient import KubeClient, RetryPolicy, client_from_config

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
#: One ConfigMap per source (--inventory NAME) and namespace: email-reconciler-inventory-NAME,
#: labelled INVENTORY_LABEL=NAME. (The single email-reconciler-inventory of older versions, with
#: the label email.reconciler.io/inventory=true, is no longer read.)
INVENTORY_PREFIX = "email-reconciler-inventory-"
INVENTORY_LABEL = f"{API_GROUP}/inventory-name"
ACCOUNTS = f"{PLURAL}.{API_GROUP}"  # how RBAC names the resource in messages
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
                  "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
_PAGE = 500
#: (namespace, name) -> the cached object (shared: not to be modified), or None.
Lookup = Callable[[str, str], "dict[str, Any] | None"]


def inventory_configmap(name: str) -> str:
    """The name of source `name`'s inventory ConfigMap."""
    return INVENTORY_PREFIX + name


def _apply_body(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object fit for server-side apply: no server-owned metadata, no status."""
    body = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    meta = body.setdefault("metadata", {})
    for key in _SERVER_FIELDS:
        meta.pop(key, None)
    return body


def merge_patch_for(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: explicit nulls for removed keys."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key in old and isinstance(old[key], Mapping) and isinstance(value, Mapping):
            patch[key] = merge_patch_for(old[key], value)
        else:
            patch[key] = copy.deepcopy(value)
    return patch


def _left_behind(current: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch removing what our own create (an Update in managedFields, which an apply
    by the same manager does not take away) owns and `body` no longer has: data keys, labels,
    annotations, our ownerReference. None when there is nothing left behind."""
    meta = current.get("metadata") or {}
    created = [e for e in meta.get("managedFields") or [] if e.get("manager") == FIELD_MANAGER
               and e.get("operation") == "Update" and not e.get("subresource")]
    if not created:
        return None
    want_meta = body.get("metadata") or {}
    patch: dict[str, Any] = {}
    for entry in created:
        fields = entry.get("fieldsV1") or {}
        for part, have, want, into in (
                ("data", current.get("data"), body.get("data"), patch),
                ("labels", meta.get("labels"), want_meta.get("labels"), patch.setdefault("metadata", {})),
                ("annotations", meta.get("annotations"), want_meta.get("annotations"),
                 patch.setdefault("metadata", {}))):
            owned = (fields if part == "data" else fields.get("f:metadata") or {}).get(f"f:{part}") or {}
            gone = {k[2:] for k in owned if k.startswith("f:")} & set(have or {}) - set(want or {})
            if gone:
                into.setdefault(part, {}).update(dict.fromkeys(sorted(gone)))
        refs = meta.get("ownerReferences") or []
        if "f:ownerReferences" in (fields.get("f:metadata") or {}):
            wanted = want_meta.get("ownerReferences") or []
            kept = [r for r in refs if r not in wanted and not _ours(r)] + list(wanted)
            if kept != refs:
                patch.setdefault("metadata", {})["ownerReferences"] = kept or None
    if not patch.get("metadata"):
        patch.pop("metadata", None)
    return patch or None


def _ours(ref: Mapping[str, Any]) -> bool:
    return str(ref.get("apiVersion", "")).startswith(f"{API_GROUP}/") and ref.get("kind") == KIND


def same_as_applied(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether applying `desired` would leave `current` (as stored) unchanged."""
    if current.get("spec") != desired.get("spec"):
        return False
    have_meta, want_meta = current.get("metadata") or {}, desired.get("metadata") or {}
    for field in ("labels", "annotations"):
        have, want = have_meta.get(field) or {}, want_meta.get(field) or {}
        if any(have.get(k) != v for k, v in want.items()):
            return False
        owned = owned_keys(current, field)
        if owned is not None and owned - set(want):
            return False  # a key we applied earlier has left git: apply removes it
    return True


def _context_in_use() -> str:
    """The kubeconfig's current context, or "in-cluster" (the pod's service account)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster"
    from kubernetes import config

    try:
        _contexts, active = config.list_kube_config_contexts(
            config_file=os.environ.get("KUBECONFIG") or None)
    except (config.ConfigException, OSError, ValueError):
        return "?"
    return str((active or {}).get("name") or "?")


class KubeStore:
    """StateStore over the Kubernetes API through the official client."""

    def __init__(self, api_client: Any, namespace: str | None = None, *,
                 retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 default_namespace: str | None = None, context: str | None = None) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        #: Where a manifest without metadata.namespace goes (kubectl's rule): --namespace, else
        #: the kubeconfig context's namespace (or the pod's, in a cluster), else "default".
        self.default_namespace = namespace or default_namespace or "default"
        #: Every request goes through it: retries, timeouts, request counts, our errors.
        self.api = KubeClient(api_client, retry=retry, sleep=sleep)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        host = getattr(api_client.configuration, "host", "?")
        #: The line every run prints before it writes: which cluster, which namespaces.
        self.description = (f"cluster {f'context {context} at ' if context else ''}{host} "
                            f"({f'namespace {namespace}' if namespace else 'all namespaces'})")
        self._reset_run_cache()

    @classmethod
    def from_config(cls, context: str | None = None, namespace: str | None = None,
                    **kwargs: Any) -> KubeStore:
        """In-cluster config when KUBERNETES_SERVICE_HOST is set, else the kubeconfig (`context`)."""
        api_client, default_ns = client_from_config(context)
        return cls(api_client, namespace, default_namespace=default_ns,
                   context=context or _context_in_use(), **kwargs)

    def close(self) -> None:
        """Close the client's connections."""
        self.api_client.close()

    def __enter__(self) -> KubeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reset_run_cache(self) -> None:
        self._accounts: dict[Key, dict[str, Any]] | None = None
        #: The run's Secrets (namespace -> name -> object): a namespace's LIST (CLI/GitOps run),
        #: or, after a prime, only the names this run looked up or wrote.
        self._secrets: dict[str, dict[str, dict[str, Any]]] = {}
        self._absent: set[Key] = set()
        #: Publish names the informers did not hold, taken as absent without a read: their
        #: Secret is created (POST), not applied, so a name taken after all answers 409.
        self._assumed_absent: set[Key] = set()
        #: After a prime (one reconcile, one moment): reads that failed, not sent again in it.
        self._failed: dict[tuple[str, str, str], StoreError] = {}
        self._configmaps: dict[str, dict[str, dict[str, Any]]] = {}
        self._cm_absent: set[Key] = set()
        #: After a prime: the informers' caches, looked up by name. They hold only labelled
        #: objects, so a name they miss may still exist: it is read with one GET (and a 404
        #: remembered for the run). No namespace is LISTed.
        self._secret_source: Lookup | None = None
        self._cm_source: Lookup | None = None
        self._inventory: dict[str, dict[str, dict[str, str]]] | None = None

    def prime(self, accounts: Iterable[Mapping[str, Any]], secrets: Lookup,
              configmaps: Lookup | None = None) -> None:
        """Start a run over objects informers already hold: `secrets(namespace, name)` and
        `configmaps(namespace, name)` return the cached object or None. The run then sends no
        LIST, and copies only the objects it reads (controller mode: cost per reconcile does
        not grow with the namespace)."""
        self._reset_run_cache()
        self._accounts = {object_key(a): copy.deepcopy(dict(a)) for a in accounts}
        self._secret_source = secrets
        self._cm_source = configmaps or (lambda namespace, name: None)

    def cached_account(self, key: Key) -> dict[str, Any] | None:
        """The account as this store last saw it (after its own writes), or None."""
        obj = (self._accounts or {}).get(key)
        return copy.deepcopy(obj) if obj is not None else None

    # ------------------------------------------------------------------ accounts
    def list_accounts(self) -> list[dict[str, Any]]:
        """Every EmailAccount (cluster-wide, or in our namespace) in one LIST; starts a run."""
        self._reset_run_cache()
        custom, ns, kw = self._custom, self.namespace, self.api.options()
        if ns:
            def send(token: str | None) -> Any:
                return custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, ns, PLURAL, limit=_PAGE, _continue=token, **kw)
        else:
            def send(token: str | None) -> Any:
                return custom.list_cluster_custom_object(
                    API_GROUP, API_VERSION, PLURAL, limit=_PAGE, _continue=token, **kw)
        items = self.api.list_all(ACCOUNTS, ns, send)
        for item in items:
            item.setdefault("apiVersion", GROUP_VERSION)
            item.setdefault("kind", KIND)
        self._accounts = {object_key(o): o for o in items}
        return copy.deepcopy(items)

    def _get_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.call("get", ACCOUNTS, namespace, lambda: self._custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, **self.api.options()), missing_ok=True)

    def _remember(self, obj: dict[str, Any] | None) -> None:
        if obj and self._accounts is not None:
            self._accounts[object_key(obj)] = obj

    def apply_account(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of the git manifest, skipped when the stored object already matches."""
        desired = account_object(manifest)
        ns, name = object_key(desired)
        current = (self._accounts or {}).get((ns, name))
        if current is not None and same_as_applied(current, desired):
            return copy.deepcopy(current)

        def reread() -> dict[str, Any] | None:
            fresh = self._get_account(ns, name)
            self._remember(fresh)
            return fresh if fresh is not None and same_as_applied(fresh, desired) else None

        obj = self.api.call("patch", ACCOUNTS, ns, lambda: self._custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, ns, PLURAL, name, desired, field_manager=FIELD_MANAGER,
            force=True, _content_type=APPLY, **self.api.options()), on_conflict=reread)
        self._remember(obj)
        return copy.deepcopy(obj)

    def write_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource into `status` (nulls remove vanished keys)."""
        current = (self._accounts or {}).get((namespace, name)) or {}
        patch = {"status": merge_patch_for(current.get("status") or {}, dict(status))}

        def reread() -> None:
            fresh = self._get_account(namespace, name)
            if fresh is None:
                return
            self._remember(fresh)
            patch["status"] = merge_patch_for(fresh.get("status") or {}, dict(status))

        obj = self.api.call(
            "patch", f"{ACCOUNTS}/status", namespace,
            lambda: self._custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, patch,
                field_manager=FIELD_MANAGER, _content_type=MERGE, **self.api.options()),
            on_conflict=reread)
        self._remember(obj)

    def delete_account(self, namespace: str, name: str) -> None:
        """Delete one EmailAccount (its Secrets go with it through their ownerReference)."""
        self.api.call("delete", ACCOUNTS, namespace, lambda: self._custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, propagation_policy="Background",
            **self.api.options()), missing_ok=True)
        if self._accounts is not None:
            self._accounts.pop((namespace, name), None)

    # ------------------------------------------------------------------ secrets
    def _namespace_secrets(self, namespace: str) -> dict[str, dict[str, Any]]:
        if namespace not in self._secrets and self._secret_source is None:
            core, kw = self._core, self.api.options()
            items = self.api.list_all("secrets", namespace, lambda t: core.list_namespaced_secret(
                namespace, limit=_PAGE, _continue=t, **kw))
            self._secrets[namespace] = {str(o["metadata"]["name"]): o for o in items}
        return self._secrets.setdefault(namespace, {})

    def _namespace_configmaps(self, namespace: str) -> dict[str, dict[str, Any]]:
        if namespace not in self._configmaps and self._cm_source is None:
            core, kw = self._core, self.api.options()
            items = self.api.list_all("configmaps", namespace, lambda t: core.list_namespaced_config_map(
                namespace, limit=_PAGE, _continue=t, **kw))
            self._configmaps[namespace] = {str(o["metadata"]["name"]): o for o in items}
        return self._configmaps.setdefault(namespace, {})

    def _lookup(self, kind: str, namespace: str, name: str, objs: dict[str, dict[str, Any]],
                source: Lookup | None, absent: set[Key], read: Callable[[], Any]
                ) -> dict[str, Any] | None:
        """One object by name: the run's cache, else (after a prime) the informer's, else one
        GET for a name the label-selected informer does not hold."""
        if name in objs:
            return copy.deepcopy(objs[name])
        if source is None or (namespace, name) in absent:
            return None
        obj = source(namespace, name)
        if obj is None:
            failed = self._failed.get((kind, namespace, name))
            if failed is not None:
                raise failed
            try:
                obj = self.api.call("get", kind, namespace, read, missing_ok=True)
            except StoreError as exc:
                # The probe reads the credentials again on the controller's shared probe loop,
                # which must not wait out the API server's timeouts a second time.
                self._failed[(kind, namespace, name)] = exc
                raise
        if not obj:
            absent.add((namespace, name))
            return None
        objs[name] = obj
        return copy.deepcopy(obj)

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One ConfigMap by name, or None. Served from the run's LIST (CLI/GitOps: one per
        namespace and run); after a prime, from the informer (opted-in ConfigMaps only), and a
        name it misses is read with one GET, so an unlabelled truststore still gets the opt-in
        refusal rather than "not found"."""
        return self._lookup("configmaps", namespace, name, self._namespace_configmaps(namespace),
                            self._cm_source, self._cm_absent,
                            lambda: self._core.read_namespaced_config_map(
                                name, namespace, **self.api.options()))

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Secret by name, or None. Served from the run's LIST; after a prime, from the
        informers (labelled Secrets only), and a name they miss is read with one GET, so an
        unlabelled Secret of that name is still seen (a publish conflict, an opt-in refusal)."""
        return self._lookup("secrets", namespace, name, self._namespace_secrets(namespace),
                            self._secret_source, self._absent,
                            lambda: self._core.read_namespaced_secret(
                                name, namespace, **self.api.options()))

    def get_published_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret at a publish name. After a prime, a name the informers miss is taken as
        absent without a GET: a Secret we publish carries the managed-by label the Secret
        informer selects. `apply_secret` then creates it, and a name taken after all (an
        unlabelled Secret, or ours not yet watched) answers 409: read, then SecretExists."""
        objs = self._namespace_secrets(namespace)
        if name in objs or self._secret_source is None or (namespace, name) in self._absent:
            return self.get_secret(namespace, name)
        obj = self._secret_source(namespace, name)
        if obj is None:
            self._assumed_absent.add((namespace, name))
            return None
        objs[name] = obj
        return copy.deepcopy(obj)

    def apply_secret(self, secret: Mapping[str, Any]) -> None:
        """Server-side apply of a published Secret (the caller checked its data hash changed);
        a create when `get_published_secret` took the name as absent."""
        body = _apply_body(secret)
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Secret")
        ns, name = object_key(body)
        if (ns, name) in self._assumed_absent:
            self._assumed_absent.discard((ns, name))
            obj = self._create_secret(ns, name, body)
        else:
            obj = self.api.call("patch", "secrets", ns, lambda: self._core.patch_namespaced_secret(
                name, ns, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
                **self.api.options()))
            left = _left_behind(obj or {}, body)
            if left:  # fields of our create that the apply could not take away
                obj = self.api.call("patch", "secrets", ns, lambda: self._core.patch_namespaced_secret(
                    name, ns, left, field_manager=FIELD_MANAGER, _content_type=MERGE,
                    **self.api.options()))
        if obj and (ns in self._secrets or self._secret_source is not None):
            self._secrets.setdefault(ns, {})[name] = obj
            self._absent.discard((ns, name))

    def _create_secret(self, ns: str, name: str, body: dict[str, Any]) -> Any:
        def taken() -> None:
            found = self.api.call("get", "secrets", ns, lambda: self._core.read_namespaced_secret(
                name, ns, **self.api.options()), missing_ok=True)
            if found is None:
                return None  # deleted meanwhile: create it after all
            self._secrets.setdefault(ns, {})[name] = found
            raise SecretExists(f"Secret {ns}/{name} exists, though the watch did not show it")

        return self.api.call("create", "secrets", ns, lambda: self._core.create_namespaced_secret(
            ns, body, field_manager=FIELD_MANAGER, **self.api.options()),  # type: ignore[arg-type]
            on_conflict=taken)

    def delete_secret(self, namespace: str, name: str) -> None:
        """Delete one Secret; already gone is fine."""
        self.api.call("delete", "secrets", namespace, lambda: self._core.delete_namespaced_secret(
            name, namespace, **self.api.options()), missing_ok=True)
        self._secrets.get(namespace, {}).pop(name, None)
        self._absent.add((namespace, name))  # the informer may not have seen the delete yet

    def annotate_account(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge-patch annotations onto one EmailAccount (`email-reconciler request`); its own
        field manager, so a later apply from git does not take the annotation away."""
        patch = {"metadata": {"annotations": dict(annotations)}}
        obj = self.api.call(
            "patch", ACCOUNTS, namespace,
            lambda: self._custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name, patch,
                field_manager=f"{FIELD_MANAGER}-request", _content_type=MERGE,
                **self.api.options()))
        self._remember(obj)

    # ------------------------------------------------------------------ events
    def account_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The Events of one EmailAccount, oldest first (`describe`)."""
        return kubeevents.account_events(self.api, self._core, namespace, name)

    def record_event(self, event: Event) -> None:
        """A core v1 Event on the EmailAccount (kubectl describe shows it)."""
        uid = (((self._accounts or {}).get((event.namespace, event.name)) or {})
               .get("metadata") or {}).get("uid")
        kubeevents.record_event(self.api, self._core, event, uid)

    # ------------------------------------------------------------------ inventory
    def _load_inventory(self) -> dict[str, dict[str, dict[str, str]]]:
        """inventory name -> namespace -> {account: secretName}, from one label-selected LIST."""
        if self._inventory is None:
            core, kw, ns = self._core, self.api.options(), self.namespace
            selector = INVENTORY_LABEL  # exists: every source's inventory ConfigMap
            if ns:
                def send(token: str | None) -> Any:
                    return core.list_namespaced_config_map(
                        ns, label_selector=selector, limit=_PAGE, _continue=token, **kw)
            else:
                def send(token: str | None) -> Any:
                    return core.list_config_map_for_all_namespaces(
                        label_selector=selector, limit=_PAGE, _continue=token, **kw)
            inventory: dict[str, dict[str, dict[str, str]]] = {}
            for cm in self.api.list_all("configmaps", ns, send):
                meta = cm.get("metadata") or {}
                name = str((meta.get("labels") or {}).get(INVENTORY_LABEL) or "")
                if meta.get("name") != inventory_configmap(name):
                    continue  # not ours, or a label copied onto another ConfigMap
                try:
                    entries = json.loads((cm.get("data") or {}).get("entries") or "[]")
                except ValueError:
                    entries = []
                inventory.setdefault(name, {})[str(meta.get("namespace"))] = {
                    str(e["name"]): str(e.get("secretName") or "") for e in entries
                    if isinstance(e, dict) and isinstance(e.get("name"), str)}
            self._inventory = inventory
        return self._inventory

    def read_inventories(self) -> dict[str, Inventory]:
        """Every source's inventory: a ConfigMap per source and namespace (kapp and cli-utils
        keep theirs the same way), one label-selected LIST."""
        return {name: {(ns, account): secret for ns, entries in by_ns.items()
                       for account, secret in entries.items()}
                for name, by_ns in self._load_inventory().items()}

    def write_inventory(self, name: str, entries: Mapping[Key, str]) -> None:
        """Apply the source's ConfigMap in each namespace whose entries changed."""
        old = self._load_inventory().setdefault(name, {})
        new: dict[str, dict[str, str]] = {}
        for (ns, account), secret in entries.items():
            new.setdefault(ns, {})[account] = secret
        for ns in sorted(set(old) | set(new)):
            if self.namespace and ns != self.namespace:
                continue
            names = new.get(ns, {})
            if old.get(ns) == names:
                continue
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": inventory_configmap(name), "namespace": ns,
                                 "labels": {INVENTORY_LABEL: name,
                                            "app.kubernetes.io/managed-by": FIELD_MANAGER}},
                    "data": {"entries": json.dumps([{"name": n, "secretName": names[n]}
                                                    for n in sorted(names)])}}
            self.api.call("patch", "configmaps", ns,
                          lambda ns=ns, body=body: self._core.patch_namespaced_config_map(  # type: ignore[misc]
                              body["metadata"]["name"], ns, body, field_manager=FIELD_MANAGER,
                              force=True, _content_type=APPLY, **self.api.options()))
            old[ns] = names

    # ------------------------------------------------------------------ credentials
    def secret_reader(self) -> ClusterSecretReader:
        """Credentials from the cluster's Secrets and ConfigMaps, over the run's cached LISTs."""
        return ClusterSecretReader(self)
