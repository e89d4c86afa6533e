"""Who may use what (DESIGN §8): no confused deputy.

A manifest author names Secrets and hosts; the tool holds the credentials. So, before anything
is read or sent:
- `endpoint_refusal`: OAuth/Graph URLs must be https and on the admin's allow-list
  (`--allowed-endpoints`, default the public and sovereign clouds); SMTP hosts may be restricted
  (`--allowed-hosts`, default any).
- `publish_refusal`: annotations that make another controller copy the published Secret (and
  its credentials) to other namespaces or clusters are the admin's call
  (`--allow-publish-annotations`), not the manifest author's.
- `GuardedReader`: a Secret (or ConfigMap) is read for an account only when its owner opted it
  in with the label `email.reconciler.io/credential: "true"`, and within the hosts and accounts
  its annotations allow. Service-account tokens and registry credentials are never read, nor a
  Secret we published (our managed-by label): it holds another account's credential without the
  bindings its owner gave the original. The
  entries of a local `--secrets-dir` count as opted in: the operator laid that folder out.
- `credential_copy_refusal`: a client secret, certificate or service-account key is copied into the
  published Secret (publish.clientCredentials) only when its owner also allows that with the
  annotation `email.reconciler.io/publishable: "true"` (a local --secrets-dir: always).
- `certificates_only`: a truststore holds CERTIFICATE PEM blocks and nothing else.

Pure: no I/O beyond the SecretReader it wraps.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from reconciler import reasons
from reconciler.errors import SecretNotAllowed, UsageError
from reconciler.log import RELIABLE_SECRET_LENGTH
from reconciler.model import (
    API_GROUP,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    Account,
    KeyRef,
    Outcome,
    SecretReader,
)

CREDENTIAL_LABEL = f"{API_GROUP}/credential"
ALLOWED_HOSTS_ANNOTATION = f"{API_GROUP}/allowed-hosts"
ALLOWED_ACCOUNTS_ANNOTATION = f"{API_GROUP}/allowed-accounts"
#: The owner's consent to copy a client secret, certificate or service-account key into the
#: account's published Secret (spec.publish.clientCredentials): reading it is not copying it.
PUBLISHABLE_ANNOTATION = f"{API_GROUP}/publishable"
#: Secret types that are never credentials for e-mail, whatever their labels say.
NEVER_USABLE_TYPES = frozenset({
    "kubernetes.io/service-account-token",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/dockercfg",
})
#: OAuth and Graph hosts allowed without `--allowed-endpoints`: the public and sovereign clouds.
DEFAULT_ENDPOINTS = (
    "login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
    "graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn", "oauth2.googleapis.com",
)
#: Annotations by which another controller copies a Secret to other namespaces or clusters, or
#: fills it from elsewhere: Reflector (emberstack), kubed / config-syncer (AppsCode),
#: kubernetes-replicator (mittwald), secretgen-controller (Carvel).
COPY_ANNOTATIONS = (
    "reflector.v1.k8s.emberstack.com/*", "kubed.appscode.com/*", "replicator.v1.mittwald.de/*",
    "secretgen.carvel.dev/*",
)


# --------------------------------------------------------------------------- globs


def parse_globs(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """`a,b, c` (or several such strings) as a tuple of lower-case globs."""
    if text is None:
        return ()
    items = [text] if isinstance(text, str) else list(text)
    return tuple(g.strip().lower() for item in items for g in item.split(",") if g.strip())


#: The host part of a glob over IPv4 addresses (`127.0.0.*`, `10.?.0.1`).
_IPV4_GLOB = re.compile(r"[0-9.*?]*[0-9][0-9.*?]*")


@functools.lru_cache(maxsize=1024)
def _address(host: str) -> str | None:
    """The canonical text of an IP address, or None for a DNS name (cached: every probe asks)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _is_address_glob(glob: str, names_port: bool) -> bool:
    """Whether a glob's host part is an IP address pattern (IPv4 digits, or IPv6 colons)."""
    hostpart = (glob.rsplit(":", 1)[0] if names_port else glob).strip("[]")
    return ":" in hostpart or _IPV4_GLOB.fullmatch(hostpart) is not None


def host_matches(globs: Sequence[str], host: str, port: int | None) -> bool:
    """A glob matches the host, or `host:port` when the glob names a port (`127.0.0.1:*`,
    `[::1]:*`); an IPv6 glob without brackets matches the bare address. A glob over addresses
    (`127.0.0.*`) matches IP addresses only, never a DNS name such as `127.0.0.evil.example`.

    Cached (a pure function of the three): every probe checks its host against --allowed-hosts
    before anything else, 3 us of globs and regexes for the same answer each time."""
    return _host_matches(tuple(globs), host, port)


@functools.lru_cache(maxsize=4096)
def _host_matches(globs: tuple[str, ...], host: str, port: int | None) -> bool:
    host = host.lower().strip("[]").rstrip(".")
    address = _address(host)
    for glob in globs:
        tail = glob.rsplit("]", 1)[-1] if glob.startswith("[") else glob
        names_port = tail.count(":") == 1
        if names_port and port is None:
            continue
        name = host
        if _is_address_glob(glob, names_port):
            if address is None:
                continue
            name = address
        with_port = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        # fnmatch reads [...] as a character class: brackets of an IPv6 literal are literal.
        pattern = glob.replace("[", "\0").replace("]", "[]]").replace("\0", "[[]")
        if fnmatch.fnmatchcase(with_port if names_port else name, pattern):
            return True
    return False


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Policy:
    """The admin's rules: which HTTPS endpoints and SMTP hosts credentials may go to."""

    allowed_endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    allowed_hosts: tuple[str, ...] = ("*",)
    #: COPY_ANNOTATIONS keys the admin allows on published Secrets (`--allow-publish-annotations`).
    allowed_publish_annotations: tuple[str, ...] = ()

    @classmethod
    def from_flags(cls, allowed_endpoints: str | Iterable[str] | None = None,
                   allowed_hosts: str | Iterable[str] | None = None,
                   allow_publish_annotations: str | Iterable[str] | None = None) -> Policy:
        """`--allowed-endpoints` widens the default list; `--allowed-hosts` replaces "any";
        `--allow-publish-annotations` lets these copy-elsewhere annotations be published."""
        extra = parse_globs(allowed_endpoints)
        hosts = parse_globs(allowed_hosts)
        for glob in (*extra, *hosts):
            if "/" in glob:
                raise UsageError(f"{glob!r}: a host glob (host or host:port), not a URL")
        return cls(allowed_endpoints=DEFAULT_ENDPOINTS + extra, allowed_hosts=hosts or ("*",),
                   allowed_publish_annotations=parse_globs(allow_publish_annotations))


DEFAULT_POLICY = Policy()

#: The endpoint policy of the running probe, for the HTTP client (reconciler.probe.httpclient)
#: and msal's discovered URLs: a context variable, so token requests find it without every
#: TokenProvider growing a parameter. Here rather than in the HTTP client, so that a probe
#: that sends no HTTP request imports none (bench/README.md, benchmark 7).
_current: contextvars.ContextVar[Policy | None] = contextvars.ContextVar(
    "reconciler_endpoint_policy", default=None)


def current_policy() -> Policy | None:
    """The endpoint policy of the running probe; None outside one (the relay, a test of the
    token cache alone): then msal may talk to the authority's own host only."""
    return _current.get()


@contextlib.contextmanager
def endpoint_scope(policy: Policy) -> Iterator[Policy]:
    """Make `policy` the one `current_policy` returns for the code (and tasks) inside."""
    token = _current.set(policy)
    try:
        yield policy
    finally:
        _current.reset(token)


def _endpoints(account: Account) -> list[tuple[str, str]]:
    """(manifest field, URL) of every HTTPS endpoint the account's credentials go to."""
    out: list[tuple[str, str]] = []
    if account.smtp is not None and account.smtp.authentication.method == "OAuth2":
        o = account.smtp.authentication.oauth2
        if o is not None and o.grant_type == "JWTBearer":
            out.append(("spec.smtp.authentication.oauth2.tokenUrl", o.token_url))
        elif o is not None:
            out.append(("spec.smtp.authentication.oauth2.authority", o.authority))
    if account.graph is not None:
        out.append(("spec.graph.authentication.authority", account.graph.authority))
        out.append(("spec.graph.endpoint", account.graph.endpoint))
    return out


def url_refusal(where: str, url: str, policy: Policy) -> str | None:
    """Why credentials may not go to `url` (not https, or not on the allow-list), or None.
    The probe's HTTP client asks it for every URL a library requests (msal's token_endpoint
    from an OpenID discovery document), not only for the manifest's."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        return (f"{where} {url!r} is not an https:// URL: credentials and tokens are sent over "
                "HTTPS only")
    try:
        port = parts.port or 443
    except ValueError:
        port = None
    if port is None or not host_matches(policy.allowed_endpoints, parts.hostname, port):
        return (f"{where} names host {parts.hostname}, which is not on the reconciler's "
                "endpoint allow-list: an administrator may add it with --allowed-endpoints "
                f"{parts.hostname}")
    return None


def endpoint_refusal(account: Account, policy: Policy = DEFAULT_POLICY) -> Outcome | None:
    """EndpointNotAllowed when a URL is not https or not allowed, or the SMTP host is not
    allowed; None when the account may go ahead. Checked before any credential is read."""
    for where, url in _endpoints(account):
        why = url_refusal(where, url, policy)
        if why is not None:
            return Outcome(False, reasons.ENDPOINT_NOT_ALLOWED, why)
    if account.smtp is not None:
        conn = account.smtp.connection
        if not host_matches(policy.allowed_hosts, conn.host, conn.port):
            return Outcome(False, reasons.ENDPOINT_NOT_ALLOWED,
                           f"spec.smtp.connection.host {conn.host} is not among the SMTP hosts "
                           "this reconciler may connect to (--allowed-hosts "
                           f"{','.join(policy.allowed_hosts)})")
    return None


def copies_secret(key: str) -> bool:
    """Whether an annotation key makes another controller copy the Secret (COPY_ANNOTATIONS)."""
    return any(fnmatch.fnmatchcase(key.lower(), glob) for glob in COPY_ANNOTATIONS)


def publish_refusal(account: Account, policy: Policy = DEFAULT_POLICY) -> Outcome | None:
    """PublishNotAllowed when spec.publish.annotations would have another controller copy the
    published Secret elsewhere and the admin did not allow that annotation; else None."""
    for key in sorted(account.publish.annotations):
        if copies_secret(key) and not any(fnmatch.fnmatchcase(key.lower(), glob)
                                          for glob in policy.allowed_publish_annotations):
            return Outcome(False, reasons.PUBLISH_NOT_ALLOWED,
                           f"spec.publish.annotations {key!r} would have another controller copy "
                           "the published Secret, credentials included, beyond this namespace: "
                           "remove it, or an administrator allows it with "
                           f"--allow-publish-annotations {key}")
    return None


def policy_refusal(account: Account, policy: Policy = DEFAULT_POLICY) -> Outcome | None:
    """The first of endpoint_refusal and publish_refusal: decided before anything is read."""
    return endpoint_refusal(account, policy) or publish_refusal(account, policy)


# --------------------------------------------------------------------------- opt-in Secrets


@dataclass(frozen=True)
class SecretMeta:
    """What the opt-in check needs to know about a Secret or ConfigMap (never its data)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    type: str = ""
    opted_in: bool = False  # True for the operator's own sources (a local --secrets-dir)


OPERATOR_SOURCE = SecretMeta(opted_in=True)


def _host(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    try:
        return (parts.hostname or url, parts.port or 443)
    except ValueError:
        return (parts.hostname or url, None)


def destinations(account: Account) -> dict[KeyRef, tuple[tuple[str, int | None], ...]]:
    """For each reference, the (host, port) its value is sent to (or used with)."""
    out: dict[KeyRef, tuple[tuple[str, int | None], ...]] = {}

    def put(ref: KeyRef | None, *hosts: tuple[str, int | None]) -> None:
        if ref is not None:
            out[ref] = hosts

    if account.smtp is not None:
        s = account.smtp
        mail = (s.connection.host, s.connection.port)
        put(s.connection.truststore, mail)
        put(s.authentication.username, mail)
        put(s.authentication.password, mail)
        put(s.authentication.access_key_id, mail)
        put(s.authentication.secret_access_key, mail)
        o = s.authentication.oauth2
        if o is not None:
            put(o.service_account_key, _host(o.token_url))
            put(o.client_secret, _host(o.authority))
            put(o.client_certificate, _host(o.authority))
        if s.signing is not None:
            put(s.signing.keystore, mail)
            put(s.signing.keystore_password, mail)
    if account.graph is not None:
        g = account.graph
        login = _host(g.authority)
        for ref in (g.client_secret, g.client_certificate, g.username, g.password):
            put(ref, login)
    return out


def _kubectl(kind: str, namespace: str, name: str) -> str:
    return f"kubectl label {kind.lower()} -n {namespace} {name} {CREDENTIAL_LABEL}=true"


def secret_refusal(account: Account, ref: KeyRef, meta: SecretMeta) -> str | None:
    """Why this account may not use this Secret/ConfigMap (naming what to add), or None."""
    if meta.opted_in and meta.type not in NEVER_USABLE_TYPES:  # the local --secrets-dir
        return None
    what = f"{ref.kind} {account.namespace}/{ref.name}"
    used_by = f"EmailAccount {account.namespace}/{account.name}"
    if meta.type in NEVER_USABLE_TYPES:
        return (f"{what} is of type {meta.type}, which email-reconciler never reads: keep the "
                "e-mail credential in an Opaque Secret of its own")
    if meta.opted_in:
        return None
    if (meta.labels or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
        return (f"{what} is a Secret email-reconciler published, so {used_by} may not read it: a "
                "published Secret is never a credential (it holds another account's password "
                "without the bindings its owner gave the original); reference the original "
                "credential Secret instead")
    if (meta.labels or {}).get(CREDENTIAL_LABEL) != "true":
        return (f"{what} is not opted in for e-mail, so {used_by} may not read it: its owner "
                f"adds the label {CREDENTIAL_LABEL}: \"true\" ({_kubectl(ref.kind, account.namespace, ref.name)})")
    accounts = parse_globs((meta.annotations or {}).get(ALLOWED_ACCOUNTS_ANNOTATION))
    if accounts and not any(fnmatch.fnmatchcase(account.name.lower(), g) for g in accounts):
        return (f"{what} may be used only by the accounts its annotation "
                f"{ALLOWED_ACCOUNTS_ANNOTATION} names ({', '.join(accounts)}): its owner adds "
                f"{account.name} there to let {used_by} use it")
    hosts = parse_globs((meta.annotations or {}).get(ALLOWED_HOSTS_ANNOTATION))
    if hosts:
        for host, port in destinations(account).get(ref, ()):
            if not host_matches(hosts, host, port):
                return (f"{what} may be sent only to the hosts its annotation "
                        f"{ALLOWED_HOSTS_ANNOTATION} names ({', '.join(hosts)}), and "
                        f"{used_by} would send it to {host}: its owner adds {host} there")
    return None


def credential_copy_refusal(account: Account, ref: KeyRef, meta: SecretMeta) -> str | None:
    """Why a client credential may not be copied into the published Secret, or None.

    Reading it for the probe is what the credential label allows; publishing it hands it to
    every application that mounts the sender Secret, and an OAuth client credential can often
    send as any mailbox of its tenant or domain. So the owner allows that separately.
    """
    if meta.opted_in or (meta.annotations or {}).get(PUBLISHABLE_ANNOTATION) == "true":
        return None
    return (f"{ref.kind} {account.namespace}/{ref.name} key {ref.key!r} was not published "
            "(publish.clientCredentials): its owner allows the copy with the annotation "
            f"{PUBLISHABLE_ANNOTATION}: \"true\" (kubectl annotate {ref.kind.lower()} -n "
            f"{account.namespace} {ref.name} {PUBLISHABLE_ANNOTATION}=true)")


def secret_meta(reader: SecretReader, namespace: str, ref: KeyRef) -> SecretMeta:
    """The reader's metadata of the object; SecretNotFound when it does not exist. A reader
    that cannot tell is refused (fail closed)."""
    get = getattr(reader, "metadata", None)
    if get is None:
        raise SecretNotAllowed(namespace, ref.name, ref.key, ref.kind,
                               f"{ref.kind} {namespace}/{ref.name} comes from a source that "
                               "cannot show its labels, so it is not read")
    meta: SecretMeta = get(namespace, ref)
    return meta


class GuardedReader:
    """The SecretReader one account's probe gets: every read checked against §8's rules."""

    def __init__(self, inner: SecretReader, account: Account) -> None:
        self.inner, self.account = inner, account
        self.short: set[KeyRef] = set()  # credentials too short to be redacted reliably
        # What this probe was allowed to read: a probe asks for each reference's version, then
        # reads it, and the check is a metadata lookup (a stat for --secrets-dir) each time.
        # A refusal is not kept (the next call looks again); a new probe gets a new reader.
        self._allowed: set[tuple[str, KeyRef]] = set()

    def check(self, namespace: str, ref: KeyRef) -> None:
        """Raise SecretNotAllowed (or SecretNotFound) unless the account may read the ref."""
        if (namespace, ref) in self._allowed:
            return
        why = secret_refusal(self.account, ref, secret_meta(self.inner, namespace, ref))
        if why is not None:
            raise SecretNotAllowed(namespace, ref.name, ref.key, ref.kind, why)
        self._allowed.add((namespace, ref))

    def read(self, namespace: str, ref: KeyRef) -> bytes:
        self.check(namespace, ref)
        value = self.inner.read(namespace, ref)
        if 0 < len(value.strip()) < RELIABLE_SECRET_LENGTH:
            self.short.add(ref)
        return value

    def short_warning(self) -> Outcome | None:
        """ShortSecret when a credential read was under 8 characters: redaction (which must
        not eat ordinary words) cannot be relied on for it."""
        if not self.short:
            return None
        names = ", ".join(sorted(f"{r.kind} {self.account.namespace}/{r.name} key {r.key!r}"
                                 for r in self.short))
        return Outcome(False, reasons.SHORT_SECRET,
                       f"{names} is shorter than {RELIABLE_SECRET_LENGTH} characters, so it "
                       "cannot be redacted reliably from server replies and logs: use a longer "
                       "credential")

    def version(self, namespace: str, ref: KeyRef) -> str:
        self.check(namespace, ref)
        return self.inner.version(namespace, ref)

    def metadata(self, namespace: str, ref: KeyRef) -> SecretMeta:
        return secret_meta(self.inner, namespace, ref)


def guard(reader: SecretReader, account: Account) -> GuardedReader:
    """`reader` as `account` may use it (idempotent)."""
    if isinstance(reader, GuardedReader) and reader.account is account:
        return reader
    inner = reader.inner if isinstance(reader, GuardedReader) else reader
    return GuardedReader(inner, account)


# --------------------------------------------------------------------------- truststores

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_PEM_BEGIN = re.compile(r"-----BEGIN ([^-\r\n]*)-----")


@functools.lru_cache(maxsize=32)
def certificates_only(pem: bytes | str) -> tuple[str | None, str | None]:
    """(the CERTIFICATE blocks alone, None) or (None, why it is refused, echoing no content).

    A truststore holds CA certificates: a private key, or any block of another type, means the
    reference points at the wrong object, and nothing of it may be published as ca.crt.
    Cached by content (a pure function): every account of a truststore asks, 21 us each.
    """
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    kinds = {m.group(1).strip() for m in _PEM_BEGIN.finditer(text)}
    others = sorted(k for k in kinds if k != "CERTIFICATE")
    if others:
        shown = ", ".join(k if re.fullmatch(r"[A-Z0-9 ]{1,40}", k) else "?" for k in others)
        return None, (f"it holds PEM blocks other than CERTIFICATE ({shown}); a truststore "
                      "holds CA certificates only")
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(text) if m.group(1) == "CERTIFICATE"]
    if not blocks:
        return None, "it holds no PEM CERTIFICATE block"
    return "\n".join(blocks) + "\n", None
