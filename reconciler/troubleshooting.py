"""Every condition reason with what it means and how to fix it: one table, read by
`email-reconciler explain REASON` and rendered into docs/troubleshooting.md (a test keeps the two
equal and the table complete, so a new reason in reconciler/reasons.py comes with its fix)."""

from __future__ import annotations

from reconciler import reasons as r

#: reason -> (what happened, what to do)
FIXES: dict[str, tuple[str, str]] = {
    # success and progress
    r.SUCCEEDED: ("The step worked.", "Nothing."),
    r.NOT_REQUIRED: ("authentication.method is None: the server is used without AUTH.",
                     "Nothing, if the server relays for the application's address."),
    r.PUBLISHED: ("The Secret holds the sender configuration.", "Nothing."),
    r.VALID: ("The manifest passed the schema and the semantic rules.", "Nothing."),
    r.READY: ("Validated, connected, authenticated and published.", "Nothing."),
    r.NOT_STALLED: ("No step needs a change by hand.", "Nothing."),
    r.PROGRESSING: ("A check has not run yet (a new account, or signing not yet checked).",
                    "Wait for the next probe, or `email-reconciler request NAME`."),
    r.AUTH_SKIPPED: ("AUTH was not attempted this run (probe.authInterval); the last result "
                     "stands.",
                     "Nothing; `reconcile --force` or `request NAME` authenticates at once."),
    # validation and configuration
    r.INVALID_SPEC: ("The manifest breaks the schema or a rule; the message names the field.",
                     "Fix that field; `email-reconciler validate FILE` shows every problem with "
                     "its line."),
    r.SECRET_NOT_FOUND: ("A referenced Secret, ConfigMap or key does not exist (the message "
                         "names it, and the path looked for with --secrets-dir).",
                         "Create it in the account's namespace, or correct the reference."),
    r.SECRET_NOT_ALLOWED: ("The Secret is not opted in for e-mail, is bound to other hosts or "
                           "accounts, or is a Secret we published.",
                           "Label it `email.reconciler.io/credential: \"true\"`, or adjust its "
                           "allowed-hosts / allowed-accounts annotations (README, Security "
                           "model)."),
    r.ENDPOINT_NOT_ALLOWED: ("An OAuth/Graph URL is not https or not on the admin's allow-list, "
                             "or the SMTP host is outside --allowed-hosts.",
                             "Use the provider's endpoint, or ask the admin to add the host to "
                             "--allowed-endpoints / --allowed-hosts."),
    r.PUBLISH_NOT_ALLOWED: ("publish.annotations carry an annotation that copies Secrets "
                            "elsewhere (Reflector, kubed, replicator).",
                            "Remove it, or ask the admin for --allow-publish-annotations."),
    r.TRUSTSTORE_INVALID: ("The truststore holds something other than PEM CERTIFICATE blocks "
                           "(a private key, DER, garbage).",
                           "Put only the CA certificates, PEM-encoded, in that key."),
    r.SHORT_SECRET: ("A secret value is under 8 characters and cannot be redacted reliably.",
                     "Use a longer password or token."),
    # connection
    r.CONNECT_FAILED: ("No TCP connection: DNS failure, refused, or unreachable (the message "
                       "names the address).",
                       "Check host and port (a preset provider's message names the provider), "
                       "the NetworkPolicy egress ports and the firewall."),
    r.TIMEOUT: ("A step did not finish within timeoutSeconds or the probe's deadline (the message "
                "names the step).",
                "Check the network path; raise connection.timeoutSeconds for slow servers."),
    r.SERVER_REJECTED: ("The server refused the session (a 4xx/5xx greeting, EHLO refused).",
                        "Read the server's reply in the message; the server may block this "
                        "client's address."),
    r.STARTTLS_NOT_OFFERED: ("security is STARTTLS but the server does not offer it.",
                             "Use the server's STARTTLS port (587), SMTPS (465), or fix the "
                             "server; never downgrade to None for a password."),
    r.TLS_HANDSHAKE_FAILED: ("The TLS handshake failed (no shared protocol or cipher, a "
                             "broken server).",
                             "Check the server's TLS configuration; see the message for the "
                             "OpenSSL error."),
    r.TLS_VERSION_TOO_LOW: ("The server's best TLS version is below minTLSVersion.",
                            "Have the server offer TLS 1.2 or later; lower minTLSVersion only "
                            "knowingly."),
    r.CERTIFICATE_UNTRUSTED: ("The server's certificate chain does not lead to a trusted CA.",
                              "Set connection.truststore to the CA that issued it, or have the "
                              "server send its intermediate certificates."),
    r.CERTIFICATE_HOSTNAME_MISMATCH: ("The certificate does not name connection.host.",
                                      "Use the host name the certificate is issued for."),
    r.CERTIFICATE_EXPIRED: ("The server's certificate has expired.",
                            "Renew the server's certificate."),
    r.CERTIFICATE_EXPIRING_SOON: ("A warning: the server's certificate expires within 14 days.",
                                  "Renew it before it expires."),
    r.INSECURE_CONNECTION: ("A warning: security is None, so mail and credentials travel in "
                            "clear.",
                            "Use STARTTLS or SMTPS if the server supports it."),
    r.PROBE_ERROR: ("A bug in the probe; the other accounts went on.",
                    "Report it with the log line (secrets are redacted)."),
    # authentication
    r.AUTHENTICATION_FAILED: ("The server refused the credentials (535 and the like).",
                              "Correct the password or username in the referenced Secret; "
                              "the account is Stalled until it changes."),
    r.AUTHENTICATION_TEMPORARY_FAILURE: ("The server answered AUTH with a temporary failure "
                                         "(454).",
                                         "Nothing: the next probe retries; if it lasts, ask "
                                         "the provider."),
    r.AUTH_MECHANISM_UNAVAILABLE: ("The server offers no mechanism this method can use (e.g. no "
                                   "XOAUTH2 for OAuth2, no AUTH at all).",
                                   "Check the port (submission ports offer AUTH) and the "
                                   "method."),
    r.INSECURE_AUTH_REFUSED: ("AUTH would send the password over a connection without TLS.",
                              "Use STARTTLS or SMTPS; allowInsecureAuth only for a trusted "
                              "network."),
    r.BASIC_AUTH_DEPRECATED: ("The provider ends password (Basic) SMTP AUTH (Exchange Online "
                              "from 2026-12-31, 5.7.30 once it has).",
                              "Move to OAuth2 (or Microsoft Graph); applications that cannot "
                              "do OAuth use spec.relay."),
    # OAuth2 / Graph
    r.TOKEN_REQUEST_FAILED: ("The identity platform refused or did not answer the token "
                             "request (the message carries its error, e.g. AADSTS7000215).",
                             "Check tenant, client id, client secret or certificate, and the "
                             "authority; a redirect or discovery failure is reported here too."),
    r.MAILBOX_NOT_FOUND: ("Graph does not know graph.userPrincipalName.",
                          "Use the mailbox's user principal name."),
    r.INSUFFICIENT_PERMISSIONS: ("The token lacks Mail.Send (or SMTP.SendAsApp), or Exchange "
                                 "RBAC for Applications does not cover the mailbox.",
                                 "Grant the application permission with admin consent and "
                                 "scope it to the mailbox."),
    r.GRAPH_UNAVAILABLE: ("Microsoft Graph did not answer or answered 5xx.",
                          "Nothing: retried with backoff; check the network path if it lasts."),
    # bounds, politeness, envelope
    r.PROTOCOL_VIOLATION: ("The server broke SMTP: an oversized reply, out-of-sequence replies, "
                           "bytes before the TLS handshake (STARTTLS injection).",
                           "The connection was dropped; check that host:port is the mail "
                           "server and nothing sits in between."),
    r.SERVER_BUSY: ("The server answered 421 (too many connections) even after retries.",
                    "Nothing: retried later; lower --max-sessions-per-server if it lasts."),
    r.SENDER_REJECTED: ("The server refused MAIL FROM:<emailAddress> after AUTH (the login may "
                        "not send as that address).",
                        "Use an address the login may send as, or give the login SendAs "
                        "rights."),
    r.TLS_REQUIRED: ("The server demands STARTTLS before MAIL FROM and the session had none.",
                     "Set security STARTTLS."),
    # signing
    r.KEYSTORE_NOT_FOUND: ("The signing keystore Secret or key does not exist.",
                           "Create it, or correct smtp.signing.keystoreSecretRef."),
    r.KEYSTORE_PASSWORD_WRONG: ("The keystore password does not open the keystore.",
                                "Correct keystorePasswordSecretRef."),
    r.KEYSTORE_UNREADABLE: ("The keystore is not a PKCS#12 or PEM we can read (or its "
                            "iteration count is out of bounds).",
                            "Export it again as PKCS#12 with standard settings."),
    r.ALIAS_NOT_FOUND: ("smtp.signing.alias names no entry with a private key.",
                        "Use an alias the keystore has, or leave it empty for the first key."),
    r.KEY_CERTIFICATE_MISMATCH: ("The private key does not belong to the certificate.",
                                 "Put the matching key and certificate in the keystore."),
    r.SIGNING_CERTIFICATE_EXPIRED: ("The signing certificate has expired.",
                                    "Renew the S/MIME certificate."),
    r.SIGNING_CERTIFICATE_EXPIRING_SOON: ("A warning: the signing certificate expires soon.",
                                          "Renew it before it expires."),
    r.SIGNING_CERTIFICATE_NOT_FOR_EMAIL: ("The certificate is not for e-mail protection "
                                          "(extended key usage).",
                                          "Use an S/MIME certificate."),
    r.SENDER_NOT_IN_CERTIFICATE: ("A warning: the certificate does not name emailAddress.",
                                  "Use a certificate issued for the sender address."),
    r.SIGNATURE_FAILED: ("A test signature could not be made or verified.",
                         "Check the key type and the certificate chain."),
    # published formats
    r.FORMAT_CANNOT_AUTHENTICATE: ("A warning: a listed format's consumers take a user and "
                                   "password only and cannot do XOAUTH2.",
                                   "Drop that format, or turn spec.relay on for those "
                                   "applications."),
    r.PASSWORD_NOT_ASCII: ("A warning: Python's smtplib (Django) cannot send a non-ASCII "
                           "password.",
                           "Use an ASCII password for Django applications."),
    r.CREDENTIAL_NOT_PUBLISHED: ("A warning: the client credential was not copied into the "
                                 "published Secret: its owner did not allow it.",
                                 "Annotate the credential's Secret "
                                 "`email.reconciler.io/publishable: \"true\"` if its owner "
                                 "agrees."),
    # publishing and the store
    r.SECRET_CONFLICT: ("A Secret of publish.secretName exists and is not ours, or is "
                        "published for another account.",
                        "Choose another publish.secretName, or delete the other Secret."),
    r.API_UNAVAILABLE: ("The Kubernetes API did not answer (in time, or within bounds).",
                        "Nothing: retried with backoff; check the API server if it lasts."),
    r.FORBIDDEN: ("RBAC refused a request (the message names verb and resource).",
                  "Apply deploy/ again, or grant that verb to the ServiceAccount."),
    r.STORE_WRITE_FAILED: ("The store refused this account's write (disk full, permissions, a "
                           "link where a file should be).",
                           "Fix the store folder; the message names the file."),
    r.INVALID: ("The API server refused an object we wrote (422; its causes in the message).",
                "Fix what the causes name (often publish.labels or annotations)."),
}


def explain(reason: str) -> str | None:
    """'Reason: what happened\\n  Fix: ...' for a reason (case-insensitive), or None."""
    for name, (meaning, fix) in FIXES.items():
        if name.lower() == reason.lower():
            return f"{name}: {meaning}\n  Fix: {fix}"
    return None


def render_markdown() -> str:
    """docs/troubleshooting.md."""
    lines = ["# Troubleshooting", "",
             "Every reason a condition (`kubectl get emailaccounts`, `email-reconciler describe "
             "NAME`) can carry, what it means and what to do. `email-reconciler explain REASON` "
             "prints one. Generated from `reconciler/troubleshooting.py`; "
             "`tests/test_troubleshooting.py` keeps this file equal to it.", "",
             "| reason | what happened | what to do |", "|---|---|---|"]
    for name, (meaning, fix) in FIXES.items():
        lines.append(f"| `{name}` | {meaning.replace('|', '/')} | {fix.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
