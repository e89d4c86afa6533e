"""What the fake API server serves: resource types, request records, errors as Status objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

JSON = dict[str, Any]
HISTORY_LIMIT = 2000
DEFAULT_WATCH_SECONDS = 1800
VERSION_INFO: JSON = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubeapi-test",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and how it behaves."""

    group: str  # "" for the core group
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    custom: bool = False  # a CRD-defined resource: generation, apiVersion on list items
    printer_columns: tuple[JSON, ...] = ()

    @property
    def qualified(self) -> str:
        """The name used in error messages: ``emailaccounts.email.reconciler.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it; ``status`` 0 means the connection was dropped."""

    method: str
    path: str
    query: dict[str, str]
    verb: str  # get/list/watch/create/update/patch/delete/deletecollection
    resource: str | None  # plural, None for discovery and other non-resource paths
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int
    group: str = ""
    user_agent: str = ""  # who asked (a replica sets its own; field managers are shared)
    started: float = 0.0  # time.monotonic() when the request arrived
    answered: float = 0.0  # and when its answer was decided (the write done, for a write)


@dataclass
class _Fault:
    status: int | Literal["drop"]
    remaining: int
    verb: str | None
    resource: str | None


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str
    key: tuple[str, str]  # (group, plural)
    obj: JSON
    prev: JSON | None


class ApiError(Exception):
    """An error answered as a Kubernetes Status object."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: JSON | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details, self.headers = details, headers or {}

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _core(plural: str, kind: str, namespaced: bool = True, short: tuple[str, ...] = ()) -> ResourceType:
    return ResourceType("", ("v1",), plural, kind, namespaced, short)


BUILTIN_TYPES = (
    _core("namespaces", "Namespace", namespaced=False, short=("ns",)),
    _core("secrets", "Secret"),
    _core("configmaps", "ConfigMap", short=("cm",)),
    _core("events", "Event", short=("ev",)),
    _core("serviceaccounts", "ServiceAccount", short=("sa",)),
    ResourceType("coordination.k8s.io", ("v1",), "leases", "Lease"),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "rolebindings", "RoleBinding"),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "clusterroles", "ClusterRole", namespaced=False),
    ResourceType("rbac.authorization.k8s.io", ("v1",), "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
)


def resource_types_from_crd(crd: JSON) -> ResourceType:
    """Turn an apiextensions.k8s.io/v1 CustomResourceDefinition dict into a ResourceType."""
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    storage = next((v for v in served if v.get("storage")), served[0])
    return ResourceType(
        group=spec["group"],
        versions=tuple(v["name"] for v in served),
        plural=names["plural"],
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames", ())),
        status_subresource="status" in (storage.get("subresources") or {}),
        custom=True,
        printer_columns=tuple(storage.get("additionalPrinterColumns", ())),
    )

