"""`email-reconciler relay`: listen, reload when the mounted Secret changes, stop on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from reconciler.log import get_logger
from reconciler.relay.config import MountedSecretReader, RelayConfigError, fingerprint, load_config
from reconciler.relay.server import RelayState, start_server

log = get_logger("reconciler.relay")
RELOAD_EVERY = 2.0  # seconds between looks at the mounted Secret (kubelet updates take ~1 min)
#: On SIGTERM: stop listening, then let sessions finish what they send (the pod's
#: terminationGracePeriodSeconds should be longer); past it, open sessions are cut.
DRAIN_SECONDS = 25.0


async def watch_secret(state: RelayState, folder: Path, stop: asyncio.Event,
                       every: float = RELOAD_EVERY) -> None:
    """Swap in the new configuration whenever the mounted Secret changes; keep the old one (and
    say why) when the new one cannot be read."""
    seen = fingerprint(folder)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        now = fingerprint(folder)
        if now == seen:
            continue
        seen = now
        try:
            state.register(load_config(folder))
        except RelayConfigError as exc:
            log.error("relay configuration not reloaded; the previous one stays", error=str(exc))
            continue
        log.info("relay configuration reloaded")


async def serve(folder: Path, *, host: str | None = None, port: int | None = None,
                metrics_port: int | None = None, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run the relay until stop is set (or SIGTERM/SIGINT). Exit code 0, or 2 on a bad Secret."""
    try:
        config = load_config(folder)
    except RelayConfigError as exc:
        log.error("relay cannot start", error=str(exc))
        return 2
    state = RelayState(config, MountedSecretReader(folder))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=state.metrics.registry)
    try:
        server = await start_server(state, folder, host, port)
    except (OSError, ValueError) as exc:
        log.error("relay cannot listen", error=str(exc))
        return 2
    addresses = [s.getsockname() for s in server.sockets]
    log.info("relay listening", addresses=[f"{a[0]}:{a[1]}" for a in addresses])
    if ready is not None:
        ready.set()
    watcher = asyncio.create_task(watch_secret(state, folder, stop))
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        if not await state.drained(DRAIN_SECONDS):
            log.warning("relay stopped with sessions still open", sessions=state.sessions,
                        inflight=state.inflight)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return 0


def run_relay(folder: str, host: str | None, port: int | None, metrics_port: int | None) -> int:
    return asyncio.run(serve(Path(folder), host=host, port=port, metrics_port=metrics_port))
