"""Issue 15's published formats, checked against what their consumers read.

Pure checks on the rendered values, plus the two URL parsers Django users load EMAIL_URL with
(dj-email-url and django-environ, both in the test extra) and the JDK's KeyStore for the
truststore. The sends through the real clients are in tests/test_clients_*.py.
"""

from __future__ import annotations

import dataclasses
import email.header
import json
import subprocess
import warnings
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import trustme

from reconciler import reasons
from reconciler.model import OAuth2, Outcome, ProbeResult
from reconciler.state.conditions import find_condition
from reconciler.state.formats import format_warnings, mime_address
from reconciler.state.render import render_data
from reconciler.state.status import build_status
from tests.smtpservers import NOW, make_account
from tests.system import require_executable

OK = Outcome(True, reasons.SUCCEEDED, "")
PASSWORD = "p@ss:w/rd%?#&= é"
NAME = "Zoë Billing"
SECURITIES = [("STARTTLS", 587), ("SMTPS", 465), ("None", 25)]


@pytest.fixture(scope="module")
def ca_pem() -> str:
    return trustme.CA().cert_pem.bytes().decode("ascii")


def render(security: str, port: int, ca: str | None = None, **o: object) -> dict[str, bytes]:
    acc = make_account(security=security, port=port, display_name=NAME, **o)
    result = ProbeResult(connection=OK, authentication=OK, credentials={"password": PASSWORD},
                         ca_pem=ca)
    return render_data(acc, result)


@pytest.mark.parametrize(("security", "port", "smtp_url", "dsn", "email_url"), [
    ("STARTTLS", 587, "smtp://{u}@127.0.0.1:587?requireTLS=true",
     "smtp://{u}@127.0.0.1:587?require_tls=true", "smtp+tls://{u}@127.0.0.1:587?tls=True"),
    ("SMTPS", 465, "smtps://{u}@127.0.0.1:465", "smtps://{u}@127.0.0.1:465",
     "smtp+ssl://{u}@127.0.0.1:465?ssl=True"),
    ("None", 25, "smtp://{u}@127.0.0.1:25", "smtp://{u}@127.0.0.1:25?auto_tls=false",
     "smtp://{u}@127.0.0.1:25"),
])
def test_urls_are_downgrade_proof_and_round_trip(security: str, port: int, smtp_url: str,
                                                 dsn: str, email_url: str) -> None:
    data = render(security, port)
    userinfo = "app%40example.test:p%40ss%3Aw%2Frd%25%3F%23%26%3D%20%C3%A9"
    for key, expected in (("SMTP_URL", smtp_url), ("MAILER_DSN", dsn), ("EMAIL_URL", email_url)):
        value = data[key].decode()
        assert value == expected.format(u=userinfo)
        parts = urlsplit(value)
        assert unquote(parts.password or "") == PASSWORD
        assert unquote(parts.username or "") == "app@example.test"


@pytest.mark.parametrize(("security", "port", "tls", "ssl"), [
    ("STARTTLS", 587, True, False), ("SMTPS", 465, False, True), ("None", 25, False, False)])
def test_email_url_parses_the_same_in_dj_email_url_and_django_environ(
        security: str, port: int, tls: bool, ssl: bool) -> None:
    import dj_email_url
    import environ

    url = render(security, port)["EMAIL_URL"].decode()
    keys = ("EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD")
    dj = dj_email_url.parse(url)
    env = environ.Env.email_url_config(url)
    expected = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": port,
                "EMAIL_HOST_USER": "app@example.test", "EMAIL_HOST_PASSWORD": PASSWORD}
    assert {k: dj[k] for k in keys} == {k: env[k] for k in keys} == expected
    for parsed in (dj, env):
        assert bool(parsed.get("EMAIL_USE_TLS")) is tls
        assert bool(parsed.get("EMAIL_USE_SSL")) is ssl
        assert parsed.get("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend") == \
            "django.core.mail.backends.smtp.EmailBackend"


def test_mail_from_is_rfc2047_in_javamail_and_spring() -> None:
    data = render("STARTTLS", 587)
    encoded = mime_address("app@example.test", NAME)
    assert encoded.isascii() and encoded.endswith(" <app@example.test>")
    decoded = email.header.decode_header(encoded.split(" <")[0])
    assert decoded[0][0].decode(decoded[0][1]) == NAME
    # '=' is escaped as '\=' by java.util.Properties.store; the reader restores it.
    escaped = encoded.replace("=", "\\=")
    assert f"\nmail.from={escaped}\n" in data["javamail.properties"].decode()
    assert f"\nspring.mail.properties.mail.from={escaped}\n" in \
        data["application.properties"].decode()
    assert mime_address("a@example.test", "Doe, John") == '"Doe, John" <a@example.test>'


def test_spring_ssl_bundle_carries_the_pem_inline(ca_pem: str) -> None:
    body = render("STARTTLS", 587, ca=ca_pem)["application.properties"].decode()
    assert "\nspring.mail.ssl.bundle=email-reconciler\n" in body
    inline = ca_pem.replace("=", "\\=").replace("\n", "\\n")
    assert f"\nspring.ssl.bundle.pem.email-reconciler.truststore.certificate={inline}\n" in body
    assert "spring.mail.ssl.bundle" not in render("STARTTLS", 587)["application.properties"].decode()


def test_truststore_is_stable_and_changes_with_the_ca(ca_pem: str) -> None:
    first, again = render("STARTTLS", 587, ca=ca_pem), render("SMTPS", 465, ca=ca_pem)
    assert first["truststore.jks"] == again["truststore.jks"]
    assert first["TRUSTSTORE_PASSWORD"] == again["TRUSTSTORE_PASSWORD"]
    other = render("STARTTLS", 587, ca=trustme.CA().cert_pem.bytes().decode())
    assert other["TRUSTSTORE_PASSWORD"] != first["TRUSTSTORE_PASSWORD"]
    assert other["truststore.jks"] != first["truststore.jks"]
    assert "-Djavax.net.ssl.trustStore=" in first["javamail.properties"].decode()
    none = render("None", 25, ca=ca_pem)
    assert "truststore.jks" not in none and "TRUSTSTORE_PASSWORD" not in none


def test_java_keystore_loads_the_truststore_with_a_trusted_entry(ca_pem: str,
                                                                  tmp_path: Path) -> None:
    java = require_executable("java", "apt-get install default-jdk-headless")
    data = render("STARTTLS", 587, ca=ca_pem + trustme.CA().cert_pem.bytes().decode())
    store = tmp_path / "truststore.jks"
    store.write_bytes(data["truststore.jks"])
    source = tmp_path / "Trust.java"
    source.write_text(
        "import java.security.KeyStore; import java.io.FileInputStream;\n"
        "public class Trust { public static void main(String[] a) throws Exception {\n"
        "  for (String type : new String[] {\"JKS\", \"PKCS12\"}) {\n"
        "    KeyStore ks = KeyStore.getInstance(type);\n"
        "    try (FileInputStream in = new FileInputStream(a[0])) { ks.load(in, a[1].toCharArray()); }\n"
        "    for (String alias : java.util.Collections.list(ks.aliases()))\n"
        "      System.out.println(type + \" \" + alias + \" \" + ks.isCertificateEntry(alias));\n"
        "  } } }\n")
    password = data["TRUSTSTORE_PASSWORD"].decode()
    out = subprocess.run([java, str(source), str(store), password], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")[:-1]) == [
        "JKS ca-0 true", "JKS ca-1 true", "PKCS12 ca-0 true", "PKCS12 ca-1 true"]
    wrong = subprocess.run([java, str(source), str(store), "wrong"], capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode != 0 and "password" in wrong.stderr.lower()


@pytest.mark.parametrize(("security", "port", "shape"), [
    ("STARTTLS", 587, {"secure": False, "requireTLS": True}),
    ("SMTPS", 465, {"secure": True}),
    ("None", 25, {"secure": False, "ignoreTLS": True}),
])
def test_nodemailer_json_uses_nodemailer_names(security: str, port: int, shape: dict[str, bool],
                                               ca_pem: str) -> None:
    doc = json.loads(render(security, port, ca=ca_pem)["nodemailer.json"])
    transport = doc["transport"]
    tls = {"tls": {"ca": ca_pem, "minVersion": "TLSv1.2"}} if security != "None" else {}
    assert transport == {
        "host": "127.0.0.1", "port": port, **shape, **tls,
        "auth": {"user": "app@example.test", "pass": PASSWORD},
        "connectionTimeout": 5000, "greetingTimeout": 5000, "socketTimeout": 5000}
    assert doc["defaults"] == {"from": {"address": "app@example.test", "name": NAME}}


def test_sender_json_timeout_is_an_integer_and_no_floor_without_tls() -> None:
    starttls = json.loads(render("STARTTLS", 587)["sender.json"])["smtp"]
    assert starttls["timeoutSeconds"] == 5 and isinstance(starttls["timeoutSeconds"], int)
    assert starttls["minTLSVersion"] == "1.2"
    plain = json.loads(render("None", 25)["sender.json"])["smtp"]
    assert "minTLSVersion" not in plain
    assert "SMTP_MIN_TLS_VERSION" not in render("None", 25)


def test_the_new_formats_are_selectable() -> None:
    acc = make_account(display_name=NAME)
    result = ProbeResult(connection=OK, credentials={"password": PASSWORD})
    only = dataclasses.replace(acc, publish=dataclasses.replace(acc.publish,
                                                                formats=("symfony", "nodemailer")))
    assert sorted(render_data(only, result)) == ["MAILER_DSN", "nodemailer.json"]


# --------------------------------------------------------------------------- warnings


def _with_formats(formats: tuple[str, ...], **o: object):  # type: ignore[no-untyped-def]
    acc = make_account(**o)
    return dataclasses.replace(acc, publish=dataclasses.replace(acc.publish, formats=formats))


@pytest.mark.parametrize(("method", "formats", "password", "expected"), [
    ("OAuth2", ("env", "django"), "", [reasons.FORMAT_CANNOT_AUTHENTICATE]),
    ("OAuth2", ("env", "json", "nodemailer", "javamail"), "", []),
    ("Password", ("django",), PASSWORD, [reasons.PASSWORD_NOT_ASCII]),
    ("Password", ("env", "url", "symfony"), PASSWORD, []),
    ("Password", ("django",), "ascii-only", []),
])
def test_format_warnings(method: str, formats: tuple[str, ...], password: str,
                         expected: list[str]) -> None:
    acc = _with_formats(formats, method=method,
                        oauth2=OAuth2(grant_type="JWTBearer", subject="app@example.test"))
    result = ProbeResult(connection=OK, credentials={"password": password} if password else {})
    found = format_warnings(acc, result)
    assert [w.reason for w in found] == expected
    for warning in found:
        assert password not in warning.message or not password
        assert ", ".join(f for f in formats if f in ("url", "symfony", "django")) in warning.message


def test_warning_condition_names_the_formats() -> None:
    acc = _with_formats(("env", "django"), method="OAuth2")
    status = build_status(account=acc, old_status=None, now=NOW, published=None,
                          result=ProbeResult(connection=OK, authentication=OK))
    cond = find_condition(status["conditions"], "Warning")
    assert cond is not None and cond["status"] == "True"
    assert cond["reason"] == reasons.FORMAT_CANNOT_AUTHENTICATE
    assert "django" in cond["message"] and "XOAUTH2" in cond["message"]


def test_non_ascii_password_warning_never_shows_the_password() -> None:
    acc = _with_formats(("django", "env"))
    result = ProbeResult(connection=OK, authentication=OK, credentials={"password": PASSWORD})
    status = build_status(account=acc, old_status=None, now=NOW, published=None, result=result)
    cond = find_condition(status["conditions"], "Warning")
    assert cond is not None and cond["reason"] == reasons.PASSWORD_NOT_ASCII
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert PASSWORD not in json.dumps(status, ensure_ascii=False)
        assert "é" not in json.dumps(status, ensure_ascii=False)


def test_validate_warns_when_an_oauth2_account_selects_django(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    from reconciler.cli import main

    manifest = tmp_path / "gmail.yaml"
    manifest.write_text(
        "apiVersion: email.reconciler.io/v1alpha1\nkind: EmailAccount\n"
        "metadata: {name: gmail-oauth, namespace: demo}\n"
        "spec:\n  provider: gmail\n  smtp:\n    identity: {emailAddress: support@example.com}\n"
        "    authentication:\n      method: OAuth2\n      oauth2:\n        grantType: JWTBearer\n"
        "        serviceAccountKeySecretRef: {name: sa, key: key.json}\n"
        "        subject: support@example.com\n"
        "  publish: {formats: [env, django]}\n")
    assert main(["validate", str(manifest)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "/spec/publish/formats: warning: FormatCannotAuthenticate: publish.formats django" in text
