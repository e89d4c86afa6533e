"""coordination.k8s.io/v1 Leases for leader election and shard membership: read, list, create,
replace (optimistic), delete (with a precondition).

The election logic lives in `reconciler.run.leader`, shard membership in `reconciler.run.membership`;
this is their I/O boundary. A lost race
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
            if exc.status == 404 and verb in ("get", "delete"):
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

    def list(self, label_selector: str) -> list[dict[str, Any]]:
        """The Leases of this namespace that match `label_selector` (a quorum read)."""
        out = self._call("list", lambda: self._api.list_namespaced_lease(
            self.namespace, label_selector=label_selector, _preload_content=False,
            _request_timeout=self._timeout))
        return list((out or {}).get("items") or [])

    def _meta(self, meta: dict[str, Any] | None) -> dict[str, Any]:
        return {**(meta or {}), "name": self.name, "namespace": self.namespace}

    def create(self, spec: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the Lease; `meta` adds labels and annotations."""
        body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": self._meta(meta), "spec": spec}
        out = self._call("create", lambda: self._api.create_namespaced_lease(
            self.namespace, body, _preload_content=False, _request_timeout=self._timeout))
        return out or {}

    def replace(self, current: dict[str, Any], spec: dict[str, Any],
                meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """PUT with the resourceVersion we read: 409 when someone wrote in between."""
        version = (current.get("metadata") or {}).get("resourceVersion")
        body: Any = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {**self._meta(meta), "resourceVersion": version},
                "spec": spec}
        out = self._call("update", lambda: self._api.replace_namespaced_lease(
            self.name, self.namespace, body, _preload_content=False,
            _request_timeout=self._timeout))
        return out or {}

    def delete(self, current: dict[str, Any] | None = None) -> bool:
        """Delete the Lease, only if it is still `current` (its resourceVersion) when given;
        False when it was gone already."""
        from kubernetes import client

        version = ((current or {}).get("metadata") or {}).get("resourceVersion")
        body = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=version) if version else None)
        return self._call("delete", lambda: self._api.delete_namespaced_lease(
            self.name, self.namespace, body=body, _preload_content=False,
            _request_timeout=self._timeout)) is not None
