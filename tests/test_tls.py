"""reconciler.probe.tls: what a probe reports of the server certificate."""

from __future__ import annotations

import datetime as dt
import ssl

import trustme

from reconciler.probe.tls import certificate_info

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _der(ca: trustme.CA, name: str, not_after: dt.datetime) -> bytes:
    pem = ca.issue_cert(name, not_after=not_after).cert_chain_pems[0].bytes().decode()
    return ssl.PEM_cert_to_DER_cert(pem)


def test_certificate_info_decodes_once_per_certificate_and_counts_days_per_call() -> None:
    ca = trustme.CA(organization_name="tls test CA")
    der = _der(ca, "mail.example.test", dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    first = certificate_info(der, NOW)
    assert "O=tls test CA" in first.issuer and first.subject.startswith("OU=Testing cert")
    assert first.not_after == "2027-01-01T00:00:00Z" and first.days_remaining == 30
    # The same certificate again (a new bytes object, as every handshake gives): decoded once.
    again = certificate_info(bytes(bytearray(der)), NOW)
    assert again == first and again.subject is first.subject
    # Days left follow `now`; the cache holds only what the certificate says.
    assert certificate_info(der, NOW + dt.timedelta(days=20)).days_remaining == 10
    assert certificate_info(der, NOW.replace(tzinfo=None)).days_remaining == 30
    # Another certificate is another entry.
    other = certificate_info(_der(ca, "smtp.example.test", dt.datetime(2026, 12, 5,
                                                                        tzinfo=dt.UTC)), NOW)
    assert other.days_remaining == 3
    assert other.serial != first.serial and other.subject != first.subject
