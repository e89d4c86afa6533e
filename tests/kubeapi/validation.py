"""Field errors and the 422 Invalid they become, and ObjectMeta validation for every kind.

The messages follow k8s.io/apimachinery's ``field.Error`` (``<field>: <type>[: <value>][: <detail>]``)
and ``IsDNS1123Subdomain`` / ``IsQualifiedName`` / ``IsValidLabelValue`` of
``k8s.io/apimachinery/pkg/util/validation``, so a client sees what a real server would send.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tests.kubeapi.model import JSON, ApiError, ResourceType

DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = f"({QUALIFIED_NAME})?"
CONFIG_KEY = "[-._a-zA-Z0-9]+"
TOTAL_ANNOTATION_BYTES = 256 * 1024
SECRET_DATA_BYTES = 1024 * 1024
STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})

_TYPE_TEXT = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "FieldValueTypeInvalid": "Invalid value",
    "InternalError": "Internal error",
}
_NO_VALUE = ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError")


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: its type (a StatusCause reason), the field path, the bad value, a detail."""

    type: str
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        """``ErrorBody()``: what follows the field path in messages and is the cause's message."""
        text = _TYPE_TEXT.get(self.type, self.type)
        if self.type not in _NO_VALUE:
            text += f": {_go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def cause(self) -> JSON:
        return {"reason": self.type, "message": self.body(), "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _go_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True)


def invalid(rtype: ResourceType, name: str, errors: list[FieldError]) -> ApiError:
    """The 422 Invalid Status a real server answers for these errors, with one cause per error."""
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    return ApiError(
        422,
        f'{kind} "{name}" is invalid: {listed}',
        "Invalid",
        {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": [e.cause() for e in errors]},
    )


# --------------------------------------------------------------------------- the string rules


def dns1123_subdomain(value: str) -> list[str]:
    """``IsDNS1123Subdomain``: the problems of a value as a lowercase RFC 1123 subdomain."""
    problems = []
    if len(value) > 253:
        problems.append("must be no more than 253 characters")
    if not re.fullmatch(DNS1123_SUBDOMAIN, value):
        problems.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
            f"validation is '{DNS1123_SUBDOMAIN}')"
        )
    return problems


def dns1123_label(value: str) -> list[str]:
    """``IsDNS1123Label``: the problems of a value as a lowercase RFC 1123 label."""
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not re.fullmatch(DNS1123_LABEL, value):
        problems.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
            f"start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
            f"validation is '{DNS1123_LABEL}')"
        )
    return problems


def qualified_name(value: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS subdomain prefix and '/', then a name of at most 63."""
    prefix, slash, name = value.rpartition("/")
    problems = []
    if slash and (not prefix or "/" in prefix):
        return [
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
            f"for validation is '{QUALIFIED_NAME}') with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        ]
    if slash:
        problems += ["prefix part " + p for p in dns1123_subdomain(prefix)]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    if name and not re.fullmatch(QUALIFIED_NAME, name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
            f"validation is '{QUALIFIED_NAME}')"
        )
    return problems


def label_value(value: str) -> list[str]:
    """``IsValidLabelValue``: empty, or at most 63 characters of the qualified-name alphabet."""
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not re.fullmatch(LABEL_VALUE, value):
        problems.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
            f"'12345', regex used for validation is '{LABEL_VALUE}')"
        )
    return problems


def config_key(value: str) -> list[str]:
    """``IsConfigMapKey``: Secret and ConfigMap data keys."""
    problems = []
    if len(value) > 253:
        problems.append("must be no more than 253 characters")
    if not re.fullmatch(CONFIG_KEY, value):
        problems.append(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
            f"or 'KEY_NAME',  or 'key-name', regex used for validation is '{CONFIG_KEY}')"
        )
    if value in (".", ".."):
        problems.append(f"must not be '{value}'")
    elif value.startswith(".."):
        problems.append("must not start with '..'")
    return problems


# --------------------------------------------------------------------------- ObjectMeta and kinds


def _each(field: str, value: Any, problems: list[str]) -> list[FieldError]:
    return [FieldError("FieldValueInvalid", field, value, p) for p in problems]


def _string_map(meta: JSON, key: str) -> tuple[dict[str, Any], list[FieldError]]:
    value = meta.get(key)
    if value is None:
        return {}, []
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return {}, [FieldError("FieldValueTypeInvalid", f"metadata.{key}", value, "must be a map of strings")]
    return value, []


def object_meta_errors(
    rtype: ResourceType, obj: JSON, *, deleting: bool = False, old: JSON | None = None
) -> list[FieldError]:
    """``ValidateObjectMeta`` and the per-kind rules this server enforces, as field errors."""
    meta = obj.get("metadata") or {}
    errors: list[FieldError] = []
    name = meta.get("name", "")
    if not name:
        errors.append(FieldError("FieldValueRequired", "metadata.name", detail="name or generateName is required"))
    else:
        rule = dns1123_label if rtype.plural == "namespaces" else dns1123_subdomain
        errors += _each("metadata.name", name, rule(name))
    labels, bad = _string_map(meta, "labels")
    errors += bad
    for key, value in labels.items():
        errors += _each("metadata.labels", key, qualified_name(key))
        errors += _each("metadata.labels", value, label_value(value))
    annotations, bad = _string_map(meta, "annotations")
    errors += bad
    for key in annotations:
        errors += _each("metadata.annotations", key, qualified_name(key.lower()))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > TOTAL_ANNOTATION_BYTES:
        errors.append(
            FieldError(
                "FieldValueTooLong", "metadata.annotations", detail=f"must have at most {TOTAL_ANNOTATION_BYTES} bytes"
            )
        )
    errors += _finalizer_errors(meta, deleting, old)
    errors += _owner_reference_errors(meta)
    errors += _kind_errors(rtype, obj)
    return errors


def _finalizer_errors(meta: JSON, deleting: bool, old: JSON | None) -> list[FieldError]:
    errors: list[FieldError] = []
    finalizers = meta.get("finalizers") or []
    for index, finalizer in enumerate(finalizers):
        field = f"metadata.finalizers[{index}]"
        problems = qualified_name(finalizer)
        if not problems and "/" not in finalizer and finalizer not in STANDARD_FINALIZERS:
            problems = ["name is neither a standard finalizer name nor is it fully qualified"]
        errors += _each(field, finalizer, problems)
    if deleting and old is not None:
        before = set((old.get("metadata") or {}).get("finalizers") or [])
        if set(finalizers) - before:
            errors.append(
                FieldError(
                    "FieldValueForbidden",
                    "metadata.finalizers",
                    detail="no new finalizers can be added if the object is being deleted",
                )
            )
    return errors


def _owner_reference_errors(meta: JSON) -> list[FieldError]:
    errors: list[FieldError] = []
    controllers = 0
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        field = f"metadata.ownerReferences[{index}]"
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                detail = "uid must not be empty" if key == "uid" else f"{key} must not be empty"
                errors.append(FieldError("FieldValueInvalid", f"{field}.{key}", ref.get(key, ""), detail))
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        errors.append(
            FieldError(
                "FieldValueInvalid",
                "metadata.ownerReferences",
                meta.get("ownerReferences"),
                "Only one reference can have Controller set to true",
            )
        )
    return errors


def _kind_errors(rtype: ResourceType, obj: JSON) -> list[FieldError]:
    if rtype.group != "":
        return []
    errors: list[FieldError] = []
    if rtype.plural in ("secrets", "configmaps"):
        total = 0
        for field in ("data", "binaryData") if rtype.plural == "configmaps" else ("data",):
            for key, value in (obj.get(field) or {}).items():
                errors += _each(f"{field}[{key}]", key, config_key(key))
                total += len(str(value)) * 3 // 4 if rtype.plural == "secrets" else len(str(value).encode())
        if rtype.plural == "configmaps" and set(obj.get("data") or {}) & set(obj.get("binaryData") or {}):
            errors.append(
                FieldError("FieldValueInvalid", "data", obj.get("data"), "duplicate of key present in binaryData")
            )
        if total > SECRET_DATA_BYTES:
            errors.append(
                FieldError("FieldValueTooLong", "data", detail=f"must have at most {SECRET_DATA_BYTES} bytes")
            )
    if rtype.plural == "events":
        involved = obj.get("involvedObject") or {}
        namespace = (obj.get("metadata") or {}).get("namespace")
        if involved.get("namespace", "") != (namespace or "") and (involved.get("namespace") or namespace != "default"):
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    "involvedObject.namespace",
                    involved.get("namespace", ""),
                    "does not match event.namespace",
                )
            )
    return errors
