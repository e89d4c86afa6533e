"""reconciler.log: redaction of every encoded form of a secret, and control characters."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest

from reconciler import log
from reconciler.log import (
    REDACTED,
    clean_text,
    configure_logging,
    get_logger,
    redact_text,
    register_secret,
    safe_text,
    secret_forms,
)
from tests.recording_servers import ESCAPES, echo_forms

SECRET = "Marker-Pa55:w/rd%&+é"
USER = "app@example.test"


def _plain_blob(user: str, secret: str) -> str:
    return base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


@pytest.mark.parametrize("shown", [
    SECRET,
    SECRET[:-1],  # an echo that drops the last character
    SECRET[1:],
    urllib.parse.quote(SECRET, safe=""),
    urllib.parse.quote(SECRET),
    urllib.parse.quote_plus(SECRET),
    base64.b64encode(SECRET.encode()).decode(),  # AUTH LOGIN
    base64.b64encode(SECRET.encode()).decode().rstrip("="),
    base64.urlsafe_b64encode(SECRET.encode()).decode(),
    _plain_blob(USER, SECRET),  # AUTH PLAIN, whatever the user name's length
    _plain_blob("a", SECRET),
    _plain_blob("ab", SECRET),
    _plain_blob("", SECRET),
    base64.b64encode(json.dumps({"password": SECRET}).encode()).decode(),
], ids=lambda s: s[:12])
def test_every_encoded_form_is_redacted(shown: str) -> None:
    register_secret(SECRET)
    text = redact_text(f"535 5.7.8 rejected {shown} (try again)")
    assert REDACTED in text
    for form in echo_forms(SECRET, USER):
        assert form not in text


def test_redaction_leaves_ordinary_text_alone() -> None:
    register_secret("Zq9-unrelated-Secret")
    assert redact_text("250 2.0.0 OK queued as ABC123") == "250 2.0.0 OK queued as ABC123"


@pytest.mark.parametrize(("text", "expected"), [
    # two secrets overlapping in the text: neither leaves a character behind
    ("x Ov3rlapA-Ov3rlapB-tail y", f"x {REDACTED} y"),
    ("x Ov3rlapA-Ov3rlap y", f"x {REDACTED} y"),
    # one inside the other, and two side by side
    ("[Ov3rlapB-tail]", f"[{REDACTED}]"),
    ("Ov3rlapB-tailOv3rlapB-tail", REDACTED),
    ("no secret here", "no secret here"),
    ("", ""),
])
def test_overlapping_secrets_are_redacted_whole(text: str, expected: str) -> None:
    register_secret("Ov3rlapA-Ov3rlap")
    register_secret("Ov3rlapB-tail")
    assert redact_text(text) == expected


def test_a_text_redacted_before_a_secret_is_registered_is_redacted_after() -> None:
    """redact_text keeps its answers for short texts: registering a secret forgets them."""
    register_secret("Cache-Earlier-Secret")  # the registry is not empty: answers are kept
    short = "454 4.7.0 try Later-Registered-9x later"
    long = short + " " + "x" * 300  # long texts are scanned each time
    for _ in range(2):  # the second answer comes from the cache
        assert redact_text(short) == short
        assert redact_text(long) == long
    register_secret("Later-Registered-9x")
    assert redact_text(short) == f"454 4.7.0 try {REDACTED} later"
    assert redact_text(long).startswith(f"454 4.7.0 try {REDACTED} later ")
    register_secret("Later-Registered-9x")  # known already: the answers stay
    assert redact_text(short) == f"454 4.7.0 try {REDACTED} later"



@pytest.mark.parametrize("limit", [None, 1024, 20])
def test_safe_text_redacts_a_secret_registered_after_its_text_was_made_safe(
        limit: int | None) -> None:
    """safe_text keeps its answers for short texts (a status repeats the same ones for every
    account): registering a secret forgets them, as it does redact_text's."""
    register_secret("Cache-Earlier-Secret-2")  # the registry is not empty: answers are kept
    secret = f"Try-Safe-Later-{limit}"  # registered once per process: one per case
    text = f"421 4.7.0 {secret} \x1b[2J later"
    before = clean_text(text, limit)
    for _ in range(2):  # the second answer comes from the cache
        assert safe_text(text, limit) == before
    register_secret(secret)
    assert safe_text(text, limit) == clean_text(f"421 4.7.0 {REDACTED} \x1b[2J later", limit)
    assert "Try-Safe" not in safe_text(text, limit)

# Many secrets that share their first characters (one bucket of the index: the bench's
# `pw-bench-N` passwords), of many lengths, and one whose forms are long (a private key's).
SHARED = [f"Pw-shared-{i}" for i in range(3000)] + [f"Pw-shared-{'k' * n}" for n in range(1, 40)]
PEM = ("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSh4redacted+"
       "Key/Body==\n-----END PRIVATE KEY-----\n")


@pytest.fixture(scope="module")
def shared() -> list[str]:
    for value in [*SHARED, PEM]:
        register_secret(value)
    return SHARED


@pytest.mark.parametrize("value", [SHARED[0], SHARED[9], SHARED[10], SHARED[999], SHARED[2999],
                                   SHARED[3000], SHARED[-1], PEM], ids=lambda s: s[-12:])
@pytest.mark.parametrize("encode", [
    lambda s: s,
    lambda s: s[:-1],
    lambda s: s[1:],
    lambda s: urllib.parse.quote(s, safe=""),
    lambda s: urllib.parse.quote_plus(s),
    lambda s: base64.b64encode(s.encode()).decode(),  # AUTH LOGIN
    lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
], ids=["raw", "last-cut", "first-cut", "quote", "quote_plus", "base64", "urlsafe"])
def test_each_of_many_secrets_sharing_a_prefix_is_redacted_whole(
        shared: list[str], value: str, encode: object) -> None:
    shown = encode(value)  # type: ignore[operator]
    assert redact_text(f"535 5.7.8 rejected {shown} (try again)") == (
        f"535 5.7.8 rejected {REDACTED} (try again)")


@pytest.mark.parametrize("value", [SHARED[5], SHARED[1234], SHARED[-1], PEM], ids=lambda s: s[-8:])
@pytest.mark.parametrize("user", ["", "a", "ab", USER])
def test_each_of_many_secrets_sharing_a_prefix_is_redacted_in_an_auth_plain_blob(
        shared: list[str], value: str, user: str) -> None:
    text = redact_text(f"334 {_plain_blob(user, value)}")
    assert REDACTED in text
    for form in echo_forms(value, user):
        assert form not in text


@pytest.mark.parametrize("text", [
    "Pw-shared with others",  # the shared prefix, no registered form
    "x Pw-sharedX-12 y",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "----- ----- -----",
])
def test_text_near_many_secrets_sharing_a_prefix_is_left_alone(shared: list[str], text: str) -> None:
    assert redact_text(text) == text


def test_the_index_holds_the_lengths_of_a_prefix_not_every_secret(shared: list[str]) -> None:
    """One bucket of 3,000 secrets costs a lookup per distinct length, not per secret, at each
    position of a text where the prefix occurs; and the registry keeps no text of a form."""
    assert len(log._lengths["Pw-s"]) <= 50  # the forms' distinct lengths, not 3,039 secrets
    assert all(isinstance(h, int) for h in log._hashes)


@pytest.mark.parametrize(("first", "then"), [
    ("Xfirst-Secret-Value", "first-Secret-Value"),  # the second is the first minus a character
    ("Yfirst-Secret-Value", "Yfirst-Secret-Valu"),
    ("Zsame-Secret-Value", "Zsame-Secret-Value"),  # registered again: nothing to add
])
def test_a_value_already_seen_as_a_form_gets_its_own_forms(first: str, then: str) -> None:
    register_secret(first)
    register_secret(then)
    for encoded in (base64.b64encode(then.encode()).decode(), urllib.parse.quote_plus(then),
                    _plain_blob(USER, then)):
        assert REDACTED in redact_text(f"x {encoded} y")
        assert base64.b64encode(then.encode()).decode()[:-4] not in redact_text(f"x {encoded} y")


@pytest.mark.parametrize("value", ["Zq9-unrelated-Secret7", SECRET, "a b/c+d~e_f.g", "pw-bench-12",
                                   "~~~~____", "пароль-секрет", PEM])
def test_secret_forms_has_every_percent_and_form_encoding(value: str) -> None:
    forms = secret_forms(value)
    for t in (value, value[:-1], value[1:]) if len(value) > 8 else (value,):
        for encoded in (urllib.parse.quote(t, safe=""), urllib.parse.quote(t),
                        urllib.parse.quote_plus(t, safe=""), urllib.parse.quote_plus(t)):
            assert encoded in forms


def test_control_characters_are_replaced_and_text_bounded() -> None:
    text = clean_text(f"hello {ESCAPES} world\r\n", 20)
    assert not any(c in text for c in "\x1b\x07\x00\x9b\r")
    assert len(text) == 20 and text.endswith("…")
    assert clean_text("two\nlines\tok") == "two\nlines\tok"
    assert "\n" not in clean_text("two\nlines", single_line=True)
    assert "\u202e" not in safe_text("bidi \u202e override")


def test_log_lines_carry_no_secret_form_and_no_escape(log_stream: io.StringIO) -> None:
    register_secret(SECRET)
    configure_logging("console", "info", log_stream)
    get_logger("t").warning("server said", reply=f"{ESCAPES} {_plain_blob(USER, SECRET)}")
    out = log_stream.getvalue()
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out
    for form in echo_forms(SECRET, USER):
        assert form not in out


# --------------------------------------------------------------------------- configuration

REPO = Path(__file__).resolve().parents[1]


def _fresh(script: str) -> subprocess.CompletedProcess[str]:
    """Runs `script` in a fresh interpreter (structlog not yet imported)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
                          check=False)


def test_a_call_below_the_level_returns_without_structlog() -> None:
    done = _fresh("""
        import io, sys
        from reconciler.log import configure_logging, get_logger
        stream = io.StringIO()
        configure_logging("json", "warning", stream)
        log = get_logger("t")
        log.debug("d"); log.info("quiet", n=1)
        assert "structlog" not in sys.modules, "a dropped line imported structlog"
        log.warning("loud", n=2)
        assert "structlog" in sys.modules
        print(stream.getvalue(), end="")
    """)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["event"], e["level"], e["n"]) for e in lines] == [("loud", "warning", 2)]


def test_the_level_is_the_one_configured_last(capsys: pytest.CaptureFixture[str]) -> None:
    """The gate reads the level at each call: a logger taken before configure_logging, or
    before a change of level, follows the new one (no level remembered from an earlier call)."""
    logger = get_logger("t")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "warning", first)
    logger.info("dropped")
    logger.error("kept")
    configure_logging("json", "debug", second)
    logger.debug("now shown")
    logger.info("this too")
    assert [json.loads(x)["event"] for x in first.getvalue().splitlines()] == ["kept"]
    assert [json.loads(x)["event"] for x in second.getvalue().splitlines()] == [
        "now shown", "this too"]
    log.reset_logging()  # unconfigured: every call goes to structlog's defaults again
    logger.debug("unconfigured")
    assert "unconfigured" in capsys.readouterr().out


def test_a_line_logged_while_another_thread_configures_is_configured() -> None:
    """The first two threads to log: the second waits for the first to finish configuring.

    The old code marked the settings applied before structlog.configure ran, so a line logged
    in between went through structlog's defaults: printed to stdout (into `probe -o json`),
    every level, without RedactSecrets. Here the first thread is held inside configure; the
    second logs meanwhile. The new code holds the second until the first is done (the second
    thread's join below then times out, which is expected); the old code let it print at once.
    """
    done = _fresh("""
        import io, sys, threading
        from reconciler.log import configure_logging, get_logger, register_secret
        stream = io.StringIO()
        configure_logging("json", "info", stream)  # pending: structlog is not imported yet
        import structlog
        real, entered, release = structlog.configure, threading.Event(), threading.Event()
        def held(**kw):
            entered.set()
            release.wait(30)
            real(**kw)
        structlog.configure = held
        register_secret("Pa55-w0rd-of-the-test")
        first = threading.Thread(target=lambda: get_logger("a").info("first"))
        first.start()
        assert entered.wait(30)
        second = threading.Thread(
            target=lambda: get_logger("b").warning("second", reply="Pa55-w0rd-of-the-test"))
        second.start()
        second.join(1.0)  # the old code printed (to stdout) within this; the new one waits
        release.set()
        first.join(30); second.join(30)
        sys.stdout.flush()
        print("STREAM", stream.getvalue(), end="")
    """)
    assert done.returncode == 0, done.stderr
    before, _, logged = done.stdout.partition("STREAM ")
    assert before == ""  # nothing on stdout: no line went through structlog's defaults
    events = {e["event"]: e for e in map(json.loads, logged.splitlines())}
    assert sorted(events) == ["first", "second"]
    assert events["second"]["reply"] == "[REDACTED]"
    assert "Pa55-w0rd" not in done.stdout + done.stderr
