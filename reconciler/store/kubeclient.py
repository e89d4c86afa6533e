"""Access to the Kubernetes API: the client from a kubeconfig or the pod, retries, our errors.

`client_from_config` builds the official client (imported lazily, so `validate` stays fast) the
way kubectl finds its cluster. `KubeClient.call` sends one request of the store, with retries and
timeouts, and is the one place the client's errors are translated:

    409                    re-read (when the caller can) and retry a few times -> StoreConflict
    429, 5xx, connection   capped exponential backoff with jitter             -> StoreUnavailable
    deadline, size bound   at once: the call's whole answer (retries included) must arrive
                           within `deadline` seconds and `max_response_bytes` (bounded.py)
                                                                              -> StoreUnavailable
    not JSON               at once                                            -> StoreUnavailable
    401, 403               at once                                            -> StoreForbidden
    422                    at once, with the server's causes                  -> StoreInvalid
    404 on delete          fine: already gone
    other 4xx              at once                                            -> StoreError
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.errors import (
    StoreConflict,
    StoreError,
    StoreForbidden,
    StoreInvalid,
    StoreUnavailable,
    UsageError,
)
from reconciler.store import bounded
from reconciler.store.bounded import Bounds


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up on the API server; delays in seconds."""

    attempts: int = 5  # tries for 429/5xx/connection errors
    #: False: an answer of 429/5xx is not tried again here; the caller has a backoff shared by
    #: all its requests (the controller's ApiBackoff), and a second try would only double an
    #: outage's requests. A dropped connection is still tried again.
    retry_server_errors: bool = True
    base_delay: float = 0.05
    max_delay: float = 1.0
    conflicts: int = 3  # retries after a 409
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # per socket read
    deadline: float = 60.0  # the whole call, retries included (a drip ends here)
    max_response_bytes: int = bounded.DEFAULT_LIMIT  # per answer (an endless body ends here)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Capped exponential backoff with full jitter; a server's Retry-After wins (capped)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class NotJson(ValueError):
    """The API server answered 2xx with something that is not a JSON object."""


def read_json(response: Any) -> dict[str, Any]:
    """The decoded body of an unpreloaded client response; the connection goes back to the pool."""
    try:
        raw = response.data
    finally:
        response.release_conn()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise NotJson("the answer is not JSON") from exc
    if not isinstance(body, dict):
        raise NotJson("the answer is not a JSON object")
    return body


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


class _ContinueExpired(Exception):
    """A paged LIST's continue token expired (410): `list_all` starts over."""


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


def client_from_config(context: str | None = None) -> tuple[Any, str | None]:
    """The official ApiClient from the in-cluster config when KUBERNETES_SERVICE_HOST is set, else
    from the kubeconfig (`context`), and the namespace that config names (None when it names none)."""
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
        raise UsageError(f"no usable Kubernetes configuration ({exc}); set KUBECONFIG or "
                         "pass --context") from exc
    configuration.retries = False
    return client.ApiClient(configuration), default_ns


class KubeClient:
    """The boundary under the store: requests sent through `call`, retried, counted, translated."""

    def __init__(self, api_client: Any, *, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._disable_client_retries(api_client)
        bounded.install(api_client)
        self.requests: Counter[str] = Counter()  # verbs sent, including retries

    @staticmethod
    def _disable_client_retries(api_client: Any) -> None:
        """Our backoff is the only one, so a dropped connection surfaces at once."""
        api_client.configuration.retries = False
        pool = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
        if pool is not None and hasattr(pool, "connection_pool_kw"):
            pool.connection_pool_kw["retries"] = False

    def call(self, verb: str, resource: str, namespace: str | None,
             send: Callable[[], Any], *, missing_ok: bool = False, expired_ok: bool = False,
             on_conflict: Callable[[], Any] | None = None) -> Any:
        """Send one request (with retries); the decoded JSON body, or None for a missing object.

        `on_conflict` runs after a 409; when it returns something other than None, that is the
        answer (the re-read showed the write is no longer needed).
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        failures = conflicts = 0
        deadline = time.monotonic() + self.retry.deadline
        while True:
            self.requests[verb] += 1
            bounds = Bounds(self.retry.deadline, self.retry.max_response_bytes, deadline)
            try:
                with bounded.bounded(bounds):
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
                if failures >= self.retry.attempts or not self.retry.retry_server_errors:
                    times = f"failed {failures} times, last" if failures > 1 else "failed"
                    raise StoreUnavailable(
                        f"API server unavailable: {verb} {resource} {_where(namespace)} {times} "
                        f"with {status}: {_server_message(exc)}"
                    ) from exc
                self._pause(bounds, self.retry.delay(failures, _retry_after(exc)), verb,
                            resource, namespace)
            except (HTTPError, OSError, NotJson) as exc:
                why = bounds.why() or (str(exc) if isinstance(exc, NotJson) else None)
                if why is not None:  # a hostile or broken server: not worth another try
                    raise StoreUnavailable(f"API server unavailable: {verb} {resource} "
                                           f"{_where(namespace)}: {why}") from exc
                failures += 1
                if failures >= self.retry.attempts:
                    raise StoreUnavailable(
                        f"API server unreachable: {verb} {resource} {_where(namespace)} failed "
                        f"{failures} times, last with {type(exc).__name__}: {exc}") from exc
                self._pause(bounds, self.retry.delay(failures), verb, resource, namespace)

    def _pause(self, bounds: Bounds, delay: float, verb: str, resource: str,
               namespace: str | None) -> None:
        """Sleep before the next try, unless the call's deadline comes first."""
        if bounds.left() <= delay:
            raise StoreUnavailable(f"API server unavailable: {verb} {resource} "
                                   f"{_where(namespace)}: no answer within "
                                   f"{self.retry.deadline:g} s")
        self._sleep(delay)

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

    def list_all(self, resource: str, namespace: str | None,
                 send: Callable[[str | None], Any]) -> list[dict[str, Any]]:
        """Every item of a (paged) LIST; one request unless there are more than 500."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        restarts = 0
        while True:
            try:
                body = self.call("list", resource, namespace, lambda t=token: send(t),  # type: ignore[misc]
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

    def options(self) -> dict[str, Any]:
        """Keyword arguments for every request: the raw response (`call` decodes it), our timeouts."""
        return {"_preload_content": False, "_request_timeout": self._timeout()}
