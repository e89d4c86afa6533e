"""Starting and stopping the MTAs' processes: waiting on conditions, stopping by process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g}s for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, *,
               whole_group: bool = False, timeout: float = 15) -> None:
    """Signal the leader of a process group we started, then make sure the whole group is gone.

    The leader was started with start_new_session=True, so its PID is the group's ID. It stops
    its children itself, or with `whole_group` each process gets the signal at once (by that
    process group ID, never by name). Whatever is left after `timeout` is killed, and that is
    an error."""
    pgid = process.pid
    if process.poll() is None:
        if whole_group:
            os.killpg(pgid, sig)
        else:
            process.send_signal(sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    try:
        wait_for(lambda: not group_alive(pgid), timeout=timeout, what=f"process group {pgid}")
    except TimeoutError:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(5)
        raise RuntimeError(f"process group {pgid} ({process.args!r}) outlived its leader") from None
