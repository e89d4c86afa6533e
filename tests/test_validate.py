"""Validation: each bad manifest in tests/manifests/bad fails at the exact file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.manifest.load import load_paths
from reconciler.manifest.validate import validate_document

BAD = Path(__file__).parent / "manifests" / "bad"
ACCOUNTS = Path(__file__).parent.parent / "accounts"

# file, line, document, pointer, words the message must contain
CASES = [
    ("advanced-not-string", 18, 1, "/spec/smtp/advanced/mail.smtp.auth.plain.disable",
     "must be a string"),
    ("alias", 11, 1, "", "aliases"),
    ("bad-duration", 8, 1, "/spec/probe/interval", "duration"),
    ("bad-email", 10, 1, "/spec/smtp/identity/emailAddress", "e-mail address"),
    ("bad-formats", 8, 1, "/spec/publish/formats/1", "must be one of: env, url"),
    ("bad-indent", 13, 1, "", "YAML syntax error"),
    ("bad-name", 4, 1, "/metadata/name", "DNS-1123 subdomain"),
    ("bad-namespace", 5, 1, "/metadata/namespace", "DNS-1123 label"),
    ("bad-security", 14, 1, "/spec/smtp/connection/security", "STARTTLS, SMTPS, None"),
    ("billion-laughs", 2, 1, "", "aliases"),
    ("client-credentials-gmail", 17, 1, "/spec/smtp/authentication/oauth2/grantType",
     "only for provider: office365"),
    ("custom-without-host", 12, 1, "/spec/smtp/connection/host", "provider: custom needs"),
    ("duplicate-key", 14, 1, "", "duplicate key 'port' (first defined on line 13)"),
    ("duplicate-name", 21, 2, "/metadata/name", "already defined at"),
    ("duplicate-secret-name", 25, 2, "/spec/publish/secretName", "already published"),
    ("graph-not-office365", 7, 1, "/spec/provider", "only valid with provider: office365"),
    ("graph-on-smtp", 9, 1, "/spec/graph", "only used with sendUsing: MicrosoftGraph"),
    ("graph-password-grant-missing-refs", 12, 1,
     "/spec/graph/authentication/usernameSecretRef", "missing required field"),
    ("graph-with-signing", 12, 1, "/spec/smtp/signing", "signing is not supported"),
    ("header-injection-display-name", 11, 1, "/spec/smtp/identity/displayName", "CR, LF"),
    ("inline-advanced-password", 18, 1, "/spec/smtp/advanced/mail.smtp.password",
     "reference it with passwordSecretRef"),
    ("inline-aws-key", 8, 1, "/spec/description", "AWS access key"),
    ("inline-jwt-token", 19, 1, "/spec/smtp/authentication/oauth2/accessToken",
     "inline credential"),
    ("inline-password", 16, 1, "/spec/smtp/authentication/password",
     "spec.smtp.authentication.password looks like an inline credential; put it in a Secret "
     "and reference it with passwordSecretRef"),
    ("inline-private-key", 8, 1, "/spec/description", "private key"),
    ("inline-sendgrid-key", 7, 1, "/metadata/annotations/note", "SendGrid"),
    ("min-tls-float", 14, 1, "/spec/smtp/connection/minTLSVersion", "quote it"),
    ("missing-metadata", 1, 1, "/metadata", "missing required field 'metadata'"),
    ("missing-name", 4, 1, "/metadata/name", "missing required field 'name'"),
    ("not-a-mapping", 1, 1, "", "must be a mapping"),
    ("not-utf8", 15, None, "", "not valid UTF-8"),
    ("oauth2-without-block", 15, 1, "/spec/smtp/authentication/oauth2", "missing required"),
    ("password-without-ref", 15, 1, "/spec/smtp/authentication/passwordSecretRef",
     "missing required"),
    ("port-not-a-number", 13, 1, "/spec/smtp/connection/port", "integer"),
    ("port-out-of-range", 13, 1, "/spec/smtp/connection/port", "<= 65535"),
    ("port465-starttls", 14, 1, "/spec/smtp/connection/security", "port 465"),
    ("reply-to-injection", 11, 1, "/spec/smtp/identity/replyTo", "e-mail address"),
    ("scalar-document", 1, 1, "", "must be a mapping"),
    ("second-document-bad", 30, 2, "/spec/smtp/connection/port", ">= 1"),
    ("ses-without-region", 7, 1, "/spec/region", "missing required field 'region'"),
    ("tabs", 13, 1, "", "indent with spaces, not tabs"),
    ("truststore-both", 15, 1, "/spec/smtp/connection/truststore", "exactly one of"),
    ("unknown-field", 12, 1, "/spec/smtp/connection/hots",
     "unknown field 'hots'; did you mean 'host'? allowed here: "),
    ("unknown-provider", 7, 1, "/spec/provider", "must be one of: gmail"),
    ("unknown-tag", 13, 1, "", "constructor"),
    ("wrong-api-version", 1, 1, "/apiVersion", "email.reconciler.io/v1alpha1"),
    ("wrong-kind", 2, 1, "/kind", "kind must be EmailAccount"),
    # what the API server refuses with 422 (ObjectMeta) or our CRD at admission (issue 13)
    ("bad-label-key", 7, 1, "/metadata/labels/team~1payments~1eu", "not a valid key"),
    ("bad-annotation-key", 7, 1, "/metadata/annotations/-leading-dash", "not a valid key"),
    ("name-too-long", 4, 1, "/metadata/name", "at most 63 characters (found 64)"),
    ("publish-label-value", 19, 1, "/spec/publish/labels/app", "label value must be at most 63"),
    ("publish-label-key", 19, 1, "/spec/publish/labels/Example.COM~1app", "not a valid key"),
    ("publish-annotation-key", 19, 1, "/spec/publish/annotations/reloader.stakater.com~1"
     "this-name-part-is-longer-than-sixty-three-characters-allowed-by-kubernetes",
     "not a valid key"),
    ("secret-name-too-long", 18, 1, "/spec/publish/secretName", "at most 250 characters"),
    ("username-twice", 15, 1, "/spec/smtp/authentication/usernameSecretRef",
     "identity.userId or authentication.usernameSecretRef, not both"),
    ("username-ref-without-password", 15, 1, "/spec/smtp/authentication/usernameSecretRef",
     "only used with method Password"),
    ("jwt-bearer-office365", 14, 1, "/spec/smtp/authentication/oauth2/grantType",
     "only for provider: gmail or custom"),
    # issue 23: what a committer could do to the published Secret, the schedule, the reader
    ("advanced-tested-key", 19, 1, "/spec/smtp/advanced/mail.smtp.starttls.enable",
     "would change the server, port, TLS, trust or login the probe tested"),
    ("publish-reserved-label", 20, 1, "/spec/publish/labels/email.reconciler.io~1credential",
     "set by email-reconciler alone"),
    ("probe-interval-too-long", 18, 1, "/spec/probe/authInterval", "at most 8760h"),
    ("host-trailing-newline", 12, 1, "/spec/smtp/connection/host", "must be a host name"),
    ("merge-key", 14, 1, "", "YAML merge keys (<<) are not allowed"),
    ("timeout-nan", 14, 1, "/spec/smtp/connection/timeoutSeconds", "must be a finite number"),
]


def test_every_bad_manifest_has_a_case() -> None:
    assert sorted(p.stem for p in BAD.glob("*.yaml")) == sorted(c[0] for c in CASES)
    assert len(CASES) >= 30


@pytest.mark.parametrize(("stem", "line", "document", "pointer", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_bad_manifest(stem: str, line: int, document: int | None, pointer: str,
                      words: str) -> None:
    file = str(BAD / f"{stem}.yaml")
    result = load_paths([file])
    assert not result.ok
    errors = [d for d in result.diagnostics if d.severity == "error"]
    match = [d for d in errors if d.pointer == pointer and words in d.message]
    assert match, [str(d) for d in errors]
    d = match[0]
    assert (d.file, d.line, d.document) == (file, line, document)
    assert str(d).startswith(f"{file}:{line}:{d.column}:")


def test_valid_document_of_a_bad_file_is_still_loaded() -> None:
    result = load_paths([str(BAD / "second-document-bad.yaml")])
    assert [a.name for a in result.accounts] == ["second-document-bad-ok"]
    assert [(i.name, i.source.document) for i in result.invalid] == [("second-document-bad", 2)]


def test_messages_never_echo_credential_values() -> None:
    result = load_paths([str(BAD)])
    text = "\n".join(str(d) for d in result.diagnostics)
    for secret in ("correct-horse-battery", "AKIAIOSFODNN7EXAMPLE", "hunter22",
                   "SG.ngeVfQFYQlKU0ufo8x5d1A", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcw",
                   "eyJhbGciOiJSUzI1NiJ9"):
        assert secret not in text


def test_examples_are_valid_without_errors_or_warnings() -> None:
    result = load_paths([str(ACCOUNTS)])
    assert result.ok, [str(d) for d in result.diagnostics]
    # Issue 16: notes (e.g. "an app password is required" for yahoo) inform. Issue 22: OAuth2
    # examples keep the default formats, which leave out those that cannot carry XOAUTH2, so
    # they draw no FormatCannotAuthenticate warning.
    assert [d for d in result.diagnostics if d.severity != "note"] == []
    assert len(result.accounts) >= 15


def _doc(**connection: object) -> dict[str, object]:
    return {
        "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
        "metadata": {"name": "x"},
        "spec": {"provider": "custom", "smtp": {
            "identity": {"emailAddress": "x@example.com"},
            "connection": {"host": "mail.example.com", **connection},
            "authentication": {"method": "Password",
                               "passwordSecretRef": {"name": "s", "key": "k"}}}}}


@pytest.mark.parametrize(("connection", "pointer", "words"), [
    ({"port": 587, "security": "SMTPS"}, "/spec/smtp/connection/security", "unusual"),
    ({"port": 25}, "/spec/smtp/connection/port", "port 25 is usually blocked"),
    ({"port": 2525, "security": "None"}, "/spec/smtp/connection/security",
     "credentials will not be sent"),
    ({"minTLSVersion": "1.0"}, "/spec/smtp/connection/minTLSVersion", "deprecated"),
])
def test_semantic_warnings(connection: dict[str, object], pointer: str, words: str) -> None:
    diags = validate_document(_doc(**connection))
    assert [d.severity for d in diags] and all(d.severity == "warning" for d in diags)
    assert any(d.pointer == pointer and words in d.message for d in diags), diags


def test_office365_password_warns_basic_auth_deprecated() -> None:
    doc = _doc()
    doc["spec"]["provider"] = "office365"  # type: ignore[index]
    diags = validate_document(doc)
    assert [(d.severity, d.pointer) for d in diags] == [
        ("warning", "/spec/smtp/authentication/method")]
    assert "BasicAuthDeprecated" in diags[0].message


def test_insecure_auth_allowed_explicitly_is_quiet() -> None:
    assert validate_document(_doc(port=2525, security="None", allowInsecureAuth=True)) == []


@pytest.mark.parametrize("value", [
    "mail.example.com", "billing@example.com", "00000000-0000-0000-0000-000000000001",
    "Invoices and receipts for the EMEA region, sent from the billing service.",
    "https://login.microsoftonline.com/organizations/oauth2/v2.0/token",
])
def test_ordinary_values_are_not_mistaken_for_credentials(value: str) -> None:
    doc = _doc()
    doc["spec"]["description"] = value  # type: ignore[index]
    assert validate_document(doc) == []


# --------------------------------------------------------------------------- GitOps folders

_OTHERS = {
    "kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                          "resources: [namespace.yaml, smtp-secret.yaml, accounts.yaml]\n",
    "namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    "smtp-secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: billing-smtp, namespace: "
                        "shop}\nstringData: {password: correct-horse-battery-staple}\n",
}


def _mixed_folder(root: Path, *, port: object = 587) -> Path:
    """A folder as it is in git: a kustomization, a Namespace, a Secret with data, 2 accounts."""
    import yaml

    from tests.manifests_factory import loopback_account

    root.mkdir(parents=True, exist_ok=True)
    for name, text in _OTHERS.items():
        (root / name).write_text(text)
    billing = loopback_account("billing", "shop", 587)
    alerts = loopback_account("alerts", "shop", 587)
    alerts["spec"]["smtp"]["connection"]["port"] = port
    (root / "accounts.yaml").write_text(yaml.safe_dump_all([billing, alerts]))
    return root


def test_a_folder_as_in_git_validates_with_one_note_per_other_document(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    folder = _mixed_folder(tmp_path / "apps")
    assert main(["validate", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"{folder / 'kustomization.yaml'}:1:1: note: skipped: a kustomization, " \
           "not an EmailAccount" in lines
    assert any(line.startswith(f"{folder / 'namespace.yaml'}:2:7: document 1: /kind: note: "
                               "skipped: a Namespace (v1)") for line in lines), out
    secret = [line for line in lines if "smtp-secret.yaml" in line]
    assert len(secret) == 1 and "warning:" in secret[0], out
    assert "SOPS" in secret[0] and "Sealed" in secret[0] and "ExternalSecret" in secret[0]
    assert "passwordSecretRef" not in out and "correct-horse" not in out
    assert lines[-1] == "4 files, 2 accounts, 0 errors, 1 warning, 2 notes"


def test_an_emailaccount_error_in_a_folder_as_in_git_still_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    folder = _mixed_folder(tmp_path / "apps", port=99999)
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "accounts.yaml:" in out and "document 2: /spec/smtp/connection/port: must be <= " \
                                       "65535" in out
    assert out.splitlines()[-1].startswith("4 files, 1 account, 1 error, 1 warning")


@pytest.mark.parametrize(("text", "words"), [
    # ours, with a typo in the kind or a wrong version: still validated (an error), not skipped
    ("apiVersion: email.reconciler.io/v1alpha1\nkind: EmailAcount\n", "kind must be EmailAccount"),
    ("apiVersion: v1\nkind: EmailAccounts\n", "kind must be EmailAccount"),
])
def test_a_misspelt_emailaccount_is_not_skipped(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "a.yaml").write_text(text + "metadata: {name: a}\nspec: {provider: gmail}\n")
    result = load_paths([str(tmp_path)])
    assert any(words in d.message and d.severity == "error" for d in result.diagnostics), \
        [str(d) for d in result.diagnostics]


def test_a_sops_encrypted_secret_gets_a_note_not_a_warning(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
                                     "data: {password: 'ENC[AES256_GCM,data:abc]'}\n"
                                     "sops: {version: 3.9.0}\n")
    result = load_paths([str(tmp_path)])
    assert [(d.severity, d.message) for d in result.diagnostics] == [
        ("note", "skipped: a Secret (v1), not an EmailAccount")]


def test_validate_of_no_files_is_an_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    (tmp_path / "README.md").write_text("no manifests here\n")
    assert main(["validate", str(tmp_path)]) == 2
    assert f"no manifest files (*.yaml, *.yml) under {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "allowed", "message"), [
    ("hots", ["host", "port"], "unknown field 'hots'; did you mean 'host'? allowed here: host, port"),
    ("Port", ["host", "port"], "unknown field 'Port'; did you mean 'port'? allowed here: host, port"),
    ("colour", ["host", "port"], "unknown field 'colour'; allowed here: host, port"),
])
def test_unknown_field_suggests_the_closest(key: str, allowed: list[str], message: str) -> None:
    from reconciler.manifest.validate import _unknown_field

    assert _unknown_field(key, allowed) == message
