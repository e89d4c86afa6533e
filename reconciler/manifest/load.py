"""Load EmailAccount manifests from files and folders into effective accounts and diagnostics.

One bad document never hides the others; no input produces a traceback: every failure becomes a
Diagnostic (FILE:LINE:COL: document N: /pointer: message).
"""

from __future__ import annotations

import codecs
import gc
import operator
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from reconciler import model
from reconciler.manifest import yamlnodes
from reconciler.manifest.account import account_from_manifest
from reconciler.manifest.files import MAX_BYTES, file_error, find_files, manifest_files, read_manifest
from reconciler.manifest.validate import KUSTOMIZATION_FILES, other_kind, prepare, validate_manifest

__all__ = ["MAX_BYTES", "InvalidDocument", "LoadResult", "account_from_manifest", "load_bytes",
           "load_paths", "manifest_files"]

#: A diagnostic's sort key: where it is in its file, (line, column).
_POSITION = operator.attrgetter("line", "column")
#: Below this many files a worker's start-up and the results' pickling cost more than they save.
PARALLEL_MIN_FILES = 200
#: (namespace, Secret name) -> the account whose published Secret it is now, or None.
SecretOwner = Callable[[str, str], "str | None"]
#: What _cross_checks and _scope report once the node tree is gone.
_CROSS_CHECK_POINTERS = ("/metadata/name", "/metadata/namespace", "/spec/publish/secretName")


@dataclass(frozen=True)
class InvalidDocument:
    """A document that failed validation (its errors and warnings)."""

    namespace: str | None
    name: str | None
    source: model.SourceRef
    diagnostics: list[model.Diagnostic]
    manifest: dict[str, Any] | None


@dataclass
class LoadResult:
    """Valid accounts, invalid documents, and every diagnostic in file order."""

    accounts: list[model.Account] = field(default_factory=list)
    invalid: list[InvalidDocument] = field(default_factory=list)
    diagnostics: list[model.Diagnostic] = field(default_factory=list)
    files: int = 0
    #: Files that failed to load as a whole or in part (unreadable, too large, not UTF-8, a YAML
    #: syntax error, not a regular file): each with its first error. Accounts they may hold are
    #: unknown, so a run prunes nothing while this is not empty.
    failed_files: list[model.Diagnostic] = field(default_factory=list)
    #: The paths loaded, as given: the source whose inventory a reconcile run keeps.
    paths: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


@dataclass
class _Doc:
    """A document being loaded: its source, data, diagnostics and (when valid) account."""

    source: model.SourceRef
    data: Any
    diagnostics: list[model.Diagnostic]
    root: yaml.Node | None = None
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)  # once root is dropped
    account: model.Account | None = None  # built by validation: kept while the document is valid
    skipped: bool = False  # an object of another kind (a Namespace, a Secret): its note only

    @property
    def valid(self) -> bool:
        return self.data is not None and (
            not self.diagnostics or not any(d.severity == "error" for d in self.diagnostics))

    def ident(self) -> tuple[str, str] | None:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str):
            return None
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        return (ns if isinstance(ns, str) and ns else "default", name)

    def forget_nodes(self) -> None:
        """Drop the node tree, keeping the positions the cross-document checks may report.

        A tree with its marks is ~15 KB a document: kept for every document until the end, it
        was most of the peak memory of a 10,000-manifest run (bench/README.md).
        """
        if self.root is not None:
            self.positions = cross_check_positions(self.root)
            self.root = None

    def error(self, pointer: str, message: str) -> None:
        if self.root is not None:
            line, col = yamlnodes.locate(self.root, pointer)
        else:
            line, col = self.positions.get(pointer, (self.source.line, self.source.column))
        self.diagnostics.append(model.Diagnostic(
            self.source.file, line, col, self.source.document, pointer, message))


def cross_check_positions(root: yaml.Node) -> dict[str, tuple[int, int]]:
    """{p: yamlnodes.locate(root, p) for p in _CROSS_CHECK_POINTERS}, each map searched once
    (three locates were 2.6% of `validate`'s samples for bench 1, issue 25)."""
    mark_of, child = yamlnodes.mark_of, yamlnodes.child
    meta, spec = child(root, "metadata"), child(root, "spec")
    if meta is None:
        name = namespace = mark_of(root)
    else:
        node = child(meta, "name")
        name = mark_of(meta if node is None else node)
        node = child(meta, "namespace")
        namespace = mark_of(meta if node is None else node)
    publish = None if spec is None else child(spec, "publish")
    if publish is None:
        secret_name = mark_of(root if spec is None else spec)
    else:
        node = child(publish, "secretName")
        secret_name = mark_of(publish if node is None else node)
    return {"/metadata/name": name, "/metadata/namespace": namespace,
            "/spec/publish/secretName": secret_name}


def _decode(data: bytes, file: str) -> tuple[str | None, list[model.Diagnostic]]:
    if len(data) > MAX_BYTES:
        return None, [file_error(file, f"file is larger than 1 MiB ({len(data)} bytes); "
                                        "split it into several files")]
    try:  # "utf-8-sig" without its codec's Python function: the BOM cut here, then C's UTF-8
        # (an error's offset is in the text after the BOM, as that codec's was)
        return (data[3:] if data[:3] == codecs.BOM_UTF8 else data).decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [file_error(file, f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                                        "save it as UTF-8", line, col)]


def _yaml_error(file: str, exc: yaml.YAMLError, document: int) -> model.Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "tab character" in str(problem):
        problem = f"{problem}; indent with spaces, not tabs"
    context = getattr(exc, "context", None)
    where = f"{context}: " if context else ""
    text = f"YAML syntax error: {where}{problem}"
    return file_error(file, text, line, col, document)


def load_bytes(data: bytes, file: str) -> tuple[list[_Doc], list[model.Diagnostic]]:
    """Parse one file's bytes into documents (with per-document diagnostics) and file errors."""
    text, errors = _decode(data, file)
    if text is None:
        return [], errors
    docs: list[_Doc] = []
    loader = yamlnodes.Loader(text)
    index = 0
    parsing = 1  # the document being parsed when a syntax error strikes
    try:
        while loader.check_node():
            index += 1
            parsing = index
            root = loader.get_node()
            parsing = index + 1
            if yamlnodes.is_empty(root):
                continue
            doc = _document(loader, root, file, index)
            if doc.skipped:  # not ours: its note or warning is all it leaves
                errors += doc.diagnostics
                continue
            doc.forget_nodes()
            docs.append(doc)
    except yaml.YAMLError as exc:
        errors.append(_yaml_error(file, exc, parsing))
    except Exception as exc:  # noqa: BLE001 - the file boundary: no traceback on any input
        errors.append(file_error(file, f"cannot read YAML ({type(exc).__name__})", 1, 1))
    finally:
        loader.dispose()
    return docs, errors


def _document(loader: Any, root: yaml.Node, file: str, index: int) -> _Doc:
    line, col = yamlnodes.mark_of(root)
    doc = _Doc(model.SourceRef(file, index, line, col), None, [], root)
    try:
        doc.data, plain = yamlnodes.check_and_construct(loader, root)
    except yamlnodes.NodeProblem as problem:
        pline, pcol = yamlnodes.mark_of(problem.node)
        doc.diagnostics.append(file_error(file, problem.message, pline, pcol, index))
        return doc
    except yaml.YAMLError as exc:
        doc.diagnostics.append(_yaml_error(file, exc, index))
        return doc
    except Exception as exc:  # noqa: BLE001 - e.g. an impossible timestamp such as 2001-02-30
        doc.diagnostics.append(file_error(
            file, f"cannot read a value ({type(exc).__name__}); quote it", line, col, index))
        return doc
    skip = other_kind(doc.data)
    if skip is not None:
        pointer, message, severity = skip
        pline, pcol = yamlnodes.locate(root, pointer)
        doc.diagnostics.append(model.Diagnostic(file, pline, pcol, index, pointer, message,
                                                severity))
        doc.skipped = True
        return doc
    try:
        diagnostics, doc.account = validate_manifest(
            doc.data, file=file, document=index,
            locate=lambda p: yamlnodes.locate(root, p), plain=plain, source=doc.source)
        doc.diagnostics += diagnostics
    except Exception as exc:  # noqa: BLE001 - a bug in a rule must not hide other documents
        doc.diagnostics.append(file_error(
            file, f"internal error while validating ({type(exc).__name__})", line, col, index))
    return doc


def _cross_checks(docs: list[_Doc], secret_owner: SecretOwner | None = None) -> None:
    """Errors across documents: the same namespace/name twice, the same published Secret twice."""
    names: dict[tuple[str, str], _Doc] = {}
    idents = [d.ident() for d in docs]  # once a document (no check below changes its data)
    for d, ident in zip(docs, idents, strict=True):
        if ident is None:
            continue
        if ident in names:
            first = names[ident].source
            d.error("/metadata/name", f"EmailAccount {ident[0]}/{ident[1]} is already defined at "
                                      f"{first.file}:{first.line}; rename one of them")
        else:
            names[ident] = d
    # The same published Secret twice: the account that already owns it (its owner label, when
    # `secret_owner` can tell) keeps it and the newcomer is blamed, wherever its file sorts.
    secrets: dict[tuple[str, str], list[_Doc]] = {}
    for d, ident in zip(docs, idents, strict=True):
        if not d.valid:
            continue
        ns, name = ident or ("default", "")
        publish = d.data.get("spec", {}).get("publish") or {}
        secrets.setdefault((ns, str(publish.get("secretName") or f"{name}-sender")), []).append(d)
    for key, holders in secrets.items():
        if len(holders) < 2:
            continue
        owner = secret_owner(*key) if secret_owner is not None else None
        keeper = next((d for d in holders if (d.ident() or ("", ""))[1] == owner), holders[0])
        for d in holders:
            if d is keeper:
                continue
            publish = d.data.get("spec", {}).get("publish") or {}
            pointer = "/spec/publish/secretName" if "secretName" in publish else "/metadata/name"
            owns = ", which owns it now" if owner is not None and keeper is not holders[0] else ""
            d.error(pointer, f"Secret {key[0]}/{key[1]} is already published by account "
                             f"{(keeper.ident() or ('', '?'))[1]} "
                             f"({keeper.source.file}:{keeper.source.line}{owns}); set a "
                             "distinct spec.publish.secretName")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while loading (and, for `validate`, reporting).

    Loading keeps every document's node tree alive until the cross-document checks, so the
    collector would rescan a growing heap again and again (a quarter of the time for 5,000 files,
    bench/README.md); the trees hold no reference cycles, so reference counting frees them anyway.
    Re-enabled right after loading, its first full pass over the result cost `validate` another
    0.06 s for 5,000 files, so `run_validate` keeps it paused until the report is written.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_paths(paths: Sequence[str], *, parallel: bool = False, workers: int | None = None,
               namespace: str | None = None, enforce_namespace: bool = False,
               secret_owner: SecretOwner | None = None) -> LoadResult:
    """Load every manifest under paths. Raises UsageError for a path that does not exist.

    ``parallel``: spread a large folder's files over forked processes (`reconciler.manifest.pool`);
    only for a process that runs no other thread. The result is the same either way.
    ``workers``: how many processes then (None: one per CPU).
    ``namespace``: where a manifest without metadata.namespace goes (kubectl's rule; "default"
    when None). With ``enforce_namespace`` (an explicit --namespace) a manifest naming another
    namespace is an error, as `kubectl apply -n NS` refuses it.
    ``secret_owner(namespace, secret)``: the account that owns that published Secret now (a
    reconcile run asks its store), so a second document publishing it blames the newcomer.
    """
    with gc_paused():
        return _load_paths(paths, parallel, namespace or "default", enforce_namespace,
                           secret_owner, workers)


def _scope(docs: list[_Doc], namespace: str, enforce: bool) -> None:
    """Put namespace-less documents into `namespace`; flag others when it is enforced."""
    for d in docs:
        meta = d.data.get("metadata") if isinstance(d.data, dict) else None
        if not isinstance(meta, dict):
            continue
        ns = meta.get("namespace")
        if ns is None or ns == "":
            meta["namespace"] = namespace
            if d.account is not None:
                d.account = replace(d.account, namespace=namespace)
        elif enforce and ns != namespace:
            d.error("/metadata/namespace",
                    f"the namespace of this manifest ({ns!r}) does not match --namespace "
                    f"{namespace!r}; remove metadata.namespace or run with --namespace={ns}")
            d.account = None


def _load_files(files: Sequence[str], listed_regular: Collection[str] = ()
                ) -> list[tuple[list[model.Diagnostic], list[_Doc]]]:
    """(file errors, documents) of each file, in order: the per-file work, done anywhere.

    ``listed_regular``: files the folder listing showed as regular (files.read_manifest)."""
    per_file: list[tuple[list[model.Diagnostic], list[_Doc]]] = []
    for file in files:
        if os.path.basename(file) in KUSTOMIZATION_FILES:
            per_file.append(([model.Diagnostic(file, 1, 1, None, "", "skipped: a kustomization, "
                                               "not an EmailAccount", "note")], []))
            continue
        data = read_manifest(file, listed_regular)
        if isinstance(data, model.Diagnostic):
            per_file.append(([data], []))
            continue
        docs, errors = load_bytes(data, file)
        per_file.append((errors, docs))
    return per_file


def _load_paths(paths: Sequence[str], parallel: bool, namespace: str = "default",
                enforce: bool = False, secret_owner: SecretOwner | None = None,
                workers: int | None = None) -> LoadResult:
    files, unlisted, listed_regular = find_files(paths)
    result = LoadResult(files=len(files), paths=tuple(paths))
    result.diagnostics += unlisted
    result.failed_files += unlisted
    if parallel and len(files) >= PARALLEL_MIN_FILES:
        from reconciler.manifest import pool  # multiprocessing: 10 ms of imports, only here

        prepare()  # once here, inherited by the forked workers
        per_file = pool.map_chunks(_load_files, files, workers or pool.cpu_count())
    else:
        per_file = _load_files(files, listed_regular)
    all_docs = [d for _errors, docs in per_file for d in docs]
    _scope(all_docs, namespace, enforce)
    _cross_checks(all_docs, secret_owner)  # across all files, so after every worker's results are merged
    for errors, docs in per_file:
        file_diags = list(errors)
        failed = [e for e in errors if e.severity == "error"]
        if failed:
            result.failed_files.append(failed[0])
        for d in docs:
            diagnostics = d.diagnostics
            if len(diagnostics) > 1:
                diagnostics.sort(key=_POSITION)
            file_diags += diagnostics
            if d.valid:
                warnings = tuple(x for x in diagnostics if x.severity == "warning") \
                    if diagnostics else ()
                account = d.account or account_from_manifest(d.data)
                if account.source is not d.source or account.warnings != warnings:
                    account = replace(account, source=d.source, warnings=warnings)
                result.accounts.append(account)
            else:
                ident = d.ident()
                result.invalid.append(InvalidDocument(
                    ident[0] if ident else None, ident[1] if ident else None, d.source,
                    diagnostics, d.data if isinstance(d.data, dict) else None))
        if len(file_diags) > 1:
            file_diags.sort(key=_POSITION)
        result.diagnostics += file_diags
    return result
