"""Read-only questions `fleet doctor` asks an organization before the first `pulumi up`: the server's
version, the caller's roles with their role templates, a business unit, a role's copy in it, and the
privilege catalogue rows of some names. Every function here sends GET requests only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dynamics_provider.client import DataverseClient, odata_guid, odata_string
from dynamics_provider.dataverse.privileges import CATALOGUE_COLUMNS
from dynamics_provider.dataverse.roles import ROLE_COLUMNS, USER_ROLES
from dynamics_provider.errors import DataverseError
from dynamics_provider.formats import GUID_RE

# The built-in System Administrator role's template id, "unique and constant in all environments" (Microsoft
# Learn, "Security roles and templates", https://learn.microsoft.com/power-apps/developer/data-platform/
# security-roles: `SystemAdmin = "{627090FF-40A3-4053-8790-584EDC5BE201}"`). A role row carries it as the
# lookup `_roletemplateid_value` (Web API reference, role EntityType: single-valued navigation property
# `roletemplateid` → roletemplate). Role ids differ per environment and per business-unit copy; names can be
# translated or reused by a custom role, so the name is only the fallback.
SYSTEM_ADMINISTRATOR_TEMPLATE_ID = "627090ff-40a3-4053-8790-584edc5be201"
SYSTEM_ADMINISTRATOR_NAME = "System Administrator"
TEMPLATE_COLUMN = "_roletemplateid_value"
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+){0,2}$")


@dataclass(frozen=True)
class ServerVersion:
    """RetrieveVersion's `Version` (Web API reference: RetrieveVersion function, RetrieveVersionResponse
    complex type, one property `Version`, Edm.String) and its major / minor numbers (None: unreadable)."""

    text: str
    major: int | None
    minor: int | None


def server_version(client: DataverseClient) -> ServerVersion:
    """`GET RetrieveVersion` (unbound function, no parameters). A version that is not `a.b[.c[.d]]` comes back
    with major/minor None (the caller says what was unexpected); an answer without `Version` raises."""
    answer = client.function("RetrieveVersion")
    text = answer.get("Version") if isinstance(answer, dict) else None
    if not isinstance(text, str) or not text.strip():
        shown = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
        raise DataverseError(200, None, f"RetrieveVersion answered without a Version (keys: {shown})",
                             method="GET", path="RetrieveVersion")
    match = _VERSION.match(text.strip())
    if not match:
        return ServerVersion(text.strip(), None, None)
    return ServerVersion(text.strip(), int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class HeldRole:
    """A role a user holds directly: its id, name and role template (None: a custom role, or not answered)."""

    id: str
    name: str
    template_id: str | None
    template_answered: bool  # whether the answer carried the template column at all


def roles_held(client: DataverseClient, user_id: str) -> list[HeldRole]:
    """The security roles assigned to the user itself (not through a team), with their templates."""
    rows = client.query(f"systemusers({odata_guid(user_id)})/{USER_ROLES}", select=["roleid", "name", TEMPLATE_COLUMN])
    return [HeldRole(str(r.get("roleid", "")).lower(), str(r.get("name") or ""),
                     str(r[TEMPLATE_COLUMN]).lower() if r.get(TEMPLATE_COLUMN) else None, TEMPLATE_COLUMN in r)
            for r in rows]


def is_system_administrator(role: HeldRole) -> bool:
    """By template id; by name only when the answer had no template column."""
    if role.template_id is not None:
        return role.template_id == SYSTEM_ADMINISTRATOR_TEMPLATE_ID
    return not role.template_answered and role.name == SYSTEM_ADMINISTRATOR_NAME


def business_unit(client: DataverseClient, name_or_id: str | None) -> dict[str, Any] | None:
    """The business unit named (or with the id) `name_or_id`, or the root unit for None; None if there is none."""
    if name_or_id and GUID_RE.match(name_or_id.strip("{}")):
        condition = f"businessunitid eq {odata_guid(name_or_id)}"
    elif name_or_id:
        condition = f"name eq {odata_string(name_or_id)}"
    else:
        condition = "_parentbusinessunitid_value eq null"
    return next(iter(client.query("businessunits", select=["businessunitid", "name"], filter=condition)), None)


def role_in_business_unit(client: DataverseClient, role_name: str, business_unit_id: str) -> dict[str, Any] | None:
    """The copy of the role called `role_name` that belongs to the business unit, or None."""
    rows = client.query("roles", select=ROLE_COLUMNS.split(","),
                        filter=f"name eq {odata_string(role_name)} and _businessunitid_value eq "
                               f"{odata_guid(business_unit_id)}")
    return next(iter(rows), None)


def privilege_rows(client: DataverseClient, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The privilege catalogue rows of `names` (privilegeid, name, canbe<depth>), by name as asked."""
    names = list(names)
    if not names:
        return {}
    rows = client.query("privileges", select=CATALOGUE_COLUMNS.split(","),
                        filter=" or ".join(f"name eq {odata_string(n)}" for n in names))
    by_name = {str(r.get("name", "")).lower(): r for r in rows}
    return {name: by_name[name.lower()] for name in names if name.lower() in by_name}
