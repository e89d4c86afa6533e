"""A small, faithful Kubernetes API server for the tests (real HTTP on 127.0.0.1).

There is no kube-apiserver on these machines, so the Kubernetes store, the controller and kubectl
are tested against this module. It follows the API conventions the product relies on, not the
whole API:

- discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``, ``/version``; the
  aggregated-discovery Accept types get plain JSON (clients fall back); ``/openapi/*`` is 404;
- resources: core v1 Secrets, ConfigMaps, Events, Namespaces (cluster-scoped),
  coordination.k8s.io/v1 Leases, and every served version of the CRDs given to the constructor;
- CRUD with 201 on create, 409 AlreadyExists, PUT with 409 on a stale ``metadata.resourceVersion``,
  merge / JSON / strategic-merge (treated as merge) patches, and a simplified server-side apply
  (``application/apply-patch+yaml``: creates when absent; applied fields replace; fields the same
  field manager applied last time but omits now are removed; no conflicts between managers);
- status-subresource isolation, ``metadata.generation`` (custom resources only, bumped when anything
  but metadata and status changes), a global ``resourceVersion`` counter; a write that changes
  nothing is not stored (no new resourceVersion, no watch event), as in etcd-backed storage;
- label and field selectors, ``limit``/``continue``, ``stringData`` folded into Secret ``data``,
  ownerReference cascade on delete (synchronous, for determinism; ``propagationPolicy=Orphan``
  skips it; deleting a Namespace deletes everything in it);
- watch (chunked newline-delimited JSON) with ``resourceVersion`` replay from a bounded history,
  ``timeoutSeconds``, and an ``ERROR`` event with a 410 Expired Status for a too-old version;
- Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) from the CRD's
  ``additionalPrinterColumns``; core resources get NAME and AGE;
- errors as ``Status`` objects; fault injection (:meth:`KubeAPIServer.inject`) and a request log.

Simplifications, on purpose: no authentication or admission, no finalizers, no conversion between
CRD versions, no OpenAPI validation; namespaces are created on first use (``default`` exists from
the start); PUT never creates; fault injection applies to resource requests only, not discovery.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml

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
    ResourceType("coordination.k8s.io", ("v1",), "leases", "Lease"),
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


# --------------------------------------------------------------------------- pure helpers


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str | None) -> str:
    """A short human duration (``5s``, ``3m``, ``2d``) since an RFC 3339 timestamp."""
    if not timestamp:
        return "<unknown>"
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size, below in (("s", 1, 120), ("m", 60, 180 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(doc: Any, ops: list[JSON]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            doc = _json_patch_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, f"the JSON patch operation {op!r} cannot be applied: {exc!r}") from exc
    return doc


def _json_patch_op(doc: Any, op: JSON) -> Any:
    kind, parts = op["op"], _pointer(op["path"])
    if kind == "test":
        if _container(doc, parts) != op["value"]:
            raise ApiError(422, f"testing value {op['path']} failed")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_container(doc, _pointer(op["from"])))
        if kind == "move":
            doc = _json_patch_op(doc, {"op": "remove", "path": op["from"]})
        return _json_patch_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        return copy.deepcopy(op.get("value"))
    parent, last = _container(doc, parts[:-1]), parts[-1]
    if kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind == "replace":
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            if last not in parent:
                raise KeyError(last)
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            parent.insert(index, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError(f"unknown op {kind!r}")
    return doc


def _leaf_paths(doc: JSON, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            paths |= _leaf_paths(value, (*prefix, key))
        else:
            paths.add((*prefix, key))
    return paths


def _apply_merge(target: Any, applied: Any) -> Any:
    """Simplified server-side apply: maps merge recursively, the rest (lists too) replaces."""
    if not (isinstance(target, dict) and isinstance(applied, dict)):
        return copy.deepcopy(applied)
    result = dict(target)
    for key, value in applied.items():
        result[key] = _apply_merge(result.get(key), value)
    return result


def _remove_path(doc: JSON, path: tuple[str, ...]) -> None:
    parents = [doc]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # drop maps this removal emptied
        if not parents[depth]:
            parents[depth - 1].pop(path[depth - 1], None)


_REQUIREMENT = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Evaluate a label selector (=, ==, !=, in, notin, exists, !exists) against labels."""
    for requirement in _split_selector(selector):
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise ApiError(400, f"unable to parse requirement {requirement.strip()!r} in labelSelector")
        negate, key, op, value, set_op, values = match.groups()
        if negate and (op or set_op):
            raise ApiError(400, f"unable to parse requirement {requirement.strip()!r} in labelSelector")
        present = key in labels
        if op in ("=", "=="):
            ok = present and labels[key] == value
        elif op == "!=":
            ok = not present or labels[key] != value
        elif set_op:
            members = {v.strip() for v in values.split(",")}
            ok = present and labels[key] in members
            ok = ok if set_op == "in" else not ok
        else:
            ok = present != bool(negate)
        if not ok:
            return False
    return True


def field_selector_matches(selector: str, obj: JSON) -> bool:
    """Evaluate a field selector (``metadata.name=x,type!=y``) on dotted paths of the object."""
    for requirement in _split_selector(selector):
        match = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", requirement)
        if not match:
            raise ApiError(400, f"invalid field selector requirement {requirement.strip()!r}")
        path, op, expected = match.groups()
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        actual = "" if value is None else str(value)
        if (actual == expected) != (op != "!="):
            return False
    return True


_JSONPATH_TOKEN = re.compile(
    r"""\.(?P<key>[\w-]+)|\[(?P<index>\d+)\]|\[\*\]|\[\?\(@\.(?P<fkey>[\w.-]+)\s*==\s*["'](?P<fval>[^"']*)["']\)\]"""
)


def jsonpath_first(obj: Any, path: str) -> Any:
    """The first value of a simple JSONPath (``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``)."""
    path = path.strip().removeprefix("{").removesuffix("}").removeprefix("$")
    values, pos = [obj], 0
    while pos < len(path):
        token = _JSONPATH_TOKEN.match(path, pos)
        if not token:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        pos = token.end()
        found: list[Any] = []
        for value in values:
            if token["key"] is not None:
                if isinstance(value, dict) and token["key"] in value:
                    found.append(value[token["key"]])
            elif token["index"] is not None:
                if isinstance(value, list) and int(token["index"]) < len(value):
                    found.append(value[int(token["index"])])
            elif isinstance(value, list):
                for item in value:
                    key = token["fkey"]
                    if key is None or str(jsonpath_first(item, "." + key)) == token["fval"]:
                        found.append(item)
        values = found
    return values[0] if values else None


def _accepts_table(accept: str) -> bool:
    for media in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in media.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return True
    return False


# --------------------------------------------------------------------------- storage


class _Store:
    """Thread-safe objects, resourceVersion counter, event history and managed-field sets."""

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.RLock())
        self.rv = 0
        self.objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}
        self.history: deque[_Event] = deque()
        self.floor = 0  # events with rv <= floor are no longer in the history
        self.applied: dict[tuple[str, str, str], set[tuple[str, ...]]] = {}  # (uid, manager, sub)
        self.stopping = False

    def bucket(self, rtype: ResourceType) -> dict[tuple[str, str], JSON]:
        return self.objects.setdefault((rtype.group, rtype.plural), {})

    def record(self, rtype: ResourceType, kind: str, obj: JSON, prev: JSON | None) -> None:
        self.history.append(_Event(self.rv, kind, (rtype.group, rtype.plural), copy.deepcopy(obj), copy.deepcopy(prev)))
        while len(self.history) > HISTORY_LIMIT:
            self.floor = self.history.popleft().rv
        self.lock.notify_all()

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)


# --------------------------------------------------------------------------- the server


class KubeAPIServer:
    """The API server: ``with KubeAPIServer(crds=[crd]) as api: ... api.url ...``."""

    def __init__(self, crds: Sequence[JSON] = ()) -> None:
        self.types: list[ResourceType] = [
            *BUILTIN_TYPES,
            *(resource_types_from_crd(c) for c in crds),
        ]
        self.requests: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._store = _Store()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._ensure_namespace("default")

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> KubeAPIServer:
        """Listen on 127.0.0.1 on an ephemeral port and serve in a background thread."""
        server = self

        class Handler(_Handler):
            api = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="kubeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End watches, close client connections and the listening socket, join every thread."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        with self._store.lock:
            self._store.stopping = True
            self._store.lock.notify_all()
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._httpd is None:
            raise RuntimeError("KubeAPIServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ----------------------------------------------------------------- test hooks

    def inject(
        self,
        status: int | Literal["drop"],
        count: int = 1,
        *,
        verb: str | None = None,
        resource: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching resource requests with ``status`` (or drop them)."""
        with self._store.lock:
            self._faults.append(_Fault(status, count, verb, resource))

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._store.lock:
            self.requests.clear()

    def count_by_verb(self) -> dict[str, int]:
        """Resource requests in the log by Kubernetes verb (discovery is not counted)."""
        with self._store.lock:
            return dict(Counter(r.verb for r in self.requests if r.resource is not None))

    def expire_history(self) -> None:
        """Forget the watch history: any watch from an older resourceVersion now gets 410 Gone."""
        with self._store.lock:
            self._store.history.clear()
            self._store.floor = self._store.rv

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        return str(self._store.rv)

    def objects(self, resource: str, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of a resource (by plural), optionally in one namespace."""
        rtype = self._type_by_plural(resource)
        with self._store.lock:
            items = sorted(self._store.bucket(rtype).items())
            return [copy.deepcopy(o) for (ns, _), o in items if namespace is None or ns == namespace]

    def get_object(self, resource: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of one stored object, or None."""
        rtype = self._type_by_plural(resource)
        with self._store.lock:
            obj = self._store.bucket(rtype).get((namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def add_object(self, resource: str, obj: JSON) -> JSON:
        """Create an object directly (as a POST would), to seed a test; returns the stored copy."""
        rtype = self._type_by_plural(resource)
        namespace = obj.get("metadata", {}).get("namespace", "default") if rtype.namespaced else None
        return self._create(rtype, rtype.versions[0], namespace, copy.deepcopy(obj))

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server; close it (or use ``with``)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points at this server; returns the path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kubeapi",
            "clusters": [{"name": "kubeapi", "cluster": {"server": self.url}}],
            "users": [{"name": "kubeapi", "user": {"token": "test-token"}}],
            "contexts": [
                {
                    "name": "kubeapi",
                    "context": {"cluster": "kubeapi", "user": "kubeapi", "namespace": namespace},
                }
            ],
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        return path

    # ----------------------------------------------------------------- lookups

    def _type_by_plural(self, plural: str) -> ResourceType:
        for rtype in self.types:
            if rtype.plural == plural or rtype.qualified == plural:
                return rtype
        raise KeyError(f"unknown resource {plural!r}")

    def _type_at(self, group: str, version: str, plural: str) -> ResourceType:
        for rtype in self.types:
            if rtype.group == group and version in rtype.versions and rtype.plural == plural:
                return rtype
        raise ApiError(404, "the server could not find the requested resource")

    def _take_fault(self, verb: str, resource: str) -> _Fault | None:
        with self._store.lock:
            for fault in self._faults:
                if fault.verb in (None, verb) and fault.resource in (None, resource):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ----------------------------------------------------------------- discovery

    def discovery(self, path: str) -> JSON:
        """The JSON of a discovery (or /version) path; raises ApiError(404) for anything else."""
        port = self.url.rsplit(":", 1)[1]
        if path == "/version":
            return VERSION_INFO
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}],
            }
        if path == "/api/v1":
            return self._resource_list("", "v1")
        groups = {t.group: t.versions for t in self.types if t.group}
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g, v) for g, v in sorted(groups.items())],
            }
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2 and parts[1] in groups:
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                **self._group(parts[1], groups[parts[1]]),
            }
        if parts[0] == "apis" and len(parts) == 3 and parts[2] in groups.get(parts[1], ()):
            return self._resource_list(parts[1], parts[2])
        raise ApiError(404, "the server could not find the requested resource")

    @staticmethod
    def _group(group: str, versions: tuple[str, ...]) -> JSON:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": listed[0]}

    def _resource_list(self, group: str, version: str) -> JSON:
        resources: list[JSON] = []
        for rtype in self.types:
            if rtype.group != group or version not in rtype.versions:
                continue
            entry = {
                "name": rtype.plural,
                "singularName": rtype.kind.lower(),
                "namespaced": rtype.namespaced,
                "kind": rtype.kind,
                "verbs": ALL_VERBS,
            }
            if rtype.short_names:
                entry["shortNames"] = list(rtype.short_names)
            resources.append(entry)
            if rtype.status_subresource or rtype.plural == "namespaces":
                resources.append(
                    {
                        "name": f"{rtype.plural}/status",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": rtype.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # ----------------------------------------------------------------- objects in and out

    def _out(self, rtype: ResourceType, version: str, obj: JSON) -> JSON:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rtype.api_version(version), rtype.kind
        return out

    def _not_found(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(
            404,
            f'{rtype.qualified} "{name}" not found',
            details={"name": name, "group": rtype.group, "kind": rtype.plural},
        )

    def _conflict(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(
            409,
            f'Operation cannot be fulfilled on {rtype.qualified} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
            details={"name": name, "group": rtype.group, "kind": rtype.plural},
        )

    def _ensure_namespace(self, namespace: str) -> None:
        """Namespaces are created on first use, so tests need not create them."""
        ns_type = self.types[0]
        with self._store.lock:
            if ("", namespace) not in self._store.bucket(ns_type):
                self._create(ns_type, "v1", None, {"metadata": {"name": namespace}})

    @staticmethod
    def _normalize_secret(obj: JSON) -> None:
        """Fold stringData into data (base64) and check that data values are base64."""
        data = obj.get("data") or {}
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (ValueError, TypeError) as exc:
                raise ApiError(
                    400,
                    f"Secret data[{key!r}] is not valid base64; encode the value or put it under stringData",
                ) from exc
        if data:
            obj["data"] = data
        else:
            obj.pop("data", None)

    @staticmethod
    def _spec_part(rtype: ResourceType, obj: JSON) -> JSON:
        return {
            k: v
            for k, v in obj.items()
            if k not in ("metadata", "apiVersion", "kind") and not (k == "status" and rtype.status_subresource)
        }

    def _create(self, rtype: ResourceType, version: str, namespace: str | None, body: JSON) -> JSON:
        meta = body.setdefault("metadata", {})
        if namespace is not None and meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                f"the namespace of the object ({meta['namespace']}) does not match "
                f"the namespace on the request ({namespace})",
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(
                422,
                f"{rtype.kind} is invalid: metadata.name: Required value: name or generateName is required",
            )
        if rtype.plural == "secrets":
            self._normalize_secret(body)
        if rtype.status_subresource:
            body.pop("status", None)
        if namespace is not None:
            self._ensure_namespace(namespace)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self._store.lock:
            bucket = self._store.bucket(rtype)
            if (namespace or "", name) in bucket:
                raise ApiError(
                    409,
                    f'{rtype.qualified} "{name}" already exists',
                    "AlreadyExists",
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            meta.update(
                uid=str(uuid.uuid4()),
                creationTimestamp=_now(),
                resourceVersion=self._store.next_rv(),
            )
            if rtype.custom:
                meta["generation"] = 1
            meta.pop("managedFields", None)
            stored = self._out(rtype, version, body)
            bucket[(namespace or "", name)] = stored
            self._store.record(rtype, "ADDED", stored, None)
            return copy.deepcopy(stored)

    def _current(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON:
        obj = self._store.bucket(rtype).get((namespace or "", name))
        if obj is None:
            raise self._not_found(rtype, name)
        return obj

    def _replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        new: JSON,
        subresource: str | None,
    ) -> JSON:
        """Store ``new`` in place of the current object, keeping what the caller may not change."""
        with self._store.lock:
            old = self._current(rtype, namespace, name)
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(
                    400,
                    f"the name of the object ({meta['name']}) does not match the name on the request ({name})",
                )
            given_rv = meta.get("resourceVersion")
            if given_rv not in (None, "") and given_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            if rtype.status_subresource and subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif rtype.status_subresource:
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            if rtype.plural == "secrets":
                self._normalize_secret(new)
            meta = new["metadata"]
            for key in (
                "uid",
                "creationTimestamp",
                "generation",
                "resourceVersion",
                "deletionTimestamp",
            ):
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            meta["name"] = name
            if namespace is not None:
                meta["namespace"] = namespace
            meta.pop("managedFields", None)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if new == old:
                return copy.deepcopy(old)  # a no-op write is not stored, as in etcd
            if rtype.custom and self._spec_part(rtype, new) != self._spec_part(rtype, old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            meta["resourceVersion"] = self._store.next_rv()
            self._store.bucket(rtype)[(namespace or "", name)] = new
            self._store.record(rtype, "MODIFIED", new, old)
            return copy.deepcopy(new)

    def _delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: JSON,
        cascade: bool = True,
    ) -> JSON:
        with self._store.lock:
            old = self._current(rtype, namespace, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") not in (None, old["metadata"]["uid"]) or pre.get("resourceVersion") not in (
                None,
                old["metadata"]["resourceVersion"],
            ):
                raise self._conflict(rtype, name)
            del self._store.bucket(rtype)[(namespace or "", name)]
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = self._store.next_rv()
            self._store.record(rtype, "DELETED", gone, None)
            uid = old["metadata"]["uid"]
            if cascade and options.get("propagationPolicy") != "Orphan":
                self._delete_dependents(uid, name if rtype.plural == "namespaces" else None)
            return gone

    def _delete_dependents(self, uid: str, namespace_name: str | None) -> None:
        for rtype in self.types:
            for (ns, name), obj in list(self._store.bucket(rtype).items()):
                owners = obj["metadata"].get("ownerReferences") or []
                owned = any(o.get("uid") == uid for o in owners)
                inside = namespace_name is not None and ns == namespace_name
                # an earlier cascade in this loop may have deleted it already
                if (owned or inside) and (ns, name) in self._store.bucket(rtype):
                    self._delete(rtype, ns or None, name, {})

    def _list(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> list[JSON]:
        with self._store.lock:
            return [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self._store.bucket(rtype).items())
                if (namespace is None or ns == namespace) and self._matches(o, query)
            ]

    @staticmethod
    def _matches(obj: JSON, query: dict[str, str]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return label_selector_matches(query.get("labelSelector", ""), labels) and field_selector_matches(
            query.get("fieldSelector", ""), obj
        )

    # ----------------------------------------------------------------- patch and apply

    def _patch(
        self,
        rtype: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        subresource: str | None,
        content_type: str,
        body: bytes,
        query: dict[str, str],
    ) -> tuple[int, JSON]:
        media = content_type.split(";")[0].strip()
        if media == "application/apply-patch+yaml":
            return self._apply(rtype, version, namespace, name, subresource, body, query)
        try:
            patch = json.loads(body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the patch body is not JSON: {exc}") from exc
        with self._store.lock:
            current = copy.deepcopy(self._current(rtype, namespace, name))
            if media == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise ApiError(400, "a JSON patch must be a list of operations")
                new = json_patch(current, patch)
            elif media in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                new = merge_patch(current, patch)
            else:
                raise ApiError(415, f"the patch content type {media!r} is not supported")
            return 200, self._replace(rtype, namespace, name, new, subresource)

    def _apply(
        self,
        rtype: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        subresource: str | None,
        body: bytes,
        query: dict[str, str],
    ) -> tuple[int, JSON]:
        manager = query.get("fieldManager", "")
        if not manager:
            raise ApiError(
                422,
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
            )
        try:
            applied = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise ApiError(400, f"the apply patch is not YAML or JSON: {exc}") from exc
        if not isinstance(applied, dict):
            raise ApiError(400, "the apply patch must be an object")
        if rtype.status_subresource:
            applied = (
                {"metadata": applied.get("metadata", {}), "status": applied.get("status", {})}
                if subresource == "status"
                else {k: v for k, v in applied.items() if k != "status"}
            )
        applied.pop("apiVersion", None)
        applied.pop("kind", None)
        applied.setdefault("metadata", {})["name"] = name
        if namespace is not None:
            applied["metadata"]["namespace"] = namespace
        paths = _leaf_paths(applied)
        with self._store.lock:
            exists = (namespace or "", name) in self._store.bucket(rtype)
            if not exists:
                if subresource:
                    raise self._not_found(rtype, name)
                created = self._create(rtype, version, namespace, copy.deepcopy(applied))
                self._store.applied[(created["metadata"]["uid"], manager, "")] = paths
                return 201, created
            current = self._current(rtype, namespace, name)
            key = (current["metadata"]["uid"], manager, subresource or "")
            new = _apply_merge(current, applied)
            new["metadata"].pop("resourceVersion", None)  # apply is never conditional on it
            for stale in self._store.applied.get(key, set()) - paths:
                _remove_path(new, stale)
            result = self._replace(rtype, namespace, name, new, subresource)
            self._store.applied[key] = paths
            return 200, result

    # ----------------------------------------------------------------- watch

    def _watch_events(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], deadline: float
    ) -> Generator[JSON, None, None]:
        """Check the request (raising ApiError), then return the generator of its watch events."""
        store = self._store
        requested = query.get("resourceVersion", "")
        self._matches({}, query)  # a bad selector is an error response, not a broken stream
        with store.lock:
            if requested in ("", "0"):  # start from now, with the current objects as ADDED
                initial = [{"type": "ADDED", "object": o} for o in self._list(rtype, namespace, query)]
                cursor = store.rv
            else:
                initial = []
                try:
                    cursor = int(requested)
                except ValueError as exc:
                    raise ApiError(400, f"invalid resourceVersion {requested!r}") from exc
        return self._follow(rtype, namespace, query, deadline, initial, cursor)

    def _follow(
        self,
        rtype: ResourceType,
        namespace: str | None,
        query: dict[str, str],
        deadline: float,
        initial: list[JSON],
        cursor: int,
    ) -> Generator[JSON, None, None]:
        """Yield watch events until the deadline, server stop, or 410 Gone."""
        store = self._store
        yield from initial
        while True:
            with store.lock:
                if cursor < store.floor:
                    yield {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": f"too old resource version: {cursor} ({store.floor + 1})",
                            "reason": "Expired",
                            "code": 410,
                        },
                    }
                    return
                pending = [e for e in store.history if e.rv > cursor]
                if not pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or store.stopping:
                        return
                    store.lock.wait(min(remaining, 1.0))
                    continue
            for event in pending:
                cursor = event.rv
                translated = self._translate(rtype, namespace, query, event)
                if translated is not None:
                    yield translated

    def _translate(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], event: _Event
    ) -> JSON | None:
        """The event as this watcher sees it, honouring namespace and selectors (or None)."""
        if event.key != (rtype.group, rtype.plural):
            return None
        if namespace is not None and event.obj["metadata"].get("namespace") != namespace:
            return None
        now = self._matches(event.obj, query)
        before = event.prev is not None and self._matches(event.prev, query)
        if event.type == "MODIFIED" and event.prev is not None and now != before:
            if now:
                return {"type": "ADDED", "object": event.obj}
            gone = copy.deepcopy(event.prev)
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return {"type": "DELETED", "object": gone}
        return {"type": event.type, "object": event.obj} if now else None

    # ----------------------------------------------------------------- tables

    def _table(self, rtype: ResourceType, items: list[JSON], rv: str, include: str) -> JSON:
        columns: list[JSON] = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name must be unique within a namespace.",
            }
        ]
        printer = list(rtype.printer_columns) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        for column in printer:
            columns.append(
                {
                    "name": column["name"],
                    "type": column.get("type", "string"),
                    "format": column.get("format", ""),
                    "priority": column.get("priority", 0),
                    "description": column.get("description", ""),
                }
            )
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for column in printer:
                value = jsonpath_first(obj, column["jsonPath"])
                if column.get("type") == "date" and value is not None:
                    value = _age(str(value))
                cells.append(value)
            row: JSON = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": rv},
            "columnDefinitions": columns,
            "rows": rows,
        }


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    """Parses the Kubernetes URL space and turns ApiError into Status responses."""

    api: KubeAPIServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # a forgotten keep-alive connection must not pin a thread forever
    _request: tuple[str, str, dict[str, str], str, JSON]
    _logged = False

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; without this, delayed ACKs cost 40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.api._store.lock:
            self.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.api._store.lock:
            self.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the request log is ``KubeAPIServer.requests``."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ----------------------------------------------------------------- plumbing

    def _send_json(self, code: int, body: JSON, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._log(code)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _log(self, status: int) -> None:
        """Record this request; called before the answer goes out, so a client never outruns it."""
        if self._logged:
            return
        self._logged = True
        method, path, query, verb, route = self._request
        record = RequestRecord(
            method,
            path,
            query,
            verb,
            route.get("resource"),
            route.get("subresource"),
            route.get("namespace"),
            route.get("name"),
            status,
            route.get("group", ""),
        )
        with self.api._store.lock:
            self.api.requests.append(record)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self._route(path)
        verb = self._verb(method, route, query)
        self._request, self._logged = (method, path, query, verb, route), False
        try:
            if route.get("resource") is None:
                if method != "GET":
                    raise ApiError(405, f"{method} is not allowed on {path}")
                self._send_json(200, self.api.discovery(path))
                return
            fault = self.api._take_fault(verb, route["resource"])
            if fault is not None and fault.status == "drop":
                self._log(0)
                self.close_connection = True
                return
            if fault is not None:
                raise self._injected(int(fault.status), verb, route)
            status, result = self._serve(method, verb, route, query, body)
            if result is not None:
                self._send_json(status, result)
        except ApiError as error:
            self._send_json(error.code, error.status(), error.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._log(500)  # only if nothing was answered: a bug in this module

    @staticmethod
    def _injected(code: int, verb: str, route: JSON) -> ApiError:
        resource, ns = route["resource"], route.get("namespace")
        group = route.get("group", "")
        where = f' in the namespace "{ns}"' if ns else ""
        user, name = "system:serviceaccount:default:test", route.get("name") or ""
        message = {
            403: f'{resource} is forbidden: User "{user}" cannot {verb} '
            f'resource "{resource}" in API group "{group}"{where}',
            409: f'Operation cannot be fulfilled on {resource} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
            429: "Too many requests, please try again later.",
        }.get(code, f"injected failure {code}")
        headers = {"Retry-After": "1"} if code == 429 else None
        details = {"name": route.get("name") or "", "group": group, "kind": resource}
        if code == 429:
            details["retryAfterSeconds"] = 1
        return ApiError(code, message, details=details, headers=headers)

    def _route(self, path: str) -> JSON:
        """Split a resource path into group/version/namespace/resource/name/subresource."""
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and len(parts) > 2:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return {}
        namespace = None
        namespaced_plurals = {t.plural for t in self.api.types if t.namespaced and t.group == group}
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in namespaced_plurals:
            namespace, rest = rest[1], rest[2:]
        return {
            "group": group,
            "version": version,
            "namespace": namespace,
            "resource": rest[0],
            "name": rest[1] if len(rest) > 1 else None,
            "subresource": "/".join(rest[2:]) or None,
        }

    @staticmethod
    def _verb(method: str, route: JSON, query: dict[str, str]) -> str:
        named = route.get("name") is not None
        if method == "GET":
            if named:
                return "get"
            return "watch" if query.get("watch") in ("true", "1") else "list"
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection",
        }.get(method, method.lower())

    def _serve(
        self, method: str, verb: str, route: JSON, query: dict[str, str], body: bytes
    ) -> tuple[int, JSON | None]:
        api = self.api
        rtype = api._type_at(route["group"], route["version"], route["resource"])
        version, ns, name, sub = (
            route["version"],
            route["namespace"],
            route["name"],
            route["subresource"],
        )
        if rtype.namespaced and ns is None and verb not in ("list", "watch"):
            raise ApiError(404, "the server could not find the requested resource")
        if not rtype.namespaced and ns is not None:
            raise ApiError(404, "the server could not find the requested resource")
        if sub is not None and not (sub == "status" and (rtype.status_subresource or rtype.plural == "namespaces")):
            raise ApiError(404, "the server could not find the requested resource")
        if verb == "get":
            with api._store.lock:
                obj = api._out(rtype, version, api._current(rtype, ns, name))
            return 200, self._maybe_table(rtype, [obj], query, obj["metadata"]["resourceVersion"])
        if verb == "list":
            return 200, self._list_response(rtype, version, ns, query)
        if verb == "watch":
            self._stream_watch(rtype, version, ns, query)
            return 200, None
        if verb == "create":
            if name is not None:
                raise ApiError(405, "POST is not allowed on a named resource")
            return 201, api._create(rtype, version, ns, self._json(body))
        if verb == "update":
            return 200, api._out(rtype, version, api._replace(rtype, ns, name, self._json(body), sub))
        if verb == "patch":
            code, obj = api._patch(rtype, version, ns, name, sub, self.headers.get("Content-Type", ""), body, query)
            return code, api._out(rtype, version, obj)
        options = self._json(body) if body else {}
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        if verb == "delete":
            gone = api._delete(rtype, ns, name, options)
            if rtype.custom:
                return 200, api._out(rtype, version, gone)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.plural,
                    "uid": gone["metadata"]["uid"],
                },
            }
        deleted = [
            api._delete(rtype, o["metadata"].get("namespace"), o["metadata"]["name"], options)
            for o in api._list(rtype, ns, query)
        ]
        return 200, self._list_body(rtype, version, deleted, api.resource_version)

    @staticmethod
    def _json(body: bytes) -> JSON:
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return value

    def _list_body(self, rtype: ResourceType, version: str, items: list[JSON], rv: str, cont: str = "") -> JSON:
        if not rtype.custom:  # typed lists of built-in kinds carry no kind/apiVersion per item
            items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
        else:
            items = [self.api._out(rtype, version, o) for o in items]
        meta: JSON = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version(version),
            "metadata": meta,
            "items": items,
        }

    def _list_response(self, rtype: ResourceType, version: str, ns: str | None, query: dict[str, str]) -> JSON:
        with self.api._store.lock:
            items, rv = self.api._list(rtype, ns, query), self.api.resource_version
        start = 0
        if query.get("continue"):
            token = json.loads(base64.b64decode(query["continue"]))
            start, rv = token["start"], token["rv"]
        limit = int(query.get("limit") or 0)
        cont = ""
        if limit and start + limit < len(items):
            cont = base64.b64encode(json.dumps({"start": start + limit, "rv": rv}).encode()).decode()
        items = items[start : start + limit] if limit else items[start:]
        if _accepts_table(self.headers.get("Accept", "")):
            return self._maybe_table(rtype, items, query, rv)
        return self._list_body(rtype, version, items, rv, cont)

    def _maybe_table(self, rtype: ResourceType, items: list[JSON], query: dict[str, str], rv: str) -> JSON:
        if _accepts_table(self.headers.get("Accept", "")):
            return self.api._table(rtype, items, rv, query.get("includeObject", "Metadata"))
        return items[0]

    def _stream_watch(self, rtype: ResourceType, version: str, ns: str | None, query: dict[str, str]) -> None:
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        events = self.api._watch_events(rtype, ns, query, time.monotonic() + timeout)
        self._log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for event in events:
                if event["type"] != "ERROR":
                    event = {
                        "type": event["type"],
                        "object": self.api._out(rtype, version, event["object"]),
                    }
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            events.close()
