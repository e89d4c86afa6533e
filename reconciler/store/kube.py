"""The Kubernetes store: EmailAccounts, status, Secrets, Events and the inventory in a cluster.

The only module that imports `kubernetes` (lazily, so `validate` stays fast). Reads are LISTs,
one per kind and namespace per run, cached for the run (a run starts with `list_accounts`);
writes are server-side apply under field manager `email-reconciler`, or a merge patch of the
`status` subresource, and are skipped when the stored object already says the same thing.

Errors of the client are translated here, in `_call`:

    409                    re-read (when the caller can) and retry a few times -> StoreConflict
    429, 5xx, connection   capped exponential backoff with jitter             -> StoreUnavailable
    401, 403               at once                                            -> StoreForbidden
    422                    at once, with the server's causes                  -> StoreInvalid
    404 on delete          fine: already gone
    other 4xx              at once                                            -> StoreError
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import secrets as _random_token
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from reconciler.errors import (
    SecretNotFound,
    StoreConflict,
    StoreError,
    StoreForbidden,
    StoreInvalid,
    StoreUnavailable,
    UsageError,
)
from reconciler.model import (
    API_GROUP,
    API_VERSION,
    FIELD_MANAGER,
    GROUP_VERSION,
    KIND,
    PLURAL,
    Event,
    KeyRef,
)
from reconciler.policy import SecretMeta
from reconciler.store.base import Key, account_object, object_key, owned_keys

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
INVENTORY_NAME = "email-reconciler-inventory"
INVENTORY_LABEL = f"{API_GROUP}/inventory"
ACCOUNTS = f"{PLURAL}.{API_GROUP}"  # how RBAC names the resource in messages
_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
                  "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
_PAGE = 500


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up on the API server; delays in seconds."""

    attempts: int = 5  # tries for 429/5xx/connection errors
    base_delay: float = 0.05
    max_delay: float = 1.0
    conflicts: int = 3  # retries after a 409
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Capped exponential backoff with full jitter; a server's Retry-After wins (capped)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def read_json(response: Any) -> dict[str, Any]:
    """The decoded body of an unpreloaded client response; the connection goes back to the pool."""
    try:
        raw = response.data
    finally:
        response.release_conn()
    return json.loads(raw) if raw else {}


def _where(namespace: str | None) -> str:
    return f'in namespace "{namespace}"' if namespace else "at the cluster scope"


def _server_message(exc: Any) -> str:
    """The `message` of the Status object the server answered with, else the HTTP reason."""
    body = getattr(exc, "body", None)
    try:
        status = json.loads(body) if body else {}
    except (TypeError, ValueError):
        status = {}
    message = status.get("message") if isinstance(status, dict) else None
    text = str(message or getattr(exc, "reason", "") or exc)
    return text if len(text) <= 300 else text[:297] + "..."


def _causes(exc: Any) -> tuple[str, ...]:
    """`field: message` for each cause in the Status details of a 422 (at most 10)."""
    try:
        status = json.loads(getattr(exc, "body", None) or "{}")
    except (TypeError, ValueError):
        return ()
    details = status.get("details") if isinstance(status, dict) else None
    causes = (details or {}).get("causes") if isinstance(details, dict) else None
    out = []
    for cause in causes if isinstance(causes, list) else []:
        if not isinstance(cause, dict):
            continue
        text = str(cause.get("message") or cause.get("reason") or "invalid")
        field = cause.get("field")
        out.append(f"{field}: {text}" if field else text)
    return tuple(c if len(c) <= 300 else c[:297] + "..." for c in out[:10])


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


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


class _ContinueExpired(Exception):
    """A paged LIST's continue token expired (410): `_list` starts over."""


_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _pod_namespace() -> str | None:
    """In a pod, kubectl's default namespace: POD_NAMESPACE, else the service account's."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _context_namespace(config_file: str | None, context: str | None) -> str | None:
    """The namespace of the kubeconfig context in use (`kubectl config set-context --namespace`)."""
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=config_file)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    ns = ((chosen or {}).get("context") or {}).get("namespace")
    return str(ns) if ns else None


class KubeStore:
    """StateStore over the Kubernetes API through the official client."""

    def __init__(self, api_client: Any, namespace: str | None = None, *,
                 retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 default_namespace: str | None = None) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        #: Where a manifest without metadata.namespace goes (kubectl's rule): --namespace, else
        #: the kubeconfig context's namespace (or the pod's, in a cluster), else "default".
        self.default_namespace = namespace or default_namespace or "default"
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._disable_client_retries(api_client)
        host = getattr(api_client.configuration, "host", "?")
        self.description = f"kube:{host}" + (f" (namespace {namespace})" if namespace else "")
        self.requests: Counter[str] = Counter()  # verbs sent, including retries
        self._reset_run_cache()

    @classmethod
    def from_config(cls, context: str | None = None, namespace: str | None = None,
                    **kwargs: Any) -> KubeStore:
        """In-cluster config when KUBERNETES_SERVICE_HOST is set, else the kubeconfig (`context`)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
                default_ns = _pod_namespace()
            else:
                # KUBECONFIG is read now, not when kubernetes was imported; it may list several.
                config_file = os.environ.get("KUBECONFIG") or None
                config.load_kube_config(config_file=config_file, context=context,
                                        client_configuration=configuration)
                default_ns = _context_namespace(config_file, context)
        except (config.ConfigException, OSError, ValueError) as exc:
            raise UsageError(f"no usable Kubernetes configuration ({exc}); set KUBECONFIG, "
                             "pass --context, or use --store local:DIR") from exc
        configuration.retries = False
        return cls(client.ApiClient(configuration), namespace, default_namespace=default_ns,
                   **kwargs)

    @staticmethod
    def _disable_client_retries(api_client: Any) -> None:
        """Our backoff is the only one, so a dropped connection surfaces at once."""
        api_client.configuration.retries = False
        pool = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
        if pool is not None and hasattr(pool, "connection_pool_kw"):
            pool.connection_pool_kw["retries"] = False

    def close(self) -> None:
        """Close the client's connections."""
        self.api_client.close()

    def __enter__(self) -> KubeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reset_run_cache(self) -> None:
        self._accounts: dict[Key, dict[str, Any]] | None = None
        self._secrets: dict[str, dict[str, dict[str, Any]]] = {}
        #: Namespaces whose Secrets came from label-selected informers (prime): a name missing
        #: there may still exist, so it is read by name (and a 404 remembered for the run).
        self._partial: set[str] = set()
        self._absent: set[Key] = set()
        self._configmaps: dict[str, dict[str, dict[str, Any]]] = {}
        #: The same for ConfigMaps (truststores) from the controller's label-selected informer.
        self._cm_partial: set[str] = set()
        self._cm_absent: set[Key] = set()
        self._inventory: dict[str, set[str]] | None = None

    def prime(self, accounts: Iterable[Mapping[str, Any]],
              secrets: Mapping[str, Mapping[str, Mapping[str, Any]]],
              configmaps: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> None:
        """Start a run over objects informers already hold (namespace -> name -> Secret, and
        -> ConfigMap), so the run sends no LIST for them (controller mode)."""
        self._reset_run_cache()
        self._accounts = {object_key(a): copy.deepcopy(dict(a)) for a in accounts}
        self._secrets = {ns: {name: dict(obj) for name, obj in objs.items()}
                         for ns, objs in secrets.items()}
        self._partial = set(secrets)
        self._configmaps = {ns: {name: dict(obj) for name, obj in objs.items()}
                            for ns, objs in (configmaps or {}).items()}
        self._cm_partial = set(configmaps or {})

    def cached_account(self, key: Key) -> dict[str, Any] | None:
        """The account as this store last saw it (after its own writes), or None."""
        obj = (self._accounts or {}).get(key)
        return copy.deepcopy(obj) if obj is not None else None

    # ------------------------------------------------------------------ the one boundary
    def _call(self, verb: str, resource: str, namespace: str | None,
              send: Callable[[], Any], *, missing_ok: bool = False, expired_ok: bool = False,
              on_conflict: Callable[[], Any] | None = None) -> Any:
        """Send one request (with retries); the decoded JSON body, or None for a missing object.

        `on_conflict` runs after a 409; when it returns something other than None, that is the
        answer (the re-read showed the write is no longer needed).
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        failures = conflicts = 0
        while True:
            self.requests[verb] += 1
            try:
                return read_json(send())
            except ApiException as exc:
                status = int(exc.status or 0)
                if status == 404 and missing_ok:
                    return None
                if status == 410 and expired_ok:
                    raise _ContinueExpired from exc
                if status in (401, 403):
                    raise StoreForbidden(self._refused(status, verb, resource, namespace,
                                                       exc)) from exc
                if status == 409:
                    conflicts += 1
                    if conflicts > self.retry.conflicts:
                        raise StoreConflict(f"conflict: {verb} {resource} {_where(namespace)} "
                                            f"kept failing: {_server_message(exc)}") from exc
                    if on_conflict is not None:
                        answer = on_conflict()
                        if answer is not None:
                            return answer
                    continue
                if status == 422:
                    causes = _causes(exc)
                    detail = "; ".join(causes) or _server_message(exc)
                    raise StoreInvalid(f"the API server refused {resource} {_where(namespace)} "
                                       f"as invalid (422): {detail}", causes) from exc
                if status not in (0, 429) and status < 500:
                    raise StoreError(f"the API server refused to {verb} {resource} "
                                     f"{_where(namespace)} ({status}): "
                                     f"{_server_message(exc)}") from exc
                failures += 1
                if failures >= self.retry.attempts:
                    raise StoreUnavailable(
                        f"API server unavailable: {verb} {resource} {_where(namespace)} failed "
                        f"{failures} times, last with {status}: {_server_message(exc)}"
                    ) from exc
                self._sleep(self.retry.delay(failures, _retry_after(exc)))
            except (HTTPError, OSError) as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    raise StoreUnavailable(
                        f"API server unreachable: {verb} {resource} {_where(namespace)} failed "
                        f"{failures} times, last with {type(exc).__name__}: {exc}") from exc
                self._sleep(self.retry.delay(failures))

    @staticmethod
    def _refused(status: int, verb: str, resource: str, namespace: str | None, exc: Any) -> str:
        if status == 401:
            return (f"unauthorized: the API server rejected our credentials to {verb} {resource} "
                    f"{_where(namespace)} (check the kubeconfig user or the service account "
                    f"token): {_server_message(exc)}")
        return (f"forbidden: cannot {verb} {resource} {_where(namespace)} (check the RBAC Role "
                f"of the service account): {_server_message(exc)}")

    def _timeout(self) -> tuple[float, float]:
        return (self.retry.connect_timeout, self.retry.read_timeout)

    def _list(self, resource: str, namespace: str | None,
              send: Callable[[str | None], Any]) -> list[dict[str, Any]]:
        """Every item of a (paged) LIST; one request unless there are more than 500."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        restarts = 0
        while True:
            try:
                body = self._call("list", resource, namespace, lambda t=token: send(t),  # type: ignore[misc]
                                  expired_ok=token is not None)
            except _ContinueExpired:
                # 410: the continue token outlived the server's history. The pages read so far
                # may be from an older version: start the LIST again from scratch.
                restarts += 1
                if restarts > 3:
                    raise StoreUnavailable(f"LIST {resource} {_where(namespace)}: the continue "
                                           "token expired 3 times in a row") from None
                items, token = [], None
                continue
            items += body.get("items") or []
            token = (body.get("metadata") or {}).get("continue") or None
            if not token:
                return items

    # ------------------------------------------------------------------ accounts
    def list_accounts(self) -> list[dict[str, Any]]:
        """Every EmailAccount (cluster-wide, or in our namespace) in one LIST; starts a run."""
        self._reset_run_cache()
        custom, ns, kw = self._custom, self.namespace, self._kw()
        if ns:
            def send(token: str | None) -> Any:
                return custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, ns, PLURAL, limit=_PAGE, _continue=token, **kw)
        else:
            def send(token: str | None) -> Any:
                return custom.list_cluster_custom_object(
                    API_GROUP, API_VERSION, PLURAL, limit=_PAGE, _continue=token, **kw)
        items = self._list(ACCOUNTS, ns, send)
        for item in items:
            item.setdefault("apiVersion", GROUP_VERSION)
            item.setdefault("kind", KIND)
        self._accounts = {object_key(o): o for o in items}
        return copy.deepcopy(items)

    def _kw(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self._timeout()}

    def _get_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call("get", ACCOUNTS, namespace, lambda: self._custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, **self._kw()), missing_ok=True)

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

        obj = self._call("patch", ACCOUNTS, ns, lambda: self._custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, ns, PLURAL, name, desired, field_manager=FIELD_MANAGER,
            force=True, _content_type=APPLY, **self._kw()), on_conflict=reread)
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

        obj = self._call(
            "patch", f"{ACCOUNTS}/status", namespace,
            lambda: self._custom.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, patch,
                field_manager=FIELD_MANAGER, _content_type=MERGE, **self._kw()),
            on_conflict=reread)
        self._remember(obj)

    def delete_account(self, namespace: str, name: str) -> None:
        """Delete one EmailAccount (its Secrets go with it through their ownerReference)."""
        self._call("delete", ACCOUNTS, namespace, lambda: self._custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, propagation_policy="Background",
            **self._kw()), missing_ok=True)
        if self._accounts is not None:
            self._accounts.pop((namespace, name), None)

    # ------------------------------------------------------------------ secrets
    def _namespace_secrets(self, namespace: str) -> dict[str, dict[str, Any]]:
        if namespace not in self._secrets:
            core, kw = self._core, self._kw()
            items = self._list("secrets", namespace, lambda t: core.list_namespaced_secret(
                namespace, limit=_PAGE, _continue=t, **kw))
            self._secrets[namespace] = {str(o["metadata"]["name"]): o for o in items}
        return self._secrets[namespace]

    def _namespace_configmaps(self, namespace: str) -> dict[str, dict[str, Any]]:
        if namespace not in self._configmaps:
            core, kw = self._core, self._kw()
            items = self._list("configmaps", namespace, lambda t: core.list_namespaced_config_map(
                namespace, limit=_PAGE, _continue=t, **kw))
            self._configmaps[namespace] = {str(o["metadata"]["name"]): o for o in items}
        return self._configmaps[namespace]

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One ConfigMap by name, or None. Served from the run's LIST (CLI/GitOps: one per
        namespace and run); after a prime (an informer that holds only opted-in ConfigMaps) a
        name it misses is read with one GET, so an unlabelled truststore still gets the opt-in
        refusal rather than "not found"."""
        objs = self._namespace_configmaps(namespace)
        if (name in objs or namespace not in self._cm_partial
                or (namespace, name) in self._cm_absent):
            return copy.deepcopy(objs[name]) if name in objs else None
        obj = self._call("get", "configmaps", namespace,
                         lambda: self._core.read_namespaced_config_map(name, namespace,
                                                                       **self._kw()),
                         missing_ok=True)
        if not obj:
            self._cm_absent.add((namespace, name))
            return None
        objs[name] = obj
        return copy.deepcopy(obj)

    def list_secrets(self, namespaces: Iterable[str]) -> dict[Key, dict[str, Any]]:
        """Every Secret in those namespaces, ours or not: one LIST each, shared with the reader."""
        out: dict[Key, dict[str, Any]] = {}
        for ns in sorted(set(namespaces)):
            for name, obj in self._namespace_secrets(ns).items():
                out[(ns, name)] = copy.deepcopy(obj)
        return out

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Secret by name, or None. Served from the run's LIST; after a prime (informers
        that hold only labelled Secrets) a name they miss is read with one GET, so an unlabelled
        Secret of that name is still seen (a publish conflict, an opt-in refusal)."""
        objs = self._namespace_secrets(namespace)
        if name in objs or namespace not in self._partial or (namespace, name) in self._absent:
            return copy.deepcopy(objs[name]) if name in objs else None
        obj = self._call("get", "secrets", namespace, lambda: self._core.read_namespaced_secret(
            name, namespace, **self._kw()), missing_ok=True)
        if not obj:
            self._absent.add((namespace, name))
            return None
        objs[name] = obj
        return copy.deepcopy(obj)

    def apply_secret(self, secret: Mapping[str, Any]) -> None:
        """Server-side apply of a published Secret (the caller checked its data hash changed)."""
        body = _apply_body(secret)
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Secret")
        ns, name = object_key(body)
        obj = self._call("patch", "secrets", ns, lambda: self._core.patch_namespaced_secret(
            name, ns, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY,
            **self._kw()))
        if ns in self._secrets and obj:
            self._secrets[ns][name] = obj
            self._absent.discard((ns, name))

    def delete_secret(self, namespace: str, name: str) -> None:
        """Delete one Secret; already gone is fine."""
        self._call("delete", "secrets", namespace, lambda: self._core.delete_namespaced_secret(
            name, namespace, **self._kw()), missing_ok=True)
        self._secrets.get(namespace, {}).pop(name, None)

    # ------------------------------------------------------------------ events
    def record_event(self, event: Event) -> None:
        """A core v1 Event on the EmailAccount (kubectl describe shows it)."""
        involved: dict[str, Any] = {"apiVersion": GROUP_VERSION, "kind": KIND,
                                    "name": event.name, "namespace": event.namespace}
        uid = (((self._accounts or {}).get((event.namespace, event.name)) or {})
               .get("metadata") or {}).get("uid")
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
            return self._core.create_namespaced_event(event.namespace, cast(Any, body),
                                                      **self._kw())

        self._call("create", "events", event.namespace, send)

    # ------------------------------------------------------------------ inventory
    def _load_inventory(self) -> dict[str, set[str]]:
        if self._inventory is None:
            core, kw, ns = self._core, self._kw(), self.namespace
            selector = f"{INVENTORY_LABEL}=true"
            if ns:
                def send(token: str | None) -> Any:
                    return core.list_namespaced_config_map(
                        ns, label_selector=selector, limit=_PAGE, _continue=token, **kw)
            else:
                def send(token: str | None) -> Any:
                    return core.list_config_map_for_all_namespaces(
                        label_selector=selector, limit=_PAGE, _continue=token, **kw)
            inventory: dict[str, set[str]] = {}
            for cm in self._list("configmaps", ns, send):
                meta = cm.get("metadata") or {}
                if meta.get("name") != INVENTORY_NAME:
                    continue
                try:
                    names = json.loads((cm.get("data") or {}).get("entries") or "[]")
                except ValueError:
                    names = []
                inventory[str(meta.get("namespace"))] = {str(n) for n in names
                                                         if isinstance(n, str)}
            self._inventory = inventory
        return self._inventory

    def read_inventory(self) -> set[Key]:
        """The accounts the last run applied from git: one label-selected ConfigMap LIST."""
        return {(ns, name) for ns, names in self._load_inventory().items() for name in names}

    def write_inventory(self, keys: Iterable[Key]) -> None:
        """Write the inventory ConfigMap of each namespace whose entries changed."""
        old = self._load_inventory()
        new: dict[str, set[str]] = {}
        for ns, name in keys:
            new.setdefault(ns, set()).add(name)
        for ns in sorted(set(old) | set(new)):
            names = new.get(ns, set())
            if old.get(ns) == names:
                continue
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": INVENTORY_NAME, "namespace": ns,
                                 "labels": {INVENTORY_LABEL: "true",
                                            "app.kubernetes.io/managed-by": FIELD_MANAGER}},
                    "data": {"entries": json.dumps(sorted(names))}}
            self._call("patch", "configmaps", ns,
                       lambda ns=ns, body=body: self._core.patch_namespaced_config_map(  # type: ignore[misc]
                           INVENTORY_NAME, ns, body, field_manager=FIELD_MANAGER, force=True,
                           _content_type=APPLY, **self._kw()))
            old[ns] = names

    # ------------------------------------------------------------------ credentials
    def secret_reader(self) -> ClusterSecretReader:
        """Credentials from the cluster's Secrets and ConfigMaps, over the run's cached LISTs."""
        return ClusterSecretReader(self)


class ClusterSecretReader:
    """`model.SecretReader` over the Kubernetes store's per-namespace Secret/ConfigMap LISTs."""

    def __init__(self, store: KubeStore) -> None:
        self.store = store

    def _object(self, namespace: str, ref: KeyRef) -> dict[str, Any]:
        if ref.kind == "ConfigMap":
            obj = self.store.get_configmap(namespace, ref.name)
        else:
            obj = self.store.get_secret(namespace, ref.name)
        if obj is None:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind)
        return obj

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        """Labels, annotations and type: what the opt-in check (reconciler.policy) reads."""
        obj = self._object(namespace, ref)
        meta = obj.get("metadata") or {}
        return SecretMeta(labels=dict(meta.get("labels") or {}),
                          annotations=dict(meta.get("annotations") or {}),
                          type=str(obj.get("type") or ""))

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        """The value of the key; raises SecretNotFound naming namespace/name/key."""
        obj = self._object(namespace, ref)
        data = obj.get("data") or {}
        if ref.kind == "ConfigMap" and ref.key in data:
            return str(data[ref.key]).encode("utf-8")
        encoded = data.get(ref.key) if ref.kind != "ConfigMap" else (
            (obj.get("binaryData") or {}).get(ref.key))
        if encoded is None:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key")
        try:
            return base64.b64decode(encoded, validate=True)
        except (ValueError, TypeError) as exc:
            raise SecretNotFound(namespace, ref.name, ref.key, ref.kind, detail="key") from exc

    def version(self, namespace: str, ref: KeyRef) -> str:
        """The object's uid and resourceVersion: changes with the value, derived from nothing
        in it (status must not leak a digest of a credential, DESIGN §8)."""
        self.read(namespace, ref)  # the key must exist
        meta = self._object(namespace, ref).get("metadata") or {}
        return f"{meta.get('uid') or '-'}/{meta.get('resourceVersion') or '-'}"
