"""The API server object: lifecycle, test hooks, discovery, CRUD, patch/apply, watch."""

from __future__ import annotations

import base64
import bisect
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Generator, Iterable, Sequence
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import yaml

from tests.kubeapi.celtypes import rule_errors
from tests.kubeapi.fields import Managers, owned_paths, value_at
from tests.kubeapi.gc import GarbageCollector
from tests.kubeapi.http import _Handler
from tests.kubeapi.model import (
    ALL_VERBS,
    BUILTIN_TYPES,
    JSON,
    SYSTEM_NAMESPACES,
    VERSION_INFO,
    ApiError,
    RequestRecord,
    ResourceType,
    _Event,
    _Fault,
    resource_types_from_crd,
)
from tests.kubeapi.openapi import OpenAPIV3
from tests.kubeapi.patches import _apply_merge, _remove_path, json_patch, merge_patch
from tests.kubeapi.rbac import (
    ADMIN,
    ADMIN_TOKEN,
    ANONYMOUS,
    KUBECONFIG_TOKEN,
    Attributes,
    User,
    authorize,
    forbidden,
    service_account_user,
    unauthorized,
)
from tests.kubeapi.schema import Admission, StructuralSchema, prune_metadata
from tests.kubeapi.selectors import field_selector_matches, label_selector_matches
from tests.kubeapi.store import _Store, clone
from tests.kubeapi.tables import table
from tests.kubeapi.validation import FieldError, invalid, object_meta_errors


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")



class KubeAPIServer(GarbageCollector):
    """The API server: ``with KubeAPIServer(crds=[crd]) as api: ... api.url ...``."""

    def __init__(
        self,
        crds: Sequence[JSON] = (),
        *,
        namespaces: Sequence[str] = SYSTEM_NAMESPACES,
        auto_namespaces: bool = False,
        ratcheting: bool = True,
        owner_references_permission_enforcement: bool = True,
        anonymous_is_admin: bool = True,
        garbage_collection: bool = True,
    ) -> None:
        """Serve the built-in kinds and ``crds``.

        ``namespaces`` exist from the start; any other must be created (a Namespace object, e.g. with
        :meth:`create_namespace`) before objects go into it, else a write gets 404 as from a real
        server. ``auto_namespaces=True`` creates them on first use instead (not real behaviour).
        ``ratcheting`` is CRD validation ratcheting (on by default since Kubernetes 1.30).
        ``owner_references_permission_enforcement`` is that admission plugin (on in OpenShift):
        setting ``blockOwnerDeletion`` needs ``update`` on the owner's ``finalizers`` subresource.
        Every request is authenticated (:data:`ADMIN_TOKEN`, or :meth:`token_for` a ServiceAccount)
        and authorized by RBAC from the Role and binding objects stored here. A request without
        credentials is an admin while ``anonymous_is_admin`` (kubectl sends no token over plain
        HTTP); with False it is ``system:anonymous``, as on a real server.
        """
        self.types: list[ResourceType] = [
            *BUILTIN_TYPES,
            *(resource_types_from_crd(c) for c in crds),
        ]
        self.auto_namespaces = auto_namespaces
        self.owner_references_permission_enforcement = owner_references_permission_enforcement
        self.anonymous_is_admin = anonymous_is_admin
        self.garbage_collection = garbage_collection
        self.bookmark_seconds = 60.0
        self._tokens: dict[str, User | tuple[str, str]] = {ADMIN_TOKEN: ADMIN, KUBECONFIG_TOKEN: ADMIN}
        self._schemas: dict[tuple[str, str, str], StructuralSchema] = {}
        self._openapi = OpenAPIV3(crds)
        for crd in crds:
            for served in crd["spec"]["versions"]:
                schema = (served.get("schema") or {}).get("openAPIV3Schema")
                if schema:
                    # the apiserver refuses a CRD whose rules do not compile against their types
                    if errors := rule_errors(schema):
                        raise ValueError(f"CustomResourceDefinition {crd['metadata']['name']} is invalid: "
                                         + "; ".join(errors))
                    key = (crd["spec"]["group"], crd["spec"]["names"]["plural"], served["name"])
                    self._schemas[key] = StructuralSchema(schema, ratcheting=ratcheting)
        self._local = threading.local()
        self.requests: list[RequestRecord] = []
        self.keep_request_log = True  # False: only request_counts (a long benchmark's log would grow without end)
        self.request_counts: Counter[tuple[str, str | None]] = Counter()  # (verb, resource) -> requests so far
        self._faults: list[_Fault] = []
        self._store = _Store()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        for namespace in namespaces:
            self.create_namespace(namespace)

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

    def clear_faults(self) -> None:
        """Drop every injected fault not yet used up (e.g. the end of an outage injected with a
        large ``count``)."""
        with self._store.lock:
            self._faults.clear()

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._store.lock:
            self.requests.clear()

    def count_by_verb(self) -> dict[str, int]:
        """Resource requests in the log by Kubernetes verb (discovery is not counted)."""
        with self._store.lock:
            return dict(Counter(r.verb for r in self.requests if r.resource is not None))

    def expire_history(self) -> None:
        """Compact: any watch from an older resourceVersion now gets 410 Gone, and so does a LIST
        continuing with an older ``continue`` token."""
        with self._store.lock:
            self._store.history.clear()
            self._store.floor = self._store.rv
            self._store.compacted = self._store.rv

    def expire_continue_tokens(self) -> None:
        """Expire every ``continue`` token handed out so far (410 Expired), leaving watches alone."""
        with self._store.lock:
            self._store.compacted = self._store.rv

    def send_bookmarks(self) -> None:
        """Make every watch that allows bookmarks send a BOOKMARK event now (the real server sends
        them about once a minute, :attr:`bookmark_seconds` here, and just before a watch times out)."""
        with self._store.lock:
            self._store.bookmarks += 1
            self._store.lock.notify_all()

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        return str(self._store.rv)

    def objects(self, resource: str, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of a resource (by plural), optionally in one namespace."""
        rtype = self._type_by_plural(resource)
        with self._store.lock:
            items = sorted(self._store.bucket(rtype).items())
            return [clone(o) for (ns, _), o in items if namespace is None or ns == namespace]

    def get_object(self, resource: str, namespace: str | None, name: str) -> JSON | None:
        """A copy of one stored object, or None."""
        rtype = self._type_by_plural(resource)
        with self._store.lock:
            obj = self._store.bucket(rtype).get((namespace or "", name))
            return clone(obj) if obj is not None else None

    def add_object(self, resource: str, obj: JSON) -> JSON:
        """Create an object directly (as a POST would), to seed a test; returns the stored copy."""
        rtype = self._type_by_plural(resource)
        namespace = obj.get("metadata", {}).get("namespace", "default") if rtype.namespaced else None
        return self._create(rtype, rtype.versions[0], namespace, clone(obj))

    def api_client(self, token: str = ADMIN_TOKEN) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server (as admin by default); close it (or ``with``)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def api_client_as(self, namespace: str, service_account: str) -> Any:
        """An ``ApiClient`` authenticating as a ServiceAccount (which must exist): RBAC applies to it."""
        return self.api_client(self.token_for(namespace, service_account))

    def token_for(self, namespace: str, service_account: str) -> str:
        """A bearer token for a ServiceAccount, valid while the ServiceAccount exists (as a TokenRequest)."""
        token = f"sa-{namespace}-{service_account}-{uuid.uuid4().hex}"
        with self._store.lock:
            self._tokens[token] = (namespace, service_account)
        return token

    def apply_manifests(self, documents: Iterable[JSON | None]) -> list[JSON]:
        """Create each document (Namespaces first; kinds by name, as kubectl create -f); returns them stored."""
        docs = [d for d in documents if d]
        docs.sort(key=lambda d: d.get("kind") != "Namespace")
        created = []
        for doc in docs:
            rtype = self._type_by_kind(doc.get("apiVersion", ""), doc["kind"])
            created.append(self.add_object(rtype.qualified, doc))
        return created

    def authenticate(self, authorization: str | None) -> User:
        """The user of an ``Authorization`` header: anonymous without one, 401 for an unknown token."""
        if not authorization:
            return ADMIN if self.anonymous_is_admin else ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        found = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None  # a dict read is atomic
        if isinstance(found, User):
            return found
        if found is None:
            raise unauthorized()
        namespace, name = found
        if self.get_object("serviceaccounts", namespace, name) is None:
            raise unauthorized()
        return service_account_user(namespace, name)

    def authorize(self, attrs: Attributes) -> None:
        """403 Forbidden unless RBAC allows the request."""
        if not authorize(attrs, self.objects):
            raise forbidden(attrs)

    def _check(self, verb: str, rtype: ResourceType, namespace: str | None, name: str | None,
               subresource: str | None = None) -> None:
        """An extra authorization check inside a request (apply that creates, admission plugins)."""
        user = getattr(self._local, "user", ADMIN)
        self.authorize(Attributes(user, verb, rtype.group, rtype.plural, subresource, namespace, name))

    def _owner_references_permissions(self, rtype: ResourceType, obj: JSON, old: JSON | None) -> None:
        """OwnerReferencesPermissionEnforcement: changing ownerReferences needs delete on the object,
        setting blockOwnerDeletion needs update on the owner's finalizers."""
        user = getattr(self._local, "user", ADMIN)
        if not self.owner_references_permission_enforcement or user.admin:
            return
        meta, old_meta = obj.get("metadata") or {}, (old or {}).get("metadata") or {}
        refs, old_refs = meta.get("ownerReferences") or [], old_meta.get("ownerReferences") or []
        if refs == old_refs:
            return
        namespace, name = meta.get("namespace"), meta.get("name")
        if old is not None:
            try:
                self._check("delete", rtype, namespace, name)
            except ApiError as denied:
                raise ApiError(403, f'{rtype.qualified} "{name}" is forbidden: cannot set an ownerRef on a '
                               f"resource you can't delete: {denied.message}",
                               details={"name": name, "group": rtype.group, "kind": rtype.plural}) from None
        blocking_before = {r.get("uid") for r in old_refs if r.get("blockOwnerDeletion")}
        for ref in refs:
            if not ref.get("blockOwnerDeletion") or ref.get("uid") in blocking_before:
                continue
            try:
                owner = self._type_by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            except KeyError:
                continue
            try:
                self._check("update", owner, namespace if owner.namespaced else None, ref.get("name"), "finalizers")
            except ApiError as denied:
                raise ApiError(403, f'{rtype.qualified} "{name}" is forbidden: cannot set blockOwnerDeletion if '
                               "an ownerReference refers to a resource you can't set finalizers on: "
                               f"{denied.message}",
                               details={"name": name, "group": rtype.group, "kind": rtype.plural}) from None

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = ADMIN_TOKEN,
    ) -> tuple[int, Any, Any]:
        """One raw request (status, headers, decoded JSON body), for cases the typed client cannot send."""
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers, json.loads(error.read() or b"null")

    def kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context points at this server; returns the path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kubeapi",
            "clusters": [{"name": "kubeapi", "cluster": {"server": self.url}}],
            "users": [{"name": "kubeapi", "user": {"token": KUBECONFIG_TOKEN}}],
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

    def _type_by_kind(self, api_version: str, kind: str) -> ResourceType:
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        for rtype in self.types:
            if rtype.kind == kind and rtype.group == group:
                return rtype
        raise KeyError(f"unknown kind {kind!r} in {api_version!r}")

    def _type_at(self, group: str, version: str, plural: str) -> ResourceType:
        for rtype in self.types:
            if rtype.group == group and version in rtype.versions and rtype.plural == plural:
                return rtype
        raise ApiError(404, "the server could not find the requested resource")

    def _take_fault(self, verb: str, resource: str) -> _Fault | None:
        if not self._faults:  # the common case, without taking the lock
            return None
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
        if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
            return self._openapi.serve(path)
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
        out = clone(obj)
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

    def create_namespace(self, namespace: str) -> None:
        """Create a Namespace unless it exists (tests create the namespaces they use)."""
        ns_type = self.types[0]
        with self._store.lock:
            if ("", namespace) not in self._store.bucket(ns_type):
                self._create(ns_type, "v1", None, {"metadata": {"name": namespace}})

    def _check_namespace(self, namespace: str) -> None:
        """NamespaceLifecycle admission: 404 for a namespace that does not exist, 403 while it terminates."""
        ns_type = self.types[0]
        with self._store.lock:
            found = self._store.bucket(ns_type).get(("", namespace))
            if found is None and self.auto_namespaces:
                self.create_namespace(namespace)
                return
        if found is None:
            raise ApiError(
                404, f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"}
            )
        if found["metadata"].get("deletionTimestamp"):
            message = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise ApiError(
                403,
                message,
                details={
                    "name": namespace,
                    "kind": "namespaces",
                    "causes": [{"reason": "NamespaceTerminating", "message": message, "field": "metadata.namespace"}],
                },
            )

    def _admit(self, rtype: ResourceType, obj: JSON, old: JSON | None) -> None:
        """Prune, default and validate a write as the real server does, raising 422 Invalid with causes."""
        version = str(obj.get("apiVersion", "")).rpartition("/")[2]
        schema = self._schemas.get((rtype.group, rtype.plural, version))
        admission = schema.admit(obj, old) if schema is not None else Admission()
        if schema is None:
            prune_metadata(obj, admission)
        deleting = old is not None and bool(old["metadata"].get("deletionTimestamp"))
        errors = object_meta_errors(rtype, obj, deleting=deleting, old=old) + admission.errors
        if not errors:
            self._owner_references_permissions(rtype, obj, old)
        if admission.pruned:
            unknown = [f'unknown field "{p}"' for p in admission.pruned]
            mode = getattr(self._local, "field_validation", "Warn")
            if mode == "Strict":
                raise ApiError(400, "strict decoding error: " + ", ".join(unknown))
            if mode != "Ignore":
                warnings = getattr(self._local, "warnings", None)
                if warnings is not None:
                    warnings.extend(unknown)
        if errors:
            raise invalid(rtype, obj["metadata"].get("name", ""), errors)

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

    def _create(
        self, rtype: ResourceType, version: str, namespace: str | None, body: JSON, managed: bool = False
    ) -> JSON:
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
            detail = "name or generateName is required"
            raise invalid(rtype, "", [FieldError("FieldValueRequired", "metadata.name", detail=detail)])
        if rtype.plural == "secrets":
            self._normalize_secret(body)
        if rtype.status_subresource:
            body.pop("status", None)
        if rtype.plural == "namespaces":
            body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            body["status"] = {"phase": "Active"}
        if namespace is not None:
            self._check_namespace(namespace)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        body["apiVersion"], body["kind"] = rtype.api_version(version), rtype.kind
        self._admit(rtype, body, None)
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
            if not managed and (hasattr(self._local, "user") or not meta.get("managedFields")):
                # a create is an Update by its manager (a seeded object keeps the managedFields it has)
                managers = Managers(None)
                managers.update(self._manager(), "", owned_paths(body, rtype.status_subresource, None), set())
                meta["managedFields"] = managers.as_list(rtype.api_version(version))
            stored = self._out(rtype, version, body)
            bucket[(namespace or "", name)] = stored
            self._store.record(rtype, "ADDED", stored, None)
            if meta.get("ownerReferences") and not self._store.settled_with(stored):
                self._collect()  # an owner that is gone already: the collector deletes it
            return clone(stored)

    def _now_timestamp(self) -> str:
        return _now()

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
        managed: bool = False,
    ) -> JSON:
        """Store ``new`` in place of the current object, keeping what the caller may not change.

        ``managed``: ``new`` carries its managedFields (apply); else this write is an Update.
        """
        with self._store.lock:
            old = self._current(rtype, namespace, name)
            meta = new.setdefault("metadata", {})
            incoming_managed = meta.get("managedFields")
            if meta.get("name", name) != name:
                raise ApiError(
                    400,
                    f"the name of the object ({meta['name']}) does not match the name on the request ({name})",
                )
            given_rv = meta.get("resourceVersion")
            if given_rv not in (None, "") and given_rv != old["metadata"]["resourceVersion"]:
                raise self._conflict(rtype, name)
            if rtype.status_subresource and subresource == "status":
                new = {**clone(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif rtype.status_subresource:
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in old:
                    new["status"] = clone(old["status"])
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
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            self._admit(rtype, new, old)
            if managed and incoming_managed is not None:
                meta["managedFields"] = incoming_managed
            elif managed:
                meta.pop("managedFields", None)
            else:
                self._record_update(rtype, subresource, old, new)
            if new == old:
                return clone(old)  # a no-op write is not stored, as in etcd
            if rtype.custom and self._spec_part(rtype, new) != self._spec_part(rtype, old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            meta["resourceVersion"] = self._store.next_rv()
            self._store.bucket(rtype)[(namespace or "", name)] = new
            self._store.record(rtype, "MODIFIED", new, old)
            changed = (meta.get("deletionTimestamp")
                       or meta.get("ownerReferences") != old["metadata"].get("ownerReferences"))
            if changed and not self._store.settled_with(new):
                self._collect()  # finalizers emptied, or owners changed
                current = self._store.bucket(rtype).get((namespace or "", name))
                return clone(current if current is not None else new)
            return clone(new)

    def _list(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> list[JSON]:
        with self._store.lock:
            return [
                clone(o)
                for (ns, _), o in sorted(self._store.bucket(rtype).items())
                if (namespace is None or ns == namespace) and self._matches(o, query)
            ]

    def _list_page(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], after: tuple[str, ...], limit: int
    ) -> tuple[list[JSON], bool]:
        """Copies of the matching objects after the key ``after`` (a continue token's start), at most
        ``limit`` (0: all), and whether more match; only what is returned is copied."""
        with self._store.lock:
            bucket = self._store.bucket(rtype)
            keys = sorted(bucket)
            out: list[JSON] = []
            for key in keys[bisect.bisect_right(keys, after) if after else 0:]:
                if namespace is not None and key[0] != namespace:
                    continue
                obj = bucket[key]
                if not self._matches(obj, query):
                    continue
                if limit and len(out) == limit:
                    return out, True
                out.append(clone(obj))
            return out, False

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
            current = clone(self._current(rtype, namespace, name))
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
        applied["metadata"].pop("managedFields", None)
        paths = owned_paths(applied, rtype.status_subresource, subresource)
        force = query.get("force") in ("true", "1")
        api_version = rtype.api_version(version)
        with self._store.lock:
            exists = (namespace or "", name) in self._store.bucket(rtype)
            if not exists:
                if subresource:
                    raise self._not_found(rtype, name)
                self._check("create", rtype, namespace, name)  # apply that creates is authorized as create too
                managers = Managers(None)
                managers.apply(manager, "", applied, paths, None, force, api_version)
                body = clone(applied)
                body["metadata"]["managedFields"] = managers.as_list(api_version)
                return 201, self._create(rtype, version, namespace, body, managed=True)
            current = self._current(rtype, namespace, name)
            managers = Managers(current["metadata"].get("managedFields"))
            removed = managers.apply(manager, subresource or "", applied, paths, current, force, api_version)
            new = _apply_merge(current, applied)
            new["metadata"].pop("resourceVersion", None)  # apply is never conditional on it
            for stale in removed:
                _remove_path(new, stale)
            new["metadata"]["managedFields"] = managers.as_list(api_version)
            if not new["metadata"]["managedFields"]:
                new["metadata"].pop("managedFields")
            return 200, self._replace(rtype, namespace, name, new, subresource, managed=True)

    def _manager(self) -> str:
        """This request's field manager: ``fieldManager``, else from the User-Agent (as the server does)."""
        return getattr(self._local, "manager", None) or "kubeapi-test"

    def _record_update(self, rtype: ResourceType, subresource: str | None, old: JSON, new: JSON) -> None:
        """managedFields after an Update (PUT, patch): its manager owns what changed."""
        new_paths = owned_paths(new, rtype.status_subresource, subresource)
        old_paths = owned_paths(old, rtype.status_subresource, subresource)
        changed = {p for p in new_paths if value_at(old, p) != value_at(new, p)}
        removed = old_paths - new_paths
        managers = Managers(old["metadata"].get("managedFields"))
        if changed or removed:
            managers.update(self._manager(), subresource or "", changed, removed)
        entries = managers.as_list(new["apiVersion"])
        if entries:
            new["metadata"]["managedFields"] = entries
        else:
            new["metadata"].pop("managedFields", None)

    # ----------------------------------------------------------------- watch

    def _watch_events(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], deadline: float
    ) -> Generator[JSON, None, None]:
        """Check the request (raising ApiError), then return the generator of its watch events."""
        store = self._store
        requested = query.get("resourceVersion", "")
        self._matches({}, query)  # a bad selector is an error response, not a broken stream
        with store.lock:
            if requested in ("", "0") or query.get("sendInitialEvents") == "true":  # now, objects as ADDED
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
        """Yield watch events until the deadline, server stop, or 410 Gone; BOOKMARKs if allowed."""
        store = self._store
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        epoch, next_bookmark = store.bookmarks, min(time.monotonic() + self.bookmark_seconds, deadline - 2)
        yield from initial
        if bookmarks and query.get("sendInitialEvents") == "true":
            yield self._bookmark(rtype, cursor, initial_events_end=True)
        while True:
            bookmark = None
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
                pending = store.since(cursor)
                if not pending:
                    cursor = max(cursor, store.rv)  # every event so far was seen (or was not for us)
                    now = time.monotonic()
                    remaining = deadline - now
                    if bookmarks and not store.stopping and (store.bookmarks != epoch or now >= next_bookmark):
                        # as the watch cache: about once a minute, and shortly before the watch times out
                        epoch, next_bookmark = store.bookmarks, min(now + self.bookmark_seconds, max(now, deadline - 2))
                        if next_bookmark <= now:
                            next_bookmark = deadline + 1
                        bookmark = self._bookmark(rtype, cursor)
                    elif remaining <= 0 or store.stopping:
                        return
                    else:
                        wait = min(remaining, 1.0, next_bookmark - now) if bookmarks else min(remaining, 1.0)
                        store.lock.wait(max(wait, 0.01))
                        continue
            if bookmark is not None:
                yield bookmark
                continue
            for event in pending:
                cursor = event.rv
                translated = self._translate(rtype, namespace, query, event)
                if translated is not None:
                    yield translated

    @staticmethod
    def _bookmark(rtype: ResourceType, cursor: int, initial_events_end: bool = False) -> JSON:
        metadata: JSON = {"resourceVersion": str(cursor)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": rtype.kind, "metadata": metadata}}

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
            gone = clone(event.prev)
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return {"type": "DELETED", "object": gone}
        return {"type": event.type, "object": event.obj} if now else None

    # ----------------------------------------------------------------- tables

    def _table(self, rtype: ResourceType, items: list[JSON], rv: str, include: str) -> JSON:
        return table(rtype, items, rv, include)
