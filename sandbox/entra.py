"""Entra ID emulator: the tenant's apps and users, the OpenID configuration, JWKS, userrealm and
the v2.0 token endpoint (client secret, certificate assertion, federated assertion, password grant)
exactly as msal calls them, issuing RS256 access tokens that the other emulators verify."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from sandbox.common import (
    ADMIN_CLIENT_ID,
    ADMIN_CLIENT_SECRET,
    LEADWRITER_CLIENT_ID,
    LEADWRITER_CLIENT_SECRET,
    PUBLIC_CLIENT_ID,
    TENANT_ID,
    json_response,
)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
ADMIN_OBJECT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0a02"
LEADWRITER_OBJECT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b02"


class InvalidToken(Exception):
    """A bearer token that is malformed, badly signed, expired or for another audience."""


class EntraError(Exception):
    """An Entra-style OAuth error (error, AADSTS code, description, HTTP status)."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"{error} AADSTS{code}")
        self.status, self.error, self.code, self.description = status, error, code, description


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_int(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    """(x5t, x5t#S256) as they appear in a JWT header: base64url of the SHA-1 / SHA-256 digests."""
    return _b64url(cert.fingerprint(hashes.SHA1())), _b64url(cert.fingerprint(hashes.SHA256()))  # noqa: S303


class Directory:
    """One Entra tenant: app registrations (with their service principals) and users. Thread-safe."""

    def __init__(self, base_url: str, tenant_id: str = TENANT_ID) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant_id = tenant_id
        self._lock = threading.RLock()
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex
        self._workload_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._apps: dict[str, dict[str, Any]] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self.reset()

    def __repr__(self) -> str:  # never show secrets or passwords
        return f"Directory(tenant={self.tenant_id}, apps={len(self._apps)}, users={len(self._users)})"

    # ----- well-known URLs -------------------------------------------------------------------
    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    @property
    def workload_issuer(self) -> str:
        return f"{self.base_url}/_workload-identity"

    # ----- registry ---------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._apps.clear()
            self._users.clear()
            self.register_app(client_id=ADMIN_CLIENT_ID, client_secret=ADMIN_CLIENT_SECRET,
                              display_name="Sandbox deploying identity", object_id=ADMIN_OBJECT_ID)
            self.register_app(client_id=LEADWRITER_CLIENT_ID, client_secret=LEADWRITER_CLIENT_SECRET,
                              display_name="Marketplace lead writer", object_id=LEADWRITER_OBJECT_ID)

    def register_app(self, *, display_name: str = "", client_id: str | None = None,
                     client_secret: str | None = None, certificate_pem: str | None = None,
                     federated_subject: str | None = None, object_id: str | None = None) -> dict[str, Any]:
        """Register (or extend) an app and its service principal; returns its public description."""
        cert = None
        if certificate_pem:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            cert = x509.load_pem_x509_certificate(pem)  # ValueError on garbage
        with self._lock:
            client_id = client_id or str(uuid.uuid4())
            app = self._apps.get(client_id.lower())
            if app is None:
                app = {"client_id": client_id, "object_id": object_id or str(uuid.uuid4()),
                       "display_name": display_name or f"app-{client_id[:8]}",
                       "secrets": [], "certificates": [], "federated_subjects": []}
                self._apps[client_id.lower()] = app
            elif display_name:
                app["display_name"] = display_name
            if client_secret:
                app["secrets"].append(client_secret)
            if cert is not None:
                x5t, x5t256 = _thumbprints(cert)
                app["certificates"].append({"x5t": x5t, "x5t#S256": x5t256, "public_key": cert.public_key()})
            if federated_subject:
                app["federated_subjects"].append(federated_subject)
            return self._public_app(app)

    def create_user(self, *, user_principal_name: str, password: str,
                    object_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            user = {"upn": user_principal_name, "password": password, "object_id": object_id or str(uuid.uuid4())}
            self._users[user_principal_name.lower()] = user
            return {"upn": user["upn"], "object_id": user["object_id"]}

    @staticmethod
    def _public_app(app: dict[str, Any]) -> dict[str, Any]:
        return {"client_id": app["client_id"], "object_id": app["object_id"], "display_name": app["display_name"]}

    def find_service_principal(self, app_id: str) -> dict[str, Any] | None:
        with self._lock:
            app = self._apps.get(str(app_id).lower())
            return self._public_app(app) if app else None

    def find_user(self, upn: str | None = None, object_id: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            for user in self._users.values():
                if (upn and user["upn"].lower() == upn.lower()) or (object_id and user["object_id"] == object_id):
                    return {"upn": user["upn"], "object_id": user["object_id"]}
            return None

    # ----- tokens -----------------------------------------------------------------------------
    def issue_access_token(self, audience: str, lifetime: int, *, client_id: str | None = None,
                           upn: str | None = None) -> tuple[str, int]:
        """Sign an access token for an app (client_id) or a user (upn). Returns (token, expires_on)."""
        now = int(time.time())
        claims: dict[str, Any] = {"aud": audience, "iss": self.issuer, "tid": self.tenant_id,
                                  "iat": now, "nbf": now, "exp": now + lifetime, "ver": "1.0"}
        with self._lock:
            if upn is not None:
                user = self._users.get(upn.lower())
                if user is None:
                    raise KeyError(f"unknown user {upn}")
                claims.update(oid=user["object_id"], sub=user["object_id"], upn=user["upn"],
                              unique_name=user["upn"], appid=client_id or PUBLIC_CLIENT_ID, idtyp="user")
            else:
                app = self._apps.get((client_id or "").lower())
                if app is None:
                    raise KeyError(f"unknown app {client_id}")
                claims.update(oid=app["object_id"], sub=app["object_id"], appid=app["client_id"],
                              azp=app["client_id"], idtyp="app")
        token = jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid})
        return token, claims["exp"]

    def verify_access_token(self, token: str, audience: str) -> dict[str, Any]:
        """Claims of a token this tenant signed for `audience`; InvalidToken otherwise."""
        try:
            return jwt.decode(token, self._signing_key.public_key(), algorithms=["RS256"], audience=audience,
                              issuer=self.issuer, options={"require": ["exp", "aud", "oid", "tid"]})
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("wrong audience") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("invalid token") from exc

    def issue_federated_token(self, subject: str, audience: str = FEDERATED_AUDIENCE, lifetime: int = 600) -> str:
        """A token from the sandbox's workload identity issuer (what CI's OIDC provider hands out)."""
        now = int(time.time())
        claims = {"iss": self.workload_issuer, "sub": subject, "aud": audience, "iat": now, "nbf": now,
                  "exp": now + lifetime, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self._workload_key, algorithm="RS256", headers={"kid": "workload"})

    def jwks(self) -> dict[str, Any]:
        numbers = self._signing_key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "kid": self._kid, "x5t": self._kid, "alg": "RS256",
                          "n": _b64url_int(numbers.n), "e": _b64url_int(numbers.e)}]}

    # ----- HTTP endpoints ---------------------------------------------------------------------
    def openid_configuration(self) -> Response:
        auth = self.authority
        return json_response({
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{auth}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{auth}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base_url}/oidc/userinfo",
            "authorization_endpoint": f"{auth}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{auth}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{auth}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "oid", "tid", "upn"],
            "kerberos_endpoint": f"{auth}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        })

    def userrealm(self, upn: str) -> Response:
        domain = upn.split("@")[-1] if "@" in upn else upn
        return json_response({"ver": "1.0", "account_type": "Managed", "domain_name": domain,
                              "cloud_instance_name": "microsoftonline.com", "cloud_audience_urn": "urn:federation:MicrosoftOnline"})

    def token(self, request: Request, lifetime: int, resource_known: Callable[[str], bool]) -> Response:
        """POST {tenant}/oauth2/v2.0/token."""
        form = request.form
        correlation = request.headers.get("client-request-id") or str(uuid.uuid4())
        try:
            grant = form.get("grant_type", "")
            resource = self._resource(form.get("scope", ""), resource_known)
            if grant == "client_credentials":
                client_id = self._authenticate_client(form)
                token, expires_on = self.issue_access_token(resource, lifetime, client_id=client_id)
                body: dict[str, Any] = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                                        "access_token": token}
            elif grant == "password":
                upn = self._authenticate_user(form)
                token, expires_on = self.issue_access_token(resource, lifetime, client_id=form.get("client_id"), upn=upn)
                body = {"token_type": "Bearer", "scope": form.get("scope", ""), "expires_in": lifetime,
                        "ext_expires_in": lifetime, "access_token": token}
                body.update(self._user_identity(form, upn, lifetime))
            else:
                raise EntraError(400, "unsupported_grant_type", 70003,
                                 "The app requested an unsupported grant type.")
        except EntraError as err:
            return self.error_response(err, correlation)
        return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _user_identity(self, form: Any, upn: str, lifetime: int) -> dict[str, str]:
        """A user sign-in asked with the `openid` scope also gets a v2.0 ID token, and `client_info` (uid/utid)
        when asked with client_info=1, as Entra answers msal (azure-identity builds its account record from
        them). Refresh tokens are not issued: the sandbox has no refresh_token grant."""
        if "openid" not in form.get("scope", "").split():
            return {}
        with self._lock:
            user = dict(self._users[upn.lower()])
        now = int(time.time())
        claims = {"aud": form.get("client_id", ""), "iss": f"{self.authority}/v2.0", "iat": now, "nbf": now,
                  "exp": now + lifetime, "oid": user["object_id"], "sub": user["object_id"], "tid": self.tenant_id,
                  "preferred_username": user["upn"], "name": user["upn"].split("@")[0], "ver": "2.0"}
        out = {"id_token": jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid})}
        if form.get("client_info") == "1":
            info = {"uid": user["object_id"], "utid": self.tenant_id}
            out["client_info"] = _b64url(json.dumps(info).encode())
        return out

    def error_response(self, err: EntraError, correlation_id: str | None = None) -> Response:
        trace_id = str(uuid.uuid4())
        correlation_id = correlation_id or str(uuid.uuid4())
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        description = (f"AADSTS{err.code}: {err.description} Trace ID: {trace_id} "
                       f"Correlation ID: {correlation_id} Timestamp: {stamp}")
        return json_response({"error": err.error, "error_description": description, "error_codes": [err.code],
                              "timestamp": stamp, "trace_id": trace_id, "correlation_id": correlation_id,
                              "error_uri": f"{self.base_url}/error?code={err.code}"}, err.status)

    def _resource(self, scope: str, resource_known: Callable[[str], bool]) -> str:
        defaults = [s for s in scope.split() if s.endswith("/.default")]
        if len(defaults) != 1:
            raise EntraError(400, "invalid_scope", 70011,
                             f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid.")
        resource = defaults[0][: -len("/.default")]
        if not resource_known(resource):
            raise EntraError(400, "invalid_resource", 500011,
                             f"The resource principal named {resource} was not found in the tenant named "
                             f"{self.tenant_id}. This can happen if the application has not been installed by the "
                             "administrator of the tenant or consented to by any user in the tenant.")
        return resource

    def _authenticate_client(self, form: Any) -> str:
        client_id = form.get("client_id", "")
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        with self._lock:
            found = self._apps.get(client_id.lower())
            app = None if found is None else {**found, "secrets": list(found["secrets"]),
                                              "certificates": list(found["certificates"]),
                                              "federated_subjects": list(found["federated_subjects"])}
        if app is None:
            raise EntraError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in the directory "
                             f"'{self.tenant_id}'. This can happen if the application has not been installed by the "
                             "administrator of the tenant or consented to by any user in the tenant.")
        if assertion is not None:
            if assertion_type != JWT_BEARER:
                raise EntraError(400, "invalid_request", 90014,
                                 "The request body must contain the following parameter: 'client_assertion_type'.")
            self._check_assertion(app, assertion)
            return client_id
        secret = form.get("client_secret")
        if not secret:
            raise EntraError(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
        if not any(hashlib.sha256(secret.encode()).digest() == hashlib.sha256(s.encode()).digest()
                   for s in app["secrets"]):
            raise EntraError(401, "invalid_client", 7000215,
                             "Invalid client secret provided. Ensure the secret being sent in the request is the "
                             f"client secret value, not the client secret ID, for a secret added to app '{client_id}'.")
        return client_id

    def _check_assertion(self, app: dict[str, Any], assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise EntraError(400, "invalid_client", 50027, "JWT token is invalid or malformed.") from exc
        if unverified.get("iss") == self.workload_issuer:
            try:
                claims = jwt.decode(assertion, self._workload_key.public_key(), algorithms=["RS256"],
                                    audience=FEDERATED_AUDIENCE, issuer=self.workload_issuer)
            except jwt.ExpiredSignatureError as exc:
                raise EntraError(400, "invalid_client", 700024, "Client assertion is not within its valid time range.") from exc
            except jwt.PyJWTError as exc:
                raise EntraError(400, "invalid_client", 700211,
                                 "No matching federated identity record found for presented assertion issuer "
                                 f"'{unverified.get('iss')}'.") from exc
            if claims.get("sub") not in app["federated_subjects"]:
                raise EntraError(400, "invalid_client", 70021,
                                 "No matching federated identity record found for presented assertion. Assertion "
                                 f"Issuer: '{claims.get('iss')}'. Assertion Subject: '{claims.get('sub')}'. "
                                 f"Assertion Audience: '{FEDERATED_AUDIENCE}'.")
            return
        sent_256 = str(header.get("x5t#S256") or "").rstrip("=")  # msal keeps base64 padding
        sent_1 = str(header.get("x5t") or "").rstrip("=")
        certs = [c for c in app["certificates"]
                 if (sent_256 and c["x5t#S256"] == sent_256) or (sent_1 and c["x5t"] == sent_1)]
        if not certs:
            raise EntraError(401, "invalid_client", 700027,
                             f"The certificate with identifier used to sign the client assertion is not registered on "
                             f"application. [Reason - The key was not found., Thumbprint of key used by client: "
                             f"'{header.get('x5t') or header.get('x5t#S256')}']")
        alg = header.get("alg", "")
        if alg not in ("RS256", "PS256"):
            raise EntraError(401, "invalid_client", 5002738, f"Invalid JWT token. '{alg}' is not a supported signature algorithm.")
        try:
            claims = jwt.decode(assertion, certs[0]["public_key"], algorithms=[alg], audience=self.token_endpoint,
                                options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise EntraError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.") from exc
        except jwt.InvalidAudienceError as exc:
            raise EntraError(401, "invalid_client", 700212,
                             "No matching federated identity record found for presented assertion audience.") from exc
        except jwt.PyJWTError as exc:
            raise EntraError(401, "invalid_client", 7000274, "Client assertion contains an invalid signature.") from exc
        if claims.get("iss") != app["client_id"] or claims.get("sub") != app["client_id"]:
            raise EntraError(401, "invalid_client", 700021, "Client assertion application identifier doesn't match "
                             "'client_id' parameter.")

    def _authenticate_user(self, form: Any) -> str:
        client_id = form.get("client_id", "")
        if client_id != PUBLIC_CLIENT_ID:
            raise EntraError(400, "unauthorized_client", 700016,
                             f"Application with identifier '{client_id}' was not found in the directory "
                             f"'{self.tenant_id}' as a public client allowed to use the password grant.")
        username = form.get("username", "")
        password = form.get("password", "")
        with self._lock:
            found = self._users.get(username.lower())
            user = dict(found) if found else None
        if user is None:
            raise EntraError(400, "invalid_grant", 50034,
                             f"The user account {username} does not exist in the {self.tenant_id} directory. "
                             "To sign into this application, the account must be added to the directory.")
        if hashlib.sha256(password.encode()).digest() != hashlib.sha256(user["password"].encode()).digest():
            raise EntraError(400, "invalid_grant", 50126,
                             "Error validating credentials due to invalid username or password.")
        return user["upn"]
