"""The OpenAPI v3 documents of the served CRDs (``/openapi/v3``), as `kubectl explain` reads them.

A real apiserver publishes, per group-version, an OpenAPI 3.0 document whose
``components.schemas`` hold each custom resource's schema under the reversed group name
(``io.reconciler.email.v1alpha1.EmailAccount``), tagged with ``x-kubernetes-group-version-kind``,
and its List. It builds them from the CRD as apiextensions-apiserver's openapi builder does:
``metadata`` becomes a reference to ObjectMeta with the standard description, ``apiVersion`` and
``kind`` get TypeMeta's schema keeping the CRD's description; the rest of the schema is the CRD's
own, descriptions included. ``/openapi/v3`` lists each group-version with its ``serverRelativeURL``
(``?hash=`` of the document, which clients cache by).

Its ``paths`` carry one operation per verb, each with ``x-kubernetes-action`` and the
``x-kubernetes-group-version-kind`` explain looks the GVR up by. Left out: parameters, request
bodies, and of the meta types all but ObjectMeta and ListMeta (with their commonly used fields).
Core and built-in groups are not published.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence

from tests.kubeapi.model import JSON, ApiError

_META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_CONVENTIONS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
_API_VERSION = ("APIVersion defines the versioned schema of this representation of an object. Servers "
                "should convert recognized schemas to the latest internal value, and may reject "
                f"unrecognized values. More info: {_CONVENTIONS}#resources")
_KIND = ("Kind is a string value representing the REST resource this object represents. Servers may "
         "infer this from the endpoint the client submits requests to. Cannot be updated. In "
         f"CamelCase. More info: {_CONVENTIONS}#types-kinds")
_METADATA = f"Standard object's metadata. More info: {_CONVENTIONS}#metadata"
_LIST_METADATA = f"Standard list metadata. More info: {_CONVENTIONS}#types-kinds"


def _string(description: str) -> JSON:
    return {"type": "string", "description": description}


_OBJECT_META: JSON = {
    "type": "object",
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all "
                   "objects users must create.",
    "properties": {
        "name": _string("Name must be unique within a namespace. Is required when creating resources, "
                        "although some resources may allow a client to request the generation of an "
                        "appropriate name automatically. Cannot be updated."),
        "generateName": _string("GenerateName is an optional prefix, used by the server, to generate a "
                                "unique name ONLY IF the Name field has not been provided."),
        "namespace": _string("Namespace defines the space within which each name must be unique. An "
                             "empty namespace is equivalent to the \"default\" namespace. Cannot be "
                             "updated."),
        "uid": _string("UID is the unique in time and space value for this object."),
        "resourceVersion": _string("An opaque value that represents the internal version of this "
                                   "object that can be used by clients to determine when objects "
                                   "have changed."),
        "generation": {"type": "integer", "format": "int64",
                       "description": "A sequence number representing a specific generation of the "
                                      "desired state. Populated by the system. Read-only."},
        "creationTimestamp": _string("CreationTimestamp is a timestamp representing the server time "
                                     "when this object was created."),
        "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""},
                   "description": "Map of string keys and values that can be used to organize and "
                                  "categorize (scope and select) objects."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""},
                        "description": "Annotations is an unstructured key value map stored with a "
                                       "resource that may be set by external tools to store and "
                                       "retrieve arbitrary metadata."},
        "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                       "description": "Must be empty before the object is deleted from the registry."},
    },
}
_LIST_META: JSON = {
    "type": "object",
    "description": "ListMeta describes metadata that synthetic resources must have, including lists "
                   "and various status objects.",
    "properties": {
        "resourceVersion": _string("String that identifies the server's internal version of this "
                                   "object that can be used by clients to determine when objects "
                                   "have changed."),
        "continue": _string("continue may be set if the user set a limit on the number of items "
                            "returned, and indicates that the client has more data available."),
    },
}


def _ref(name: str, description: str) -> JSON:
    # OpenAPI v3 as the apiserver writes it: a $ref beside a description is wrapped in allOf
    return {"allOf": [{"$ref": f"#/components/schemas/{name}"}], "description": description,
            "default": {}}


def _prefix(group: str, version: str) -> str:
    return ".".join(reversed(group.split("."))) + f".{version}"


def _resource_schema(schema: JSON, gvk: JSON) -> JSON:
    out = copy.deepcopy(schema)
    props = out.setdefault("properties", {})
    props["apiVersion"] = _string(props.get("apiVersion", {}).get("description") or _API_VERSION)
    props["kind"] = _string(props.get("kind", {}).get("description") or _KIND)
    props["metadata"] = _ref(f"{_META}.ObjectMeta", _METADATA)
    out["x-kubernetes-group-version-kind"] = [gvk]
    return out


def _operation(action: str, gvk: JSON, schema: str, plural: str) -> JSON:
    verb = {"get": "read", "list": "list", "post": "create", "put": "replace", "patch": "patch",
            "delete": "delete", "deletecollection": "deleteCollection"}[action]
    return {"operationId": f"{verb}{gvk['kind']}", "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk, "tags": [plural],
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema}"}}}}}}


def _paths(group: str, version: str, names: JSON, namespaced: bool, prefix: str) -> JSON:
    plural, kind = names["plural"], names["kind"]
    gvk = {"group": group, "version": version, "kind": kind}
    one, many = f"{prefix}.{kind}", f"{prefix}.{names.get('listKind', f'{kind}List')}"
    base = f"/apis/{group}/{version}"
    scoped = f"{base}/namespaces/{{namespace}}/{plural}" if namespaced else f"{base}/{plural}"
    paths = {
        scoped: {"get": _operation("list", gvk, many, plural), "post": _operation("post", gvk, one, plural),
                 "delete": _operation("deletecollection", gvk, one, plural)},
        f"{scoped}/{{name}}": {a: _operation(a, gvk, one, plural) for a in ("get", "put", "patch", "delete")},
        f"{scoped}/{{name}}/status": {a: _operation(a, gvk, one, plural) for a in ("get", "put", "patch")},
    }
    if namespaced:  # the list across all namespaces
        paths[f"{base}/{plural}"] = {"get": _operation("list", gvk, many, plural)}
    return paths


def documents(crds: Sequence[JSON]) -> dict[str, JSON]:
    """The OpenAPI v3 document of each served group-version, keyed by ``apis/<group>/<version>``."""
    docs: dict[str, JSON] = {}
    for crd in crds:
        spec = crd["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        list_kind = spec["names"].get("listKind", f"{kind}List")
        for served in spec["versions"]:
            schema = (served.get("schema") or {}).get("openAPIV3Schema")
            if not served.get("served", True) or not schema:
                continue
            version, prefix = served["name"], _prefix(group, served["name"])
            doc = docs.setdefault(f"apis/{group}/{version}", {
                "openapi": "3.0.0", "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
                "paths": {}, "components": {"schemas": {f"{_META}.ObjectMeta": _OBJECT_META,
                                                        f"{_META}.ListMeta": _LIST_META}}})
            doc["paths"].update(_paths(group, version, spec["names"],
                                       spec.get("scope", "Namespaced") == "Namespaced", prefix))
            schemas = doc["components"]["schemas"]
            gvk = {"group": group, "version": version, "kind": kind}
            schemas[f"{prefix}.{kind}"] = _resource_schema(schema, gvk)
            schemas[f"{prefix}.{list_kind}"] = {
                "type": "object", "required": ["items"],
                "description": f"{list_kind} is a list of {kind}",
                "properties": {
                    "apiVersion": _string(_API_VERSION), "kind": _string(_KIND),
                    "items": {"type": "array", "description": f"List of {spec['names']['plural']}. "
                              f"More info: {_CONVENTIONS}",
                              "items": {"$ref": f"#/components/schemas/{prefix}.{kind}"}},
                    "metadata": _ref(f"{_META}.ListMeta", _LIST_METADATA)},
                "x-kubernetes-group-version-kind": [{**gvk, "kind": list_kind}]}
    return docs


class OpenAPIV3:
    """Answers ``/openapi/v3`` and ``/openapi/v3/apis/<group>/<version>``."""

    def __init__(self, crds: Sequence[JSON]) -> None:
        self._docs = documents(crds)
        self._hashes = {path: hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()
                        for path, doc in self._docs.items()}

    def serve(self, path: str) -> JSON:
        """The JSON at ``path`` (without its query); ApiError(404) for a group-version not served."""
        if path == "/openapi/v3":
            return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={h}"}
                              for p, h in sorted(self._hashes.items())}}
        doc = self._docs.get(path.removeprefix("/openapi/v3/"))
        if doc is None:
            raise ApiError(404, "the server could not find the requested resource")
        return doc
