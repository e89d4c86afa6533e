"""Authentication by bearer token and RBAC authorization, from Role/ClusterRole objects in the store.

As kube-apiserver with ``--authorization-mode=RBAC`` and anonymous auth on: a request without a
token is ``system:anonymous`` (group ``system:unauthenticated``), an unknown token is 401, a
ServiceAccount token is valid while its ServiceAccount exists, and ``system:masters`` bypasses
authorization. Rules match apiGroups, resources (``plural``, ``plural/subresource``, ``*``,
``*/sub``), verbs and resourceNames (never for create, nor for list/watch/deletecollection
without a name); discovery and ``/version`` are open to authenticated users (the default
``system:discovery`` and ``system:public-info-viewer`` bindings), ``/version`` to anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tests.kubeapi.model import JSON, ApiError

ADMIN_TOKEN = "kubeapi-admin-token"
KUBECONFIG_TOKEN = "test-token"  # what KubeAPIServer.kubeconfig writes: an admin
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})


@dataclass(frozen=True)
class User:
    """An authenticated (or anonymous) user as authorizers see it."""

    name: str
    groups: tuple[str, ...]

    @property
    def admin(self) -> bool:
        return "system:masters" in self.groups


ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))
ANONYMOUS = User("system:anonymous", ("system:unauthenticated",))


def service_account_user(namespace: str, name: str) -> User:
    """The user a ServiceAccount's token authenticates as."""
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


@dataclass(frozen=True)
class Attributes:
    """What one request asks to do (the authorizer's view of it)."""

    user: User
    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None

    @property
    def qualified(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _subject_matches(subject: JSON, user: User, binding_namespace: str | None) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    if kind == "User":
        return user.name == subject.get("name")
    if kind == "Group":
        return subject.get("name") in user.groups
    return False


def _resource_matches(patterns: Iterable[str], attrs: Attributes) -> bool:
    for pattern in patterns:
        if pattern in ("*", attrs.qualified):
            return True
        if attrs.subresource and pattern == f"*/{attrs.subresource}":
            return True
        if attrs.subresource is None and pattern == f"{attrs.resource}":
            return True
    return False


def rule_allows(rule: JSON, attrs: Attributes) -> bool:
    """Whether one PolicyRule allows the request."""
    if not {"*", attrs.verb} & set(rule.get("verbs") or []):
        return False
    if not {"*", attrs.group} & set(rule.get("apiGroups") or []):
        return False
    if not _resource_matches(rule.get("resources") or [], attrs):
        return False
    names = rule.get("resourceNames") or []
    return not names or (attrs.name is not None and attrs.name in names)


def authorize(attrs: Attributes, objects: Callable[[str, str | None], list[JSON]]) -> bool:
    """RBAC: any ClusterRoleBinding, or RoleBinding in the request's namespace, whose role allows it."""
    if attrs.user.admin:
        return True
    bindings = [(b, None) for b in objects("clusterrolebindings", None)]
    if attrs.namespace:
        bindings += [(b, attrs.namespace) for b in objects("rolebindings", attrs.namespace)]
    for binding, namespace in bindings:
        if not any(_subject_matches(s, attrs.user, namespace) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "Role" and namespace is not None:
            roles = [r for r in objects("roles", namespace) if r["metadata"]["name"] == ref.get("name")]
        elif ref.get("kind") == "ClusterRole":
            roles = [r for r in objects("clusterroles", None) if r["metadata"]["name"] == ref.get("name")]
        else:
            roles = []
        if any(rule_allows(rule, attrs) for role in roles for rule in role.get("rules") or []):
            return True
    return False


def forbidden(attrs: Attributes) -> ApiError:
    """The 403 Forbidden Status kube-apiserver sends for a denied request."""
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    where = f' in the namespace "{attrs.namespace}"' if attrs.namespace else " at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{attrs.user.name}" cannot {attrs.verb} resource '
        f'"{attrs.qualified}" in API group "{attrs.group}"{where}'
    )
    return ApiError(403, message, details={"name": attrs.name or "", "group": attrs.group, "kind": attrs.resource})


def non_resource_forbidden(user: User, path: str) -> ApiError:
    return ApiError(403, f'forbidden: User "{user.name}" cannot get path "{path}"', details={})


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")
