"""Logging, configured once: structlog, readable on a terminal, JSON otherwise, secrets redacted."""

from __future__ import annotations

import base64
import logging
import re
import string
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import quote, quote_plus

_lock = threading.Lock()
# Settings given to configure_logging, applied when structlog is first needed (see there),
# under _config_lock; and the level below which a logger's call is dropped without structlog
# (None: not configured, every call goes to structlog).
_config_lock = threading.Lock()
_pending: tuple[str, str, Any] | None = None
_threshold: int | None = None
#: The redaction registry. A registered form (every encoded form of every secret) is kept as
#: its hash, not its text: an int of 40 bytes whatever the form's length (a private key's forms
#: are a few KB each), and no extra copy of the secret in memory. A hash collision could only
#: redact more, never less. _lengths maps the first _MIN_REDACTED characters of the forms to
#: the lengths of the forms that start with them, longest first (tuples shared between
#: prefixes). redact_text looks up each position of the text in _lengths, then each such
#: length in _hashes: its cost depends on the text and the lengths of the forms, not on how
#: many secrets are registered, and registering one is a few dictionary and set operations
#: (issue 25; 100,000 accounts, issue 26 item 4). Tuples are replaced, never changed, so a
#: reader holding one while another thread registers sees a consistent (if older) one.
_hashes: set[int] = set()
_lengths: dict[str, tuple[int, ...]] = {}
_shared_lengths: dict[tuple[int, ...], tuple[int, ...]] = {}
#: redact_text's answers for short texts while no secret is added (a status repeats the same
#: texts for every account: scanning them was ~45 us a status with 1,000 secrets registered).
#: register_secret empties it under _lock; an answer computed while a secret was being added
#: is not kept (redact_text compares the registry's size before and after, under _lock).
_redacted: dict[str, str] = {}
#: safe_text's answers for short texts (text, limit), kept and emptied as _redacted is: a status
#: is 16 short texts, most of them the same for every account of an endpoint (1 us each through
#: redact_text and clean_text; bench/README.md, benchmark 7).
_safe: dict[tuple[str, int | None], str] = {}
_REDACTED_CACHE_TEXT = 160  # longer texts (log lines, server replies) are scanned each time
_REDACTED_CACHE_SIZE = 4096
REDACTED = "[REDACTED]"
_SENSITIVE_KEYS = ("password", "secret", "token", "authorization", "private_key", "assertion")
#: Values shorter than this are still redacted but not reliably (a 4-character password is also
#: a common word); the probe warns about them (reasons.SHORT_SECRET).
RELIABLE_SECRET_LENGTH = 8
_MIN_REDACTED = 4
_MIN_ENCODED = 6  # the shortest encoded fragment worth redacting
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "_.-~")  # quote() keeps these
# Control characters a terminal acts on (C0 but tab and newline, DEL, C1: ESC, OSC, BEL, NUL,
# CSI...) and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_BREAK = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
REPLACEMENT = "\ufffd"


def _base64_fragments(raw: bytes) -> set[str]:
    """What the value looks like inside any base64 text, whatever comes before or after it.

    Base64 encodes 3 bytes as 4 characters, so a value inside a larger blob (the AUTH PLAIN
    `\\0user\\0password` one, a JSON document, ...) starts at one of three alignments. For each,
    the characters that depend only on the value's own bytes are the same in every blob: those
    are registered, in the standard and the URL-safe alphabet.
    """
    out: set[str] = set()
    for offset in range(3):
        total = offset + len(raw)
        whole = total - total % 3  # drop the group completed by what follows
        if whole <= offset:
            continue
        encoded = base64.b64encode(b"\0" * offset + raw[: whole - offset]).decode()
        core = encoded[(0, 2, 3)[offset]:]  # drop the characters mixed with what precedes
        if len(core) >= _MIN_ENCODED:
            out.add(core)
            out.add(core.replace("+", "-").replace("/", "_"))
    full = base64.b64encode(raw).decode()  # the AUTH LOGIN blob: the value alone, padded
    out.update({full, full.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")})
    return out


def secret_forms(text: str) -> set[str]:
    """Every form of a secret value that redaction looks for: as is, base64 (alone or inside a
    blob such as AUTH PLAIN), percent- and form-encoded, and with one character cut off."""
    forms = {text}
    if len(text) > RELIABLE_SECRET_LENGTH:  # an echo that drops the first or last character
        forms.update({text[:-1], text[1:]})
    for t in list(forms):
        if not _UNRESERVED.issuperset(t):  # else every percent- and form-encoding is t itself
            forms.update({quote(t, safe=""), quote(t), quote_plus(t)})
    raw = text.encode("utf-8")
    forms.update(_base64_fragments(raw))
    return {f for f in forms if len(f) >= _MIN_REDACTED}


def register_secret(value: str | bytes | None) -> None:
    """Remember a secret value, in all its encoded forms, so that no log line, status or event
    ever shows it."""
    if not value:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) < _MIN_REDACTED:
        return
    # The value itself, marked apart from the forms (a value may be a form of another secret
    # without its own forms being in): a probe registers its password again each time, and
    # finding it known is this one lookup rather than its forms computed again.
    registered = hash((text,))
    if registered in _hashes:
        return
    forms = {form: hash(form) for form in secret_forms(text)}
    with _lock:
        new = [(form, h) for form, h in forms.items() if h not in _hashes]
        if new:
            _redacted.clear()
            _safe.clear()
            for form, h in new:
                prefix, size = form[:_MIN_REDACTED], len(form)
                lengths = _lengths.get(prefix, ())
                if size not in lengths:
                    grown = tuple(sorted((*lengths, size), reverse=True))
                    _lengths[prefix] = _shared_lengths.setdefault(grown, grown)
                _hashes.add(h)  # after the index: a size that counts the form finds it there
            _redacted.clear()  # nothing found before this registration is kept
            _safe.clear()
        _hashes.add(registered)  # after its forms


def is_short_secret(value: str | bytes) -> bool:
    """True for a non-empty value too short to be redacted reliably (a warning, not an error)."""
    return 0 < len(value) < RELIABLE_SECRET_LENGTH


def clean_text(text: str, limit: int | None = None, *, single_line: bool = False) -> str:
    """Server text made safe to store and print: control characters (ESC, OSC, BEL, NUL...)
    replaced, and at most `limit` characters."""
    if not (text.isascii() and text.isprintable()):  # printable ASCII: nothing to replace
        text = (_CONTROL_OR_BREAK if single_line else _CONTROL).sub(REPLACEMENT, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


def safe_text(text: str, limit: int | None = None) -> str:
    """Redacted and cleaned: what may go into status, an event or a terminal."""
    if len(text) > _REDACTED_CACHE_TEXT:
        return clean_text(redact_text(text), limit)
    key = (text, limit)
    cached = _safe.get(key)
    if cached is not None:
        return cached
    registered = len(_hashes)  # as in redact_text: an answer made while a secret was added
    out = clean_text(redact_text(text), limit)  # is not kept
    with _lock:
        if len(_hashes) == registered and len(_safe) < _REDACTED_CACHE_SIZE:
            _safe[key] = out
    return out


def redact_text(text: str) -> str:
    """Replace every registered secret value in text.

    Every occurrence of every registered form is found (one dictionary lookup per position of
    the text, whatever the number of registered secrets), and each run of overlapping or
    adjacent occurrences becomes one REDACTED: no character of any form survives."""
    index = _lengths
    if not index or len(text) < _MIN_REDACTED:
        return text
    if len(text) > _REDACTED_CACHE_TEXT:
        return _redact(text, index)
    cached = _redacted.get(text)
    if cached is not None:
        return cached
    registered = len(_hashes)  # the registry only grows: its size says whether it changed
    out = _redact(text, index)
    with _lock:
        if len(_hashes) == registered and len(_redacted) < _REDACTED_CACHE_SIZE:
            _redacted[text] = out
    return out


def _redact(text: str, index: dict[str, tuple[int, ...]]) -> str:
    width, size, registered = _MIN_REDACTED, len(text), _hashes
    hits = [i for i in range(size - width + 1) if text[i:i + width] in index]
    if not hits:
        return text
    spans: list[tuple[int, int]] = []
    for i in hits:
        for length in index.get(text[i:i + width], ()):  # longest first: it covers the others
            end = i + length
            if end <= size and hash(text[i:end]) in registered:
                if spans and i <= spans[-1][1]:
                    if end > spans[-1][1]:
                        spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((i, end))
                break
    if not spans:
        return text
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], REDACTED]
        pos = end
    out.append(text[pos:])
    return "".join(out)


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
                event_dict[key] = clean_text(redact_text(
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)))
        return event_dict


def configure_logging(fmt: str = "auto", level: str = "warning", stream: Any = None) -> None:
    """Configure structlog once for the process.

    structlog itself (about 0.03 s of imports) is loaded only once something logs at or above
    `level`: `validate` never logs, and a `probe` with nothing to warn about logs only below it
    (bench/README.md, start-up and benchmark 7).
    """
    global _pending, _threshold
    with _config_lock:
        _pending = (fmt, level, stream or sys.stderr)
        _threshold = _level_number(level)
    if "structlog" in sys.modules:
        _apply_pending()


def _level_number(level: str) -> int:
    """logging's number of a level name ('warning'); WARNING for a name it does not know."""
    return logging.getLevelNamesMapping().get(level.upper(), logging.WARNING)


def _apply_pending() -> None:
    """Configure structlog with the pending settings, once, whichever thread logs first.

    `_pending` is cleared only once structlog is configured, under the lock: a thread that
    logged while another was still configuring used structlog's defaults, which print every
    level to stdout without RedactSecrets (a `probe -o json` with an OAuth account got an info
    line in its JSON when a token request's thread and the event loop logged first together).
    """
    global _pending
    if _pending is None:
        return
    with _config_lock:
        if _pending is None:
            return
        fmt, level, stream = _pending
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
            wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
            logger_factory=structlog.PrintLoggerFactory(file=stream),
            cache_logger_on_first_use=False,
        )
        _pending = None


def reset_logging() -> None:
    """Forget the configuration (tests: a captured stream must not outlive its test)."""
    global _pending, _threshold
    with _config_lock:
        _pending = _threshold = None
        if "structlog" in sys.modules:
            import structlog

            structlog.reset_defaults()


def get_logger(name: str = "reconciler") -> Any:
    """A structlog logger, configured by configure_logging (even when called before it).

    structlog is imported at the logger's first use at or above the configured level, not
    here: modules take their logger at import, and `validate` imports some of them without
    ever logging (bench/README.md, start-up).
    """
    return _LazyLogger(name)


def _below(level: int, method: str) -> Any:
    """_LazyLogger's `method`: None at once below configure_logging's level, else structlog's."""

    def log(self: _LazyLogger, *args: Any, **kw: Any) -> Any:
        if _threshold is not None and _threshold > level:
            return None
        return getattr(self._structlog(), method)(*args, **kw)

    log.__name__ = log.__qualname__ = method
    return log


class _LazyLogger:
    """structlog's logger for `name`, looked up when first used.

    A call below configure_logging's level returns at once, as structlog's filtering logger
    would, without structlog: through structlog, each call bound a logger afresh
    (`cache_logger_on_first_use=False`), 2.8 us for a line that was then dropped, once an
    account (`probed`), and a run with nothing to warn about imported structlog for nothing.
    Before configure_logging (`_threshold` None) every call goes to structlog's defaults.
    """

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def _structlog(self) -> Any:
        logger = self._logger
        if logger is None:
            import structlog

            _apply_pending()
            logger = self._logger = structlog.get_logger(self._name)
        return logger

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._structlog(), attr)

    debug = _below(logging.DEBUG, "debug")
    info = _below(logging.INFO, "info")
    warning = _below(logging.WARNING, "warning")
    error = _below(logging.ERROR, "error")
    exception = _below(logging.ERROR, "exception")
    critical = _below(logging.CRITICAL, "critical")
