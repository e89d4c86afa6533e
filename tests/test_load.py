"""Loader robustness and the `validate` command, end to end on files in tmp_path."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import model
from reconciler.cli import main
from reconciler.manifest import schema_path
from reconciler.manifest.load import MAX_BYTES, account_from_manifest, load_bytes, load_paths
from reconciler.manifest.report import dumps_indented, run_validate

ROOT = Path(__file__).parent.parent
GOOD = """apiVersion: email.reconciler.io/v1alpha1
kind: EmailAccount
metadata:
  name: billing
  namespace: demo
spec:
  provider: custom
  smtp:
    identity:
      emailAddress: billing@example.com
    connection:
      host: mail.example.com
      port: 587
      security: STARTTLS
    authentication:
      method: Password
      passwordSecretRef: {name: billing-smtp, key: password}
"""


def test_packaged_schema_equals_canonical_schema() -> None:
    assert schema_path().read_bytes() == (ROOT / "schemas" / "emailaccount.schema.json").read_bytes()


def _only_diagnostics(data: bytes) -> None:
    docs, errors = load_bytes(data, "fuzz.yaml")
    assert all(isinstance(e, model.Diagnostic) for e in errors)
    for d in docs:
        assert all(isinstance(x, model.Diagnostic) for x in d.diagnostics)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_only_diagnostics(data: bytes) -> None:
    _only_diagnostics(data)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab: -\n\t[]{},&*!|>'\"#%@`?~0.\x00\ufeff")),
               max_size=200))
def test_arbitrary_yaml_like_text_gives_only_diagnostics(text: str) -> None:
    _only_diagnostics(text.encode("utf-8"))


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=4),
                    max_leaves=20))
def test_arbitrary_yaml_documents_give_only_diagnostics(value: object) -> None:
    doc = yaml.safe_load(GOOD)
    doc["spec"]["smtp"] = value
    _only_diagnostics(yaml.safe_dump(doc).encode())


def test_file_over_one_mib_is_rejected(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(GOOD.encode() + b"#" * MAX_BYTES)
    result = load_paths([str(big)])
    assert [(d.line, d.document, d.message[:27]) for d in result.diagnostics] == [
        (1, None, "file is larger than 1 MiB (")]


def test_billion_laughs_is_rejected_fast(tmp_path: Path) -> None:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 20):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    f = tmp_path / "lol.yaml"
    f.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    result = load_paths([str(f)])
    assert time.monotonic() - start < 2
    assert "aliases" in result.diagnostics[0].message


def test_empty_documents_are_skipped_and_numbered(tmp_path: Path) -> None:
    f = tmp_path / "multi.yaml"
    f.write_text("---\n---\n" + GOOD)
    result = load_paths([str(f)])
    assert result.ok and result.diagnostics == []
    assert [(a.name, a.source.document, a.source.line) for a in result.accounts if a.source] == [
        ("billing", 2, 3)]


def test_folders_are_walked_recursively_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "two.yml").write_text(GOOD.replace("name: billing", "name: two"))
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("not yaml: [")
    result = load_paths([str(tmp_path)])
    assert [a.name for a in result.accounts] == ["billing", "two"]
    assert result.files == 2


def test_same_account_in_two_files_names_the_first(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    result = load_paths([str(tmp_path)])
    [err] = result.diagnostics
    assert (err.file, err.line, err.pointer) == (str(tmp_path / "b.yaml"), 4, "/metadata/name")
    assert f"already defined at {tmp_path / 'a.yaml'}:1" in err.message
    assert [a.source.file for a in result.accounts if a.source] == [str(tmp_path / "a.yaml")]


def test_account_from_api_object_takes_generation_and_uid() -> None:
    doc = yaml.safe_load(GOOD)
    doc["metadata"].update(generation=7, uid="1234-abcd", resourceVersion="99",
                           managedFields=[{"manager": "kubectl"}])
    doc["status"] = {"protocol": "STARTTLS"}
    del doc["metadata"]["namespace"]
    from reconciler.manifest.validate import validate_document

    assert validate_document(doc) == []
    a = account_from_manifest(doc)
    assert (a.namespace, a.name, a.generation, a.uid) == ("default", "billing", 7, "1234-abcd")
    assert a.smtp is not None and a.smtp.authentication.password == model.KeyRef(
        "billing-smtp", "password", "Secret", "/spec/smtp/authentication/passwordSecretRef")
    assert a.smtp.identity.user_id == "billing@example.com"


def test_validate_examples_exits_0(capsys: object) -> None:
    assert main(["validate", str(ROOT / "accounts")]) == 0


def test_validate_text_output_and_exit_1(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("port: 587", "port: 99999"))
    out = io.StringIO()
    assert run_validate([str(f)], output="text", out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines == [f"{f}:13:13: document 1: /spec/smtp/connection/port: must be <= 65535",
                     "1 file, 0 accounts, 1 error, 0 warnings"]


def test_validate_json_output(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(GOOD)
    (tmp_path / "warn.yaml").write_text(
        GOOD.replace("name: billing", "name: w").replace("port: 587", "port: 25")
        .replace("security: STARTTLS", "security: None"))
    out = io.StringIO()
    assert run_validate([str(tmp_path)], output="json", out=out) == 0
    data = json.loads(out.getvalue())
    assert data["valid"] is True and data["files"] == 2 and data["errors"] == []
    assert data["accounts"][0] == {"namespace": "demo", "name": "billing",
                                   "file": str(tmp_path / "ok.yaml"), "document": 1}
    assert {w["pointer"] for w in data["warnings"]} == {"/spec/smtp/connection/port",
                                                        "/spec/smtp/connection/security"}


def test_show_effective_prints_preset_host_and_port(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_validate([str(ROOT / "accounts" / "yahoo-marketing.yaml")], show_effective=True,
                        out=out) == 0
    # diagnostics (here the app-password note) come first, then the effective documents
    effective = next(yaml.safe_load_all(out.getvalue().split("---\n", 1)[1].rsplit("\n1 file,",
                                                                              1)[0]))
    conn = effective["spec"]["smtp"]["connection"]
    assert (conn["host"], conn["port"], conn["security"]) == ("smtp.mail.yahoo.com", 465, "SMTPS")
    assert effective["spec"]["publish"]["secretName"] == "yahoo-marketing-sender"


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 2


def test_console_entry_point_runs_without_kubernetes_or_msal() -> None:
    code = ("import sys; from reconciler.cli import main; rc = main(['validate', 'accounts']); "
            "bad = [m for m in ('kubernetes', 'msal') if m in sys.modules]; "
            "print('IMPORTED', bad); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "reconciler", "validate",
                           "tests/manifests/bad"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "tests/manifests/bad/wrong-kind.yaml:2:7: document 1: /kind:" in proc.stdout


def test_validate_imports_nothing_of_the_probe() -> None:
    # Start-up (bench 5): the CLI's help texts once imported reconciler.probe (asyncio, ssl) and
    # loggers taken at import brought structlog; validate needs none of them.
    code = ("import sys; from reconciler.cli import main; "
            "rc = main(['validate', 'accounts/alerts.yaml']); "
            "bad = [m for m in ('asyncio', 'ssl', 'structlog', 'reconciler.probe') "
            "if m in sys.modules]; print('IMPORTED', bad); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout


_JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=6)
                 | st.sampled_from(["é", "\u2028", "\x00", '"', "\\", "\U0001f600", "a/b"]))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5) | st.integers(0, 3), _JSON_SCALARS
                       | st.lists(st.dictionaries(st.text(max_size=4) | st.none(), _JSON_SCALARS, max_size=4),
                                  max_size=3)
                       | st.lists(_JSON_SCALARS, max_size=2)
                       | st.dictionaries(st.text(max_size=2), _JSON_SCALARS, max_size=2)
                       | st.floats(allow_nan=False), max_size=6))
def test_json_report_is_json_dumps_indented(report: dict[str, Any]) -> None:
    """validate's JSON writer gives json.dumps(indent=2)'s bytes, whatever the values."""
    assert dumps_indented(report) == json.dumps(report, indent=2)


WARNED = """\
apiVersion: email.reconciler.io/v1alpha1
kind: EmailAccount
metadata: {name: warned, namespace: demo}
spec:
  provider: custom
  smtp:
    connection: {host: smtp.example.com, port: 25, security: STARTTLS}
    identity: {emailAddress: warned@example.com, userId: AKIAIOSFODNN7EXAMPLE}
    authentication:
      method: Password
      passwordSecretRef: {name: warned-smtp, key: password}
"""


def test_accounts_carry_their_source_and_sorted_warnings(tmp_path: Path) -> None:
    """The loader's accounts (their source and warnings now set where validation builds them)
    equal the account built from scratch with the document's source and warnings in order: here
    the rule's warning (port 25, line 7) is found after the scan's (userId, line 8)."""
    (tmp_path / "warned.yaml").write_text(WARNED + "---\n" + WARNED.replace("warned", "second"))
    result = load_paths([str(ROOT / "accounts"), str(tmp_path)])
    with_warnings = 0
    for a in result.accounts:
        assert a.source is not None
        expected = tuple(d for d in result.diagnostics if d.severity == "warning"
                         and (d.file, d.document) == (a.source.file, a.source.document))
        assert a == account_from_manifest(a.manifest, a.source, expected)
        with_warnings += bool(expected)
        if expected:
            assert [d.line for d in a.warnings] == sorted(d.line for d in a.warnings)
            assert len(a.warnings) == 2
    assert len(result.accounts) > 20 and with_warnings == 2


def test_files_read_whole_in_chunks(tmp_path: Path) -> None:
    """A file is read whole at every size around the read chunk, up to MAX_BYTES; one byte more
    is the size error (the chunked reads stop where one read of MAX_BYTES + 1 did)."""
    from reconciler.manifest.files import _READ_CHUNK
    from reconciler.manifest.files import read_manifest as _read_manifest

    for size in (0, 1, _READ_CHUNK - 1, _READ_CHUNK, _READ_CHUNK + 1, 3 * _READ_CHUNK + 7,
                 MAX_BYTES - 1, MAX_BYTES):
        path = tmp_path / f"f{size}.yaml"
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        path.write_bytes(data)
        assert _read_manifest(str(path)) == data, size
    path = tmp_path / "over.yaml"
    path.write_bytes(b"x" * (MAX_BYTES + 1))
    error = _read_manifest(str(path))
    assert isinstance(error, model.Diagnostic) and "larger than 1 MiB" in error.message


def test_a_small_file_is_read_without_a_large_buffer(tmp_path: Path) -> None:
    """os.read allocates the size it is asked for: a buffer of MAX_BYTES for every file came from
    its own mmap (mmap, mremap and munmap a file, and page faults: 10% of validate's CPU)."""
    import tracemalloc

    from reconciler.manifest.files import read_manifest as _read_manifest

    path = tmp_path / "small.yaml"
    path.write_text(GOOD)
    tracemalloc.start()
    try:
        assert _read_manifest(str(path)) == GOOD.encode()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 128 * 1024


def _decode_before(data: bytes, file: str) -> tuple[str | None, list[model.Diagnostic]]:
    """load._decode as it was: bytes.decode("utf-8-sig"), the codec's Python function."""
    from reconciler.manifest.files import file_error as _file_error

    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [_file_error(file, f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                                        "save it as UTF-8", line, col)]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"\xef\xbb\xbf", b"a", b"\n", b"\xc3\xa9", b"\xe2\x82\xac",
                                 b"\xf0\x9f\x98\x80", b"\xc3", b"\xff", b"\xed\xa0\x80", b"k: v"]),
                max_size=12))
def test_decode_as_the_utf_8_sig_codec(parts: list[bytes]) -> None:
    """The text, or the error (its byte, line and column), as bytes.decode("utf-8-sig") gave."""
    from reconciler.manifest.load import _decode

    data = b"".join(parts)
    assert _decode(data, "f.yaml") == _decode_before(data, "f.yaml")


def _find_files_before(paths: list[str]) -> tuple[list[str], list[model.Diagnostic]]:
    """files.find_files as it was, on os.walk."""
    import os

    from reconciler.manifest.files import file_error

    files: list[str] = []
    errors: list[model.Diagnostic] = []
    for p in paths:
        found: list[str] = []

        def unlisted(exc: OSError, top: str = p) -> None:
            errors.append(file_error(str(exc.filename or top),
                                     f"cannot list folder: {exc.strerror or exc}"))

        for folder, _dirs, names in os.walk(p, onerror=unlisted):
            base = str(Path(folder))
            found += [n if base == "." else os.path.join(base, n)
                      for n in names if n.endswith((".yaml", ".yml"))]
        files += sorted(found)
    return files, errors


def test_find_files_as_os_walk(tmp_path: Path) -> None:
    """The scandir walk lists what os.walk listed (nested and unreadable folders, symlinked
    folders not entered, symlinks, FIFOs, folders named *.yaml), and calls regular exactly the
    regular files that are no symlinks."""
    import os

    from reconciler.manifest.files import find_files

    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    for name in ("x.yaml", "a/y.yml", "a/b/z.yaml", "a/b/c/w.yaml", "a/notes.txt", "a/.h.yaml"):
        (tmp_path / name).write_text("k: v\n")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "dir.yaml" / "in.yaml").write_text("k: v\n")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "x.yaml")
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "gone.yaml")
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "a")
    (tmp_path / "linked-dir.yaml").symlink_to(tmp_path / "a")
    os.mkfifo(tmp_path / "fifo.yaml")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "hidden.yaml").write_text("k: v\n")
    locked.chmod(0)
    try:
        for paths in ([str(tmp_path)], [str(tmp_path / "a"), str(tmp_path)]):
            files, errors, regular = find_files(paths)
            assert (files, errors) == _find_files_before(paths)
            assert regular == {f for f in files if os.path.isfile(f) and not os.path.islink(f)}
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            files, errors, regular = find_files(["."])
            assert (files, errors) == _find_files_before(["."])
            assert "x.yaml" in regular and "link.yaml" not in regular
        finally:
            os.chdir(cwd)
    finally:
        locked.chmod(0o700)


def test_a_file_whose_size_says_nothing_is_read_to_its_end(tmp_path: Path) -> None:
    """A file is read in one go when the first read returns the size fstat gave; otherwise on
    to its end (a /proc file says 0 bytes and has more)."""
    from reconciler.manifest.files import read_manifest

    with open("/proc/version", "rb") as fh:
        assert read_manifest("/proc/version") == fh.read() != b""
    path = tmp_path / "grown.yaml"
    path.write_bytes(b"a" * 100)
    assert read_manifest(str(path)) == b"a" * 100
