"""Shared fixtures: a throwaway CA, SMTP servers on 127.0.0.1, a secrets directory, log capture."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from reconciler.log import configure_logging, reset_logging
from tests.mta.harness import mta, mta_bed  # noqa: F401  (fixtures of tests/test_mta_*.py)
from tests.smtpservers import (
    NAMESPACE,
    PASSWORD,
    PASSWORD_REF,
    TRUSTSTORE_REF,
    RunningServer,
    ServerLoop,
    SmtpServerOptions,
    ThrowawayCA,
    server_context,
    write_secret,
)


@pytest.fixture(scope="session")
def ca() -> ThrowawayCA:
    """One throwaway CA for the session (issuing certificates is the slow part)."""
    return ThrowawayCA()


@pytest.fixture(scope="session")
def server_loop() -> Iterator[ServerLoop]:
    """The event loop thread that hosts every test server of the session."""
    loop = ServerLoop()
    yield loop
    loop.close()


@pytest.fixture
def smtp_server(server_loop: ServerLoop, ca: ThrowawayCA
                ) -> Iterator[Callable[..., RunningServer]]:
    """Factory: smtp_server(mode="STARTTLS", tls="default", users=..., ...) -> RunningServer.

    `tls` names a server TLS setup of tests.smtpservers.server_context (tls12_only, tls13_only,
    tls11_only, expired, expiring, wrong_host) or is an ssl.SSLContext. `scripted=` starts a
    fault server instead: "hang", "reject421" or "close_in_handshake". Servers close at teardown.
    """
    started: list[RunningServer] = []

    def start(mode: str = "STARTTLS", tls: Any = "default", scripted: str | None = None,
              **options: Any) -> RunningServer:
        if scripted is not None:
            server = server_loop.scripted(scripted)  # type: ignore[arg-type]
        else:
            ctx = None if mode == "plain" else (
                server_context(ca, tls) if isinstance(tls, str) else tls)
            options.setdefault("users", {})
            server = server_loop.smtp(SmtpServerOptions(mode=mode, tls_context=ctx,  # type: ignore[arg-type]
                                                        **options))
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def secrets_dir(tmp_path: Path, ca: ThrowawayCA) -> Path:
    """A --secrets-dir with the test password and the throwaway CA as truststore."""
    root = tmp_path / "secrets"
    write_secret(root, NAMESPACE, PASSWORD_REF.name, PASSWORD_REF.key, PASSWORD + "\n")
    write_secret(root, NAMESPACE, TRUSTSTORE_REF.name, TRUSTSTORE_REF.key, ca.ca_pem)
    return root


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Every test starts and ends with logging unconfigured: a CLI test configures structlog
    with pytest's captured stderr, which is closed once that test is over."""
    reset_logging()
    yield
    reset_logging()


@pytest.fixture(autouse=True)
def _fresh_politeness() -> Iterator[None]:
    """Every test starts with the default politeness and no memory of servers: the stand-ins
    of every test listen on 127.0.0.1, one MTA to the politeness (issue 26 item 3), so a wrong
    password in one test must not spend the next test's failed-AUTH budget."""
    from reconciler.probe import limits

    limits.configure()
    yield
    limits.configure()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """structlog configured (JSON, debug) into a StringIO; reset afterwards."""
    stream = io.StringIO()
    configure_logging(fmt="json", level="debug", stream=stream)
    yield stream
    structlog.reset_defaults()
