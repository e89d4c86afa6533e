"""SMTP AUTH XOAUTH2 from the env keys (envFrom) of an OAuth2 account's Secret: a token from the
published token request (Microsoft client credentials through msal, or Google's JWT bearer with
PyJWT), then smtplib. The CA through SSL_CERT_FILE=<mount>/ca.crt. Usage: send-xoauth2.py TO SUBJECT"""

import json
import os
import smtplib
import ssl
import sys
import time
from email.headerregistry import Address
from email.message import EmailMessage

import jwt
import msal
import requests

env = os.environ
if env["OAUTH2_GRANT_TYPE"] == "ClientCredentials":  # Office 365
    pem = env.get("OAUTH2_CLIENT_CERTIFICATE")
    app = msal.ConfidentialClientApplication(
        env["OAUTH2_CLIENT_ID"], authority=env["OAUTH2_AUTHORITY"], instance_discovery=False,
        client_credential=env.get("OAUTH2_CLIENT_SECRET")
        or {"private_key": pem, "public_certificate": pem})
    result = app.acquire_token_for_client(scopes=[env["OAUTH2_SCOPE"]])
    if "access_token" not in result:
        sys.exit(f"no token: {result.get('error')}: {result.get('error_description')}")
    token = result["access_token"]
else:  # JWTBearer: a Google service account with domain-wide delegation
    key = json.loads(env["GOOGLE_SERVICE_ACCOUNT_JSON"])
    now = int(time.time())
    claims = {"iss": key["client_email"], "sub": env["OAUTH2_SUBJECT"],
              "scope": env["OAUTH2_SCOPE"], "aud": env["OAUTH2_TOKEN_URL"],
              "iat": now, "exp": now + 3600}
    assertion = jwt.encode(claims, key["private_key"], algorithm="RS256",
                           headers={"kid": key["private_key_id"]})
    response = requests.post(env["OAUTH2_TOKEN_URL"], timeout=30, data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})
    response.raise_for_status()
    token = response.json()["access_token"]

msg = EmailMessage()
msg["From"] = Address(env.get("SMTP_FROM_NAME", ""), addr_spec=env["SMTP_FROM"])
msg["To"], msg["Subject"] = sys.argv[1], sys.argv[2]
msg.set_content("Hello over XOAUTH2")
sasl = f"user={env['SMTP_USERNAME']}\x01auth=Bearer {token}\x01\x01"

context = ssl.create_default_context()  # reads SSL_CERT_FILE; verifies the host name
host, port = env["SMTP_HOST"], int(env["SMTP_PORT"])
if env["SMTP_SECURITY"] == "SMTPS":
    smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, context=context, timeout=30)
else:
    smtp = smtplib.SMTP(host, port, timeout=30)
with smtp:
    if env["SMTP_SECURITY"] == "STARTTLS":
        smtp.starttls(context=context)  # raises when the server offers no STARTTLS
    smtp.ehlo()
    # an error arrives as a 334 challenge, answered empty to get the final 535
    smtp.auth("XOAUTH2", lambda challenge=None: "" if challenge else sasl)
    smtp.send_message(msg)
