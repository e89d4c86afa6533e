"""README "Manifests by authentication method": every manifest there validates without an error
or a warning, and every method has one (issue 22 item 4)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.manifest.validate import validate_document

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Manifests by authentication method\n"
METHODS = {"password", "app password", "Gmail JWT bearer", "Office 365 XOAUTH2 client credentials",
           "Graph client secret", "Graph client certificate", "Graph password grant"}
APP_PASSWORD_PROVIDERS = {"gmail", "yahoo", "icloud", "fastmail"}


def _manifests() -> list[dict[str, Any]]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    return [doc for block in blocks for doc in yaml.safe_load_all(block)]


def _method(doc: dict[str, Any]) -> str:
    """Which way of signing in a manifest shows, in the words of METHODS."""
    spec = doc["spec"]
    if spec.get("sendUsing") == "MicrosoftGraph":
        auth = spec["graph"]["authentication"]
        if auth.get("grantType") == "Password":
            return "Graph password grant"
        return ("Graph client certificate" if "clientCertificateSecretRef" in auth
                else "Graph client secret")
    auth = spec["smtp"]["authentication"]
    if auth["method"] == "OAuth2":
        grant = auth["oauth2"]["grantType"]
        return ("Gmail JWT bearer" if grant == "JWTBearer" and spec["provider"] == "gmail"
                else "Office 365 XOAUTH2 client credentials" if grant == "ClientCredentials"
                else grant)
    if auth["method"] == "Password" and spec["provider"] in APP_PASSWORD_PROVIDERS:
        return "app password"
    return auth["method"].lower()


MANIFESTS = _manifests()


def test_every_method_has_a_manifest() -> None:
    methods = [_method(doc) for doc in MANIFESTS]
    assert sorted(methods) == sorted(METHODS)


@pytest.mark.parametrize("doc", MANIFESTS, ids=[_method(d) for d in MANIFESTS])
def test_the_manifest_validates_without_errors_or_warnings(doc: dict[str, Any]) -> None:
    found = [str(d) for d in validate_document(doc) if d.severity != "note"]
    assert found == []
