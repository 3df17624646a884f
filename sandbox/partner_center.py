"""Partner Center Product Ingestion API emulator: products, draft resource trees, configure jobs.

Owns the `customer-leads` schema validation, job progress over time, secret masking on read and the
`/_control/partner-center/*` calls (products, managers, drift, fail-next, settings, state).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from sandbox.common import ADMIN_CLIENT_ID, Caller, SandboxSettings, json_response

SCHEMA_BASE = "https://schema.mp.microsoft.com/schema"
SUPPORTED_VERSIONS = ("2022-03-01-preview2", "2022-03-01-preview3", "2022-03-01-preview5")
PUBLIC_BASE = "https://graph.microsoft.com/rp/product-ingestion"
MASKED = "*********"  # what the API returns in place of applicationKey / password
LEAD_DESTINATIONS = ("none", "blob", "dynamics", "email", "httpsEndpoint", "marketo", "salesforce", "table")
DYNAMICS_FIELDS = (
    "instanceUrl", "authentication", "applicationId", "applicationKey", "directoryId",
    "username", "password", "contactEmail",
)
SECRET_FIELDS = ("applicationKey", "password")
SEEDED_OFFER = "contoso-lead-offer"  # one product present after start/reset (the dev stack's offer)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_EMAIL = re.compile(r"^[^@\s;,]+@[^@\s;,]+\.[^@\s;,]+$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


def mask(resource: dict[str, Any]) -> dict[str, Any]:
    """A customer-leads resource as the API returns it: secrets replaced by the mask."""
    out = copy.deepcopy(resource)
    config = out.get("dynamicsLeadConfiguration")
    if isinstance(config, dict):
        for key in SECRET_FIELDS:
            if config.get(key):
                config[key] = MASKED
    return out


def validate_customer_leads(resource: dict[str, Any], version: str) -> list[dict[str, str]]:
    """The documented `customer-leads` schema rules; messages never echo a secret value."""
    errors: list[dict[str, str]] = []

    def fail(path: str, message: str, code: str = "invalidResource") -> None:
        errors.append({"code": code, "message": f"{resource.get('id') or 'customer-leads'}: {path}: {message}"})

    expected_schema = f"{SCHEMA_BASE}/customer-leads/{version}"
    if resource.get("$schema") != expected_schema:
        fail("$schema", f"must be '{expected_schema}'", "invalidSchema")
    if not isinstance(resource.get("product"), str) or not resource["product"]:
        fail("product", "is required")
    destination = resource.get("leadDestination")
    if destination is None:
        fail("leadDestination", "is required")
        return errors
    if destination not in LEAD_DESTINATIONS:
        fail("leadDestination", f"value '{destination}' is not one of {list(LEAD_DESTINATIONS)}")
        return errors
    if destination != "dynamics":
        return errors
    config = resource.get("dynamicsLeadConfiguration")
    if not isinstance(config, dict):
        fail("dynamicsLeadConfiguration", "is required when leadDestination is 'dynamics'")
        return errors
    for key in config:
        if key not in DYNAMICS_FIELDS:
            fail(f"dynamicsLeadConfiguration.{key}", "is not a property of this schema")
    url = config.get("instanceUrl")
    if not url:
        fail("dynamicsLeadConfiguration.instanceUrl", "is required")
    else:
        parts = urlsplit(str(url))
        if parts.scheme != "https" or not parts.hostname:
            fail("dynamicsLeadConfiguration.instanceUrl", f"'{url}' is not an https URL")
    auth = config.get("authentication")
    if auth not in ("azureAD", "office365"):
        fail("dynamicsLeadConfiguration.authentication", f"value '{auth}' is not one of ['azureAD', 'office365']")
    if auth == "azureAD":
        required, forbidden = ("applicationId", "applicationKey", "directoryId"), ("username", "password")
    elif auth == "office365":
        required, forbidden = ("username", "password"), ("applicationId", "applicationKey", "directoryId")
    else:
        required, forbidden = (), ()
    for key in required:
        if config.get(key) in (None, ""):
            fail(f"dynamicsLeadConfiguration.{key}", f"is required when authentication is '{auth}'")
    for key in forbidden:
        if key in config:
            fail(f"dynamicsLeadConfiguration.{key}", f"is not allowed when authentication is '{auth}'")
    for key in ("applicationId", "directoryId"):
        value = config.get(key)
        if value not in (None, "") and not (isinstance(value, str) and _UUID.match(value)):
            fail(f"dynamicsLeadConfiguration.{key}", f"'{value}' is not a valid uuid")
    limits = {"applicationKey": (1, 2048), "username": (1, 128), "password": (1, 256)}
    for key, (low, high) in limits.items():
        value = config.get(key)
        if value is None or (value == "" and key in required):
            continue
        if not isinstance(value, str) or not low <= len(value) <= high:
            fail(f"dynamicsLeadConfiguration.{key}", f"length must be between {low} and {high} characters")
    emails = config.get("contactEmail")
    if emails is not None:
        if not isinstance(emails, list):
            fail("dynamicsLeadConfiguration.contactEmail", "must be an array of e-mail addresses")
        else:
            for email in emails:
                if not isinstance(email, str) or not _EMAIL.match(email):
                    fail("dynamicsLeadConfiguration.contactEmail", f"'{email}' is not a valid e-mail address")
    return errors


class PartnerCenter:
    """The Product Ingestion API of one Partner Center account, thread-safe."""

    def __init__(self, directory: Any = None, settings: SandboxSettings | None = None) -> None:
        self.directory = directory
        self.settings = settings or SandboxSettings()
        self._lock = threading.RLock()
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        with self._lock:
            self.products: dict[str, dict[str, Any]] = {}
            self.jobs: dict[str, dict[str, Any]] = {}
            self.managers: set[str] = {ADMIN_CLIENT_ID.lower()}
            self.fail_next: list[str] = []
            self.job_seconds = 0.4
            self.add_product(SEEDED_OFFER, "Contoso lead offer")

    def add_product(self, external_id: str, name: str | None = None) -> str:
        with self._lock:
            for product in self.products.values():
                if product["externalId"] == external_id:
                    raise ValueError(f"a product with externalId '{external_id}' exists")
            guid = str(uuid.uuid4())
            self.products[guid] = {"id": guid, "externalId": external_id, "name": name or external_id,
                                   "customerLeads": None}
            return guid

    def _product(self, key: str) -> dict[str, Any] | None:
        key = key.removeprefix("product/")
        if key in self.products:
            return self.products[key]
        return next((p for p in self.products.values() if p["externalId"] == key), None)

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._advance()
            products = []
            for product in self.products.values():
                leads = product["customerLeads"]
                entry = {k: product[k] for k in ("id", "externalId", "name")}
                entry["customerLeads"] = mask(leads) if leads else None
                secret = None
                if leads and isinstance(leads.get("dynamicsLeadConfiguration"), dict):
                    config = leads["dynamicsLeadConfiguration"]
                    secret = config.get("applicationKey") or config.get("password")
                entry["secretSha256"] = hashlib.sha256(secret.encode()).hexdigest() if secret else None
                products.append(entry)
            jobs = [{"jobId": j["jobId"], "jobStatus": self._status(j), "jobResult": j["jobResult"],
                     "products": j["products"], "errors": j["errors"]} for j in self.jobs.values()]
            return {"products": products, "jobs": jobs, "managers": sorted(self.managers),
                    "job_seconds": self.job_seconds}

    # ------------------------------------------------------------------ jobs
    def _status(self, job: dict[str, Any]) -> str:
        if job["completed"]:
            return "completed"
        elapsed = time.monotonic() - job["started"]
        return "notStarted" if elapsed < job["seconds"] * 0.25 else "running"

    def _advance(self) -> None:
        """Complete (in submission order) every job whose time has come, applying its changes."""
        now = time.monotonic()
        for job in self.jobs.values():
            if job["completed"] or now - job["started"] < job["seconds"]:
                continue
            job["completed"] = True
            job["jobEnd"] = _now()
            errors = list(job["pending_errors"])
            staged: list[tuple[dict[str, Any], dict[str, Any]]] = []
            if not errors:
                for resource in job["resources"]:
                    product = self._product(str(resource.get("product", "")))
                    if product is None:
                        errors.append({"code": "notFound",
                                       "message": f"product '{resource.get('product')}' was not found"})
                        continue
                    staged.append((product, self._merge_secrets(product, resource, errors)))
            if errors:
                job["jobResult"], job["errors"] = "failed", errors
                continue
            for product, resource in staged:
                resource["id"] = f"customer-leads/{product['id']}"
                product["customerLeads"] = resource
            job["jobResult"] = "succeeded"

    def _merge_secrets(self, product: dict[str, Any], resource: dict[str, Any],
                       errors: list[dict[str, str]]) -> dict[str, Any]:
        """A masked secret sent back means 'keep the stored one' (as the API accepts round-trips)."""
        resource = copy.deepcopy(resource)
        config = resource.get("dynamicsLeadConfiguration")
        if not isinstance(config, dict):
            return resource
        stored = ((product["customerLeads"] or {}).get("dynamicsLeadConfiguration") or {})
        for key in SECRET_FIELDS:
            if config.get(key) == MASKED:
                if stored.get(key):
                    config[key] = stored[key]
                else:
                    errors.append({"code": "invalidResource",
                                   "message": f"dynamicsLeadConfiguration.{key}: a masked value was sent "
                                              "but no value is stored"})
        return resource

    def _job_body(self, job: dict[str, Any], version: str) -> dict[str, Any]:
        status = self._status(job)
        body = {"$schema": f"{SCHEMA_BASE}/configure-status/{version}", "jobId": job["jobId"],
                "jobStatus": status, "jobResult": job["jobResult"], "jobStart": job["jobStart"],
                "resourceUri": f"{PUBLIC_BASE}/configure/{job['jobId']}", "errors": job["errors"]}
        if status == "completed":
            body["jobEnd"] = job["jobEnd"]
        return body

    # ------------------------------------------------------------------- API
    def handle(self, request: Request, caller: Caller, subpath: str) -> Response:
        with self._lock:
            self._advance()
            if not caller.app_id or caller.app_id.lower() not in self.managers:
                return _error(403, "Forbidden", f"The caller '{caller.label}' is not an application with "
                                                "the Manager role in this Partner Center account.")
            version = request.args.get("$version")
            if not version:
                return _error(400, "BadRequest", "The '$version' query parameter is required.")
            if version not in SUPPORTED_VERSIONS:
                return _error(400, "BadRequest", f"The api version '{version}' is not supported. Supported "
                                                 f"versions: {', '.join(SUPPORTED_VERSIONS)}.")
            parts = [p for p in subpath.strip("/").split("/") if p]
            method = request.method
            if parts == ["product"] and method == "GET":
                return self._list_products(request, version)
            if len(parts) == 3 and parts[:2] == ["resource-tree", "product"] and method == "GET":
                return self._resource_tree(request, parts[2], version)
            if parts == ["configure"] and method == "POST":
                return self._configure(request, version)
            if len(parts) == 3 and parts[0] == "configure" and parts[2] == "status" and method == "GET":
                job = self.jobs.get(parts[1])
                if job is None:
                    return _error(404, "NotFound", f"Job '{parts[1]}' was not found.")
                return json_response(self._job_body(job, version))
            if len(parts) == 2 and parts[0] == "configure" and method == "GET":
                job = self.jobs.get(parts[1])
                if job is None:
                    return _error(404, "NotFound", f"Job '{parts[1]}' was not found.")
                return json_response({"$schema": f"{SCHEMA_BASE}/configure/{version}",
                                      "resources": [mask(r) for r in job["resources"]]})
            return _error(404, "NotFound", f"No route for {method} /{subpath}.")

    def _product_body(self, product: dict[str, Any], version: str) -> dict[str, Any]:
        return {"$schema": f"{SCHEMA_BASE}/product/{version}", "id": f"product/{product['id']}",
                "identity": {"externalId": product["externalId"]}, "type": "softwareAsAService",
                "alias": product["name"]}

    def _list_products(self, request: Request, version: str) -> Response:
        external_id = request.args.get("externalId")
        value = [self._product_body(p, version) for p in self.products.values()
                 if external_id is None or p["externalId"] == external_id]
        return json_response({"value": value})

    def _resource_tree(self, request: Request, guid: str, version: str) -> Response:
        target = request.args.get("targetType", "draft")
        if target not in ("draft", "preview", "live"):
            return _error(400, "BadRequest", f"targetType '{target}' is not one of draft, preview, live.")
        product = self.products.get(guid)
        if product is None:
            return _error(404, "NotFound", f"Product 'product/{guid}' was not found.")
        resources = [self._product_body(product, version)]
        if target == "draft" and product["customerLeads"]:
            leads = mask(product["customerLeads"])
            leads["$schema"] = f"{SCHEMA_BASE}/customer-leads/{version}"
            resources.append(leads)
        return json_response({"$schema": f"{SCHEMA_BASE}/resource-tree/{version}",
                              "root": f"product/{guid}", "target": {"targetType": target},
                              "resources": resources})

    def _configure(self, request: Request, version: str) -> Response:
        try:
            body = json.loads(request.get_data(as_text=True) or "null")
        except ValueError:
            return _error(400, "BadRequest", "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("resources"), list):
            return _error(400, "BadRequest", "The request body must be an object with a 'resources' array.")
        errors: list[dict[str, str]] = []
        schema = body.get("$schema")
        if schema != f"{SCHEMA_BASE}/configure/{version}":
            errors.append({"code": "invalidSchema",
                           "message": f"$schema must be '{SCHEMA_BASE}/configure/{version}'"})
        for resource in body["resources"]:
            if not isinstance(resource, dict):
                errors.append({"code": "invalidResource", "message": "each resource must be an object"})
                continue
            schema = str(resource.get("$schema", ""))
            if "/customer-leads/" not in schema:
                errors.append({"code": "invalidResource",
                               "message": f"resource type of '{schema}' cannot be configured here"})
                continue
            errors.extend(validate_customer_leads(resource, version))
        if not errors and self.fail_next:
            errors.append({"code": "businessValidationFailed", "message": self.fail_next.pop(0)})
        job_id = str(uuid.uuid4())
        products = [str(r.get("product")) for r in body["resources"] if isinstance(r, dict)]
        self.jobs[job_id] = {"jobId": job_id, "started": time.monotonic(), "seconds": self.job_seconds,
                             "jobStart": _now(), "jobEnd": None, "completed": False, "jobResult": "pending",
                             "pending_errors": errors, "errors": [], "resources": copy.deepcopy(body["resources"]),
                             "products": products}
        return json_response(self._job_body(self.jobs[job_id], version), 202)

    # --------------------------------------------------------------- control
    def control(self, request: Request, subpath: str) -> Response:
        parts = [p for p in subpath.strip("/").split("/") if p]
        method = request.method
        body = request.get_json(silent=True) or {}
        with self._lock:
            self._advance()
            if parts == ["state"] and method == "GET":
                return json_response(self.state())
            if parts == ["products"] and method == "POST":
                external_id = body.get("externalId")
                if not external_id:
                    return _error(400, "BadRequest", "externalId is required")
                try:
                    guid = self.add_product(str(external_id), body.get("name"))
                except ValueError as exc:
                    return _error(409, "Conflict", str(exc))
                return json_response({"id": guid})
            if parts == ["managers"] and method == "POST":
                client_id = str(body.get("client_id", "")).lower()
                if not client_id:
                    return _error(400, "BadRequest", "client_id is required")
                self.managers.add(client_id)
                return json_response({"managers": sorted(self.managers)})
            if len(parts) == 2 and parts[0] == "managers" and method == "DELETE":
                self.managers.discard(parts[1].lower())
                return json_response({"managers": sorted(self.managers)})
            if parts == ["drift"] and method == "POST":
                return self._drift(body)
            if parts == ["fail-next"] and method == "POST":
                self.fail_next.append(str(body.get("message") or "The lead destination could not be validated."))
                return json_response({"pending": len(self.fail_next)})
            if parts == ["settings"] and method == "POST":
                if "job_seconds" in body:
                    self.job_seconds = float(body["job_seconds"])
                return json_response({"job_seconds": self.job_seconds})
            if parts == ["reset"] and method == "POST":
                self.reset()
                return json_response({})
            return _error(404, "NotFound", f"No control route for {method} /{subpath}.")

    def _drift(self, body: dict[str, Any]) -> Response:
        """A person edits the lead destination in the portal: top-level leadDestination, or config fields."""
        product = self._product(str(body.get("product", "")))
        if product is None:
            return _error(404, "NotFound", f"product '{body.get('product')}' was not found")
        fields = {k: v for k, v in body.items() if k != "product"}
        leads = product["customerLeads"] or {
            "$schema": f"{SCHEMA_BASE}/customer-leads/{SUPPORTED_VERSIONS[0]}",
            "id": f"customer-leads/{product['id']}", "product": f"product/{product['id']}",
            "leadDestination": "none"}
        if "leadDestination" in fields:
            leads["leadDestination"] = fields.pop("leadDestination")
            if leads["leadDestination"] != "dynamics":
                leads.pop("dynamicsLeadConfiguration", None)
        if fields:
            config = leads.setdefault("dynamicsLeadConfiguration", {})
            for key, value in fields.items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = value
        product["customerLeads"] = leads
        return json_response({"customerLeads": mask(leads)})
