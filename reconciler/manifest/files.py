"""Find manifest files under the paths given, and read each one within its bounds.

No file is read whole beyond MAX_BYTES, a FIFO never blocks, and nothing but a regular file is
read; every failure is a Diagnostic naming the file (load.py reports them, never a traceback).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

from reconciler import model
from reconciler.errors import UsageError

MAX_BYTES = 1024 * 1024
#: At most this much a read: os.read allocates what it is asked for, and a buffer of MAX_BYTES
#: came from its own mmap (then mremap, munmap and page faults: three system calls a file more,
#: 10% of `validate`'s CPU for 5,000 files, bench/README.md, issue 25); this one from the heap.
_READ_CHUNK = 64 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_SUFFIXES = (".yaml", ".yml")


def file_error(file: str, message: str, line: int = 1, col: int = 1,
               document: int | None = None) -> model.Diagnostic:
    """A diagnostic about a file (document None: the file as a whole)."""
    return model.Diagnostic(file, line, col, document, "", message)


def manifest_files(paths: Sequence[str]) -> list[str]:
    """Files named, plus *.yaml/*.yml under folders (recursive, sorted); UsageError if absent."""
    return find_files(paths)[0]


def find_files(paths: Sequence[str]) -> tuple[list[str], list[model.Diagnostic], set[str]]:
    """Manifest files under paths, an error for each folder that could not be listed, and the
    files the listing showed as regular files (not symlinks): `read_manifest` need not stat them.

    Every entry named *.yaml/*.yml is returned, whatever it is (a dangling symlink, a FIFO, a
    symlink loop): the loader reports why it cannot be read instead of skipping it silently.
    Symlinked folders are not followed (as before: `Path.rglob` did not follow them either).
    """
    files: list[str] = []
    errors: list[model.Diagnostic] = []
    regular: set[str] = set()
    for p in paths:
        if os.path.isdir(p):
            found: list[str] = []

            def unlisted(exc: OSError, top: str = p) -> None:
                where = str(exc.filename or top)
                errors.append(file_error(where, f"cannot list folder: {exc.strerror or exc}"))

            for folder, names in _walk(p, unlisted):
                # str(Path(folder, n)) for a plain name n, without a Path per file
                base = str(Path(folder))
                for name, is_regular in names:
                    path = name if base == "." else os.path.join(base, name)
                    found.append(path)
                    if is_regular:
                        regular.add(path)
            files += sorted(found)
        elif os.path.lexists(p):
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return files, errors, regular


def _walk(top: str, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[tuple[str, bool]]]]:
    """The folders of os.walk(top, onerror=onerror) with their *.yaml/*.yml entries that are
    not folders, each with whether the listing showed a regular file (its d_type: no system
    call). Python 3.11's os.walk, top-down, written out only to keep that: the same folders in
    the same order, symlinked folders not entered, the same errors."""
    dirs: list[str] = []
    names: list[tuple[str, bool]] = []
    try:
        entries = os.scandir(top)
    except OSError as error:
        onerror(error)
        return
    with entries:
        while True:
            try:
                try:
                    entry = next(entries)
                except StopIteration:
                    break
            except OSError as error:
                onerror(error)
                return
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(entry.name)
            elif entry.name.endswith(_SUFFIXES):
                try:
                    is_regular = entry.is_file(follow_symlinks=False)
                except OSError:
                    is_regular = False
                names.append((entry.name, is_regular))
    yield top, names
    for name in dirs:
        path = os.path.join(top, name)
        if not os.path.islink(path):
            yield from _walk(path, onerror)


def read_manifest(file: str, listed_regular: Collection[str] = ()) -> bytes | model.Diagnostic:
    """The bytes of a regular file of at most MAX_BYTES, or the error saying why not.

    The size and the kind of file are checked before anything is read (a 200 MB file is never
    read whole, a FIFO never blocks, a device is never opened), and again on the open
    descriptor, in case the file changed. A file in ``listed_regular`` (find_files saw a regular
    file there) is opened without the first check: it was one a moment ago, and the second check
    still refuses it if it changed (5,000 stat calls of bench 1: 2% of `validate`).
    """
    if file not in listed_regular:
        try:
            info = os.stat(file)
        except OSError as exc:
            return file_error(file, _stat_problem(file, exc))
        problem = _kind_problem(info)
        if problem is not None:
            return file_error(file, problem)
    try:
        fd = os.open(file, _OPEN_FLAGS)
    except OSError as exc:
        return file_error(file, _stat_problem(file, exc))
    try:
        info = os.fstat(fd)
        problem = _kind_problem(info)
        if problem is not None:
            return file_error(file, problem)
        data = os.read(fd, min(MAX_BYTES + 1, _READ_CHUNK))
        size = len(data)
        # then on to the end of the file, or past MAX_BYTES; a first read of the very size the
        # descriptor has is the whole file (no read of its end: 5,000 system calls of bench 1)
        if data and size != info.st_size:
            chunks = [data]
            while size <= MAX_BYTES:
                chunk = os.read(fd, min(MAX_BYTES + 1 - size, _READ_CHUNK))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if len(chunks) > 1:
                data = b"".join(chunks)
    except OSError as exc:
        return file_error(file, f"cannot read file: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        return file_error(file, "file is larger than 1 MiB (it grew while being read); "
                                "split it into several files")
    return data


def _stat_problem(file: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "cannot read file: a symlink loop (the link points back at itself)"
    if exc.errno == errno.ENOENT and os.path.islink(file):
        try:
            target = os.readlink(file)
        except OSError:
            target = "?"
        return f"cannot read file: a dangling symlink (its target {target} does not exist)"
    return f"cannot read file: {exc.strerror or exc}"


def _kind_problem(info: os.stat_result) -> str | None:
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a folder" if stat.S_ISDIR(mode) else "not a regular file")
        return f"cannot read file: {kind}, not a regular file"
    if info.st_size > MAX_BYTES:
        return (f"file is larger than 1 MiB ({info.st_size} bytes); split it into several "
                "files")
    return None
