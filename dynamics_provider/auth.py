"""The deploying identity's settings: which credential, tenant, cloud, authority host and CA bundle, read
from stack config, then `azuread:*` config, then `ARM_*` / `AZURE_*` variables. Plain, picklable data.

Signing in is `credentials.py` (azure-identity), the process-wide token cache `tokens.py`; their entry
points are re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from .hosts import authority_host as cloud_authority_host
from .hosts import validate_authority_host

# --------------------------------------------------------------------------------------------
# Settings


# Which settings exist, where each is read from and how it is parsed: dynamics_provider/config_schema.py.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class DeployerSettings:
    """How the dynamic providers authenticate the deploying identity. Plain data; secrets not in repr."""

    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    federated_token_file: str | None = None
    federated_token: str | None = field(default=None, repr=False)
    use_azure_cli: bool = False
    cloud: str = "public"
    authority_host: str | None = None
    ca_bundle: str | None = None
    allow_loopback: bool = False
    partner_center_endpoint: str | None = None
    #: per-request read timeout of the Dataverse client (a write with no answer in time is looked up)
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS

    @classmethod
    def from_sources(
        cls, config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> DeployerSettings:
        """Read stack config (`lead-destination:*`), then `azuread:*` config, then the environment, as
        dynamics_provider.config_schema declares; ValueError names the source of a value it cannot read."""
        from .config_schema import read_deployer

        values = read_deployer((config or {}).get, os.environ if environ is None else environ)
        if "request_timeout_seconds" in values:
            values["request_timeout_seconds"] = float(values["request_timeout_seconds"])
        return cls(**values)

    @property
    def credential_kind(self) -> str | None:
        """certificate, client_secret, federated_token, azure_cli, or None (precedence in that order)."""
        if self.certificate_path:
            return "certificate"
        if self.client_secret:
            return "client_secret"
        if self.federated_token_file or self.federated_token:
            return "federated_token"
        if self.use_azure_cli:
            return "azure_cli"
        return None

    def resolved_authority_host(self) -> str:
        """The cloud's Entra login host, or the override once it is proven to be one (or an opted-in
        loopback sandbox host): the deploying identity's credential never goes anywhere else."""
        if self.authority_host:
            return validate_authority_host(self.authority_host, allow_loopback=self.allow_loopback)
        return cloud_authority_host(self.cloud)

    def authority(self, tenant_id: str | None = None) -> str:
        tenant = tenant_id or self.tenant_id or "organizations"
        return f"https://{self.resolved_authority_host()}/{tenant}"

    def describe(self) -> str:
        kind = self.credential_kind
        try:
            login = self.resolved_authority_host()
        except ValueError:
            login = "a refused authorityHost"
        where = f"tenant {self.tenant_id or '(not set)'} via {login} (cloud {self.cloud})"
        if kind == "certificate":
            return f"client certificate {self.certificate_path} for app {self.client_id}, {where}"
        if kind == "client_secret":
            return f"client secret for app {self.client_id}, {where}"
        if kind == "federated_token":
            source = f"file {self.federated_token_file}" if self.federated_token_file else "ARM_OIDC_TOKEN"
            return f"federated token ({source}) for app {self.client_id}, {where}"
        if kind == "azure_cli":
            return f"Azure CLI signed-in account, {where}"
        return "no deploying identity configured"


# Entry points that live in credentials.py / tokens.py, importable from here as before (lazily: those
# modules import this one).
_MOVED = {
    "PUBLIC_CLIENT_ID": "dynamics_provider.credentials",
    "TokenProvider": "dynamics_provider.tokens",
    "TokenCache": "dynamics_provider.tokens",
    "deployer_tokens": "dynamics_provider.tokens",
    "client_secret_tokens": "dynamics_provider.tokens",
    "password_tokens": "dynamics_provider.tokens",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
