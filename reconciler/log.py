"""Logging, configured once: structlog, readable on a terminal, JSON otherwise, secrets redacted."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

_lock = threading.Lock()
# Settings given to configure_logging, applied when structlog is first needed (see there).
_pending: tuple[str, str, Any] | None = None
_secrets: set[str] = set()
REDACTED = "[REDACTED]"
_SENSITIVE_KEYS = ("password", "secret", "token", "authorization", "private_key", "assertion")


def register_secret(value: str | bytes | None) -> None:
    """Remember a secret value so that no log line ever shows it."""
    if not value:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) >= 4:
        with _lock:
            _secrets.add(text)


def redact_text(text: str) -> str:
    """Replace every registered secret value in text."""
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, REDACTED)
    return text


class RedactSecrets:
    """structlog processor: masks registered secret values and values of sensitive keys."""

    def __init__(self, sensitive_keys: Iterable[str] = _SENSITIVE_KEYS) -> None:
        self.sensitive_keys = tuple(k.lower() for k in sensitive_keys)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            if (any(s in key.lower() for s in self.sensitive_keys) and value not in (None, "")
                    and not key.lower().endswith(("ref", "secretname", "secret_name"))):
                event_dict[key] = REDACTED
                continue
            if isinstance(value, str | bytes | Exception):
                event_dict[key] = redact_text(
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
        return event_dict


def configure_logging(fmt: str = "auto", level: str = "warning", stream: Any = None) -> None:
    """Configure structlog once for the process.

    structlog itself (about 0.03 s of imports) is loaded only once something logs: `validate`
    never does and must start fast for pre-commit hooks (bench/README.md, start-up).
    """
    global _pending
    _pending = (fmt, level, stream or sys.stderr)
    if "structlog" in sys.modules:
        _apply_pending()


def _apply_pending() -> None:
    global _pending
    if _pending is None:
        return
    fmt, level, stream = _pending
    _pending = None
    import structlog

    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
                     else structlog.processors.JSONRenderer(sort_keys=True))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RedactSecrets(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Forget the configuration (tests: a captured stream must not outlive its test)."""
    global _pending
    _pending = None
    if "structlog" in sys.modules:
        import structlog

        structlog.reset_defaults()


def get_logger(name: str = "reconciler") -> Any:
    """A structlog logger, configured by configure_logging (even when called before it)."""
    import structlog

    _apply_pending()
    return structlog.get_logger(name)
