"""Local HTTPS fakes of Google's token endpoint and the Microsoft identity platform.

The `demo` command reconciles the OAuth 2.0 and Microsoft Graph examples against them, and the
test suite (tests/fake_idp.py) builds on them. They are `HttpsFake`s (reconciler/demo/https.py),
speak the real wire formats, and verify what the real services verify, so msal and our own urllib
calls really talk to them:

- GoogleTokenEndpoint: RFC 7523 JWT bearer; verifies the RS256 signature against the service
  account's public key and every claim, answers like oauth2.googleapis.com.
- MicrosoftIdentity: the parts of the Microsoft identity platform msal talks to (OpenID
  configuration, user realm, /{tenant}/oauth2/v2.0/token) for client secret, client certificate
  (client assertion signature verified against the certificate) and password grants, with errors
  in the real AADSTS shape.

It also owns the JWT and key helpers they and their callers share: base64url, JWS splitting, RSA
keys, a service-account key file, an app registration's client certificate, access tokens.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets as pysecrets
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from reconciler.demo.https import HttpsFake, Seen

if TYPE_CHECKING:
    import trustme

    from reconciler.demo.certificates import ThrowawayCA

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
OUTLOOK_AUDIENCE = "https://outlook.office365.com"
DEFAULT_TENANT = "11111111-2222-3333-4444-555555555555"


# ---------------------------------------------------------------------- JWT and key helpers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS."""
    head, body, sig = token.split(".")
    return (json.loads(b64url_decode(head)), json.loads(b64url_decode(body)),
            f"{head}.{body}".encode(), b64url_decode(sig))


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (what Google and Entra accept)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_json(client_email: str, key: rsa.RSAPrivateKey, key_id: str = "kid-1",
                         token_uri: str = "https://oauth2.googleapis.com/token") -> bytes:
    """A Google service-account key file, as downloaded from the console."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": "demo", "private_key_id": key_id,
        "private_key": pem, "client_email": client_email, "client_id": "1234567890",
        "token_uri": token_uri,
    }).encode()


def client_certificate(common_name: str, days: int = 30) -> tuple[x509.Certificate, bytes]:
    """A self-signed RSA certificate for an app registration, and its key + certificate as PEM."""
    key = rsa_key()
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    pem = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
           + cert.public_bytes(serialization.Encoding.PEM))
    return cert, pem


def fake_access_token(claims: Mapping[str, Any]) -> str:
    """A JWT-shaped access token (signature not meant to be verified by clients)."""
    head = b64url(json.dumps({"typ": "JWT", "alg": "RS256", "kid": "fake"}).encode())
    body = b64url(json.dumps(dict(claims)).encode())
    return f"{head}.{body}.{b64url(pysecrets.token_bytes(32))}"


# ---------------------------------------------------------------------- Google


@dataclass
class GoogleTokenEndpoint(HttpsFake):
    """oauth2.googleapis.com/token for service accounts with domain-wide delegation."""

    ca: ThrowawayCA | trustme.CA
    accounts: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)  # client_email -> key
    subjects: set[str] = field(default_factory=set)  # mailboxes delegation allows
    scope: str = GOOGLE_MAIL_SCOPE
    issued: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> verified claims

    def __post_init__(self) -> None:
        HttpsFake.__init__(self, self.ca)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def handle(self, req: Seen) -> tuple[int, Any]:
        if req.method != "POST" or req.path != "/token":
            return 404, {"error": "not_found"}
        form = req.form()
        if form.get("grant_type") != JWT_BEARER:
            return 400, _google_error("unsupported_grant_type", "Invalid grant_type: "
                                      + form.get("grant_type", ""))
        try:
            header, claims, signed, signature = split_jwt(form.get("assertion", ""))
        except ValueError:
            return 400, _google_error("invalid_grant", "Invalid JWT: malformed")
        key = self.accounts.get(str(claims.get("iss")))
        if key is None:
            return 400, _google_error("invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256" or header.get("typ") != "JWT" or not header.get("kid"):
            return 400, _google_error("invalid_grant", f"Invalid JWT header: {header}")
        try:
            key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return 400, _google_error("invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int) and isinstance(exp, int)):
            return 400, _google_error("invalid_grant", "Invalid JWT: iat/exp must be integers")
        if abs(iat - now) > 300 or exp <= now or exp - iat > 3600:
            return 400, _google_error("invalid_grant", "Invalid JWT: Token must be a short-lived "
                                      "token (60 minutes) and in a reasonable timeframe.")
        if claims.get("aud") != self.token_url:
            return 400, _google_error("invalid_grant", "Invalid JWT: aud is not the token URL")
        if claims.get("scope") != self.scope or claims.get("sub") not in self.subjects:
            return 401, _google_error(
                "unauthorized_client", "Client is unauthorized to retrieve access tokens using "
                "this method, or client not authorized for any of the scopes requested.")
        token = "ya29." + b64url(pysecrets.token_bytes(24))
        with self.lock:
            self.issued[token] = claims
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}


def _google_error(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description}


# ---------------------------------------------------------------------- Microsoft


@dataclass
class Client:
    """An app registration: a secret and/or a certificate, and its application permissions."""

    secret: str | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    roles: tuple[str, ...] = ("Mail.Send", "User.Read.All")
    public: bool = False  # allows the password grant without a client credential


@dataclass
class MicrosoftIdentity(HttpsFake):
    """login.microsoftonline.com for one tenant, known by its id and its verified domains."""

    ca: ThrowawayCA | trustme.CA
    tenant_id: str = DEFAULT_TENANT
    clients: dict[str, Client] = field(default_factory=dict)
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # upn -> (password, scp)
    issued: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> claims
    assertions: list[dict[str, Any]] = field(default_factory=list)  # verified client assertions
    domains: set[str] = field(default_factory=set)  # other names of the tenant (contoso.com)

    def __post_init__(self) -> None:
        HttpsFake.__init__(self, self.ca)

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/{self.tenant_id}/oauth2/v2.0/token"

    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def handle(self, req: Seen) -> tuple[int, Any]:
        path = urllib.parse.urlsplit(req.path).path
        parts = path.strip("/").split("/")
        if req.method == "GET" and path.endswith("/v2.0/.well-known/openid-configuration"):
            if parts[0] != self.tenant_id and parts[0] not in self.domains:
                return 400, _aad_error("invalid_tenant", 90002,
                                       f"Tenant '{parts[0]}' not found.")
            # Like Entra: a domain name resolves to the tenant's id-based endpoints.
            base = f"{self.url}/{self.tenant_id}"
            return 200, {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "private_key_jwt"],
            }
        if req.method == "GET" and parts[:2] == ["common", "userrealm"]:
            return 200, {"ver": "1.0", "account_type": "Managed",
                         "domain_name": parts[2].split("@")[-1]}
        if req.method == "POST" and path == f"/{self.tenant_id}/oauth2/v2.0/token":
            return self._token(req.form())
        return 404, {"error": "not_found"}

    def _token(self, form: dict[str, str]) -> tuple[int, Any]:
        client_id = form.get("client_id", "")
        client = self.clients.get(client_id)
        if client is None:
            return 400, _aad_error(
                "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant_id}'.")
        authenticated = self._client_auth(client_id, client, form)
        if authenticated is not None:
            return authenticated
        scopes = form.get("scope", "").split()
        grant = form.get("grant_type")
        claims: dict[str, Any]
        if grant == "client_credentials":
            if scopes != ["https://graph.microsoft.com/.default"] and scopes != [
                    f"{OUTLOOK_AUDIENCE}/.default"]:
                return 400, _aad_error("invalid_scope", 1002012,
                                       f"The provided value for scope {' '.join(scopes)} is "
                                       f"not valid.")
            claims = {"aud": scopes[0].removesuffix("/.default"), "tid": self.tenant_id,
                      "appid": client_id, "roles": list(client.roles)}
        elif grant == "password":
            user = self.users.get(form.get("username", ""))
            if user is None or user[0] != form.get("password"):
                return 400, _aad_error(
                    "invalid_grant", 50126,
                    "Error validating credentials due to invalid username or password.")
            claims = {"aud": "https://graph.microsoft.com", "tid": self.tenant_id,
                      "appid": client_id, "upn": form["username"], "scp": user[1]}
        else:
            return 400, _aad_error("unsupported_grant_type", 70003,
                                   f"The app requested an unsupported grant type '{grant}'.")
        claims["exp"] = int(time.time()) + 3599
        token = fake_access_token(claims)
        with self.lock:
            self.issued[token] = claims
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                     "access_token": token}

    def _client_auth(self, client_id: str, client: Client,
                     form: dict[str, str]) -> tuple[int, Any] | None:
        """None when the client authenticated (or is public and presented nothing)."""
        if "client_secret" in form:
            if client.secret is None or form["client_secret"] != client.secret:
                return 401, _aad_error(
                    "invalid_client", 7000215,
                    f"Invalid client secret provided. Ensure the secret being sent in the "
                    f"request is the client secret value, not the client secret ID, for a "
                    f"secret added to app '{client_id}'.")
            return None
        if "client_assertion" in form:
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                return 400, _aad_error("invalid_request", 900023, "Invalid assertion type.")
            return self._verify_assertion(client_id, client, form["client_assertion"])
        if client.public and form.get("grant_type") == "password":
            return None
        return 401, _aad_error("invalid_client", 7000218,
                               "The request body must contain the following parameter: "
                               "'client_assertion' or 'client_secret'.")

    def _verify_assertion(self, client_id: str, client: Client,
                          assertion: str) -> tuple[int, Any] | None:
        if client.certificate is None:
            return 401, _aad_error("invalid_client", 700027,
                                   "Client assertion contains an invalid signature. "
                                   "No certificate is registered for the app.")
        try:
            header, claims, signed, signature = split_jwt(assertion)
        except ValueError:
            return 401, _aad_error("invalid_client", 700027, "Client assertion is malformed.")
        cert = client.certificate
        public = cert.public_key()
        alg = header.get("alg")
        # msal sends the thumbprint base64url-encoded with its "=" padding.
        thumb_ok = (str(header.get("x5t#S256")).rstrip("=")
                    == b64url(cert.fingerprint(hashes.SHA256()))
                    or str(header.get("x5t")).rstrip("=")
                    == b64url(cert.fingerprint(hashes.SHA1())))
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
            if alg == "PS256" else padding.PKCS1v15())
        try:
            if (alg not in ("PS256", "RS256") or not thumb_ok
                    or not isinstance(public, rsa.RSAPublicKey)):
                raise InvalidSignature
            public.verify(signature, signed, pad, hashes.SHA256())
        except InvalidSignature:
            return 401, _aad_error("invalid_client", 700027,
                                   "Client assertion failed signature validation.")
        now, exp = time.time(), float(claims.get("exp", 0))
        if (claims.get("aud") != self.token_endpoint or claims.get("iss") != client_id
                or claims.get("sub") != client_id or not claims.get("jti")
                or not now < exp <= now + 3600):
            return 401, _aad_error("invalid_client", 700023,
                                   f"Client assertion audience claim does not match Realm "
                                   f"issuer, or iss/sub/exp is wrong: {claims}")
        with self.lock:
            self.assertions.append({"header": header, "claims": claims})
        return None


def _aad_error(error: str, code: int, text: str) -> dict[str, Any]:
    """An error body as login.microsoftonline.com sends it."""
    trace, corr = pysecrets.token_hex(16), pysecrets.token_hex(16)
    return {
        "error": error,
        "error_description": (f"AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: "
                              f"{corr}\r\nTimestamp: 2026-01-01 00:00:00Z"),
        "error_codes": [code],
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }
