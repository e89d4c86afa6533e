"""The controller's probe event loop: one loop, in a thread of its own, for every worker's probes.

Each worker thread reconciles one key at a time; its probe is a coroutine submitted here
(`submit`), so the probes of the accounts being reconciled run together on one loop: no event
loop (selector, self-pipe, executor) is made and torn down per reconcile, and what lives on a
loop (the token cache's in-flight requests, the endpoint checks in flight, the politeness gates)
is shared by every probe. The worker waits for its probe's result; the probe keeps its own
deadline (reconciler.probe.limits), so a slow server holds only its own coroutine.

Blocking work a probe hands off (token exchanges, the signing check, name resolution) goes to
this loop's own thread pool, sized for the worker threads rather than the CPUs.

`stop(grace)` refuses new probes, lets those in flight finish for up to `grace` seconds, then
cancels the rest: a probe waiting on a silent server does not hold up shutdown. A worker whose
probe was cancelled gets `ProbesStopped` and writes nothing for that account.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from reconciler.log import get_logger

log = get_logger("reconciler.controller")

T = TypeVar("T")

#: After the grace, how long cancelled probes get to unwind (close their sockets).
UNWIND_SECONDS = 5.0


class ProbesStopped(RuntimeError):
    """The probe loop is stopping: the probe was not run, or was cancelled."""


class ProbeLoop:
    """One event loop in a thread, shared by every probe of the controller; thread-safe."""

    def __init__(self, *, io_threads: int = 32, name: str = "probes") -> None:
        self.io_threads = max(1, io_threads)
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.submitted = 0  # probes submitted over the loop's life (for tests and benches)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the loop's thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            loop = self._loop = asyncio.new_event_loop()
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.io_threads, thread_name_prefix=f"{self.name}-io")
            loop.set_default_executor(self._executor)
            started = threading.Event()
            loop.call_soon(started.set)
            # A daemon: a probe stuck in blocking code must not keep the process alive at exit.
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        started.wait(10)

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_flight(self) -> int:
        """Probes submitted and not finished."""
        with self._lock:
            return len(self._pending)

    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop (for tests: the tasks on it)."""
        return self._loop

    # ------------------------------------------------------------------ work
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the loop; its future. ProbesStopped once the loop is stopping."""
        with self._lock:
            if self._closing or self._loop is None:
                coro.close()  # never awaited: closed, so no "never awaited" warning
                raise ProbesStopped("the controller is stopping: the probe was not started")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._pending.add(future)
            self.submitted += 1
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    # ------------------------------------------------------------------ shutdown
    def stop(self, grace: float = 2.0) -> None:
        """Refuse new probes, give those in flight up to `grace` seconds, cancel the rest,
        stop the loop. Returns within about grace + UNWIND_SECONDS, whatever the probes do."""
        with self._lock:
            self._closing = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        end = time.monotonic() + grace + UNWIND_SECONDS
        if thread.is_alive():
            try:
                done = asyncio.run_coroutine_threadsafe(_wind_down(grace), loop)
            except RuntimeError:  # the loop is already closed
                done = None
            if done is not None:
                try:
                    done.result(max(0.0, end - time.monotonic()))
                except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                    log.warning("probes did not end at shutdown", in_flight=self.in_flight())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(max(0.1, end - time.monotonic()))
        # A probe stuck in blocking code keeps the loop's thread: its worker is told anyway.
        with self._lock:
            stuck = list(self._pending)
        for future in stuck:
            if future.cancel():
                continue
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # ended meanwhile
                future.set_exception(ProbesStopped("the controller stopped during the probe"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


async def _wind_down(grace: float) -> None:
    """On the loop: wait up to `grace` for the probes, cancel what is left, let it unwind."""
    me = asyncio.current_task()
    tasks = {t for t in asyncio.all_tasks() if t is not me}
    if tasks and grace > 0:
        await asyncio.wait(tasks, timeout=grace)
    left = {t for t in tasks if not t.done()}
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=UNWIND_SECONDS)
