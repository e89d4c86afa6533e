"""Type-check a CRD's CEL rules against its declared types, as the apiserver does when it admits a CRD.

The apiserver (cel-go) compiles every `x-kubernetes-validations` rule with `self` typed by the
schema node it sits on: an object with properties is a message with those fields, a map
(`additionalProperties`) is `map(string, V)`, an array a `list(V)`, and the root's `metadata` has only
`name` and `generateName`. A rule that does not type-check (`all()` on a string, a misspelt field, a
string compared with an int) makes the whole CRD unacceptable. cel-python, which tests/kubeapi
evaluates rules with, is dynamically typed and accepts such rules, so this module uses the C++ CEL
(`cel-expr-python`) and its type checker: each object node becomes a protobuf message in one
descriptor pool, and each rule is compiled with `self` (and `oldSelf`) declared as its node's type.

The environment has CEL's standard library and the strings extension (`lowerAscii`, `split`, ...),
as the apiserver's does. Not modelled: the Kubernetes CEL libraries (`isSorted`, `url`,
`quantity`, ...; a rule using them fails here with "undeclared reference") and the apiserver's
cost estimate (tests/test_crd.py checks that every value a rule reads is bounded instead).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext.ext_strings import ExtStrings
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2

from tests.kubeapi.model import JSON

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "crd"
#: CEL's reserved words; the apiserver exposes a property so named as `__word__` (escaping.go).
_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
             "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
             "void", "while"}
_SCALARS = {"string": (_F.TYPE_STRING, cel.Type.STRING), "integer": (_F.TYPE_INT64, cel.Type.INT),
            "number": (_F.TYPE_DOUBLE, cel.Type.DOUBLE), "boolean": (_F.TYPE_BOOL, cel.Type.BOOL)}


def cel_name(prop: str) -> str | None:
    """The name a property has in CEL, or None when CEL cannot reach it (apiserver's escaping)."""
    if prop in _RESERVED:
        return f"__{prop}__"
    if not re.fullmatch(r"[a-zA-Z_.\-/][a-zA-Z0-9_.\-/]*", prop):
        return None
    for plain, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"),
                           ("/", "__slash__")):
        prop = prop.replace(plain, escaped)
    return prop


def _named(type_name: str) -> dict[str, str]:
    """type_name only for message fields: protobuf refuses an empty one beside a scalar type."""
    return {"type_name": type_name} if type_name else {}


def rule_sites(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`.a.b`, `[]` for items, `{}` for map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from rule_sites(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from rule_sites(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from rule_sites(node["additionalProperties"], f"{path}{{}}")


class TypedSchema:
    """One openAPIV3Schema as protobuf messages, and the CEL type of each of its nodes."""

    def __init__(self, root: dict[str, Any]) -> None:
        self._file = descriptor_pb2.FileDescriptorProto(
            name="crd.proto", package=_PACKAGE, syntax="proto3",
            dependency=["google/protobuf/struct.proto"])
        self._types: dict[int, cel.Type] = {}
        self._made: list[dict[str, Any]] = []  # nodes made here, kept alive so their ids stay theirs
        self._root = root
        self._declare(root, "Root", is_root=True)
        self.pool = descriptor_pool.DescriptorPool()
        self.pool.Add(descriptor_pb2.FileDescriptorProto.FromString(
            struct_pb2.DESCRIPTOR.serialized_pb))
        self.pool.Add(self._file)

    def type_of(self, node: dict[str, Any]) -> cel.Type:
        return self._types[id(node)]

    def check(self, node: dict[str, Any], rule: str, result: cel.Type = cel.Type.BOOL) -> str | None:
        """None if `rule` compiles to `result` (a rule: bool, a messageExpression: string) with
        `self` typed as `node`, else the checker's error."""
        env = cel.NewEnv(descriptor_pool=self.pool, extensions=[ExtStrings()],  # the apiserver has them
                         variables={"self": self.type_of(node), "oldSelf": self.type_of(node)})
        try:
            expr = env.compile(rule)
        except RuntimeError as exc:
            return str(exc)
        if expr.return_type() != result:
            return f"the expression is of type {expr.return_type().name()}, not {result.name()}"
        return None

    def _declare(self, node: dict[str, Any], name: str, *, is_root: bool = False,
                 ) -> tuple[int, str, cel.Type]:
        """Declare `node` (messages for its objects); its field type, type name and CEL type."""
        kind = node.get("type")
        if kind in _SCALARS:
            field_type, cel_type = _SCALARS[kind]
            out = (field_type, "", cel_type)
        elif kind == "object" and "properties" in node:
            message = self._file.message_type.add(name=name)
            for number, (prop, sub) in enumerate(node["properties"].items(), start=1):
                field = cel_name(prop)
                if field is None:
                    continue
                if is_root and prop == "metadata":  # the apiserver's view of ObjectMeta
                    sub = {"type": "object", "properties": {"name": {"type": "string"},
                                                            "generateName": {"type": "string"}}}
                    self._made.append(sub)
                self._add_field(message, name, field, number, sub)
            out = (_F.TYPE_MESSAGE, f".{_PACKAGE}.{name}", cel.Type(f"{_PACKAGE}.{name}"))
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            _, _, value = self._declare(node["additionalProperties"], f"{name}Value")
            out = (0, "", cel.Type.Map(cel.Type.STRING, value))
        elif kind == "array":
            _, _, item = self._declare(node["items"], f"{name}Item")
            out = (0, "", cel.Type.List(item))
        elif kind == "object" or node.get("x-kubernetes-preserve-unknown-fields"):
            out = (_F.TYPE_MESSAGE, ".google.protobuf.Struct", cel.Type.Map(cel.Type.STRING,
                                                                            cel.Type.DYN))
        else:
            raise NotImplementedError(f"schema node {name} of type {kind!r}")
        self._types[id(node)] = out[2]
        return out

    def _add_field(self, message: descriptor_pb2.DescriptorProto, owner: str, field: str,
                   number: int, sub: dict[str, Any]) -> None:
        child = f"{owner}_{re.sub(r'[^A-Za-z0-9]', '_', field)}"
        kind = sub.get("type")
        if kind == "array":
            item_type, item_name, _ = self._declare(sub["items"], f"{child}Item")
            self._types[id(sub)] = cel.Type.List(self.type_of(sub["items"]))
            if not item_type:
                raise NotImplementedError(f"{child}: a list of lists or maps")
            message.field.add(name=field, number=number, label=_F.LABEL_REPEATED,
                              type=item_type, **_named(item_name))
        elif kind == "object" and "properties" not in sub and isinstance(
                sub.get("additionalProperties"), dict):
            value_type, value_name, value_cel = self._declare(sub["additionalProperties"],
                                                              f"{child}Value")
            if not value_type:
                raise NotImplementedError(f"{child}: a map of lists or maps")
            self._types[id(sub)] = cel.Type.Map(cel.Type.STRING, value_cel)
            entry = message.nested_type.add(name=f"{field[0].upper()}{field[1:]}Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
            entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=value_type,
                            **_named(value_name))
            message.field.add(name=field, number=number, label=_F.LABEL_REPEATED,
                              type=_F.TYPE_MESSAGE,
                              type_name=f".{_PACKAGE}.{owner}.{entry.name}")
        else:
            field_type, type_name, _ = self._declare(sub, child)
            message.field.add(name=field, number=number, label=_F.LABEL_OPTIONAL,
                              type=field_type, **_named(type_name))


@functools.lru_cache(maxsize=16)
def _rule_errors(schema_json: str) -> tuple[str, ...]:
    root = json.loads(schema_json)
    types = TypedSchema(root)
    errors = []
    for path, node in rule_sites(root):
        for rule in node.get("x-kubernetes-validations", []):
            checks = [(rule["rule"], cel.Type.BOOL)]
            if "messageExpression" in rule:
                checks.append((rule["messageExpression"], cel.Type.STRING))
            errors += [f"{path or '<root>'}.x-kubernetes-validations: {expr}: {error}"
                       for expr, result in checks if (error := types.check(node, expr, result))]
    return tuple(errors)


def rule_errors(schema: JSON) -> tuple[str, ...]:
    """Why the apiserver would refuse a CRD version's schema for its rules (compilation errors),
    or nothing. Cached by the schema's JSON: the tests build many servers from one CRD."""
    return _rule_errors(json.dumps(schema, sort_keys=True))
