"""relay: an SMTP server for applications that cannot do OAuth, forwarding upstream the OAuth way.

`email-reconciler relay --secret-dir DIR` runs beside the application (a sidecar), reads only the
account's published Secret mounted at DIR (no API access), listens on 127.0.0.1 and forwards each
message through the account's OAuth2 SMTP server (XOAUTH2) or Microsoft Graph's sendMail before it
answers 250. Modules: config (the mounted Secret → RelayConfig), message (pure checks and the
Graph recipients rewrite), upstream (SMTP and Graph forwarding, reusing the probe's session, HTTPS
client and token cache), server (aiosmtpd and the relay's rules), serve (the command: listen,
reload when the Secret changes), metrics.
"""
