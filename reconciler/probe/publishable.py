"""Client credentials an OAuth2 or Graph account may publish (spec.publish.clientCredentials).

With the option set, the published Secret carries the client secret, the client certificate
(PEM: private key and certificate) or the Google service-account key JSON, so an application can
request its own tokens from that Secret alone. Each is copied only when its owner allowed it too
(reconciler.policy.credential_copy_refusal); otherwise it is left out with a CredentialNotPublished
warning naming the annotation to add. Values are registered for redaction as they are read.
"""

from __future__ import annotations

from reconciler import reasons
from reconciler.errors import SecretNotFound
from reconciler.log import register_secret
from reconciler.model import Account, KeyRef, Outcome, SecretReader
from reconciler.policy import credential_copy_refusal, secret_meta


def client_credential_refs(account: Account) -> dict[str, KeyRef]:
    """credential name (as ProbeResult.credentials keys it) -> the reference it comes from."""
    refs: dict[str, KeyRef | None] = {}
    if account.send_using == "MicrosoftGraph" and account.graph is not None:
        refs = {"clientSecret": account.graph.client_secret,
                "clientCertificate": account.graph.client_certificate}
    elif account.smtp is not None and account.smtp.authentication.method == "OAuth2":
        o = account.smtp.authentication.oauth2
        if o is not None:
            refs = {"serviceAccountKey": o.service_account_key, "clientSecret": o.client_secret,
                    "clientCertificate": o.client_certificate}
    return {name: ref for name, ref in refs.items() if ref is not None}


def publishable_credentials(account: Account, secrets: SecretReader
                            ) -> tuple[dict[str, str], tuple[Outcome, ...]]:
    """(credentials to publish, warnings) for the account's client credentials.

    Nothing without publish.clientCredentials or spec.relay (whose sidecar needs them). A Secret
    that cannot be read is left to the probe, which reports it; here it is only left out.
    """
    if not (account.publish.client_credentials or account.relay.enabled):
        return {}, ()  # spec.relay publishes them for the sidecar (relay-upstream-* keys)
    out: dict[str, str] = {}
    warnings: list[Outcome] = []
    for name, ref in client_credential_refs(account).items():
        try:
            meta = secret_meta(secrets, account.namespace, ref)
            why = credential_copy_refusal(account, ref, meta)
            if why is not None:
                warnings.append(Outcome(False, reasons.CREDENTIAL_NOT_PUBLISHED, why))
                continue
            value = secrets.read(account.namespace, ref).decode("utf-8")
        except (SecretNotFound, UnicodeDecodeError):
            continue
        value = value.strip() if name == "clientSecret" else value
        register_secret(value)
        out[name] = value
    return out, tuple(warnings)
