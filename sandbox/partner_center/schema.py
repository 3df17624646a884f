"""The Product Ingestion API's `customer-leads` resource as the Partner Center emulator checks it: the
documented schema rules for a Dynamics 365 lead destination, and the masking of its secrets on read.
Messages never echo a secret value.
"""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlsplit

from sandbox.common import GUID_PATTERN

SCHEMA_BASE = "https://schema.mp.microsoft.com/schema"
# Both bases appear in the $schema of Microsoft's examples (Learn, "Product Ingestion API for the commercial
# marketplace": product-ingestion.azureedge.net for the 2022-03-01-preview2/3 resources, schema.mp.microsoft.com
# for its resources-index and later versions): requests may name either; answers use SCHEMA_BASE.
SCHEMA_BASES = (SCHEMA_BASE, "https://product-ingestion.azureedge.net/schema")
SUPPORTED_VERSIONS = ("2022-03-01-preview2", "2022-03-01-preview3", "2022-03-01-preview5")
PUBLIC_BASE = "https://graph.microsoft.com/rp/product-ingestion"  # where Microsoft serves the API
MASKED = "*********"  # what the API returns in place of applicationKey / password
LEAD_DESTINATIONS = ("none", "blob", "dynamics", "email", "httpsEndpoint", "marketo", "salesforce", "table")
DYNAMICS_FIELDS = (
    "instanceUrl", "authentication", "applicationId", "applicationKey", "directoryId",
    "username", "password", "contactEmail",
)
SECRET_FIELDS = ("applicationKey", "password")
SEEDED_OFFER = "contoso-lead-offer"  # one product present after start/reset (the dev stack's offer)

_UUID = re.compile(rf"^{GUID_PATTERN}$")
_EMAIL = re.compile(r"^[^@\s;,]+@[^@\s;,]+\.[^@\s;,]+$")


def schema_urls(resource_type: str) -> set[str]:
    """Every `$schema` a request may name for a resource type: either base, any supported version."""
    return {f"{base}/{resource_type}/{v}" for base in SCHEMA_BASES for v in SUPPORTED_VERSIONS}


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

    # Each resource names its own schema version, which may differ from the call's $version (doc: the Learn
    # page's lead management sample sends customer-leads/2022-03-01-preview3 with $version=2022-03-01-preview2)
    if resource.get("$schema") not in schema_urls("customer-leads"):
        fail("$schema", f"must be '{SCHEMA_BASE}/customer-leads/<version>' with a version of "
                        f"{list(SUPPORTED_VERSIONS)}", "invalidSchema")
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
