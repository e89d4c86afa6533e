"""coordination.k8s.io/v1 Leases for leader election: read, create, replace (optimistic).

The election logic lives in `reconciler.run.leader`; this is its I/O boundary. A lost race
(409 on create or on a stale resourceVersion) is `LeaseConflict`, anything else the server or the
network does is `StoreUnavailable`/`StoreForbidden`: the elector treats all of them as "did not
renew this time".
"""

from __future__ import annotations

from typing import Any

from reconciler.errors import StoreConflict, StoreError, StoreForbidden, StoreUnavailable
from reconciler.store import bounded
from reconciler.store.kubeclient import NotJson, read_json

#: A Lease is a few hundred bytes; anything near this is not one.
_LEASE_BYTES = 1 << 20


class LeaseConflict(StoreConflict):
    """Someone else wrote the Lease since we read it (or created it first)."""


class LeaseClient:
    """Get/create/replace one Lease through the official client."""

    def __init__(self, api_client: Any, namespace: str, name: str,
                 timeout: tuple[float, float] = (2.0, 5.0)) -> None:
        from kubernetes import client

        self._api = client.CoordinationV1Api(api_client)
        bounded.install(api_client)
        self.namespace, self.name = namespace, name
        self._timeout = timeout

    def _call(self, verb: str, send: Any) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        bounds = bounded.Bounds(sum(self._timeout), _LEASE_BYTES)  # a drip ends here
        try:
            with bounded.bounded(bounds):
                return read_json(send())
        except ApiException as exc:
            if exc.status == 404 and verb == "get":
                return None
            if exc.status == 409:
                raise LeaseConflict(f"lease {self.namespace}/{self.name} changed under us") from exc
            if exc.status in (401, 403):
                raise StoreForbidden(f"forbidden: cannot {verb} leases.coordination.k8s.io in "
                                     f'namespace "{self.namespace}" (check the RBAC Role of the '
                                     "service account)") from exc
            if exc.status and 400 <= exc.status < 500 and exc.status != 429:
                raise StoreError(f"the API server refused to {verb} lease "
                                 f"{self.namespace}/{self.name} ({exc.status})") from exc
            raise StoreUnavailable(f"{verb} lease {self.namespace}/{self.name} failed "
                                   f"({exc.status})") from exc
        except (HTTPError, OSError, NotJson) as exc:
            why = bounds.why() or type(exc).__name__
            raise StoreUnavailable(f"{verb} lease {self.namespace}/{self.name} failed: "
                                   f"{why}") from exc

    def get(self) -> dict[str, Any] | None:
        """The Lease object, or None when it does not exist."""
        return self._call("get", lambda: self._api.read_namespaced_lease(
            self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout))

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        out = self._call("create", lambda: self._api.create_namespaced_lease(
            self.namespace, body, _preload_content=False, _request_timeout=self._timeout))
        return out or {}

    def replace(self, current: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """PUT with the resourceVersion we read: 409 when someone wrote in between."""
        meta = current.get("metadata") or {}
        body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": meta.get("resourceVersion")},
                "spec": spec}
        out = self._call("update", lambda: self._api.replace_namespaced_lease(
            self.name, self.namespace, body, _preload_content=False,
            _request_timeout=self._timeout))
        return out or {}
