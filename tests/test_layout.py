"""The import arrows of reconciler/ (STYLE.md, "Shape of reconciler/"), read from the source.

Every module is parsed with `ast`; each import (absolute or relative, at module level or inside a
function: a lazy import is still an arrow) is resolved to the reconciler module it names and to
that module's layer: the sub-package (`manifest`, `probe`, `state`, `store`, `run`, `demo`), or the
top-level module (`cli`, `model`, `errors`, ...). `FORBIDDEN` says which layers a layer must not
import; `THIRD_PARTY` which layers alone may import a package. Module-level imports (those that
run when the module is imported, so not inside a function nor under `if TYPE_CHECKING:`) must form
no cycle. The self-checks feed the same checker small synthetic sources, so the rules can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "reconciler"
ROOT = Path(__file__).parent.parent / PACKAGE

#: Shared foundations: every layer may import them; they import no layer.
FOUNDATIONS = ("model", "errors", "log", "reasons", "policy", "secretrefs", "troubleshooting")
_PIPELINE = frozenset({"manifest", "probe", "state", "store", "run", "demo", "relay", "cli"})

#: layer -> the layers it must not import. A module whose layer is missing here fails the test:
#: a new sub-package or top-level module takes its place in this table first.
FORBIDDEN: dict[str, frozenset[str]] = {
    "manifest": frozenset({"probe", "store", "state", "run", "demo", "cli"}),
    "probe": frozenset({"state", "store", "run", "demo", "cli"}),
    "state": frozenset({"probe", "store", "run", "demo", "cli"}),
    "store": frozenset({"probe", "run", "demo", "cli"}),
    "run": frozenset({"demo", "relay", "cli"}),
    "demo": frozenset({"relay", "cli"}),
    # the relay reuses the probe's session, HTTPS client and token cache, and reads the account
    # as the manifest package does; it knows no store and no run (it has no API access)
    "relay": frozenset({"state", "store", "run", "demo", "cli"}),
    "cli": frozenset(),
    "__main__": frozenset(),
    PACKAGE: _PIPELINE,  # reconciler/__init__.py: the version, nothing more
    **{name: _PIPELINE for name in FOUNDATIONS},
}

#: third-party package -> the only layers that may import it (STYLE.md: only the store talks to
#: the Kubernetes API; everything else stays fast to import).
THIRD_PARTY: dict[str, frozenset[str]] = {
    "kubernetes": frozenset({"store"}),
    "aiosmtpd": frozenset({"demo", "relay"}),
}


@dataclass(frozen=True)
class Import:
    """One import statement of a reconciler module, resolved."""

    path: str  # the importing file, relative to the repository: reconciler/state/render.py
    module: str  # the importing module: reconciler.state.render
    line: int
    statement: str  # as written (unparsed): from reconciler.store.kube import KubeStore
    target: str  # the module it names: reconciler.store.kube, or kubernetes.client
    at_import_time: bool  # module level, not under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}`"


def layer_of(module: str) -> str:
    """`reconciler.state.render` -> `state`; `reconciler.cli` -> `cli`; `reconciler` -> itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: Iterable[ast.stmt], at_import_time: bool = True,
                  ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under `body`, with whether it runs when the module is imported."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, at_import_time
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # a lazy import: runs when the function does, still an arrow between layers
            yield from ((n, False) for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.body, False)
            yield from _import_nodes(node.orelse, at_import_time)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _import_nodes(children, at_import_time)


def imports_of(path: str, module: str, source: str, *, is_package: bool,
               known: frozenset[str]) -> list[Import]:
    """The imports of one module; `known` (every reconciler module) tells a submodule
    (`from reconciler import reasons`) from a name (`from reconciler.probe import probe_account`)."""
    out: list[Import] = []
    for node, at_import_time in _import_nodes(ast.parse(source, filename=path).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                package = module.split(".")
                if not is_package:
                    package = package[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        out += [Import(path, module, node.lineno, ast.unparse(node), target, at_import_time)
                for target in dict.fromkeys(targets)]
    return sorted(out, key=lambda i: (i.line, i.target))


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """One line per import that points the wrong way, naming the module, line and import."""
    problems = []
    for imp in imports:
        importer = layer_of(imp.module)
        top = imp.target.split(".")[0]
        if importer not in FORBIDDEN:
            problems.append(f"{imp}: layer {importer!r} has no row in FORBIDDEN")
        elif top == PACKAGE:
            imported = layer_of(imp.target)
            if imported != importer and imported in FORBIDDEN[importer]:
                problems.append(f"{imp}: {importer} must not import {imported}")
        elif top in THIRD_PARTY and importer not in THIRD_PARTY[top]:
            problems.append(f"{imp}: only {sorted(THIRD_PARTY[top])} may import {top}")
    return problems


def import_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """The cycles among module-level imports of reconciler modules (each as a closed path)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.at_import_time and imp.target.split(".")[0] == PACKAGE and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return cycles


def _sources(root: Path = ROOT) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))}


def _all_imports(sources: Mapping[Path, str], known: frozenset[str]) -> list[Import]:
    out = []
    for path, source in sources.items():
        rel = str(path.relative_to(ROOT.parent))
        out += imports_of(rel, module_name(path), source, is_package=path.name == "__init__.py",
                          known=known)
    return out


SOURCES = _sources()
KNOWN = frozenset(module_name(p) for p in SOURCES)
IMPORTS = _all_imports(SOURCES, KNOWN)


# ---------------------------------------------------------------------------- the real tree
def test_the_scan_sees_the_tree() -> None:
    layers = {layer_of(m) for m in KNOWN}
    assert {"manifest", "probe", "state", "store", "run", "cli", *FOUNDATIONS} <= layers
    assert any(i.target == "reconciler.store.kube" for i in IMPORTS)  # lazy, in store/__init__


def test_imports_point_down_the_pipeline() -> None:
    assert layer_violations(IMPORTS) == []


def test_no_import_cycle_at_module_level() -> None:
    assert [" -> ".join(c) for c in import_cycles(IMPORTS)] == []


# ---------------------------------------------------------------------------- the checker can fail
@pytest.mark.parametrize(("path", "source", "expected"), [
    ("reconciler/state/x.py", "from reconciler.store.kube import KubeStore\n",
     "reconciler/state/x.py:1: `from reconciler.store.kube import KubeStore`: state must not import store"),
    ("reconciler/state/x.py", "def f():\n    from reconciler.probe import probe_account\n",
     "reconciler/state/x.py:2: `from reconciler.probe import probe_account`: state must not import probe"),
    ("reconciler/state/x.py", "from ..store import base\n",
     "reconciler/state/x.py:1: `from ..store import base`: state must not import store"),
    ("reconciler/probe/x.py", "import reconciler.state.render\n",
     "reconciler/probe/x.py:1: `import reconciler.state.render`: probe must not import state"),
    ("reconciler/probe/x.py", "from reconciler import run\n",
     "reconciler/probe/x.py:1: `from reconciler import run`: probe must not import run"),
    ("reconciler/manifest/x.py", "from reconciler.state import conditions\n",
     "reconciler/manifest/x.py:1: `from reconciler.state import conditions`: manifest must not import state"),
    ("reconciler/manifest/__init__.py", "from .. import probe\n",
     "reconciler/manifest/__init__.py:1: `from .. import probe`: manifest must not import probe"),
    ("reconciler/store/x.py", "if True:\n    from reconciler.probe.smtp import probe_smtp\n",
     "reconciler/store/x.py:2: `from reconciler.probe.smtp import probe_smtp`: store must not import probe"),
    ("reconciler/run/x.py", "from reconciler.demo import command\n",
     "reconciler/run/x.py:1: `from reconciler.demo import command`: run must not import demo"),
    ("reconciler/demo/x.py", "from reconciler.cli import main\n",
     "reconciler/demo/x.py:1: `from reconciler.cli import main`: demo must not import cli"),
    ("reconciler/model.py", "from reconciler.store.base import Key\n",
     "reconciler/model.py:1: `from reconciler.store.base import Key`: model must not import store"),
    ("reconciler/state/x.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from reconciler.store.base import Key\n",
     "reconciler/state/x.py:3: `from reconciler.store.base import Key`: state must not import store"),
    ("reconciler/run/x.py", "class C:\n    def f(self):\n        import kubernetes.client\n",
     "reconciler/run/x.py:3: `import kubernetes.client`: only ['store'] may import kubernetes"),
    ("reconciler/shiny/x.py", "import json\n",
     "reconciler/shiny/x.py:1: `import json`: layer 'shiny' has no row in FORBIDDEN"),
])
def test_a_wrong_import_is_reported(path: str, source: str, expected: str) -> None:
    module = module_name(ROOT.parent / path)
    imports = imports_of(path, module, source, is_package=path.endswith("__init__.py"),
                         known=KNOWN | {module})
    assert layer_violations(imports) == [expected]


@pytest.mark.parametrize(("path", "source"), [
    ("reconciler/store/x.py", "from reconciler.store.base import Key\nimport kubernetes\n"),
    ("reconciler/run/x.py", "from reconciler.store.kube import KubeStore\nfrom reconciler import probe\n"),
    ("reconciler/demo/x.py", "from reconciler.run.reconcile import Reconciler\n"),
    ("reconciler/cli.py", "def main():\n    from reconciler.demo import command\n"),
    ("reconciler/state/x.py", "from reconciler import reasons\nfrom reconciler.model import Account\n"),
])
def test_an_allowed_import_is_not_reported(path: str, source: str) -> None:
    module = module_name(ROOT.parent / path)
    imports = imports_of(path, module, source, is_package=False, known=KNOWN | {module})
    assert imports and layer_violations(imports) == []


@pytest.mark.parametrize(("sources", "expected"), [
    ({"reconciler/state/a.py": "from reconciler.state import b\n",
      "reconciler/state/b.py": "from reconciler.state.a import x\n"},
     [["reconciler.state.a", "reconciler.state.b", "reconciler.state.a"]]),
    ({"reconciler/state/a.py": "from . import b\n",
      "reconciler/state/b.py": "import reconciler.state.c\n",
      "reconciler/state/c.py": "from .a import x\n"},
     [["reconciler.state.a", "reconciler.state.b", "reconciler.state.c", "reconciler.state.a"]]),
    ({"reconciler/state/a.py": "from reconciler.state import b\n",  # lazy: runs after both loaded
      "reconciler/state/b.py": "def f():\n    from reconciler.state.a import x\n"}, []),
    ({"reconciler/state/a.py": "from reconciler.state import b\n",
      "reconciler/state/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from reconciler.state.a import x\n"}, []),
])
def test_an_import_cycle_is_reported(sources: dict[str, str], expected: list[list[str]]) -> None:
    known = frozenset(module_name(ROOT.parent / p) for p in sources)
    imports = [i for p, s in sources.items()
               for i in imports_of(p, module_name(ROOT.parent / p), s, is_package=False, known=known)]
    assert import_cycles(imports) == expected
