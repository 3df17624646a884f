"""The v2.0 token endpoint of the Entra emulator, `POST /{tenant}/oauth2/v2.0/token`, as msal calls it:
client credentials with a client secret, a certificate assertion or a federated (workload identity)
assertion, and the password grant through the public client. Refusals are Entra's errors (AADSTS
numbers, OAuth error, status: docs/sandbox.md, "Entra errors"); no secret is ever echoed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import jwt
from werkzeug.wrappers import Request, Response

from sandbox.common import PUBLIC_CLIENT_ID, json_response
from sandbox.entra.directory import FEDERATED_AUDIENCE, Directory
from sandbox.entra.errors import EntraError, error_response

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _same_secret(sent: str, stored: str) -> bool:
    return hashlib.sha256(sent.encode()).digest() == hashlib.sha256(stored.encode()).digest()


class TokenEndpoint:
    """Issues access tokens of `directory`'s tenant for known resources."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def token(self, request: Request, lifetime: int, resource_known: Callable[[str], bool]) -> Response:
        form = request.form
        try:
            grant = form.get("grant_type", "")
            if grant == "client_credentials":
                resource = self._resource(form.get("scope"), grant, resource_known)
                client_id = self._authenticate_client(form)
                token, _ = self.directory.issue_access_token(resource, lifetime, client_id=client_id)
                body: dict[str, Any] = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                                        "access_token": token}
            elif grant == "password":
                resource = self._resource(form.get("scope"), grant, resource_known)
                upn = self._authenticate_user(form)
                token, _ = self.directory.issue_access_token(resource, lifetime, client_id=form.get("client_id"),
                                                             upn=upn)
                body = {"token_type": "Bearer", "scope": form.get("scope", ""), "expires_in": lifetime,
                        "ext_expires_in": lifetime, "access_token": token}
                body.update(self._user_identity(form, upn, lifetime))
            elif not grant:
                raise EntraError(400, "invalid_request", 900144,
                                 "The request body must contain the following parameter: 'grant_type'.")
            else:
                raise EntraError(400, "unsupported_grant_type", 70003,
                                 f"The app requested an unsupported grant type '{grant}'.")
        except EntraError as err:
            return error_response(err, request)
        return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _user_identity(self, form: Any, upn: str, lifetime: int) -> dict[str, str]:
        """A user sign-in asked with the `openid` scope also gets a v2.0 ID token, and `client_info` (uid/utid)
        when asked with client_info=1, as Entra answers msal (azure-identity builds its account record from
        them). Refresh tokens are not issued: the sandbox has no refresh_token grant."""
        if "openid" not in form.get("scope", "").split():
            return {}
        id_token, object_id = self.directory.issue_id_token(form.get("client_id", ""), upn, lifetime)
        out = {"id_token": id_token}
        if form.get("client_info") == "1":
            info = {"uid": object_id, "utid": self.directory.tenant_id}
            out["client_info"] = base64.urlsafe_b64encode(json.dumps(info).encode()).rstrip(b"=").decode()
        return out

    # ----- scope ------------------------------------------------------------------------------
    def _resource(self, scope: str | None, grant: str, resource_known: Callable[[str], bool]) -> str:
        """The one resource `{resource}/.default` names (the sandbox issues .default tokens only)."""
        if not scope:
            raise EntraError(400, "invalid_request", 900144,
                             "The request body must contain the following parameter: 'scope'.")
        defaults = [s for s in scope.split() if s.endswith("/.default")]
        if len(defaults) > 1:
            raise EntraError(400, "invalid_scope", 700022, "The provided value for the input parameter scope is not "
                             "valid because it contains more than one resource. Scope " + scope + " is not valid.")
        if not defaults and grant == "client_credentials":
            raise EntraError(400, "invalid_scope", 1002012, f"The provided value for scope {scope} is not valid. "
                             "Client credential flows must have a scope value with /.default suffixed to the resource "
                             "identifier (application ID URI).")
        if not defaults:
            raise EntraError(400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not "
                             f"valid. The scope {scope} is not valid.")
        resource = defaults[0][: -len("/.default")]
        if not resource_known(resource):
            raise EntraError(400, "invalid_resource", 500011,
                             f"The resource principal named {resource} was not found in the tenant named "
                             f"{self.directory.tenant_id}. This can happen if the application has not been installed "
                             "by the administrator of the tenant or consented to by any user in the tenant. You might "
                             "have sent your authentication request to the wrong tenant.")
        return resource

    # ----- client credentials -----------------------------------------------------------------
    def _unknown_client(self, client_id: str) -> EntraError:
        return EntraError(400, "unauthorized_client", 700016,
                          f"Application with identifier '{client_id}' was not found in the directory "
                          f"'{self.directory.tenant_id}'. This can happen if the application has not been installed "
                          "by the administrator of the tenant or consented to by any user in the tenant. You may "
                          "have sent your authentication request to the wrong tenant.")

    def _authenticate_client(self, form: Any) -> str:
        client_id = form.get("client_id", "")
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        app = self.directory.credentials(client_id)
        if app is None:
            raise self._unknown_client(client_id)
        if assertion is not None:
            if not assertion_type:
                raise EntraError(400, "invalid_request", 900144,
                                 "The request body must contain the following parameter: 'client_assertion_type'.")
            if assertion_type != JWT_BEARER:  # inferred wording, under the same code
                raise EntraError(400, "invalid_request", 900144,
                                 f"The value of the parameter 'client_assertion_type' must be '{JWT_BEARER}'.")
            self._check_assertion(app, assertion)
            return client_id
        secret = form.get("client_secret")
        if not secret:
            raise EntraError(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: 'client_assertion' or "
                             "'client_secret'.")
        if not any(_same_secret(secret, s) for s in app["secrets"]):
            raise EntraError(401, "invalid_client", 7000215,
                             "Invalid client secret provided. Ensure the secret being sent in the request is the "
                             f"client secret value, not the client secret ID, for a secret added to app '{client_id}'.")
        return client_id

    def _check_assertion(self, app: dict[str, Any], assertion: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.") from exc
        if unverified.get("iss") == self.directory.workload_issuer:
            self._check_federated(app, assertion)
            return
        sent_256 = str(header.get("x5t#S256") or "").rstrip("=")  # msal keeps base64 padding
        sent_1 = str(header.get("x5t") or "").rstrip("=")
        certs = [c for c in app["certificates"]
                 if (sent_256 and c["x5t#S256"] == sent_256) or (sent_1 and c["x5t"] == sent_1)]
        if not certs:
            raise EntraError(401, "invalid_client", 700027,
                             "The certificate with identifier used to sign the client assertion is not registered on "
                             "application. [Reason - The key was not found., Thumbprint of key used by client: "
                             f"'{header.get('x5t') or header.get('x5t#S256')}']")
        alg = header.get("alg", "")
        if alg not in ("RS256", "PS256"):
            raise EntraError(400, "invalid_request", 5002738,
                             f"Invalid JWT token. '{alg}' is not a supported signature algorithm.")
        try:
            claims = jwt.decode(assertion, certs[0]["public_key"], algorithms=[alg],
                                audience=self.directory.token_endpoint, options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise EntraError(401, "invalid_client", 700024,
                             "Client assertion is not within its valid time range.") from exc
        except jwt.InvalidAudienceError as exc:
            raise EntraError(400, "invalid_request", 50027, "JWT token is invalid or malformed.") from exc
        except jwt.PyJWTError as exc:
            raise EntraError(401, "invalid_client", 700027, "Client assertion contains an invalid signature.") from exc
        if claims.get("iss") != app["client_id"] or claims.get("sub") != app["client_id"]:
            raise EntraError(401, "invalid_client", 700021,
                             "Client assertion application identifier doesn't match 'client_id' parameter.")

    def _check_federated(self, app: dict[str, Any], assertion: str) -> None:
        issuer = self.directory.workload_issuer
        try:
            claims = self.directory.verify_federated_token(assertion)
        except jwt.ExpiredSignatureError as exc:
            raise EntraError(401, "invalid_client", 700024,
                             "Client assertion is not within its valid time range.") from exc
        except jwt.PyJWTError as exc:
            raise EntraError(401, "invalid_client", 700211, "No matching federated identity record found for "
                             f"presented assertion issuer '{issuer}'.") from exc
        if claims.get("sub") not in app["federated_subjects"]:
            raise EntraError(400, "invalid_request", 70021,
                             "No matching federated identity record found for presented assertion. Assertion "
                             f"Issuer: '{claims.get('iss')}'. Assertion Subject: '{claims.get('sub')}'. "
                             f"Assertion Audience: '{FEDERATED_AUDIENCE}'.")

    # ----- password grant ---------------------------------------------------------------------
    def _authenticate_user(self, form: Any) -> str:
        client_id = form.get("client_id", "")
        if client_id != PUBLIC_CLIENT_ID:
            if self.directory.credentials(client_id) is None:
                raise self._unknown_client(client_id)
            # a registered (confidential) app must authenticate itself, and the sandbox takes no secret here
            raise EntraError(401, "invalid_client", 7000218,
                             "The request body must contain the following parameter: 'client_assertion' or "
                             "'client_secret'.")
        username = form.get("username", "")
        user = self.directory.user_credentials(username)
        if user is None:
            raise EntraError(400, "invalid_grant", 50034,
                             f"The user account {username} does not exist in the {self.directory.tenant_id} "
                             "directory. To sign into this application, the account must be added to the directory.")
        if not _same_secret(form.get("password", ""), user["password"]):
            raise EntraError(400, "invalid_grant", 50126,
                             "Error validating credentials due to invalid username or password.")
        return user["upn"]
