"""What a manifest may add to the published Secret beyond the fields the probe tested (DESIGN §6, §8).

The published configuration is derived only from what the probe tested: the host, port, security,
TLS floor, truststore and login. `smtp.advanced` is carried into the published JavaMail/Spring
properties and sender.json, so an advanced key that chooses the server, the port, TLS or trust
would send the application (and its password) somewhere the probe never looked, or undo the
downgrade protection (`mail.smtp.starttls.enable: "false"`, `mail.smtp.ssl.trust: "*"`). Such keys
are refused; every other key stays an application setting (timeouts, EHLO name, mechanisms, MIME).

A published Secret is never a credential: labels and annotations under `email.reconciler.io/` are
ours (the opt-in label `email.reconciler.io/credential` would let another account read the
published password without its owner's bindings), so `publish.labels`/`annotations` may not set
them. Annotations that make another controller copy the Secret elsewhere are the admin's call
(reconciler.policy.copy_annotation_refusal), not the manifest's.

Pure: the rules, the check `validate` runs, and the CEL rules the CRD states them with.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from reconciler.model import API_GROUP

Finding = tuple[str, str, Literal["error", "warning"]]

#: JavaMail properties (under mail.smtp. or mail.smtps.) that choose the server, port, TLS,
#: trust, proxy or login: what the probe tested, or a way around it.
_JAVAMAIL_TESTED = ("host|port|user|starttls[.].*|ssl[.].*|socketfactory([.].*)?|proxy[.].*"
                    "|socks[.].*")
#: Every refused key, compared case-insensitively: JavaMail's own, and the Spring Boot and
#: nodemailer names of the same settings (sender.json carries the map to applications that may
#: apply it either way). `[.]`, not `\.`: the CRD quotes it in a CEL string literal.
TESTED_KEY = (f"mail[.]smtps?[.]({_JAVAMAIL_TESTED})|mail[.](host|user|transport[.]protocol)"
              "|spring[.](mail|ssl)[.].*"
              "|(host|port|secure|requiretls|ignoretls|opportunistictls|proxy|tls)([.].*)?")
_TESTED = re.compile(TESTED_KEY, re.IGNORECASE)
#: The prefix of our own labels and annotations.
RESERVED_PREFIX = f"{API_GROUP}/"
_ADVANCED = "/spec/smtp/advanced"


def advanced_key_problem(key: str) -> str | None:
    """Why an `advanced` key may not be set (it would change what the probe tested), or None."""
    if _TESTED.fullmatch(key) is None:
        return None
    return (f"advanced key {key[:80]!r} would change the server, port, TLS, trust or login the "
            "probe tested, which the published configuration must keep: set it with "
            "smtp.connection (host, port, security, minTLSVersion, truststore) or "
            "smtp.identity.userId instead, or remove it")


def untested(advanced: Mapping[str, str]) -> dict[str, str]:
    """The advanced keys that may reach a published configuration (defence in depth in render:
    a refused key never overrides a tested field, whatever let it through)."""
    return {str(k): str(v) for k, v in advanced.items() if advanced_key_problem(str(k)) is None}


def reserved_key_problem(key: str) -> str | None:
    """Why a publish label/annotation key is ours alone, or None."""
    if not key.lower().startswith(RESERVED_PREFIX):
        return None
    return (f"keys under {RESERVED_PREFIX} are set by email-reconciler alone (a published Secret "
            f"must never look like a credential opted in for e-mail): remove {key[:80]!r}")


def _spec_map(doc: Mapping[str, Any], *path: str) -> Mapping[str, Any]:
    node: Any = doc.get("spec")
    for name in path:  # YAML's maps are dicts: the ABC's isinstance only for others
        node = node.get(name) if type(node) is dict or (
            node is not None and isinstance(node, Mapping)) else None
    return node if type(node) is dict or (node is not None and isinstance(node, Mapping)) else {}


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def check_published(doc: Mapping[str, Any]) -> list[Finding]:
    """Errors for advanced keys that change a tested field and for reserved publish keys."""
    return list(_findings(doc))


def _findings(doc: Mapping[str, Any]) -> Iterator[Finding]:
    for key in _spec_map(doc, "smtp", "advanced"):
        problem = advanced_key_problem(str(key))
        if problem:
            yield f"{_ADVANCED}/{_escape(str(key))}", problem, "error"
    for field in ("labels", "annotations"):
        for key in _spec_map(doc, "publish", field):
            problem = reserved_key_problem(str(key))
            if problem:
                yield f"/spec/publish/{field}/{_escape(str(key))}", problem, "error"


def cel_rules() -> dict[tuple[str, ...], list[dict[str, str]]]:
    """The same rules as CEL `x-kubernetes-validations`, by the path of the map they check."""
    advanced = {"rule": f"self.all(k, !k.matches('(?i)^({TESTED_KEY})$'))",
                "message": "advanced keys may not change the server, port, TLS, trust or login "
                           "the probe tested (mail.smtp.host, port, user, starttls.*, ssl.*, "
                           "socketFactory*, proxy.*, socks.*, mail.smtps.*, mail.transport."
                           "protocol, spring.mail.*, spring.ssl.*): set them with "
                           "smtp.connection or smtp.identity"}
    reserved = {"rule": f"self.all(k, !k.matches('(?i)^{RESERVED_PREFIX.replace('.', '[.]')}'))",
                "message": f"keys under {RESERVED_PREFIX} are set by email-reconciler alone"}
    return {("spec", "smtp", "advanced"): [advanced],
            ("spec", "publish", "labels"): [reserved],
            ("spec", "publish", "annotations"): [reserved]}
