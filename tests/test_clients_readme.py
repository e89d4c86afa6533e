"""README "Use it from your application" shows exactly the programs the client tests run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.runners import SNIPPETS

README = Path(__file__).resolve().parents[1] / "README.md"
#: Test plumbing, not snippets: the batch runner, and Spring Boot's binding written out by hand.
NOT_SHOWN = {"Runner.java", "SpringBinding.java", "send-smtplib.py", "send-swaks.sh"}


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Use it from your application\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


@pytest.mark.parametrize("snippet", sorted(p.name for p in SNIPPETS.iterdir()
                                           if p.name not in NOT_SHOWN))
def test_readme_shows_the_tested_snippet_verbatim(snippet: str) -> None:
    body = (SNIPPETS / snippet).read_text(encoding="utf-8").rstrip("\n")
    assert f"\n{body}\n```" in _section(), f"README differs from tests/clients/snippets/{snippet}"


def test_readme_names_every_ecosystem_and_how_the_ca_is_given() -> None:
    section = _section()
    for words in ("Django", "Spring Boot", "JavaMail", "nodemailer", "Symfony", "Ruby", "msmtp",
                  "truststore.jks", "NODE_EXTRA_CA_CERTS", "openssl.cafile", "SSL_CERT_FILE",
                  "spring.mail.ssl.bundle", "FormatCannotAuthenticate", "PasswordNotASCII"):
        assert words in section, words
    for name in NOT_SHOWN:
        assert (SNIPPETS / name).exists(), f"{name} is named in the README"
