"""The probe against real Postfix + Dovecot (issue 14 item 7): verdicts judged also by the MTA.

Every test probes EmailAccount manifests through the CLI (`email-reconciler probe -o json`)
against one setup of the private Postfix of tests/mta/bed.py, then checks the condition reason
AND what Postfix and Dovecot logged: did AUTH arrive, with which mechanism, over TLS or not,
did the session end with QUIT, and that nothing was ever queued.

Missing Postfix or Dovecot skips these tests with what to install (fails them with CI=true).
"""

from __future__ import annotations

import pytest

from tests.mta.harness import Run, message, no_auth, ready, reason, why

# --------------------------------------------------------------------------- TLS and AUTH


def test_auth_only_after_tls(mta: Run) -> None:
    mta.account("authonly", "authonly")
    mta.account("authonly-plain", "authonly", security="None", allowInsecureAuth=True)
    status = mta.probe()

    assert ready(status["authonly"]), why(status["authonly"])
    assert status["authonly"]["authMechanisms"] == ["PLAIN", "LOGIN"]
    # Postfix offers AUTH only after STARTTLS, so the plain-text account finds none
    plain = status["authonly-plain"]
    assert reason(plain) == "AuthMechanismUnavailable", plain
    assert reason(plain, "Authenticated") == "AuthMechanismUnavailable"

    sessions = mta.sessions("authonly", at_least=2)
    with_tls = [s for s in sessions if "starttls" in s.commands]
    assert len(with_tls) == 1 and with_tls[0].commands["auth"] == "1", with_tls[0].text()
    assert "TLS connection established" in with_tls[0].text()
    assert no_auth([s for s in sessions if s not in with_tls])
    assert mta.auth_requests() == [("PLAIN", True)]
    assert mta.auth_results() == [("authonly@example.com", "OK")]


def test_wrapper_mode_smtps(mta: Run) -> None:
    mta.account("smtps", "smtps", security="SMTPS")
    status = mta.probe()["smtps"]
    assert ready(status), why(status)
    assert status["protocol"] == "SMTPS"
    assert status["connectivity"] == "SMTP (Connect using SMTPS)"
    [session] = mta.sessions("smtps", at_least=1)
    assert "TLS connection established" in session.text()
    assert "starttls" not in session.commands and session.commands["auth"] == "1"
    assert mta.auth_requests() == [("PLAIN", True)]
    assert mta.auth_results() == [("smtps@example.com", "OK")]


def test_tls_capped_at_1_2(mta: Run) -> None:
    mta.account("tls12", "tls12")
    mta.account("tls12-floor13", "tls12", minTLSVersion="1.3")
    status = mta.probe()
    assert ready(status["tls12"]) and status["tls12"]["tlsVersion"] == "TLSv1.2"
    floor = status["tls12-floor13"]
    assert reason(floor) == "TLSVersionTooLow", floor
    assert "TLSv1.2" in message(floor)

    sessions = mta.sessions("tls12", at_least=2)
    assert sum("TLSv1.2 with cipher" in s.text() for s in sessions) >= 1
    assert any("SSL_accept error" in s.text() for s in sessions)
    # only the account allowed TLS 1.2 authenticated; the other never sent credentials
    assert mta.auth_results() == [("tls12@example.com", "OK")]


def test_tls_1_3_only(mta: Run) -> None:
    mta.account("tls13", "tls13")
    mta.account("tls13-floor13", "tls13", minTLSVersion="1.3")
    status = mta.probe()
    for name in ("tls13", "tls13-floor13"):
        assert ready(status[name]), why(status[name])
        assert status[name]["tlsVersion"] == "TLSv1.3"
    sessions = mta.sessions("tls13", at_least=2)
    assert all("TLSv1.3 with cipher" in s.text() for s in sessions)


@pytest.mark.parametrize(("service", "expected"), [
    ("wronghost", "CertificateHostnameMismatch"),
    ("expired", "CertificateExpired"),
    ("nochain", "CertificateUntrusted"),
])
def test_certificate_faults_send_no_credentials(mta: Run, service: str, expected: str) -> None:
    mta.account(service, service)
    status = mta.probe()[service]
    assert reason(status) == expected, status
    assert reason(status, "Connected") == expected
    sessions = mta.sessions(service, at_least=1)
    # the probe refused the certificate: the handshake did not complete, no AUTH was tried
    assert not any("TLS connection established" in s.text() for s in sessions)
    assert no_auth(sessions)
    assert mta.auth_requests() == []


def test_missing_intermediate_is_the_only_difference(mta: Run) -> None:
    """The same leaf with its intermediate is trusted: the chain is what the verdict is about."""
    mta.account("fullchain", "fullchain")
    status = mta.probe()["fullchain"]
    assert ready(status), why(status)
    assert mta.auth_results() == [("fullchain@example.com", "OK")]


def test_relay_without_auth(mta: Run) -> None:
    mta.account("relay", "relay", method="None")
    mta.account("relay-password", "relay")
    status = mta.probe()
    assert ready(status["relay"]), why(status["relay"])
    assert reason(status["relay"], "Authenticated") == "NotRequired"
    assert reason(status["relay-password"]) == "AuthMechanismUnavailable"
    sessions = mta.sessions("relay", at_least=2)
    assert no_auth(sessions)
    assert all(s.commands.get("starttls") == "1" for s in sessions)
    assert mta.auth_requests() == []


def test_login_only_through_dovecot(mta: Run) -> None:
    mta.account("loginonly", "loginonly", dovecot="login")
    status = mta.probe()["loginonly"]
    assert ready(status), why(status)
    assert status["authMechanisms"] == ["LOGIN"]
    assert mta.auth_requests("login") == [("LOGIN", True)]
    assert mta.auth_results("login") == [("loginonly@example.com", "OK")]
    [session] = mta.sessions("loginonly", at_least=1)
    assert session.commands["auth"] == "1"


def test_no_starttls_offered(mta: Run) -> None:
    mta.account("nostarttls", "nostarttls")
    status = mta.probe()["nostarttls"]
    assert reason(status) == "StartTLSNotOffered", status
    assert "no credentials were sent" in message(status)
    sessions = mta.sessions("nostarttls", at_least=1)
    assert no_auth(sessions)
    assert mta.auth_requests() == []


# --------------------------------------------------------------------------- EHLO


def test_helo_name_override_passes_and_a_bare_name_is_rejected(mta: Run) -> None:
    mta.account("helo-fqdn", "fqdnhelo", advanced={"mail.smtp.localhost": "client.example.com"})
    mta.account("helo-bare", "fqdnhelo", advanced={"mail.smtp.localhost": "laptop"})
    status = mta.probe()
    assert ready(status["helo-fqdn"]), why(status["helo-fqdn"])
    bare = status["helo-bare"]
    assert reason(bare) == "ServerRejected", bare
    assert "504" in message(bare) and "fully-qualified" in message(bare)
    text = "\n".join(s.text() for s in mta.sessions("fqdnhelo", at_least=2))
    assert "helo=<client.example.com>" in text
    assert "reject: EHLO from" in text and "helo=<laptop>" in text
    assert mta.auth_results() == [("helo-fqdn@example.com", "OK")]


# --------------------------------------------------------------------------- politeness


def test_wrong_password_through_dovecot(mta: Run) -> None:
    """One wrong password among healthy accounts of the same server: only it fails, and the
    others are not timed out by Dovecot's failure delay (2 s) or its per-address penalty."""
    mta.account("penalty-bad", "penalty", dovecot="penalty", password="not-the-password")
    healthy = [f"penalty-ok{i}" for i in range(5)]
    for name in healthy:
        mta.account(name, "penalty", dovecot="penalty")
    status = mta.probe()
    bad = status["penalty-bad"]
    assert reason(bad) == "AuthenticationFailed", why(bad)
    assert "535" in message(bad)
    for name in healthy:
        assert ready(status[name]), why(status[name])

    results = mta.auth_results("penalty")
    assert sorted(results) == sorted([("penalty-bad@example.com", "FAIL")]
                                     + [(f"{n}@example.com", "OK") for n in healthy])
    assert "Password mismatch" in mta.bed.dovecots["penalty"].log_text()
    sessions = mta.sessions("penalty", at_least=6)
    [failed] = [s for s in sessions if s.commands.get("auth") == "0/1"]
    assert "SASL PLAIN authentication failed" in failed.text()
    assert "sasl_username=penalty-bad@example.com" in failed.text()

    # Within Dovecot's penalty for 127.0.0.1 the next login waits seconds for its answer;
    # the per-command timeout (5 s) outlasts it.
    mta.docs = {}
    mta.account("penalty-later", "penalty", dovecot="penalty")
    later = mta.probe()["penalty-later"]
    assert ready(later), why(later)


def test_connection_count_limit(mta: Run) -> None:
    """30 accounts on a server allowing 20 connections from one client: all Ready."""
    names = [f"limit{i:02d}" for i in range(30)]
    for name in names:
        mta.account(name, "connlimit", method="None")
    status = mta.probe()
    not_ready = {n: why(status[n]) for n in names if not ready(status[n])}
    assert not not_ready, not_ready
    sessions = mta.sessions("connlimit", at_least=30)
    text = "\n".join(s.text() for s in sessions)
    assert "too many connections" not in text
    assert all(s.commands.get("quit") == "1" for s in sessions)


def test_verdicts_do_not_depend_on_load(mta: Run) -> None:
    """Issue 26 item 3: 40 accounts on one MTA across eight of its ports, probed three times,
    get the same verdicts every time. Politeness counts the MTA (its host), not each port, so
    the load on the other ports does not starve a TLS diagnostic session or an EHLO reply
    (against one Exim, 2 of 53 verdicts flipped from run to run when it counted per port)."""
    cases = [("tls12", {}, "Ready"), ("tls12", {"minTLSVersion": "1.3"}, "TLSVersionTooLow"),
             ("tls13", {}, "Ready"), ("smtps", {"security": "SMTPS"}, "Ready"),
             ("fullchain", {}, "Ready"), ("expired", {}, "CertificateExpired"),
             ("wronghost", {}, "CertificateHostnameMismatch"),
             ("nostarttls", {}, "StartTLSNotOffered")]
    expected = {}
    for i in range(5):
        for n, (service, extra, verdict) in enumerate(cases):
            name = f"load-{n}-{i}"
            mta.account(name, service, **extra)
            expected[name] = verdict
    for _ in range(3):
        status = mta.probe()
        assert {name: reason(s) for name, s in status.items()} == expected
