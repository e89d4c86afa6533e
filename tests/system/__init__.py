"""System tools some tests need: skip with what to install, or fail when CI=true."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = "run tests/system/install.sh as root (apt-get), or install it by hand"


def in_ci() -> bool:
    """CI=true (as GitHub Actions, GitLab and our .ci/run set it): a missing tool is a failure."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str, install: str) -> None:
    """Skip the calling test (fail it in CI), saying what is missing and how to install it."""
    message = f"{what} is not installed: {install} ({INSTALL_HINT})"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_executable(name: str, install: str, paths: tuple[str, ...] = ()) -> str:
    """The path of executable `name` (searched on PATH, then in `paths`), or skip/fail."""
    found = shutil.which(name)
    for candidate in paths:
        if found:
            break
        if os.access(candidate, os.X_OK):
            found = candidate
    if not found:
        missing(name, install)
    assert found is not None
    return found


def require_file(path: str, install: str) -> str:
    """`path` if it exists (a jar, a PHP autoloader, ...), or skip/fail."""
    if not os.path.exists(path):
        missing(path, install)
    return path
