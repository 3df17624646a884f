"""Partner Center's Product Ingestion API (behind Microsoft Graph), one layer below OfferLeadDestination:
its client, the product lookup, the draft `customer-leads` resource, and configure jobs polled to the end.

Microsoft's pages spell the API's names two ways (Learn "Product Ingestion API for the commercial
marketplace": `jobID`, `identity.externalID`, `externalID=`; its 2022 version: `jobId`, `externalId`), so every
answer is read by name without regard to case (`field`). An answer this module does not understand fails with
`UnreadableAnswer`, naming the operation and the shape it saw (field names and types, never values).
Sources per behaviour: docs/sandbox.md, "Partner Center".
"""

from __future__ import annotations

import logging
import re
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


class UnreadableAnswer(LeadDestinationError):
    """Partner Center answered something this client does not understand (named by shape, never by value)."""


# jobStatus values of Microsoft's examples: notStarted, running, completed; jobResult: pending, succeeded,
# failed, cancelled (Learn: "Product Ingestion API for the commercial marketplace", "Job status and retrieve
# private offer detail via API"). Other values are not documented: a job is over when its status is completed
# or its result is final, whatever else it says (inferred).
FINAL_RESULTS = frozenset({"succeeded", "failed", "cancelled", "canceled"})
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_ .-]{0,39}$")
CHECK_THE_DRAFT = ("check the offer's draft lead destination in Partner Center, or run `pulumi up` again "
                   "(configure is declarative: sending it again is safe)")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")  # Microsoft's examples: GUIDs


def field(obj: Any, name: str) -> Any:
    """`obj[name]` read without regard to case (`jobID` / `jobId`, `externalID` / `externalId`); the exact
    spelling wins when both are present. None when `obj` is not an object or has no such field."""
    if not isinstance(obj, Mapping):
        return None
    if name in obj:
        return obj[name]
    folded = name.casefold()
    return next((value for key, value in obj.items() if isinstance(key, str) and key.casefold() == folded), None)


def shape(value: Any) -> str:
    """What an answer looks like, for an error message: its type and field names, never its values."""
    if isinstance(value, Mapping):
        keys = sorted(str(k) for k in value)[:12]
        return f"an object with fields {keys}" if keys else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return "no JSON body" if value is None else f"a JSON {type(value).__name__}"


def word(value: Any) -> str:
    """A status word quoted if it looks like one; anything else is described, not echoed."""
    if isinstance(value, str) and _WORD.match(value):
        return repr(value)
    return "none" if value is None else f"an unrecognised {type(value).__name__} value"


def answer_json(resp: Any, what: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise UnreadableAnswer(f"Partner Center's answer to {what} is not JSON (HTTP {resp.status_code})",
                               hint="retry later; if it persists, the API has changed: report it") from None


def product_list(body: Any, offer_id: str) -> list[Any]:
    """The products of a lookup answer: `{"value": [...]}` (the API's list shape, inferred from its documented
    submission list), a bare list, or the one product itself (the page says the query "returns the
    configuration of that respective product")."""
    value = field(body, "value")
    if isinstance(value, list):
        return value
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping) and (field(body, "identity") is not None or
                                      str(field(body, "id") or "").startswith("product/")):
        return [body]
    raise UnreadableAnswer(
        f"Partner Center's product lookup for offer {offer_id!r} answered {shape(body)}, not a product list",
        hint="retry later; if it persists, the Product Ingestion API has changed: report it")


def product_summary(product: Any) -> str:
    """A returned product named by its durable id, external id and alias (none of them secret)."""
    if not isinstance(product, Mapping):
        return shape(product)
    parts = [f"{label} {str(value)[:80]!r}" for label, value in (
        ("id", field(product, "id")), ("externalID", field(field(product, "identity"), "externalID")),
        ("alias", field(product, "alias"))) if isinstance(value, str | int) and value != ""]
    return ", ".join(parts) or f"a product without id or identity ({shape(product)})"


def job_errors(errors: Any) -> str:
    """A job's `errors` as text: items of {code, message} (Microsoft's examples), with `details` and
    `resourceName` when present, or plain strings; anything else by its shape."""
    if errors in (None, [], {}):
        return ""
    items = errors if isinstance(errors, list) else [errors]
    texts = []
    for item in items[:20]:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Mapping):
            text = f"{field(item, 'code') or '?'}: {field(item, 'message') or ''}".strip()
            if isinstance(field(item, "resourceName"), str):
                text = f"{field(item, 'resourceName')}: {text}"
            details = field(item, "details")
            if isinstance(details, list) and details:
                text += f" ({job_errors(details)})"
            texts.append(text)
        else:
            texts.append(shape(item))
    return "; ".join(texts)


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
    config = field(resource, "dynamicsLeadConfiguration") or {}
    if field(resource, "leadDestination") != "dynamics" or not isinstance(config, Mapping):
        config = {}
    out = {key: field(config, WIRE_NAMES[key]) for key in COMPARED_FIELDS}
    emails = field(config, "contactEmail")
    out["contact_emails"] = contact_list(emails if isinstance(emails, str | list) else None)
    out["secret_present"] = bool(field(config, "applicationKey") or field(config, "password"))
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

    def _get(self, path: str, what: str, **params: str) -> Any:
        resp = self.client.request("GET", path, params={"$version": self.version, **params}, idempotent=True)
        return answer_json(resp, what)

    def find_product(self, offer_id: str) -> str | None:
        """`product/{guid}` of the product whose identity names this offer id; None when the lookup finds no
        product. Products returned that name another offer are never taken: an error lists them."""
        body = self._get("product", f"the product lookup for offer {offer_id!r}", externalID=offer_id)
        products = product_list(body, offer_id)
        for product in products:
            if field(field(product, "identity"), "externalID") != offer_id:
                continue
            durable = field(product, "id")
            if not isinstance(durable, str) or not durable.strip("/ "):
                raise UnreadableAnswer(
                    f"Partner Center's product lookup found offer {offer_id!r} but gave no durable id "
                    f"({shape(product)})", hint="retry later; if it persists, report it")
            durable = durable.strip("/ ")
            return durable if durable.startswith("product/") else f"product/{durable}"
        if not products:
            return None
        listed = "; ".join(product_summary(p) for p in products[:5])
        more = f" and {len(products) - 5} more" if len(products) > 5 else ""
        raise UnreadableAnswer(
            f"Partner Center's product lookup for offer {offer_id!r} returned {len(products)} product(s), none "
            f"whose identity names that offer: {listed}{more}",
            hint="check offer_id (Partner Center → offer → Offer setup → Offer ID); nothing was changed")

    def draft_customer_leads(self, product_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(product exists, the draft `customer-leads` resource or None)."""
        guid = product_id.removeprefix("product/")
        what = f"the draft resource tree of product/{guid}"
        try:
            tree = self._get(f"resource-tree/product/{quote(guid)}", what, targetType="draft")
        except PartnerCenterError as exc:
            if exc.status == 404:
                return False, None
            raise
        resources = field(tree, "resources")
        if not isinstance(resources, list):
            raise UnreadableAnswer(f"Partner Center's answer to {what} has no resources list ({shape(tree)})",
                                   hint="retry later; if it persists, the Product Ingestion API has changed")
        for resource in resources:
            if not isinstance(resource, Mapping):
                continue
            if "/customer-leads/" in str(field(resource, "$schema") or "") or str(
                field(resource, "id") or ""
            ).startswith("customer-leads/"):
                return True, dict(resource)
        return True, None

    def configure(self, resource: dict[str, Any], *, timeout: float, secret_values: list[str | None]) -> str:
        """POST configure and poll the job to completion; returns the job id, raises with the API's errors."""
        from dynamics_provider.waiting import wait_until

        body = {"$schema": f"{SCHEMA_BASE}/configure/{self.version}", "resources": [resource]}
        # configure is declarative (same body → same draft), so a retry after a lost answer is safe
        product = resource.get("product")
        resp = self.client.request("POST", "configure", params={"$version": self.version}, json=body,
                                   idempotent=True)
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        job_id = field(answer, "jobID")
        if isinstance(job_id, bool) or not isinstance(job_id, str | int) or not _JOB_ID.match(str(job_id).strip()):
            got = "without a job id" if job_id in (None, "") else "with a job id it cannot read"
            raise UnreadableAnswer(
                f"Partner Center answered the configure request for {product} (HTTP {resp.status_code}) {got} "
                f"({shape(answer)}): the request may have been accepted and the draft changed",
                hint=CHECK_THE_DRAFT)
        job_id = str(job_id).strip()
        log.info("Partner Center configure job %s submitted for %s", job_id, product)
        what = f"Partner Center configure job {job_id}"
        seen: list[Any] = []

        def probe() -> Any:
            try:
                status = self._get(f"configure/{quote(job_id)}/status", f"the status of configure job {job_id}")
            except PartnerCenterError as exc:
                if exc.status != 404:
                    raise
                raise UnreadableAnswer(
                    f"Partner Center does not know configure job {job_id}, which it gave for {product} (HTTP 404 "
                    "on its status): the configure request may have been accepted and the draft changed",
                    hint=CHECK_THE_DRAFT) from None
            if not isinstance(status, Mapping):
                raise UnreadableAnswer(f"Partner Center's status of configure job {job_id} is {shape(status)}",
                                       hint="retry later; if it persists, the Product Ingestion API has changed")
            state, result = field(status, "jobStatus"), field(status, "jobResult")
            seen[:] = [state]
            final = str(result).lower() in FINAL_RESULTS or str(state).lower() in FINAL_RESULTS | {"completed"}
            return status if final else None

        try:
            status = wait_until(probe, timeout=timeout, what=what, first_delay=JOB_FIRST_DELAY,
                                max_delay=JOB_MAX_DELAY)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} (last jobStatus: {word(seen[0] if seen else None)})") from None
        result = field(status, "jobResult")
        if str(result).lower() == "succeeded":
            return job_id
        text = job_errors(field(status, "errors"))
        if str(result).lower() in FINAL_RESULTS:
            outcome = str(result).lower()
        else:
            outcome = f"ended with jobStatus {word(field(status, 'jobStatus'))} and jobResult {word(result)}"
        raise OfferConfigurationError(
            redact(f"configure job {job_id} {outcome}: {text or 'no error details'}", secret_values),
            hint="fix the lead destination settings named above; Partner Center keeps the previous draft"
            if outcome == "failed" else "check the offer's draft in Partner Center, then run `pulumi up` again",
        )
