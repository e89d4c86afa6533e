"""ObjectMeta rules as the API server applies them, and derived-name limits (issues 12 and 13)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.manifest.objectmeta import (
    MAX_ANNOTATIONS_BYTES,
    check_annotations,
    check_labels,
    check_object_meta,
    key_problem,
)


@pytest.mark.parametrize(("key", "ok"), [
    ("app", True),
    ("app.kubernetes.io/name", True),
    ("a" * 63, True),
    ("a" * 64, False),
    (f"{'a' * 253}/x", True),
    (f"{'a.' * 126}aa/x", False),  # a 254-character prefix
    ("example.com/" + "n" * 63, True),
    ("Example.com/app", False),  # the prefix is a DNS subdomain: lower case
    ("team/payments/eu", False),
    ("-dash", False),
    ("dash-", False),
    ("under_score.dot-dash", True),
    ("", False),
    ("example.com/", False),
    ("has space", False),
])
def test_label_and_annotation_keys(key: str, ok: bool) -> None:
    assert (key_problem(key) is None) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("", True), ("billing", True), ("v1.2_3-x", True), ("a" * 63, True), ("a" * 64, False),
    ("billing service", False), ("-x", False), ("x.", False), ("ünï", False),
])
def test_label_values(value: str, ok: bool) -> None:
    assert (check_labels("/metadata/labels", {"k": value}) == []) is ok


def test_annotations_total_size_is_at_most_256_kib() -> None:
    fits = {"a": "x" * (MAX_ANNOTATIONS_BYTES - 1)}
    assert check_annotations("/metadata/annotations", fits) == []
    over = {"a": "x" * MAX_ANNOTATIONS_BYTES}
    [(pointer, message, severity)] = check_annotations("/metadata/annotations", over)
    assert (pointer, severity) == ("/metadata/annotations", "error")
    assert "262145 bytes" in message


def _doc(name: str = "billing", **publish: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"publish": publish}}


def test_the_name_is_a_label_value_of_the_published_secret() -> None:
    assert check_object_meta(_doc("a" * 63)) == []
    [(pointer, message, _severity)] = check_object_meta(_doc("a" * 64))
    assert pointer == "/metadata/name" and "email.reconciler.io/account" in message


def test_publish_maps_are_checked_like_metadata() -> None:
    findings = check_object_meta(_doc(labels={"ok": "fine", "bad key": "x"},
                                      annotations={"x/y/z": "v"}))
    assert [f[0] for f in findings] == ["/spec/publish/labels/bad key",
                                        "/spec/publish/annotations/x~1y~1z"]
