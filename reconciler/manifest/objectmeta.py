"""The API server's ObjectMeta rules, and the limits of the objects an account's name becomes.

`validate` must not pass what `kubectl apply` is refused with 422: label and annotation syntax and
sizes (apimachinery's ValidateLabels / ValidateAnnotations, on metadata and on the
spec.publish maps that land on the Secret), and names whose derived objects would be too long:

    metadata.name        the value of the Secret's email.reconciler.io/account label  <= 63
                         (so <name>-sender <= 70 and an Event name <name>.<21 chars> fit too)
    publish.secretName   a local-store file <secretName>.yaml                          <= 250
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from reconciler.manifest.secrets_scan import escape

Finding = tuple[str, str, Literal["error", "warning"]]

#: A label value, and the name part of a qualified key (apimachinery's qualifiedNameFmt).
NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
#: A DNS-1123 subdomain, the optional prefix of a key.
SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
#: A key's syntax and, separately (one RE2-compatible regex cannot say both), its lengths.
KEY_SYNTAX = rf"^({SUBDOMAIN}/)?{NAME_PART}$"
KEY_LENGTHS = r"^([^/]{1,253}/)?[^/]{1,63}$"
LABEL_VALUE = rf"^({NAME_PART})?$"
MAX_NAME = 63
MAX_SECRET_NAME = 250  # + ".yaml" = 255 bytes, the longest file name of most file systems
MAX_ANNOTATIONS_BYTES = 256 * 1024  # TotalAnnotationSizeLimitB

_KEY_SYNTAX, _KEY_LENGTHS = re.compile(KEY_SYNTAX), re.compile(KEY_LENGTHS)
_LABEL_VALUE = re.compile(LABEL_VALUE)


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid label/annotation key, or None."""
    if _KEY_SYNTAX.fullmatch(key) and _KEY_LENGTHS.fullmatch(key):
        return None
    return ("is not a valid key: an optional DNS subdomain prefix (at most 253 characters) and "
            "'/', then a name of at most 63 letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit")


def _keys(where: str, mapping: Mapping[str, Any]) -> Iterator[Finding]:
    for key in mapping:
        problem = key_problem(str(key))
        if problem:
            yield f"{where}/{escape(str(key))}", f"key {str(key)[:80]!r} {problem}", "error"


def check_labels(where: str, labels: Any) -> list[Finding]:
    """Label keys and values as the API server checks them."""
    if labels is None or not isinstance(labels, Mapping):  # None (usual): no ABC isinstance
        return []
    out = list(_keys(where, labels))
    for key, value in labels.items():
        if isinstance(value, str) and not (len(value) <= 63 and _LABEL_VALUE.fullmatch(value)):
            out.append((f"{where}/{escape(str(key))}",
                        "label value must be at most 63 letters, digits, '-', '_' or '.', "
                        "starting and ending with a letter or digit (or empty)", "error"))
    return out


def check_annotations(where: str, annotations: Any) -> list[Finding]:
    """Annotation keys, and their total size (keys and values) of at most 256 KiB."""
    if annotations is None or not isinstance(annotations, Mapping):  # as check_labels
        return []
    out = list(_keys(where, annotations))
    size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        out.append((where, f"annotations total {size} bytes; the API server allows at most "
                           f"{MAX_ANNOTATIONS_BYTES} (256 KiB)", "error"))
    return out


def check_object_meta(doc: Mapping[str, Any]) -> list[Finding]:
    """Every ObjectMeta and derived-name finding for one schema-valid document."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    publish = spec.get("publish") or {}
    out: list[Finding] = []
    name = meta.get("name")
    if isinstance(name, str) and len(name) > MAX_NAME:
        out.append(("/metadata/name",
                    f"must be at most {MAX_NAME} characters (found {len(name)}): the name is the "
                    "value of the email.reconciler.io/account label of the published Secret, and "
                    "a label value is at most 63", "error"))
    out += check_labels("/metadata/labels", meta.get("labels"))
    out += check_annotations("/metadata/annotations", meta.get("annotations"))
    out += check_labels("/spec/publish/labels", publish.get("labels"))
    out += check_annotations("/spec/publish/annotations", publish.get("annotations"))
    return out
