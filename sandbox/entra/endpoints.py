"""The Entra emulator's HTTP surface: which paths are Entra's, who is calling (for the request log and
service protection), and the answer of each endpoint: the OpenID configuration, the signing keys,
userrealm and the token endpoint of the one tenant.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from werkzeug.wrappers import Request, Response

from sandbox.common import json_response
from sandbox.entra.directory import Directory
from sandbox.entra.errors import EntraError, error_response
from sandbox.entra.token import TokenEndpoint

_TENANT_ENDPOINT = re.compile(
    r"^/([^/]+)/(v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token|discovery/v2\.0/keys)$")
_USERREALM = re.compile(r"^/common/userrealm/([^/]+)$")
ENTRA_PATH = re.compile(f"{_TENANT_ENDPOINT.pattern}|{_USERREALM.pattern}")  # every path Entra answers


def caller_of(request: Request) -> str | None:
    """Who an Entra request speaks for: the client id of a token request (the user of a password grant),
    the user principal name of a userrealm lookup."""
    if m := _USERREALM.match(request.path):
        return m.group(1)
    if request.method != "POST":
        return None
    if request.form.get("grant_type") == "password" and request.form.get("username"):
        return request.form.get("username")
    return request.form.get("client_id")


class Entra:
    """The login endpoints of the directory's tenant."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.token_endpoint = TokenEndpoint(directory)

    def handle(self, request: Request, token_lifetime: int, resource_known: Callable[[str], bool]) -> Response:
        if m := _USERREALM.match(request.path):
            return self.userrealm(m.group(1))
        m = _TENANT_ENDPOINT.match(request.path)
        if m is None:
            raise ValueError(f"not an Entra path: {request.path}")
        tenant, endpoint = m.group(1), m.group(2)
        if tenant != self.directory.tenant_id:
            return error_response(EntraError(
                400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found. Check to make sure you have the correct "
                "tenant ID and are signing into the correct cloud. Check with your subscription administrator, this "
                "may happen if there are no active subscriptions for the tenant."), request)
        if endpoint.endswith("openid-configuration"):
            return self.openid_configuration()
        if endpoint.endswith("keys"):
            return json_response(self.directory.jwks())
        if request.method != "POST":
            return error_response(EntraError(
                405, "invalid_request", 900561,
                f"The endpoint only accepts POST requests. Received a {request.method} request."), request)
        return self.token_endpoint.token(request, token_lifetime, resource_known)

    def openid_configuration(self) -> Response:
        auth = self.directory.authority
        return json_response({
            "token_endpoint": self.directory.token_endpoint,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{auth}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{auth}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.directory.base_url}/oidc/userinfo",
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

    @staticmethod
    def userrealm(upn: str) -> Response:
        domain = upn.split("@")[-1] if "@" in upn else upn
        return json_response({"ver": "1.0", "account_type": "Managed", "domain_name": domain,
                              "cloud_instance_name": "microsoftonline.com",
                              "cloud_audience_urn": "urn:federation:MicrosoftOnline"})
