"""Python's smtplib from the env keys (envFrom); the CA through SSL_CERT_FILE=<mount>/ca.crt."""

import os
import smtplib
import ssl
import sys
from email.headerregistry import Address
from email.message import EmailMessage

env = os.environ
msg = EmailMessage()
msg["From"] = Address(env.get("SMTP_FROM_NAME", ""), addr_spec=env["SMTP_FROM"])
if env.get("SMTP_REPLY_TO"):
    msg["Reply-To"] = env["SMTP_REPLY_TO"]
msg["To"], msg["Subject"] = sys.argv[1], sys.argv[2]
msg.set_content("Hello from smtplib")

context = ssl.create_default_context()  # reads SSL_CERT_FILE; verifies the host name
host, port, security = env["SMTP_HOST"], int(env["SMTP_PORT"]), env["SMTP_SECURITY"]
if security == "SMTPS":
    smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, context=context, timeout=30)
else:
    smtp = smtplib.SMTP(host, port, timeout=30)
with smtp:
    if security == "STARTTLS":
        smtp.starttls(context=context)  # raises when the server offers no STARTTLS
    if env.get("SMTP_PASSWORD"):
        smtp.login(env["SMTP_USERNAME"], env["SMTP_PASSWORD"])
    smtp.send_message(msg)
