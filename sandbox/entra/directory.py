"""The Entra tenant of the emulator: app registrations with their service principals and credentials
(secrets, certificates, federated subjects), users, and the RS256 keys that sign access tokens (verified
by the Dataverse and Partner Center emulators) and workload-identity assertions."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.common import (
    ADMIN_CLIENT_ID,
    ADMIN_CLIENT_SECRET,
    LEADWRITER_CLIENT_ID,
    LEADWRITER_CLIENT_SECRET,
    PUBLIC_CLIENT_ID,
    TENANT_ID,
)

FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
ADMIN_OBJECT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0a02"
LEADWRITER_OBJECT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b02"


class InvalidToken(Exception):
    """A bearer token that is malformed, badly signed, expired or for another audience."""


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

    def credentials(self, client_id: str) -> dict[str, Any] | None:
        """A copy of an app's registration with its credentials (for the token endpoint), or None."""
        with self._lock:
            app = self._apps.get(client_id.lower())
            if app is None:
                return None
            return {**app, "secrets": list(app["secrets"]), "certificates": list(app["certificates"]),
                    "federated_subjects": list(app["federated_subjects"])}

    def user_credentials(self, upn: str) -> dict[str, Any] | None:
        """A copy of a user's record with its password (for the password grant), or None."""
        with self._lock:
            user = self._users.get(upn.lower())
            return dict(user) if user else None

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

    def issue_id_token(self, client_id: str, upn: str, lifetime: int) -> tuple[str, str]:
        """A v2.0 ID token for a user signed in through `client_id`, as Entra returns one with the `openid`
        scope. Returns (id_token, the user's object id)."""
        now = int(time.time())
        with self._lock:
            user = self._users.get(upn.lower())
            if user is None:
                raise KeyError(f"unknown user {upn}")
            claims = {"aud": client_id, "iss": f"{self.authority}/v2.0", "iat": now, "nbf": now,
                      "exp": now + lifetime, "oid": user["object_id"], "sub": user["object_id"],
                      "tid": self.tenant_id, "preferred_username": user["upn"], "name": user["upn"].split("@")[0],
                      "ver": "2.0"}
        return jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid}), claims["oid"]

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

    def verify_federated_token(self, assertion: str) -> dict[str, Any]:
        """Claims of an assertion from the sandbox's workload identity issuer (jwt errors propagate)."""
        return jwt.decode(assertion, self._workload_key.public_key(), algorithms=["RS256"],
                          audience=FEDERATED_AUDIENCE, issuer=self.workload_issuer)

    def jwks(self) -> dict[str, Any]:
        numbers = self._signing_key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "kid": self._kid, "x5t": self._kid, "alg": "RS256",
                          "n": _b64url_int(numbers.n), "e": _b64url_int(numbers.e)}]}
