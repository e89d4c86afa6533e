"""What SMTP AUTH sends and what its answer means: credentials, mechanism, outcome.

Pure: the credentials resolved before connecting (an identity with a password or an OAuth2
token), the mechanism chosen from the method, the server's offer and `advanced`, and the
server's final AUTH reply read as an Outcome with a reason and a fix. The exchange itself is a
step of the session (reconciler.probe.smtpsession).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler import reasons
from reconciler.model import Account, Outcome
from reconciler.probe.smtpclient import Reply


@dataclass(frozen=True)
class Credentials:
    identity: str
    password: str | None = None
    token: str | None = None
    #: How messages name the identity when it is itself a secret (usernameSecretRef), else "".
    shown: str = ""

    @property
    def named(self) -> str:
        """The identity as messages may show it."""
        return self.shown or self.identity


def choose_mechanism(method: str, offered: Sequence[str], adv: Mapping[str, str]
                     ) -> tuple[str | None, str]:
    """(mechanism, explanation) for the method among the server's offered mechanisms.

    OAuth2 needs XOAUTH2. Password prefers PLAIN then LOGIN; `mail.smtp.auth.mechanisms`
    restricts and orders them, `mail.smtp.auth.plain.disable: "true"` removes PLAIN.
    """
    if method == "OAuth2":
        wanted = ["XOAUTH2"]
    else:
        listed = adv.get("mail.smtp.auth.mechanisms", "")
        wanted = [m.upper() for m in listed.replace(",", " ").split()] or ["PLAIN", "LOGIN"]
        wanted = [m for m in wanted if m in ("PLAIN", "LOGIN")]
        if adv.get("mail.smtp.auth.plain.disable", "").strip().lower() == "true":
            wanted = [m for m in wanted if m != "PLAIN"]
    for mech in wanted:
        if mech in offered:
            return mech, ""
    offer = " ".join(offered) if offered else "no AUTH mechanism"
    usable = " or ".join(wanted) if wanted else "no mechanism (all disabled by advanced)"
    hint = ("ask the provider to enable it, or change authentication.method"
            if method == "OAuth2" else
            "adjust mail.smtp.auth.mechanisms / mail.smtp.auth.plain.disable in advanced, "
            "or use a server that offers one")
    return None, f"the server offers {offer}; {method} here needs {usable}: {hint}"


def auth_outcome(reply: Reply, mech: str, ident: str, account: Account) -> Outcome:
    assert account.smtp is not None
    auth = account.smtp.authentication
    if 200 <= reply.code < 300:
        return Outcome(True, reasons.SUCCEEDED,
                       f"authenticated as {ident} using {mech} ({reply.text})")
    if reply.code == 550 and "5.7.30" in reply.text:  # Exchange Online: Basic auth switched off
        from reconciler.manifest.providers import BASIC_AUTH_FIX

        return Outcome(False, reasons.BASIC_AUTH_DEPRECATED,
                       f"the server no longer accepts basic authentication (password) for "
                       f"{ident}: {reply.text}: {BASIC_AUTH_FIX}")
    if 400 <= reply.code < 500:
        return Outcome(False, reasons.AUTHENTICATION_TEMPORARY_FAILURE,
                       f"the server could not authenticate {ident} using {mech} now: "
                       f"{reply.text}; retry later")
    if reply.code == 503:
        return Outcome(False, reasons.PROTOCOL_VIOLATION,
                       f"the server answered AUTH {mech} with a bad-sequence error "
                       f"({reply.text}): it advertised AUTH but does not take it now; this is "
                       "not a wrong password: check the server's AUTH setup (e.g. AUTH only "
                       "after STARTTLS) and connection.security")
    if reply.code == 504:
        return Outcome(False, reasons.AUTH_MECHANISM_UNAVAILABLE,
                       f"the server does not accept {mech}: {reply.text}: adjust "
                       "mail.smtp.auth.mechanisms in advanced")
    if auth.method == "Password" and auth.password is not None:
        user = (f"the username in Secret {account.namespace}/{auth.username.name} key "
                f"{auth.username.key!r}" if auth.username is not None else "userId")
        fix = (f"check {user} and the password in Secret {account.namespace}/"
               f"{auth.password.name} key {auth.password.key!r}")
    elif auth.method == "AWSAccessKey" and auth.secret_access_key is not None:
        fix = (f"check the access key in Secret {account.namespace}/"
               f"{auth.secret_access_key.name}, that its IAM user may ses:SendRawEmail, and "
               f"that spec.region ({account.region}) is the SES region to send from")
    else:
        fix = "check the OAuth2 subject, scopes and the client's permission to send as it"
    return Outcome(False, reasons.AUTHENTICATION_FAILED,
                   f"the server rejected {mech} authentication for {ident}: {reply.text}: {fix}")
