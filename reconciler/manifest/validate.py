"""Validate one EmailAccount document: inline-secret scan, JSON schema, then semantic rules.

Messages say what to change and never echo a field's value (it might be a credential).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from reconciler import model
from reconciler.manifest import load_schema
from reconciler.manifest.account import account_from_manifest
from reconciler.manifest.compiled_schema import CompiledSchema
from reconciler.manifest.objectmeta import check_object_meta
from reconciler.manifest.published import check_published
from reconciler.manifest.schema_errors import Translator
from reconciler.manifest.secrets_scan import committed_secret, escape, scan_document
from reconciler.manifest.semantics import check_account

if TYPE_CHECKING:  # imported when a document needs its messages: 40 ms of start-up otherwise
    import jsonschema

Locate = Callable[[str], tuple[int, int]]
#: A diagnostic's sort key: (line, column), as the loader sorts them.
_POSITION = operator.attrgetter("line", "column")
Severity = Literal["error", "warning", "note"]

GROUP = "email.reconciler.io"
KIND = "EmailAccount"
#: File names kustomize reads as a kustomization: never an EmailAccount, skipped whole.
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_REQUIRED = re.compile(r"^'(.+)' is a required property$")
_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}


def _is_email(value: object) -> bool:
    return not isinstance(value, str) or bool(_EMAIL.fullmatch(value))


#: The formats the schema checks, for both validators (any other format is an annotation only).
_FORMATS = {"email": _is_email}


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    """The schema validator, compiled once per process: the source of every schema message."""
    import jsonschema

    checker = jsonschema.FormatChecker(formats=())
    for name, check in _FORMATS.items():
        checker.checks(name)(check)
    from reconciler.manifest.patterns import pattern_keyword

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern_keyword})
    return cls(_inline_refs(load_schema()), format_checker=checker)


@lru_cache(maxsize=1)
def _compiled() -> CompiledSchema:
    """The compiled validator that vouches for valid documents (bench/README.md, 1b)."""
    return CompiledSchema(load_schema(), _FORMATS)


def prepare() -> None:
    """Build what every valid document needs (the compiled schema, the error translator) now.

    `load_paths(parallel=True)` calls it before forking, so the workers inherit them instead of
    each building its own (about 20 ms of CPU a process). The Python validator is left lazy: it
    and its `jsonschema` import (45 ms) serve only the invalid documents whose errors
    schema_errors.py cannot word.
    """
    _compiled()
    _translator()


@lru_cache(maxsize=1)
def _translator() -> Translator:
    from reconciler.manifest.compiled_schema import python_patterns

    return Translator(_inline_refs(python_patterns(load_schema())), _FORMATS)


def schema_errors(doc: Any, plain: bool = False) -> Iterator[jsonschema.ValidationError]:
    """The schema errors of a document: none when the compiled validator vouches for it.

    For a document it calls invalid, its own errors in the Python validator's words and order
    (schema_errors.py), or the Python validator's when those cannot be told for sure.
    ``plain``: the caller knows the document holds JSON types only (compiled_schema.json_only).
    """
    compiled = _compiled()
    verdict = compiled.verdict(doc, plain)
    if verdict is True:
        return iter(())
    if verdict is False:
        found = compiled.errors(doc)
        translated = _translator().translate(found, doc) if found is not None else None
        if translated is not None:
            return iter(translated)  # type: ignore[arg-type]
    return _validator().iter_errors(doc)


#: Keys beside a `$ref` that do not validate: such a node is the referenced definition itself.
_REF_SIBLINGS_DROPPED = frozenset({"$ref", "description", "title", "$comment"})


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with every plain `{"$ref": "#/$defs/X"}` replaced by the definition itself.

    Same verdicts and messages; jsonschema otherwise resolves each $ref through its registry on
    every use, a quarter of the validation time (bench/README.md). A recursive $ref stays as it is.
    A `$ref` beside annotations only (`description`: every one in our schema) is inlined too; the
    annotations neither validate nor reach a message (`_schema_messages` reads the definition's
    keywords, which err.schema is either way).
    """
    defs = schema.get("$defs") or {}

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if (isinstance(ref, str) and node.keys() <= _REF_SIBLINGS_DROPPED
                    and ref.startswith("#/$defs/") and ref[8:] in defs and ref not in seen):
                return walk(defs[ref[8:]], seen | {ref})
            return {k: v if k in ("enum", "const", "default", "examples") else walk(v, seen)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item, seen) for item in node]
        return node

    inlined: dict[str, Any] = walk(schema, frozenset())
    return inlined


def _pointer(path: Any) -> str:
    return "".join(f"/{escape(str(p))}" for p in path)


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), "timestamp or other YAML type (quote it)")


def _schema_messages(err: jsonschema.ValidationError) -> Iterator[tuple[str, str]]:
    """(pointer, message) for one schema error, in words that say what to change."""
    where = _pointer(err.absolute_path)
    schema = err.schema if isinstance(err.schema, dict) else {}
    hint: str | None = schema.get("x-message")
    v, value = err.validator, err.validator_value
    if v == "additionalProperties" and value is False and isinstance(err.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        for key in err.instance:
            if key not in allowed:
                yield f"{where}/{escape(str(key))}", _unknown_field(str(key), allowed)
        return
    if v == "required":
        m = _REQUIRED.match(err.message)
        name = m.group(1) if m else "?"
        text = f"missing required field {name!r}"
        yield f"{where}/{escape(name)}", f"{text} ({hint})" if hint else text
        return
    if v == "not" and isinstance(value, dict) and value.get("required"):
        yield f"{where}/{escape(str(value['required'][0]))}", hint or "field not allowed here"
        return
    if hint:
        yield where, hint
        return
    if v == "type":
        yield where, f"must be of type {value} (found {_type_name(err.instance)})"
    elif v == "enum":
        yield where, "must be one of: " + ", ".join(str(x) for x in value)
    elif v == "const":
        yield where, f"must be {value}"
    elif v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}[v]
        yield where, f"must be {op} {value}"
    elif v in ("minLength", "maxLength"):
        yield where, f"must be {'at least' if v == 'minLength' else 'at most'} {value} characters"
    elif v in ("minItems", "maxItems"):
        yield where, f"must have {'at least' if v == 'minItems' else 'at most'} {value} items"
    elif v == "uniqueItems":
        yield where, "must not list the same item twice"
    elif v == "propertyNames":
        yield where, "has an invalid key name (letters, digits, '-', '_' and '.')"
    elif v == "pattern":
        yield where, f"must match the pattern {value}"
    else:
        yield where, f"is invalid ({v})"


def _unknown_field(key: str, allowed: list[str]) -> str:
    """"unknown field 'hots'; did you mean 'host'? allowed here: ..." (difflib's guess, if any)."""
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:  # a case slip (smtpHost for host is too far; Port for port is not)
        close = [a for a in allowed if a.lower() == key.lower()][:1]
    guess = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown field {key!r}{guess} allowed here: {', '.join(allowed)}"


def non_finite(doc: Any, pointer: str = "") -> Iterator[str]:
    """Pointers of the NaN and infinite numbers (YAML `.nan`, `.inf`) in a document.

    JSON has no such numbers, so kubectl cannot send them, and JSON Schema's bounds let NaN
    through (every comparison with NaN is false): they are refused before the schema looks.
    """
    if isinstance(doc, float) and not math.isfinite(doc):
        yield pointer
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield from non_finite(value, f"{pointer}/{escape(str(key))}")
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from non_finite(value, f"{pointer}/{index}")


def _diag(file: str, document: int, locate: Locate | None, pointer: str, message: str,
          severity: Severity = "error") -> model.Diagnostic:
    line, col = locate(pointer) if locate else (1, 1)
    return model.Diagnostic(file=file, line=line, column=col, document=document,
                            pointer=pointer, message=message, severity=severity)


def validate_document(doc: Any, *, file: str = "<input>", document: int = 1,
                      locate: Locate | None = None) -> list[model.Diagnostic]:
    """Schema and semantic diagnostics (errors and warnings) for one parsed document.

    ``locate`` maps a JSON pointer to (line, column) in the source file.
    """
    return validate_manifest(doc, file=file, document=document, locate=locate)[0]


def validate_manifest(doc: Any, *, file: str = "<input>", document: int = 1,
                      locate: Locate | None = None, plain: bool = False,
                      source: model.SourceRef | None = None
                      ) -> tuple[list[model.Diagnostic], model.Account | None]:
    """validate_document's diagnostics, and the effective account its semantic rules checked.

    ``plain``: the loader found only JSON types and finite numbers while building the document
    (yamlnodes.check_and_construct), so the walks that look for anything else are skipped.
    ``source``: the account's source; it then carries its warnings too, sorted by position as
    the loader sorts them (so the loader need not build it again with them: bench/README.md).

    The account (without source or warnings) is None when the schema or the scan failed; the
    loader reuses it rather than building it a second time.
    """
    if not isinstance(doc, dict):
        return [_diag(file, document, locate, "",
                      f"document must be a mapping (an EmailAccount object), found "
                      f"{_type_name(doc)}")], None
    out: list[model.Diagnostic] = []
    flagged = scan_document(doc)
    flagged_ptrs: set[str] = set()
    tolerated: list[model.Diagnostic] = []
    if flagged:  # (most documents have nothing flagged and are plain: nothing to build here)
        flagged_ptrs = {p for p, _, severity in flagged if severity == "error"}
        out += [_diag(file, document, locate, p, m) for p, m, s in flagged if s == "error"]
        tolerated = [_diag(file, document, locate, p, m, s) for p, m, s in flagged
                     if s != "error"]
    if not plain:
        out += [_diag(file, document, locate, p, "must be a finite number (.nan and .inf are "
                                                 "not numbers in JSON or to the API server)")
                for p in non_finite(doc)]
        flagged_ptrs |= {d.pointer for d in out}
    seen: set[tuple[str, str]] = set()
    for err in schema_errors(doc, plain):
        for pointer, message in _schema_messages(err):
            if pointer in flagged_ptrs or any(pointer.startswith(f + "/") for f in flagged_ptrs):
                continue
            if (pointer, message) not in seen:
                seen.add((pointer, message))
                out.append(_diag(file, document, locate, pointer, message))
    if out:
        return out + tolerated, None
    out += tolerated
    account = account_from_manifest(doc)
    for pointer, message, severity in [*check_object_meta(doc), *check_published(doc),
                                       *check_account(account, doc)]:
        out.append(_diag(file, document, locate, pointer, message, severity))
    if source is not None:
        warnings = sorted((d for d in out if d.severity == "warning"),
                          key=_POSITION) if out else ()
        _set_source(account, source, tuple(warnings))
    return out, account


def _set_source(account: model.Account, source: model.SourceRef,
                warnings: tuple[model.Diagnostic, ...]) -> None:
    """Set the source and warnings of an account just built here and not yet seen by anyone
    (nothing has hashed or shared it): dataclasses.replace would build its twenty fields again,
    5 us a document (bench/README.md, issue 25)."""
    object.__setattr__(account, "source", source)
    object.__setattr__(account, "warnings", warnings)


def other_kind(doc: Any) -> tuple[str, str, Severity] | None:
    """(pointer, message, severity) when a document is an object of another kind, else None.

    A GitOps folder holds more than EmailAccounts (a Namespace, a ConfigMap, a Kustomization):
    those are skipped with a note, so only EmailAccounts can fail a run. A document that means to
    be ours (our API group, or a kind one typo away from EmailAccount) is validated as one, so a
    typo stays an error. A plain Secret with data gets a warning instead of the note.
    """
    if not isinstance(doc, dict):
        return None
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or not kind or kind == KIND:
        return None
    if isinstance(api, str) and api.split("/")[0] == GROUP:
        return None
    import difflib

    if difflib.get_close_matches(kind, [KIND], n=1, cutoff=0.8):
        return None
    warning = committed_secret(doc)
    if warning is not None:
        return "/data" if "data" in doc else "/stringData", warning, "warning"
    what = f"{kind} ({api})" if isinstance(api, str) and api else kind
    article = "an" if kind[0] in "AEIOU" else "a"
    return "/kind", f"skipped: {article} {what}, not an EmailAccount", "note"
