"""Spread pure per-file work over the CPUs: forked worker processes, results in input order.

Loading a large folder is CPU-bound Python (YAML construction, scans, rules), so threads would
not help; forked processes start in milliseconds with everything already imported. Only
`validate` asks for this, and only a process running no other thread forks (fork needs that to be
safe; elsewhere the work simply runs in this process).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_count() -> int:
    """CPUs this process may run on."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def map_chunks(work: Callable[[Sequence[T]], list[R]], items: Sequence[T], workers: int) -> list[R]:
    """``work`` over contiguous slices of items, one per worker; the results concatenated in order.

    This process works on the first slice itself while forked workers do the others, so one
    worker fewer is started and its results need not be pickled. With one worker, where fork is
    not available, or when other threads run, everything runs here. A worker that dies is made
    up for here.

    Static slices, not many small chunks taken on demand: each chunk's result crosses a pipe read
    by the executor's thread, which waits for the GIL while this process works, and that cost
    more than the balance won (measured, bench/README.md).
    """
    workers = max(1, min(workers, len(items)))
    if workers == 1 or sys.platform != "linux" or threading.active_count() > 1:
        return work(items)  # fork copies one thread: a lock another one holds would stay held
    size = -(-len(items) // workers)
    slices = [items[i:i + size] for i in range(0, len(items), size)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(slices) - 1, mp_context=context) as pool:
        futures = [pool.submit(work, chunk) for chunk in slices[1:]]
        results = work(slices[0])
        for chunk, future in zip(slices[1:], futures, strict=True):
            try:
                results += future.result()
            except Exception:  # noqa: BLE001 - e.g. a worker killed for memory: redo it here
                results += work(chunk)
    return results
