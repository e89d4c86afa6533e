"""A small, faithful Kubernetes API server for the tests (real HTTP on 127.0.0.1).

There is no kube-apiserver on these machines, so the Kubernetes store, the controller and kubectl
are tested against this module. It follows the API conventions the product relies on, not the
whole API:

- discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``, ``/version``; the
  aggregated-discovery Accept types get plain JSON (clients fall back); ``/openapi/v3`` publishes
  the CRDs' schemas for ``kubectl explain`` (openapi.py), ``/openapi/v2`` is 404;
- resources: core v1 Secrets, ConfigMaps, Events, Namespaces (cluster-scoped),
  coordination.k8s.io/v1 Leases, and every served version of the CRDs given to the constructor;
- CRUD with 201 on create, 409 AlreadyExists, PUT with 409 on a stale ``metadata.resourceVersion``,
  merge / JSON / strategic-merge (treated as merge) patches, and server-side apply with
  ``managedFields`` (fields.py: ownership per field manager and subresource, 409 Conflict when
  another manager owns a field with a different value unless ``force``, fields a manager stops
  applying removed unless co-owned, Updates take ownership of what they change; lists atomic);
- status-subresource isolation, ``metadata.generation`` (custom resources only, bumped when anything
  but metadata and status changes), a global ``resourceVersion`` counter; a write that changes
  nothing is not stored (no new resourceVersion, no watch event), as in etcd-backed storage;
- label and field selectors, ``limit``/``continue`` (tokens resume after the last key and expire
  with 410 Expired after :meth:`KubeAPIServer.expire_continue_tokens` or ``expire_history``),
  ``stringData`` folded into Secret ``data``;
- deletion (gc.py): finalizers and ``deletionTimestamp`` (202 while they hold it), garbage
  collection by ownerReference with Background, Foreground (``foregroundDeletion`` until the
  ``blockOwnerDeletion`` dependents are gone) and Orphan propagation, Namespaces that terminate;
  synchronous, for determinism (``garbage_collection=False`` turns the collector off);
- watch (chunked newline-delimited JSON) with ``resourceVersion`` replay from a bounded history,
  ``timeoutSeconds``, an ``ERROR`` event with a 410 Expired Status for a too-old version, and
  ``BOOKMARK`` events with ``allowWatchBookmarks`` (every ``bookmark_seconds``, shortly before the
  watch times out, on :meth:`KubeAPIServer.send_bookmarks`; ``sendInitialEvents`` ends with one);
- authentication and RBAC (rbac.py): bearer tokens (:data:`ADMIN_TOKEN`, ``token_for`` a
  ServiceAccount), 401 for an unknown token, Role/ClusterRole and bindings stored as objects
  (``apply_manifests``), 403 Forbidden for what they do not allow, apply that creates authorized
  as create too, OwnerReferencesPermissionEnforcement (``blockOwnerDeletion`` needs update on the
  owner's ``finalizers``); a request without credentials is an admin unless
  ``anonymous_is_admin=False`` (kubectl sends no token over plain HTTP);
- Table output (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) from the CRD's
  ``additionalPrinterColumns``; core resources get NAME and AGE;
- admission (schema.py, validation.py): custom resources are pruned (unknown fields dropped, a
  ``Warning`` header, 400 with ``fieldValidation=Strict``), defaulted and validated against the
  CRD's OpenAPI v3 schema, and its ``x-kubernetes-validations`` CEL rules run in cel-python
  (transition rules with ``oldSelf``; ratcheting of unchanged parts; each rule's outcome memoized
  per distinct value of the fields it reads, celcache.py, as CEL is pure). cel-python does not
  type-check, so celtypes.py compiles each rule against its declared types with the C++ CEL's
  checker, and a CRD whose rules do not compile is refused at construction (ValueError), as the
  apiserver refuses it at creation. ObjectMeta (name, labels,
  annotations, finalizers, ownerReferences) and Secret/ConfigMap data keys and Event namespaces
  are validated for every kind; failures are 422 Invalid with ``details.causes`` field paths;
- namespaces are objects: a write into one that does not exist is 404 ``namespaces "x" not
  found`` (NamespaceLifecycle), into a terminating one 403; ``default``, ``kube-system``,
  ``kube-public`` and ``kube-node-lease`` exist from the start (``namespaces=``), tests create
  the others (``create_namespace``; ``auto_namespaces=True`` is a relaxation, not real behaviour);
- errors as ``Status`` objects; fault injection (:meth:`KubeAPIServer.inject`) and a request log
  (``keep_request_log=False`` keeps only ``request_counts`` by verb and resource);
- for benchmarks only, bulk.py loads many objects as creates would without a request each.

Simplifications, on purpose: no conversion between CRD
versions, no CEL cost budget; PUT never creates; fault injection applies to resource requests
only, not discovery.
"""

from tests.kubeapi.model import (
    BUILTIN_TYPES,
    JSON,
    SYSTEM_NAMESPACES,
    ApiError,
    RequestRecord,
    ResourceType,
    resource_types_from_crd,
)
from tests.kubeapi.patches import json_patch, merge_patch
from tests.kubeapi.rbac import ADMIN_TOKEN
from tests.kubeapi.selectors import field_selector_matches, jsonpath_first, label_selector_matches
from tests.kubeapi.server import KubeAPIServer

__all__ = [
    "ADMIN_TOKEN",
    "BUILTIN_TYPES",
    "SYSTEM_NAMESPACES",
    "JSON",
    "ApiError",
    "KubeAPIServer",
    "RequestRecord",
    "ResourceType",
    "field_selector_matches",
    "json_patch",
    "jsonpath_first",
    "label_selector_matches",
    "merge_patch",
    "resource_types_from_crd",
]
