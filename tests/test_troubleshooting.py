"""Every condition reason has its meaning and fix (reconciler/troubleshooting.py), docs/ shows
them, and `email-reconciler explain` prints them (issue 22 item 10: troubleshooting generated
from the reasons)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import reasons
from reconciler.cli import main
from reconciler.troubleshooting import FIXES, explain, render_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
ALL = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}


def test_every_reason_has_a_meaning_and_a_fix() -> None:
    assert sorted(ALL - set(FIXES)) == [], "add these reasons to reconciler/troubleshooting.py"
    assert sorted(set(FIXES) - ALL) == [], "these are not reasons of reconciler/reasons.py"
    assert all(meaning.strip() and fix.strip() for meaning, fix in FIXES.values())


def test_docs_are_generated_from_the_table() -> None:
    assert DOC.read_text() == render_markdown(), (
        "docs/troubleshooting.md is stale: python -c 'from reconciler.troubleshooting import "
        "render_markdown; print(render_markdown(), end=\"\")' > docs/troubleshooting.md")
    for reason in ALL:
        assert f"| `{reason}` |" in DOC.read_text()


@pytest.mark.parametrize("asked", ["TLSVersionTooLow", "tlsversiontoolow"])
def test_explain_prints_the_fix(asked: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", asked]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TLSVersionTooLow: ") and "Fix: " in out


def test_explain_of_an_unknown_reason_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "NoSuchReason"]) == 2
    assert "unknown reason 'NoSuchReason'" in capsys.readouterr().err
    assert explain("NoSuchReason") is None


def test_explain_without_a_reason_lists_them_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain"]) == 0
    assert capsys.readouterr().out.count("\n  Fix: ") == len(FIXES)
