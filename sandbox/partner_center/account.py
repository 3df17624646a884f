"""The Partner Center emulator: one account's products and their customer-leads resources, the
Product Ingestion API (`/rp/product-ingestion`: product list, resource tree, configure jobs that
complete over time) and who may call it (applications with the Manager role).

Answers follow Microsoft's examples (docs/sandbox.md, "Partner Center", names each source): the names are
spelled as the current Learn page writes them (`jobID`, `identity.externalID`), or as its 2022 version did
(`jobId`, `externalId`) with the setting `spelling: "2022"`, so clients are tested against both.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from sandbox.common import ADMIN_CLIENT_ID, Caller, SandboxSettings, json_response
from sandbox.partner_center.schema import (
    MASKED,
    PUBLIC_BASE,
    SCHEMA_BASE,
    SECRET_FIELDS,
    SEEDED_OFFER,
    SUPPORTED_VERSIONS,
    mask,
    schema_urls,
    validate_customer_leads,
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# jobEnd of a job that has not ended: both versions of the Learn page show this value in a pending job
PENDING_JOB_END = "0001-01-01T00:00:00"
SPELLINGS = {"current": {"jobId": "jobID", "externalId": "externalID"},  # Learn, ms.date 05/10/2023
             "2022": {"jobId": "jobId", "externalId": "externalId"}}  # the page's 2022 version (ms.date 06/17/2022)


def error(status: int, code: str, message: str) -> Response:
    """The API's error envelope, as the Learn page's 400 example: {"error": {"code", "message", "details": []}}
    (lower camel case codes like its `badRequest`)."""
    return json_response({"error": {"code": code, "message": message, "details": []}}, status)


def query_arg(request: Request, name: str) -> str | None:
    """A query parameter read without regard to case: the pages write `externalID=` and `externalId=`
    (inferred: ASP.NET binds query names case-insensitively)."""
    folded = name.casefold()
    return next((value for key, value in request.args.items() if key.casefold() == folded), None)


class PartnerCenter:
    """The Product Ingestion API of one Partner Center account, thread-safe."""

    def __init__(self, directory: Any = None, settings: SandboxSettings | None = None,
                 base_url: str = PUBLIC_BASE) -> None:
        self.directory = directory
        self.settings = settings or SandboxSettings()
        self.base_url = base_url.rstrip("/")  # where this API is served: its answers' resourceUri point here
        self.lock = threading.RLock()
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        with self.lock:
            self.products: dict[str, dict[str, Any]] = {}
            self.jobs: dict[str, dict[str, Any]] = {}
            self.managers: set[str] = {ADMIN_CLIENT_ID.lower()}
            self.fail_next: list[str] = []
            self.job_seconds = 0.4
            self.spelling = "current"
            self.add_product(SEEDED_OFFER, "Contoso lead offer")

    def add_product(self, external_id: str, name: str | None = None) -> str:
        with self.lock:
            for product in self.products.values():
                if product["externalId"] == external_id:
                    raise ValueError(f"a product with externalId '{external_id}' exists")
            guid = str(uuid.uuid4())
            self.products[guid] = {"id": guid, "externalId": external_id, "name": name or external_id,
                                   "customerLeads": None}
            return guid

    def product(self, key: str) -> dict[str, Any] | None:
        key = key.removeprefix("product/")
        if key in self.products:
            return self.products[key]
        return next((p for p in self.products.values() if p["externalId"] == key), None)

    def state(self) -> dict[str, Any]:
        with self.lock:
            self.advance()
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
                    "job_seconds": self.job_seconds, "spelling": self.spelling}

    def name(self, key: str) -> str:
        """A field name as the configured spelling writes it."""
        return SPELLINGS[self.spelling].get(key, key)

    # ------------------------------------------------------------------ jobs
    def _status(self, job: dict[str, Any]) -> str:
        if job["completed"]:
            return "completed"
        elapsed = time.monotonic() - job["started"]
        return "notStarted" if elapsed < job["seconds"] * 0.25 else "running"

    def advance(self) -> None:
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
                    product = self.product(str(resource.get("product", "")))
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
        """The configure-status object. Key order, jobEnd of a pending job and resourceUri only on success
        follow Microsoft's examples (docs/sandbox.md)."""
        status = self._status(job)
        body = {"$schema": f"{SCHEMA_BASE}/configure-status/{version}", self.name("jobId"): job["jobId"],
                "jobStatus": status, "jobResult": job["jobResult"], "jobStart": job["jobStart"],
                "jobEnd": job["jobEnd"] if status == "completed" else PENDING_JOB_END}
        if job["jobResult"] == "succeeded":
            body["resourceUri"] = f"{self.base_url}/configure/{job['jobId']}"
        body["errors"] = job["errors"]
        return body

    # ------------------------------------------------------------------- API
    def handle(self, request: Request, caller: Caller, subpath: str) -> Response:
        with self.lock:
            self.advance()
            if not caller.app_id or caller.app_id.lower() not in self.managers:
                return error(403, "forbidden", f"The caller '{caller.label}' is not an application with "
                                                "the Manager role in this Partner Center account.")
            version = request.args.get("$version")
            if not version:
                return error(400, "badRequest", "The '$version' query parameter is required.")
            if version not in SUPPORTED_VERSIONS:
                return error(400, "badRequest", f"The api version '{version}' is not supported. Supported "
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
                    return error(404, "notFound", f"Job '{parts[1]}' was not found.")
                return json_response(self._job_body(job, version))
            if len(parts) == 2 and parts[0] == "configure" and method == "GET":
                job = self.jobs.get(parts[1])
                if job is None:
                    return error(404, "notFound", f"Job '{parts[1]}' was not found.")
                if not job["completed"]:  # doc: "If you make this call before the job is completed, it will fail."
                    return error(400, "badRequest", f"Job '{parts[1]}' has not completed.")  # status inferred
                done = job["resources"] if job["jobResult"] == "succeeded" else []
                return json_response({"$schema": f"{SCHEMA_BASE}/configure-detail/{version}",
                                      "resources": [mask(r) for r in done]})
            return error(404, "notFound", f"No route for {method} /{subpath}.")

    def _product_body(self, product: dict[str, Any], version: str) -> dict[str, Any]:
        return {"$schema": f"{SCHEMA_BASE}/product/{version}", "id": f"product/{product['id']}",
                "identity": {self.name("externalId"): product["externalId"]}, "type": "softwareAsAService",
                "alias": product["name"]}

    def _list_products(self, request: Request, version: str) -> Response:
        external_id = query_arg(request, "externalId")
        value = [self._product_body(p, version) for p in self.products.values()
                 if external_id is None or p["externalId"] == external_id]
        return json_response({"value": value})

    def _resource_tree(self, request: Request, guid: str, version: str) -> Response:
        target = request.args.get("targetType", "draft")
        if target not in ("draft", "preview", "live"):
            return error(400, "badRequest", f"targetType '{target}' is not one of draft, preview, live.")
        product = self.products.get(guid)
        if product is None:
            return error(404, "notFound", f"Product 'product/{guid}' was not found.")
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
            return error(400, "badRequest", "The request body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("resources"), list):
            return error(400, "badRequest", "The request body must be an object with a 'resources' array.")
        errors: list[dict[str, str]] = []
        schema = body.get("$schema")
        if schema not in schema_urls("configure"):
            errors.append({"code": "invalidSchema",
                           "message": f"$schema must be '{SCHEMA_BASE}/configure/<version>' with a version of "
                                      f"{list(SUPPORTED_VERSIONS)}"})
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
                             "jobStart": _now(), "jobEnd": PENDING_JOB_END, "completed": False,
                             "jobResult": "pending",
                             "pending_errors": errors, "errors": [], "resources": copy.deepcopy(body["resources"]),
                             "products": products}
        return json_response(self._job_body(self.jobs[job_id], version), 202)
