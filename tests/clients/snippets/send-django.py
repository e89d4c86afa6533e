"""Django's SMTP backend, configured three ways from the Secret (argv[1]):
settings  - the EMAIL_* keys (envFrom)
dj-email-url / django-environ - EMAIL_URL parsed by that library.
The CA through SSL_CERT_FILE=<mount>/ca.crt (Django's backend uses ssl.create_default_context()).
"""

import os
import sys

import django
from django.conf import settings
from django.core.mail import EmailMessage

env = os.environ
how = sys.argv[1]
if how == "settings":
    email = {
        "EMAIL_HOST": env["EMAIL_HOST"], "EMAIL_PORT": int(env["EMAIL_PORT"]),
        "EMAIL_USE_TLS": env["EMAIL_USE_TLS"] == "True",
        "EMAIL_USE_SSL": env["EMAIL_USE_SSL"] == "True",
        "EMAIL_HOST_USER": env.get("EMAIL_HOST_USER", ""),
        "EMAIL_HOST_PASSWORD": env.get("EMAIL_HOST_PASSWORD", ""),
        "EMAIL_TIMEOUT": int(env["EMAIL_TIMEOUT"]),
    }
elif how == "dj-email-url":
    import dj_email_url

    email = dj_email_url.parse(env["EMAIL_URL"])
else:
    import environ

    email = environ.Env().email_url("EMAIL_URL")
settings.configure(**email, DEFAULT_FROM_EMAIL=env["DEFAULT_FROM_EMAIL"])
django.setup()

reply_to = [env["SMTP_REPLY_TO"]] if env.get("SMTP_REPLY_TO") else []
EmailMessage(sys.argv[3], "Hello from Django", to=[sys.argv[2]], reply_to=reply_to).send()
