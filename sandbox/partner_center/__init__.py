"""Emulator of Partner Center's Product Ingestion API (`/rp/product-ingestion`) for one account.

    account.py  products, customer-leads resources, configure jobs, the API and its Manager-role check
    schema.py   the customer-leads schema rules and secret masking
    control.py  `/_control/partner-center/*` (products, managers, portal drift, failures, settings, state)
"""

from sandbox.partner_center.account import PartnerCenter
from sandbox.partner_center.control import AccountControl
from sandbox.partner_center.schema import (
           MASKED,
           SCHEMA_BASE,
           SUPPORTED_VERSIONS,
           mask,
           validate_customer_leads,
)

__all__ = ["MASKED", "SCHEMA_BASE", "SUPPORTED_VERSIONS", "AccountControl", "PartnerCenter", "mask",
           "validate_customer_leads"]
