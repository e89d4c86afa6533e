"""A CRD version's structural schema: pruning, defaulting, OpenAPI v3 validation and CEL rules.

What kube-apiserver's apiextensions code does for a custom resource write, in its order: unknown
fields are pruned (unless ``x-kubernetes-preserve-unknown-fields``), nulls of non-nullable fields
dropped, ``default`` values filled in, then the object is validated against the OpenAPI v3 schema
(kube-openapi's messages) and its ``x-kubernetes-validations`` rules are evaluated with a real CEL
implementation (cel-python). On update, transition rules (those naming ``oldSelf``) see the old
value, and validation ratchets as in Kubernetes 1.30+: a subtree equal to the old one is not
judged again. The CEL cost budget is not modelled.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import email.utils
import functools
import ipaddress
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import re2  # RE2 like Go's regexp: '$' is the end of text, not "before a final newline"

from tests.kubeapi.celcache import MISS, OutcomeCache, read_key
from tests.kubeapi.model import JSON
from tests.kubeapi.validation import FieldError

# ObjectMeta's fields: anything else under metadata is dropped, as the real decoder does.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_MISSING = object()


@dataclass
class Admission:
    """What one write's schema pass produced: the pruned paths (for warnings) and field errors."""

    pruned: list[str] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune_metadata(obj: JSON, result: Admission) -> None:
    """Drop unknown ObjectMeta fields (every kind)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in [k for k in meta if k not in OBJECT_META_FIELDS]:
            del meta[key]
            result.pruned.append(f"metadata.{key}")


class StructuralSchema:
    """One served version's ``openAPIV3Schema``, applied to whole objects."""

    def __init__(self, schema: JSON, *, ratcheting: bool = True) -> None:
        self.schema = schema
        self.ratcheting = ratcheting
        self._programs: dict[str, Any] = {}
        self._outcomes = OutcomeCache()

    # ----------------------------------------------------------------- the pass

    def admit(self, obj: JSON, old: JSON | None) -> Admission:
        """Prune and default ``obj`` in place, then validate it (against ``old`` on update)."""
        result = Admission()
        prune_metadata(obj, result)
        root = {k: v for k, v in self.schema.items() if k != "properties"}
        properties = dict(self.schema.get("properties") or {})
        for key in ("apiVersion", "kind", "metadata"):
            properties.pop(key, None)
        root["properties"] = properties
        for key in list(obj):
            if key in ("apiVersion", "kind", "metadata"):
                continue
            sub = properties.get(key)
            if sub is None and not root.get("x-kubernetes-preserve-unknown-fields"):
                del obj[key]
                result.pruned.append(key)
            elif sub is not None:
                obj[key] = self._prune(obj[key], sub, key, result)
                if obj[key] is _MISSING:
                    del obj[key]
        self._default(obj, root)
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        old_body = (
            None if old is None else {k: v for k, v in old.items() if k not in ("apiVersion", "kind", "metadata")}
        )
        root_for_validation = {k: v for k, v in root.items() if k != "required"}
        root_for_validation["required"] = [
            r for r in root.get("required", []) if r not in ("apiVersion", "kind", "metadata")
        ]
        jobs: list[Any] = []
        old_value = old_body if old is not None else _MISSING
        self._validate(body, old_value, root_for_validation, "", result.errors, jobs=jobs)
        if any(e.type == "FieldValueTypeInvalid" for e in result.errors):
            # as apiextensions does: CEL rules need well-typed values, so they wait for a fix
            detail = (
                "some validation rules were not checked because the object was invalid; "
                "correct the existing errors to complete validation"
            )
            result.errors.append(FieldError("FieldValueInvalid", "<nil>", None, detail))
        else:
            for rule, value, old_value, schema, path in jobs:
                if path == "":  # the root's self has apiVersion, kind and metadata.name/generateName
                    value = _cel_root(value, obj)
                    old_value = old_value if old is None or old_value is _MISSING else _cel_root(old_value, old)
                self._cel(rule, value, old_value, schema, path, result.errors)
        return result

    # ----------------------------------------------------------------- pruning and defaults

    def _prune(self, value: Any, schema: JSON, path: str, result: Admission) -> Any:
        if value is None:
            return value if schema.get("nullable") or "default" in schema else _MISSING
        if isinstance(value, dict) and (
            schema.get("type") == "object" or "properties" in schema or "additionalProperties" in schema
        ):
            properties = schema.get("properties")
            extra = schema.get("additionalProperties")
            preserve = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
            embedded = schema.get("x-kubernetes-embedded-resource")
            for key in list(value):
                if properties is not None and key in properties:
                    sub: Any = properties[key]
                elif isinstance(extra, dict):
                    sub = extra
                elif embedded and key in ("apiVersion", "kind", "metadata") or preserve or properties is None:
                    continue
                else:
                    del value[key]
                    result.pruned.append(_join(path, key))
                    continue
                value[key] = self._prune(value[key], sub, _join(path, key), result)
                if value[key] is _MISSING:
                    del value[key]
            if properties is not None:
                self._default(value, schema)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            items = [self._prune(v, schema["items"], f"{path}[{i}]", result) for i, v in enumerate(value)]
            value[:] = [v for v in items if v is not _MISSING]
        return value

    @staticmethod
    def _default(value: JSON, schema: JSON) -> None:
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])

    # ----------------------------------------------------------------- validation

    def _validate(
        self,
        value: Any,
        old: Any,
        schema: JSON,
        path: str,
        errors: list[FieldError],
        *,
        jobs: list[Any],
    ) -> None:
        if self.ratcheting and old is not _MISSING and value == old:
            return  # ratcheting: an unchanged subtree is not judged again
        before = len(errors)
        self._check_type_and_value(value, schema, path, errors)
        if len(errors) > before:
            return  # a value of the wrong type is not looked into
        for combinator in ("allOf", "anyOf", "oneOf", "not"):
            if combinator in schema:
                self._combinator(combinator, value, schema[combinator], path, errors)
        if isinstance(value, dict):
            old_map = old if isinstance(old, dict) else {}
            for key in schema.get("required", []):
                if key not in value:
                    errors.append(FieldError("FieldValueRequired", _join(path, key)))
            properties = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, sub_value in value.items():
                sub = properties.get(key, extra if isinstance(extra, dict) else None)
                if sub is not None:
                    self._validate(
                        sub_value,
                        old_map.get(key, _MISSING),
                        sub,
                        _join(path, key),
                        errors,
                        jobs=jobs,
                    )
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                self._validate(
                    item, _MISSING, schema["items"], f"{path}[{index}]", errors, jobs=jobs
                )
        for rule in schema.get("x-kubernetes-validations") or []:
            jobs.append((rule, value, old, schema, path))

    def _combinator(self, name: str, value: Any, subs: Any, path: str, errors: list[FieldError]) -> None:
        def ok(sub: JSON) -> bool:
            found: list[FieldError] = []
            self._check_type_and_value(value, sub, path, found)
            if isinstance(value, dict):
                found += [
                    FieldError("FieldValueRequired", _join(path, k)) for k in sub.get("required", []) if k not in value
                ]
            return not found

        if name == "not":
            if ok(subs):
                errors.append(
                    FieldError("FieldValueInvalid", path, value, f"{path or '<root>'} in body must not be valid")
                )
            return
        passed = sum(ok(sub) for sub in subs)
        if name == "allOf" and passed < len(subs) or name == "anyOf" and passed == 0:
            errors.append(
                FieldError("FieldValueInvalid", path, value, f'"{path}" must validate {name[:-2]} the schemas')
            )
        if name == "oneOf" and passed != 1:
            errors.append(
                FieldError("FieldValueInvalid", path, value, f'"{path}" must validate one and only one schema (oneOf)')
            )

    def _check_type_and_value(self, value: Any, schema: JSON, path: str, errors: list[FieldError]) -> None:
        kind = schema.get("type")
        shown = path or "<root>"
        if value is None:
            if not schema.get("nullable") and kind:
                errors.append(
                    FieldError("FieldValueTypeInvalid", path, None, f'{shown} in body must be of type {kind}: "null"')
                )
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not (isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool)):
                errors.append(
                    FieldError(
                        "FieldValueTypeInvalid",
                        path,
                        value,
                        f'{shown} in body must be of type integer,string: "{_json_type(value)}"',
                    )
                )
                return
        elif kind and not _is_type(value, kind):
            errors.append(
                FieldError(
                    "FieldValueTypeInvalid",
                    path,
                    value,
                    f'{shown} in body must be of type {kind}: "{_json_type(value)}"',
                )
            )
            return
        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(_quote(v) for v in schema["enum"])
            errors.append(FieldError("FieldValueNotSupported", path, value, f"supported values: {supported}"))
        if isinstance(value, str):
            self._check_string(value, schema, path, errors)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_number(value, schema, path, errors)
        if isinstance(value, list):
            self._check_list(value, schema, path, errors)
        if isinstance(value, dict):
            if "maxProperties" in schema and len(value) > schema["maxProperties"]:
                errors.append(
                    FieldError(
                        "FieldValueTooMany", path, len(value), f"must have at most {schema['maxProperties']} items"
                    )
                )
            if "minProperties" in schema and len(value) < schema["minProperties"]:
                errors.append(
                    FieldError(
                        "FieldValueInvalid",
                        path,
                        len(value),
                        f"{shown} in body should have at least {schema['minProperties']} properties",
                    )
                )

    @staticmethod
    def _check_string(value: str, schema: JSON, path: str, errors: list[FieldError]) -> None:
        shown = path or "<root>"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(
                FieldError("FieldValueTooLong", path, value, f"may not be more than {schema['maxLength']} bytes")
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    path,
                    value,
                    f"{shown} in body should be at least {schema['minLength']} chars long",
                )
            )
        if "pattern" in schema and not re2.search(schema["pattern"], value):
            errors.append(
                FieldError("FieldValueInvalid", path, value, f"{shown} in body should match '{schema['pattern']}'")
            )
        fmt = schema.get("format")
        if fmt and not _format_ok(fmt, value):
            errors.append(
                FieldError("FieldValueInvalid", path, value, f"{shown} in body must be of type {fmt}: {_quote(value)}")
            )

    @staticmethod
    def _check_number(value: float, schema: JSON, path: str, errors: list[FieldError]) -> None:
        shown = path or "<root>"
        if "maximum" in schema:
            limit, exclusive = schema["maximum"], schema.get("exclusiveMaximum", False)
            if value > limit or exclusive and value == limit:
                word = "less than" if exclusive else "less than or equal to"
                errors.append(FieldError("FieldValueInvalid", path, value, f"{shown} in body should be {word} {limit}"))
        if "minimum" in schema:
            limit, exclusive = schema["minimum"], schema.get("exclusiveMinimum", False)
            if value < limit or exclusive and value == limit:
                word = "greater than" if exclusive else "greater than or equal to"
                errors.append(FieldError("FieldValueInvalid", path, value, f"{shown} in body should be {word} {limit}"))
        if "multipleOf" in schema and value % schema["multipleOf"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid", path, value, f"{shown} in body should be a multiple of {schema['multipleOf']}"
                )
            )

    @staticmethod
    def _check_list(value: list[Any], schema: JSON, path: str, errors: list[FieldError]) -> None:
        shown = path or "<root>"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(
                FieldError("FieldValueTooMany", path, len(value), f"must have at most {schema['maxItems']} items")
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    path,
                    len(value),
                    f"{shown} in body should have at least {schema['minItems']} items",
                )
            )
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set" or schema.get("uniqueItems"):
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    errors.append(FieldError("FieldValueDuplicate", f"{path}[{index}]", item))
                seen.append(item)
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: list[tuple[Any, ...]] = []
            for index, item in enumerate(value):
                key = tuple((item or {}).get(k) for k in keys)
                if key in seen_keys:
                    errors.append(
                        FieldError("FieldValueDuplicate", f"{path}[{index}]", dict(zip(keys, key, strict=True)))
                    )
                seen_keys.append(key)

    # ----------------------------------------------------------------- CEL

    def _program(self, expression: str) -> Any:
        if expression not in self._programs:
            import celpy

            env = celpy.Environment()
            self._programs[expression] = env.program(env.compile(expression))
        return self._programs[expression]

    def _cel(self, rule: JSON, value: Any, old: Any, schema: JSON, path: str, errors: list[FieldError]) -> None:
        import celpy

        expression = rule["rule"]
        transition = _names_old_self(expression)
        if transition and old is _MISSING:
            return  # a transition rule is not evaluated on create, nor where there was no old value
        shown_type = schema.get("type", "object")
        where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
        key = (expression, read_key(expression, "self", value),
               read_key(expression, "oldSelf", old) if transition else "")
        outcome = self._outcomes.get(key)
        if outcome is MISS:
            outcome = self._evaluate(expression, value, old, transition)
            self._outcomes.put(key, outcome)
        passed, error = outcome
        if error is not None:
            errors.append(FieldError("FieldValueInvalid", where, shown_type, f"rule evaluation error: {error}"))
            return
        if passed:
            return
        message = rule.get("message") or f"failed rule: {expression}"
        if rule.get("messageExpression"):
            activation = self._activation(value, old, transition)
            with contextlib.suppress(celpy.CELEvalError):
                message = str(self._program(rule["messageExpression"]).evaluate(activation))
        reason = rule.get("reason", "FieldValueInvalid")
        errors.append(FieldError(reason, where, shown_type, message))

    @staticmethod
    def _activation(value: Any, old: Any, transition: bool) -> dict[str, Any]:
        import celpy

        activation: dict[str, Any] = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        return activation

    def _evaluate(self, expression: str, value: Any, old: Any, transition: bool) -> tuple[bool, str | None]:
        """(passed, evaluation error) of one rule: cel-python, once per distinct value read
        (celcache.py: CEL is pure, so equal reads give equal outcomes)."""
        import celpy

        try:
            outcome = self._program(expression).evaluate(self._activation(value, old, transition))
        except celpy.CELEvalError as exc:
            return False, str(exc.args[0])
        if isinstance(outcome, celpy.CELEvalError):
            return False, str(outcome.args[0])
        return bool(outcome), None


def _cel_root(body: JSON, obj: JSON) -> JSON:
    meta = obj.get("metadata") or {}
    root = {k: obj[k] for k in ("apiVersion", "kind") if k in obj}
    root["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
    return {**body, **root}


@functools.lru_cache(maxsize=1024)
def _names_old_self(expression: str) -> bool:
    import re

    return re.search(r"\boldSelf\b", expression) is not None


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _quote(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, str) else str(value)


def _format_ok(fmt: str, value: str) -> bool:
    """kube-openapi's string formats that apiextensions validates; unknown formats pass."""
    checks: dict[str, Any] = {
        "email": lambda v: "@" in email.utils.parseaddr(v)[1],
        "uuid": lambda v: bool(uuid.UUID(v)),
        "ipv4": lambda v: bool(ipaddress.IPv4Address(v)),
        "ipv6": lambda v: bool(ipaddress.IPv6Address(v)),
        "cidr": lambda v: bool(ipaddress.ip_network(v, strict=False)),
        "byte": lambda v: base64.b64decode(v, validate=True) is not None,
        "date": lambda v: bool(datetime.date.fromisoformat(v)),
        "date-time": lambda v: bool(datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))),
        "hostname": lambda v: (
            bool(
                re2.fullmatch(
                    r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*", v
                )
            )
            and len(v) <= 253
        ),
    }
    check = checks.get(fmt)
    if check is None:
        return True
    try:
        return bool(check(value))
    except ValueError:
        return False


def walk(schema: JSON, path: str = "") -> Iterator[tuple[str, JSON]]:
    """Every schema node with its field path (for tests and rule listings)."""
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, _join(path, key))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], path + "[*]")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], path + "[*]")
