"""Partner Center's Product Ingestion API (behind Microsoft Graph), one layer below OfferLeadDestination:
its client, the product lookup, the draft `customer-leads` resource, and configure jobs polled to the end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from dynamics_provider.auth import DeployerSettings, TokenProvider, deployer_tokens
from dynamics_provider.client import ApiClient
from dynamics_provider.errors import LeadDestinationError, PartnerCenterError, partner_center_error_class
from dynamics_provider.hosts import graph_resource, is_loopback_host
from dynamics_provider.masking import quote as masked

log = logging.getLogger("dynamics_provider")

DEFAULT_ENDPOINT_PATH = "/rp/product-ingestion"
SCHEMA_BASE = "https://schema.mp.microsoft.com/schema"
JOB_FIRST_DELAY = 0.25
JOB_MAX_DELAY = 5.0
AZURE_AD_FIELDS = ("application_id", "directory_id", "application_key")
OFFICE365_FIELDS = ("username", "password")
COMPARED_FIELDS = ("instance_url", "authentication", "application_id", "directory_id", "username",
                   "contact_emails")
# input name → dynamicsLeadConfiguration property
WIRE_NAMES = {"instance_url": "instanceUrl", "authentication": "authentication",
              "application_id": "applicationId", "application_key": "applicationKey",
              "directory_id": "directoryId", "username": "username", "password": "password",
              "contact_emails": "contactEmail"}


class OfferConfigurationError(LeadDestinationError):
    """Partner Center refused or failed a configure job; the API's errors are quoted (secrets redacted)."""


class PartnerCenterClient(ApiClient):
    """The request pipeline for the Product Ingestion API: Graph tokens, Partner Center's errors."""

    error_for = staticmethod(partner_center_error_class)


def redact(text: str, secret_values: list[str | None]) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "[redacted]")
    return text


def contact_list(value: Any) -> list[str]:
    """Contact e-mails as a list: accepts a list or the portal's `a@x.com;b@y.com` form."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def customer_leads(product_id: str, props: Mapping[str, Any], version: str) -> dict[str, Any]:
    """The `customer-leads` resource for our (clean) inputs: the lead destination is Dynamics 365."""
    fields: tuple[str, ...] = ("instance_url", "authentication")
    fields += AZURE_AD_FIELDS if props["authentication"] == "azureAD" else OFFICE365_FIELDS
    config = {WIRE_NAMES[k]: props[k] for k in fields}
    config["contactEmail"] = contact_list(props.get("contact_emails"))
    guid = product_id.removeprefix("product/")
    return {"$schema": f"{SCHEMA_BASE}/customer-leads/{version}", "id": f"customer-leads/{guid}",
            "product": f"product/{guid}", "leadDestination": "dynamics", "dynamicsLeadConfiguration": config}


def no_lead_destination(product_id: str, version: str) -> dict[str, Any]:
    """The `customer-leads` resource that switches the offer's lead destination off."""
    guid = product_id.removeprefix("product/")
    return {"$schema": f"{SCHEMA_BASE}/customer-leads/{version}", "id": f"customer-leads/{guid}",
            "product": f"product/{guid}", "leadDestination": "none"}


def observed_fields(resource: Mapping[str, Any] | None) -> dict[str, Any]:
    """Non-secret destination settings as Partner Center holds them (None where not dynamics)."""
    config = (resource or {}).get("dynamicsLeadConfiguration") or {}
    if (resource or {}).get("leadDestination") != "dynamics" or not isinstance(config, dict):
        config = {}
    out = {key: config.get(WIRE_NAMES[key]) for key in COMPARED_FIELDS}
    out["contact_emails"] = contact_list(config.get("contactEmail"))
    out["secret_present"] = bool(config.get("applicationKey") or config.get("password"))
    return out


def partner_center_endpoint(settings: DeployerSettings, graph: str) -> str:
    """The ingestion base URL; tokens go only to the cloud's Graph host (loopback with the opt-in)."""
    endpoint = (settings.partner_center_endpoint or f"{graph}{DEFAULT_ENDPOINT_PATH}").rstrip("/")
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    allowed = parts.scheme == "https" and not parts.username and not parts.query and (
        host == urlsplit(graph).hostname or (is_loopback_host(host) and settings.allow_loopback)
    )
    if not allowed:
        raise LeadDestinationError(
            f"Partner Center endpoint {masked(endpoint, url=True)} refused: a Graph token may only go to "
            f"https://{urlsplit(graph).hostname}",
            hint="unset lead-destination:partnerCenterEndpoint (loopback needs lead-destination:allowLoopback)",
        )
    return endpoint


_CLIENTS: dict[tuple[str, str | None, int], PartnerCenterClient] = {}
_CLIENTS_LOCK = threading.Lock()


def partner_center_client(settings: DeployerSettings) -> PartnerCenterClient:
    """The deploying identity's Product Ingestion client, one per endpoint and identity in the process."""
    graph = graph_resource(settings.cloud or "public")
    endpoint = partner_center_endpoint(settings, graph)
    tokens: TokenProvider = deployer_tokens(settings)
    key = (endpoint, settings.ca_bundle, id(tokens))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = PartnerCenterClient(endpoint, tokens, f"{graph}/.default",
                                                         ca_bundle=settings.ca_bundle)
        return client


class ProductIngestion:
    """The calls OfferLeadDestination makes, at one schema version of the Product Ingestion API."""

    def __init__(self, client: PartnerCenterClient, version: str) -> None:
        self.client = client
        self.version = version

    def _get(self, path: str, **params: str) -> dict[str, Any]:
        resp = self.client.request("GET", path, params={"$version": self.version, **params}, idempotent=True)
        body: dict[str, Any] = resp.json()
        return body

    def find_product(self, offer_id: str) -> str | None:
        """`product/{guid}` of the offer with this external id, or None."""
        for product in self._get("product", externalId=offer_id).get("value", []):
            if (product.get("identity") or {}).get("externalId", offer_id) == offer_id:
                return str(product["id"])
        return None

    def draft_customer_leads(self, product_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(product exists, the draft `customer-leads` resource or None)."""
        guid = product_id.removeprefix("product/")
        try:
            tree = self._get(f"resource-tree/product/{quote(guid)}", targetType="draft")
        except PartnerCenterError as exc:
            if exc.status == 404:
                return False, None
            raise
        for resource in tree.get("resources", []):
            if "/customer-leads/" in str(resource.get("$schema", "")) or str(resource.get("id", "")).startswith(
                "customer-leads/"
            ):
                return True, resource
        return True, None

    def configure(self, resource: dict[str, Any], *, timeout: float, secret_values: list[str | None]) -> str:
        """POST configure and poll the job to completion; returns the job id, raises with the API's errors."""
        from dynamics_provider.waiting import wait_until

        body = {"$schema": f"{SCHEMA_BASE}/configure/{self.version}", "resources": [resource]}
        # configure is declarative (same body → same draft), so a retry after a lost answer is safe
        resp = self.client.request("POST", "configure", params={"$version": self.version}, json=body,
                                   idempotent=True)
        job_id = str(resp.json()["jobId"])
        log.info("Partner Center configure job %s submitted for %s", job_id, resource.get("product"))

        def probe() -> dict[str, Any] | None:
            status = self._get(f"configure/{quote(job_id)}/status")
            return status if status.get("jobStatus") == "completed" else None

        status = wait_until(probe, timeout=timeout, what=f"Partner Center configure job {job_id}",
                            first_delay=JOB_FIRST_DELAY, max_delay=JOB_MAX_DELAY)
        if status.get("jobResult") != "succeeded":
            errors = status.get("errors") or []
            text = "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" if isinstance(e, dict) else str(e)
                             for e in errors) or "no error details"
            raise OfferConfigurationError(
                redact(f"configure job {job_id} {status.get('jobResult', 'failed')}: {text}", secret_values),
                hint="fix the lead destination settings named above; Partner Center keeps the previous draft",
            )
        return job_id
