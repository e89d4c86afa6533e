"""Spread pure per-file work over the CPUs: forked worker processes, results in input order.

Loading a large folder is CPU-bound Python (YAML construction, scans, rules), so threads would
not help; forked processes start in milliseconds with everything already imported. Only
`validate` asks for this (its process runs no other thread, which fork needs to be safe).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
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


def map_chunks(work: Callable[[Sequence[T]], list[R]], items: Sequence[T], workers: int,
               chunks_per_worker: int = 16) -> list[R]:
    """``work`` over contiguous chunks of items in ``workers`` processes; results in item order.

    Forked workers take chunks from the front while this process, the last worker, takes them
    from the back as long as no worker has started them (work stealing: a worker slowed by fork,
    pickling or a neighbour on the machine does not leave the others waiting). With one worker,
    or where fork is not available, everything runs here. A worker that dies is made up for here.
    """
    workers = max(1, min(workers, len(items)))
    if workers == 1 or sys.platform != "linux":
        return work(items)
    size = max(1, -(-len(items) // (workers * chunks_per_worker)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    done: list[list[R] | None] = [None] * len(chunks)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers - 1, mp_context=context) as pool:
        futures = [pool.submit(work, chunk) for chunk in chunks]
        for i in reversed(range(len(chunks))):
            if not futures[i].cancel():  # a worker has it: all before it are theirs too
                break
            done[i] = work(chunks[i])
        for i, future in enumerate(futures):
            if done[i] is None:
                try:
                    done[i] = future.result()
                except Exception:  # noqa: BLE001 - e.g. a worker killed for memory: redo it here
                    done[i] = work(chunks[i])
    return [r for part in done for r in part or ()]
