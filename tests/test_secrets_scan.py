"""credential_shape's quick rule-out (a literal every shape contains) names the same shapes as
searching for any of the shapes themselves did (bench/README.md, 7)."""

from __future__ import annotations

import random
import re

import pytest

from reconciler.manifest import secrets_scan
from reconciler.manifest.secrets_scan import credential_shape

SAMPLES = [
    ("a private key", "-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
    ("a private key", "x -----BEGIN PRIVATE KEY----- y"),
    ("a JSON Web Token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc"),
    ("an AWS access key id", "AKIAIOSFODNN7EXAMPLE"),
    ("an AWS access key id", "id ASIAIOSFODNN7EXAMPL2 here"),
    ("a Google API key", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
    ("a SendGrid API key", "SG.abcdefghijklmnop.qrstuvwxyzABCDEFGH"),
    ("a Slack token", "xoxb-1234567890-abcdef"),
    ("a Slack token", "token xoxp-1234567890"),
    ("a GitHub token", "ghp_" + "a1B2" * 9),
    ("a GitHub token", "gho_" + "Z9y8" * 9),
    ("a GitHub token", "github_pat_" + "A" * 22),
    ("a Google OAuth client secret", "GOCSPX-abcdefghijklmnopqrst"),
    ("a high-entropy key or token", "Zx9Qm2Lp7Rt4Vw1Ks8Hd3Jf6Gb5Nc0Ye"),
]
#: The rule-out it replaces: the alternation of every shape.
_ANY = re.compile("|".join(f"(?:{p.pattern})" for _, p in secrets_scan._SHAPES))


def _reference(text: str) -> str | None:
    if _ANY.search(text):
        for label, pattern in secrets_scan._SHAPES:
            if pattern.search(text):
                return label
    if len(text) >= secrets_scan._BASE64_MIN and secrets_scan._high_entropy(text):
        return "a high-entropy key or token"
    return None


@pytest.mark.parametrize(("label", "text"), SAMPLES)
def test_each_shape_is_named(label: str, text: str) -> None:
    assert credential_shape(text) == label
    assert credential_shape(f"prefix {text} suffix") == _reference(f"prefix {text} suffix")


@pytest.mark.parametrize("text", ["127.0.0.1", "acct-00001@example.com", "STARTTLS", "",
                                  "email.reconciler.io/v1alpha1", "gh", "eyJ", "AKIA"])
def test_plain_values_are_not_credentials(text: str) -> None:
    assert credential_shape(text) is None


def test_same_verdict_as_the_alternation_on_mixed_strings() -> None:
    """Strings spliced from the samples' pieces and random characters: the same shape named."""
    rng = random.Random(25)
    pieces = [t for _, t in SAMPLES] + ["-", ".", "_", " ", "\n", "@", "/", "ab", "XY", "09"]
    alphabet = "abcxyzABCXYZ0189-_./ @\n"
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 4)):
            piece = rng.choice(pieces)
            start = rng.randint(0, len(piece))
            parts.append(piece[start:start + rng.randint(0, 40)])
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3))))
        text = "".join(parts)
        assert credential_shape(text) == _reference(text), text


def _full_scan(doc: object) -> list[tuple[str, str, str]]:
    """scan_document without its rule-out (_suspect): every member checked one by one."""
    found: list[tuple[str, str, secrets_scan.Severity]] = []
    secrets_scan._scan(doc, "", found)
    return list(found)


_KEYS = ["password", "passwordSecretRef", "secretName", "apiKey", "token", "tokenUrl", "labels",
         "annotations", "advanced", "mail.smtp.password", "userId", "name", "pass", "x/labels",
         "identity", "signing", "oauth2", "clientSecret", "privateKey", "description", 7]
_VALUES = ["", "x", "smtp.example.com", "Zx9Qm2Lp7Rt4Vw1Ks8Hd3Jf6Gb5Nc0Ye", "AKIAIOSFODNN7EXAMPLE",
           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc", "a" * 40, "-----BEGIN PRIVATE KEY-----",
           "ghp_" + "a1B2" * 9, 0, 587, 1.5, True, None, "alerts-00000-sender"]


def _random_doc(rng: random.Random, depth: int = 0) -> object:
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(_VALUES)
    if rng.random() < 0.25:
        return [_random_doc(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(_KEYS): _random_doc(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_the_rule_out_never_hides_a_finding() -> None:
    """scan_document (which skips documents _suspect clears) reports what the full scan does,
    on random documents mixing credential-named keys, shapes, free-form and `advanced` maps."""
    rng = random.Random(2025)
    cleared = flagged = 0
    for _ in range(4000):
        doc = _random_doc(rng)
        full = _full_scan(doc)
        assert secrets_scan.scan_document(doc) == full, doc
        if not secrets_scan._suspect(doc):
            cleared += 1
            assert full == []
        flagged += bool(full)
    assert cleared > 400 and flagged > 400  # both branches were exercised


def test_the_rule_out_clears_the_usual_manifest() -> None:
    """A manifest with secret references, names and hosts only is cleared by _suspect."""
    import yaml

    from tests.test_validate_fastpath import ROOT

    docs = [d for p in sorted((ROOT / "accounts").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    cleared = [d for d in docs if not secrets_scan._suspect(d)]
    assert len(cleared) > len(docs) // 2
    assert all(_full_scan(d) == [] for d in cleared)


#: _BASE64_RUN before its look-behind: counted the rest of a short run again from each start.
_BASE64_RUN_UNANCHORED = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


def test_base64_runs_as_without_the_look_behind() -> None:
    """The look-behind finds the same runs: random texts of base64 characters and separators,
    with runs around 32 characters long, and every sample."""
    rng = random.Random(32)
    alphabet = ["aB3+/_=-", " .\n@:é"]
    texts = [t for _, t in SAMPLES]
    for _ in range(5000):
        texts.append("".join(
            "".join(rng.choice(alphabet[i % 2]) for _ in range(rng.choice((0, 1, 5, 31, 32, 33, 70))))
            for i in range(rng.randint(1, 7))))
    for text in texts:
        assert (secrets_scan._BASE64_RUN.findall(text)
                == _BASE64_RUN_UNANCHORED.findall(text)), text


def _high_entropy_before(text: str) -> bool:
    """secrets_scan._high_entropy as it was: the pattern over the whole text."""
    for run in _BASE64_RUN_UNANCHORED.findall(text):
        if (any(c.isupper() for c in run) and any(c.islower() for c in run)
                and any(c.isdigit() for c in run) and secrets_scan._entropy(run) >= 4.3):
            return True
    return False


def test_high_entropy_on_words_as_on_the_whole_text() -> None:
    """Looking for runs in the words of 32 characters or more finds what the whole text had:
    random texts of high-entropy base64 pieces split by every kind of white space."""
    rng = random.Random(43)
    key = "Zx9Qm2Lp7Rt4Vw1Ks8Hd3Jf6Gb5Nc0Ye+/_=-aB"
    spaces = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u2028",
              "\u3000", ".", "@", ":"]
    verdicts = set()
    for _ in range(4000):
        parts = []
        for _ in range(rng.randint(1, 5)):
            start = rng.randint(0, len(key))
            parts.append(key[start:start + rng.choice((5, 20, 31, 32, 33, 40))])
            parts.append(rng.choice(spaces) * rng.randint(0, 2))
        text = "".join(parts)
        assert secrets_scan._high_entropy(text) == _high_entropy_before(text), repr(text)
        verdicts.add(_high_entropy_before(text))
    assert verdicts == {True, False}
