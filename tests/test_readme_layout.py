"""The README's "Layout of the code" section against the tree: every folder and module it names
exists, and every module of reconciler/ and every folder of reconciler/, deploy/ and tests/ is named.

The section is a code block of `name  what it owns` lines, indented two spaces per level; a name
ending in `/` is a folder, the lines indented under it its contents.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
HEADING = "## Layout of the code"
#: folders whose direct subfolders must all be named (besides every folder of reconciler/)
LISTED_CHILDREN = ("deploy", "tests")
_ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[\w.-]+/?)(?: {2,}(?P<what>\S.*))?$")


def layout_entries(readme: str) -> dict[str, str]:
    """Path (relative to the repository, folders ending in `/`) -> what the README says it owns."""
    section = readme.split(HEADING, 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 1)[1].split("```", 1)[0]
    entries: dict[str, str] = {}
    parents: list[tuple[int, str]] = []  # (indent, folder path) of the enclosing folders
    for number, line in enumerate(block.splitlines(), 1):
        match = _ENTRY.match(line)
        assert match, f"README layout line {number} is not `name  what it owns`: {line!r}"
        indent, name = len(match["indent"]), match["name"]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        assert indent == 2 * len(parents), f"README layout line {number} is indented oddly: {line!r}"
        path = (parents[-1][1] if parents else "") + name
        assert match["what"], f"README layout line {number} says nothing of {path}"
        entries[path] = match["what"]
        if name.endswith("/"):
            parents.append((indent, path))
    return entries


def tree_entries(repo: Path = REPO) -> set[str]:
    """What the section must name: reconciler/'s folders and modules (an `__init__.py` only
    when it holds code, `__main__.py` never), and the direct subfolders of LISTED_CHILDREN."""
    package = repo / "reconciler"
    out = {"reconciler/"}
    for path in package.rglob("*"):
        rel = path.relative_to(repo).as_posix()
        if "__pycache__" in path.parts:
            continue
        if path.is_dir():
            out.add(rel + "/")
        elif path.suffix == ".py" and path.name != "__main__.py" and (
                path.name != "__init__.py" or _holds_code(path)):
            out.add(rel)
    for folder in LISTED_CHILDREN:
        out.add(folder + "/")
        out |= {p.relative_to(repo).as_posix() + "/" for p in (repo / folder).iterdir()
                if p.is_dir() and p.name != "__pycache__"}
    return out


def _holds_code(init: Path) -> bool:
    """An `__init__.py` that defines something (more than a docstring and imports)."""
    import ast

    body = ast.parse(init.read_text(encoding="utf-8")).body
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
               for node in body)


ENTRIES = layout_entries((REPO / "README.md").read_text(encoding="utf-8"))


def test_every_named_path_exists() -> None:
    missing = [path for path in ENTRIES if not (REPO / path.rstrip("/")).exists()]
    assert not missing, f"the README's layout names what the tree does not have: {missing}"


def test_every_module_and_folder_is_named() -> None:
    unnamed = sorted(tree_entries() - set(ENTRIES))
    assert not unnamed, f"the README's layout does not name: {unnamed}"


@pytest.mark.parametrize(("block", "expected"), [
    ("a/  folder\n  b.py  module\nc/  other\n",
     {"a/": "folder", "a/b.py": "module", "c/": "other"}),
    ("a/  folder\n  b/  sub\n    c.py  deep\n  d.py  back up\n",
     {"a/": "folder", "a/b/": "sub", "a/b/c.py": "deep", "a/d.py": "back up"}),
])
def test_the_parser_reads_nesting(block: str, expected: dict[str, str]) -> None:
    assert layout_entries(f"{HEADING}\n\n```\n{block}```\n") == expected


@pytest.mark.parametrize(("block", "complaint"), [
    ("a/  folder\n      b.py  too deep\n", "indented oddly"),
    ("a/  folder\n  b.py\n", "says nothing"),
    ("a/  folder\n  two words here\n", "is not"),
])
def test_the_parser_refuses_a_malformed_line(block: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        layout_entries(f"{HEADING}\n\n```\n{block}```\n")


def test_a_module_missing_from_the_readme_is_found(tmp_path: Path) -> None:
    (tmp_path / "reconciler" / "probe").mkdir(parents=True)
    (tmp_path / "reconciler" / "probe" / "smtp.py").write_text("x = 1\n")
    (tmp_path / "reconciler" / "probe" / "__init__.py").write_text('"""doc"""\n')
    for folder in LISTED_CHILDREN:
        (tmp_path / folder / "sub").mkdir(parents=True)
    assert tree_entries(tmp_path) == {"reconciler/", "reconciler/probe/",
                                      "reconciler/probe/smtp.py", "deploy/", "deploy/sub/",
                                      "tests/", "tests/sub/"}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_table_of_contents_lists_every_section_in_order() -> None:
    """The README's "Contents" links every `## ` section, in order, to its anchor (issue 22 item 10)."""
    readme = (REPO / "README.md").read_text()
    toc = readme.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- \[(.+)\]\(#([\w-]+)\)$", toc, re.M)
    sections = [line[3:] for line in readme.splitlines() if line.startswith("## ") and line != "## Contents"]
    assert [title for title, _ in listed] == sections, "update the README's Contents"
    assert all(link == _anchor(title) for title, link in listed)
    assert readme.index("## Contents") < readme.index(f"## {sections[0]}")
