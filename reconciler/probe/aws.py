"""Amazon SES SMTP credentials from an IAM access key (authentication.method AWSAccessKey).

AWS documents how an IAM secret access key becomes an SES SMTP password for one region
("Obtaining Amazon SES SMTP credentials", docs.aws.amazon.com/ses/latest/dg/smtp-credentials.html):
a Signature Version 4 key chain over the fixed date "11111111", the region, "ses" and
"aws4_request", then a signature of "SendRawEmail"; the password is the base64 of the version
byte 0x04 followed by that signature. The username is the access key id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from reconciler.log import register_secret
from reconciler.model import Account, SecretReader

_DATE, _SERVICE, _TERMINAL, _MESSAGE, _VERSION = "11111111", "ses", "aws4_request", \
    "SendRawEmail", b"\x04"


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def ses_smtp_password(secret_access_key: str, region: str) -> str:
    """The SES SMTP password of an IAM secret access key for one region (SigV4, version 4)."""
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (_DATE, region, _SERVICE, _TERMINAL):
        key = _sign(key, part)
    return base64.b64encode(_VERSION + _sign(key, _MESSAGE)).decode("ascii")


@dataclass(frozen=True)
class SesCredentials:
    username: str  # the access key id
    password: str  # the derived SMTP password (never the secret access key)


def ses_credentials(account: Account, secrets: SecretReader) -> SesCredentials:
    """Read the access key of an AWSAccessKey account and derive its SMTP password.

    Raises SecretNotFound (naming the Secret and key) when a key is missing. Both the secret
    access key and the derived password are registered for redaction before anything else.
    """
    smtp = account.smtp
    assert smtp is not None and account.region, "AWSAccessKey needs an SMTP account with region"
    auth = smtp.authentication
    assert auth.access_key_id is not None and auth.secret_access_key is not None
    secret = secrets.read(account.namespace, auth.secret_access_key).decode("utf-8").strip()
    register_secret(secret)
    key_id = secrets.read(account.namespace, auth.access_key_id).decode("utf-8").strip()
    password = ses_smtp_password(secret, account.region)
    register_secret(password)
    return SesCredentials(username=key_id, password=password)
