"""Refuse inline credentials (DESIGN §3): no secret value is ever written in a manifest.

Two rules, both reported without echoing the value:
- a key named like a credential (password, secret, token, apiKey, privateKey...) holding a literal;
- a string anywhere shaped like a known key or token (PEM private key, JWT, AWS/Google/SendGrid/
  Slack/GitHub tokens, long high-entropy base64).
One exception is a warning, not an error: an AWS access key id in `smtp.identity.userId` (an
Amazon SES SMTP user name is one). It identifies rather than proves, but it is half of the
credential, so the warning points at `authentication.usernameSecretRef`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal

Severity = Literal["error", "warning"]

_CREDENTIAL_KEY = re.compile(
    r"passw(or)?d|passphrase|^pass\Z|secret|token|api_?key|private_?key|credential|bearer",
    re.IGNORECASE)
#: Keys that name or locate a credential rather than hold one (secretName, tokenUrl, ...).
_SAFE_SUFFIX = re.compile(r"(ref|name|url|uri|endpoint|format|formats|policy|type|file|path)\Z",
                          re.IGNORECASE)
#: Maps whose keys are free-form (labels, annotations): only value shapes are checked there.
_FREE_KEYS = ("/labels", "/annotations")

_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a private key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")),
    ("a JSON Web Token", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("a SendGrid API key", re.compile(r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a GitHub token",
     re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})")),
    ("a Google OAuth client secret", re.compile(r"\bGOCSPX-[A-Za-z0-9_-]{20,}")),
)
#: (pointer, shape) found in a manifest that is a warning rather than an error.
_TOLERATED = {("/spec/smtp/identity/userId", "an AWS access key id")}
#: A maximal run only (the look-behind): the same matches as without it, since a run shorter
#: than 32 fails from every start inside it, but without counting the rest of the run again from
#: each of those starts (3% of `validate`'s instructions, bench/README.md, issue 25).
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{32,}")
_BASE64_MIN = 32
#: A literal every match of a shape contains: one search rules most strings out (the ordered
#: list then names the shape). The alternation of the shapes themselves took 2 us for a
#: 30-character value (every word boundary tried against every branch); this takes 0.3 us.
_SHAPE_HINT = re.compile(r"-----BEGIN |eyJ|A(?:KIA|SIA|Iza)|SG\.|xox|g(?:h[pousr]_|ithub_pat_)"
                         r"|GOCSPX-")


def _entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _high_entropy(text: str) -> bool:
    """A long run of base64 characters mixing cases and digits, with high Shannon entropy.

    No run holds white space, so only a word of at least _BASE64_MIN characters can hold one:
    the pattern runs on those alone (it cost 20 ns a character of a document's strings, most of
    the rule-out's time: bench/README.md, issue 25).
    """
    for word in text.split():
        if len(word) < _BASE64_MIN:
            continue
        for run in _BASE64_RUN.findall(word):
            if (any(c.isupper() for c in run) and any(c.islower() for c in run)
                    and any(c.isdigit() for c in run) and _entropy(run) >= 4.3):
                return True
    return False


def credential_shape(text: str) -> str | None:
    """What a string looks like ("a private key", ...) when it looks like a credential."""
    if _SHAPE_HINT.search(text):
        for label, pattern in _SHAPES:
            if pattern.search(text):
                return label
    if len(text) >= _BASE64_MIN and _high_entropy(text):
        return "a high-entropy key or token"
    return None


def suggest_ref(pointer: str, key: str) -> str:
    """The …SecretRef field to use instead of an inline value at pointer/key."""
    k = key.lower()
    if "/signing" in pointer:
        return "keystorePasswordSecretRef" if "pass" in k else "keystoreSecretRef"
    if "/graph" in pointer:
        if "pass" in k:
            return "passwordSecretRef"
        if "user" in k:
            return "usernameSecretRef"
        return "clientCertificateSecretRef" if "cert" in k else "clientSecretSecretRef"
    if pointer.endswith("/identity") and "user" in k:
        return "authentication.usernameSecretRef"
    if "/oauth2" in pointer:
        if "secret" in k:
            return "clientSecretSecretRef"
        if "cert" in k:
            return "clientCertificateSecretRef"
        return "serviceAccountKeySecretRef"
    return "passwordSecretRef"


def _members(value: Any) -> Iterator[tuple[Any, Any]]:
    """(key, value) of a mapping's or a list's members (keys not yet strings); none for a scalar."""
    if isinstance(value, dict):
        return iter(value.items())
    if isinstance(value, list):
        return enumerate(value)
    return iter(())


_CONTAINERS = (dict, list)
_LITERALS = (str, int, float)


@lru_cache(maxsize=1024)
def _credential_key(key: str, parent_kind: str) -> bool:
    """Whether a key names a literal credential, in a plain, free-form or `advanced` map."""
    if parent_kind == "advanced":
        return bool(_CREDENTIAL_KEY.search(key.rsplit(".", 1)[-1]))
    return parent_kind == "plain" and bool(_CREDENTIAL_KEY.search(key)) and not _SAFE_SUFFIX.search(key)


def _parent_kind(pointer: str) -> str:
    if pointer.endswith(_FREE_KEYS):
        return "free"
    return "advanced" if pointer.endswith("/advanced") else "plain"


def escape(token: str) -> str:
    """Escape one JSON pointer token."""
    return token.replace("~", "~0").replace("/", "~1")


def scan_document(doc: Any) -> list[tuple[str, str, Severity]]:
    """(pointer, message, severity) for every inline credential in a document; messages never
    echo values."""
    found: list[tuple[str, str, Severity]] = []
    if _suspect(doc):
        _scan(doc, "", found)
    return found


def _child_kind(key: str) -> str:
    """_parent_kind of the pointer `.../key` (escaping leaves these three names alone)."""
    if key in ("labels", "annotations"):
        return "free"
    return "advanced" if key == "advanced" else "plain"


#: _credential_key's answers by parent kind, without lru_cache's call overhead (bounded).
_KEY_VERDICTS: dict[str, dict[str, bool]] = {"plain": {}, "free": {}, "advanced": {}}
_KEY_VERDICTS_MAX = 4096


def _suspect(doc: Any) -> bool:
    """Whether _scan could report anything: a literal under a credential-named key, or a string
    with a shape's hint or a high-entropy base64 run. Most documents have neither; this walk
    builds no pointers, and the strings are searched once, joined by newlines (no shape and no
    base64 run spans a newline), instead of one by one (bench/README.md, issue 25)."""
    strings: list[str] = []
    stack: list[tuple[Any, str]] = [(doc, "plain")]
    while stack:
        node, kind = stack.pop()
        if type(node) is list:  # keys are indexes: never a credential's name
            members: Any = enumerate(node)
            verdicts = None
        elif type(node) is dict:
            members, verdicts = node.items(), _KEY_VERDICTS[kind]
        else:
            return True  # a subclass: the full scan decides
        for member, value in members:
            kind_of_value = type(value)
            if kind_of_value is dict or kind_of_value is list:
                stack.append((value, _child_kind(member) if verdicts is not None else "plain"))
                continue
            if kind_of_value is str:
                if not value:
                    continue
                strings.append(value)
            elif kind_of_value is not int and kind_of_value is not float:
                if kind_of_value is bool or kind_of_value is type(None):
                    continue
                if isinstance(value, _CONTAINERS + _LITERALS):
                    return True  # a subclass: the full scan decides
                continue
            if verdicts is None:
                continue
            verdict = verdicts.get(member)
            if verdict is None:
                key = member if type(member) is str else str(member)
                verdict = _credential_key(key, kind)
                if len(verdicts) < _KEY_VERDICTS_MAX:
                    verdicts[member] = verdict
            if verdict:
                return True
    joined = "\n".join(strings)
    return bool(_SHAPE_HINT.search(joined)) or _high_entropy(joined)


def _scan(node: Any, parent: str, found: list[tuple[str, str, Severity]]) -> None:
    """Check every member of node, depth first in document order, appending to found."""
    kind = _parent_kind(parent)
    for member, value in _members(node):
        key = member if type(member) is str else str(member)
        if isinstance(value, _CONTAINERS):
            _scan(value, f"{parent}/{escape(key)}", found)
            continue
        if isinstance(value, bool) or not isinstance(value, _LITERALS) or value == "":
            continue
        if _credential_key(key, kind):
            pointer = f"{parent}/{escape(key)}"
            ref = suggest_ref(parent, key)
            found.append((pointer, f"{_dotted(pointer)} looks like an inline credential; put it in "
                                   f"a Secret and reference it with {ref}", "error"))
            continue
        shape = credential_shape(value) if isinstance(value, str) else None
        if shape:
            pointer = f"{parent}/{escape(key)}"
            if (pointer, shape) in _TOLERATED:
                found.append((pointer, f"{_dotted(pointer)} looks like {shape} (an Amazon SES SMTP "
                                       "user name is one): it is half of a credential, so keep it "
                                       "out of git: put it in a Secret and reference it with "
                                       "authentication.usernameSecretRef", "warning"))
                continue
            ref = suggest_ref(parent, key)
            found.append((pointer, f"{_dotted(pointer)} looks like an inline credential ({shape}); "
                                   f"put it in a Secret and reference it with {ref}", "error"))


def _dotted(pointer: str) -> str:
    return pointer.lstrip("/").replace("/", ".")


def committed_secret(doc: dict[str, Any]) -> str | None:
    """The warning for a plain v1 Secret carrying data in a manifest folder, else None.

    A SOPS-encrypted Secret (a top-level `sops:` block) holds ciphertext only, so it passes.
    The message names no key and no value.
    """
    if doc.get("kind") != "Secret" or "sops" in doc:
        return None
    if not any(isinstance(doc.get(k), dict) and doc.get(k) for k in ("data", "stringData")):
        return None
    return ("a Secret with data is committed here: anyone who can read the repository can read "
            "its values; encrypt it with SOPS, or commit a SealedSecret or an ExternalSecret "
            "instead (skipped: not an EmailAccount)")
