"""Leads: the validation lead Partner Center writes ("Validate"), written as the lead writer, read back
and deleted as the deploying identity.
"""

from __future__ import annotations

import time

from dynamics_provider.client import DataverseClient, odata_guid
from dynamics_provider.dataverse.writes import get_or_none, send_once
from dynamics_provider.errors import DuplicateRecord, NotFound

_EPOCH_TICKS = 621355968000000000  # .NET ticks at 1970-01-01
LEAD_FIELDS = ("subject", "firstname", "lastname", "emailaddress1", "companyname")


def dotnet_ticks(now: float | None = None) -> int:
    return _EPOCH_TICKS + int((time.time() if now is None else now) * 10_000_000)


def validation_lead(ticks: int) -> dict[str, str]:
    """Partner Center's validation lead: every field MSFT_TEST_<ticks>."""
    marker = f"MSFT_TEST_{ticks}"
    return {field: marker for field in LEAD_FIELDS}


def lead_exists(admin: DataverseClient, lead_id: str) -> bool:
    return get_or_none(admin, f"leads({odata_guid(lead_id)})", ["leadid"]) is not None


def write_lead(writer: DataverseClient, admin: DataverseClient, lead_id: str, fields: dict[str, str]) -> str:
    """Create the lead with its own id as the lead writer; its id.

    A lead of that id already there was written by an earlier attempt with the same inputs that never
    got to delete it (killed): it is removed and written again, so the chain is proven now. A lost answer
    is settled by the id (the write policy), which can never make a second lead.
    """
    body = {"leadid": lead_id, **fields}

    def send() -> str:
        return writer.create("leads", body)

    def find() -> str | None:
        return lead_id if lead_exists(admin, lead_id) else None

    try:
        return send_once(writer, send, find, what=f"test lead {lead_id}")
    except DuplicateRecord:
        delete_lead(admin, lead_id)
        return send_once(writer, send, find, what=f"test lead {lead_id}")


def read_lead(admin: DataverseClient, lead_id: str) -> dict[str, str | None]:
    """The lead's validation fields as stored."""
    row = admin.get(f"leads({odata_guid(lead_id)})", {"$select": ",".join(["leadid", *LEAD_FIELDS])})
    return {field: row.get(field) for field in LEAD_FIELDS}


def delete_lead(admin: DataverseClient, lead_id: str) -> None:
    """Delete the lead; one that is gone already counts as done."""
    try:
        admin.delete("leads", lead_id)
    except NotFound:
        return
