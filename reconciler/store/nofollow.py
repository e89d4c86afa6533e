"""File writes under a store root that never follow a symbolic link (issue 23 item 13).

The local store may sit inside a checkout (`./.email-reconciler`), where anyone who can commit can
plant a link. So every folder below the root is opened one component at a time relative to its
parent's descriptor with O_NOFOLLOW (created with mkdir the same way), and every file is created,
replaced, appended to or unlinked relative to its folder's descriptor:

- a link at a folder, or at a file the store appends to (events.jsonl), is `SymlinkRefused`,
  naming the link; nothing is written;
- a link at a file the store rewrites atomically is replaced by the new file (rename replaces
  the link itself, never its target), as it always was for Secrets.

The folders above the root are the operator's choice and may be links; the root itself may not
(the default root `.email-reconciler` is a name in the current folder, which may be a checkout).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

TEMP_PREFIX = ".tmp-"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at a file's name must not hang the run at open.
_FILE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class SymlinkRefused(OSError):
    """A symbolic link where the store writes; `filename` is the link."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ELOOP, "a symbolic link, and the store never writes through one "
                         "(remove it)", str(path))


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def open_root(root: Path, *, create: bool) -> int:
    """A descriptor of the store root (made when missing, with `create`); a link is refused."""
    if root.is_symlink():
        raise SymlinkRefused(root)
    if create:
        root.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(root, _DIR)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and root.is_symlink():
            raise SymlinkRefused(root) from None
        raise


@contextlib.contextmanager
def folder(root: Path, parts: Sequence[str], *, create: bool) -> Iterator[int]:
    """A descriptor of root/parts..., the root and each component below it opened without
    following a link (and made when missing, with `create`)."""
    fd = open_root(root, create=create)
    try:
        for i, part in enumerate(parts):
            try:
                child = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                child = _open_dir(fd, root, parts[:i + 1])
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(fd, part):
                    raise SymlinkRefused(root.joinpath(*parts[:i + 1])) from None
                raise
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_dir(parent: int, root: Path, parts: Sequence[str]) -> int:
    try:
        return os.open(parts[-1], _DIR, dir_fd=parent)
    except OSError as exc:  # a link planted between our mkdir and this open
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent, parts[-1]):
            raise SymlinkRefused(root.joinpath(*parts)) from None
        raise


def _read_all(fd: int, size: int) -> bytes:
    chunks, left = [], size + 1  # one byte more: a file that grew is not "the same"
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _unchanged(dir_fd: int, name: str, content: bytes, mode: int) -> bool:
    """Whether `name` is a regular file holding `content` (its mode then set to `mode`)."""
    try:
        fd = os.open(name, os.O_RDONLY | _FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False  # a link: replaced by the rename below
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(content):
            return False
        if _read_all(fd, st.st_size) != content:
            return False
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)


def write_atomic(root: Path, parts: Sequence[str], content: bytes, mode: int = 0o644) -> bool:
    """Write root/parts... via a temp file and rename; skip when unchanged. True if written."""
    *dirs, name = parts
    with folder(root, dirs, create=True) as dir_fd:
        if _unchanged(dir_fd, name, content, mode):
            return False
        # A short name of its own (not derived from a name that may be 255 bytes long already),
        # so the next run can tell a killed run's leftovers from anything else.
        tmp = TEMP_PREFIX + secrets.token_hex(4)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE, mode, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    return True


def append(root: Path, parts: Sequence[str], data: bytes, mode: int = 0o644) -> None:
    """Append to the regular file root/parts... (created when missing); a link is refused."""
    *dirs, name = parts
    with folder(root, dirs, create=True) as dir_fd:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _FILE, mode,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SymlinkRefused(root.joinpath(*parts)) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(root.joinpath(*parts)))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def unlink(root: Path, parts: Sequence[str]) -> None:
    """Remove root/parts... (a link there is removed, never its target); gone already is fine."""
    *dirs, name = parts
    try:
        with folder(root, dirs, create=False) as dir_fd:
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
