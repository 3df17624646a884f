"""Privilege depths of a security role: depth names, the privilege catalogue (which depths a privilege
allows), the role's current depths, and setting a privilege to exactly one depth (or removing it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dynamics_provider.client import DataverseClient, odata_guid, odata_path, odata_string
from dynamics_provider.dataverse.roles import ROLE_COLUMNS
from dynamics_provider.dataverse.writes import batch, first
from dynamics_provider.errors import NotFound, UnexpectedAnswer

#: Dataverse's depth names, lowest first (the UI calls them User, Business Unit, Parent: Child BU, Organization)
DEPTHS = ("Basic", "Local", "Deep", "Global")
_ALIASES = {
    "basic": "Basic", "user": "Basic",
    "local": "Local", "businessunit": "Local",
    "deep": "Deep", "parentchildbusinessunits": "Deep", "parentchildbusinessunit": "Deep",
    "global": "Global", "organization": "Global",
}  # fmt: skip
PRIVILEGE_NAME_RE = re.compile(r"^prv[A-Za-z0-9_]+$")
CATALOGUE_COLUMNS = "privilegeid,name,canbebasic,canbelocal,canbedeep,canbeglobal"


def normalize_depth(depth: Any) -> str | None:
    """Basic/Local/Deep/Global from either Dataverse or UI names (case, spaces and ':' ignored)."""
    if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth < 4:
        return DEPTHS[depth]
    if not isinstance(depth, str):
        return None
    return _ALIASES.get(re.sub(r"[\s:_\-]", "", depth).lower())


def privilege_reference(privilege_id: str) -> dict[str, str]:
    """RemovePrivilegeRole's one parameter, `Privilege`, is an entity of type privilege (Learn:
    webapi/reference/removeprivilegerole), not the .NET SDK's PrivilegeId: the entity is sent as a JSON object
    with its key and its type ("Use Web API actions", "Specify entity parameter type")."""
    return {"@odata.type": "Microsoft.Dynamics.CRM.privilege", "privilegeid": privilege_id}


def rank(depth: str | None) -> int:
    return -1 if depth is None else DEPTHS.index(depth)


@dataclass(frozen=True)
class RootRole:
    id: str
    business_unit_id: str | None


@dataclass(frozen=True)
class RolePrivilegeState:
    """A role's root copy, the catalogue rows of the privileges asked about (by name as asked) and the
    role's current depths (by lower-case privilege name)."""

    role: RootRole
    catalogue: dict[str, dict[str, Any]]
    current: dict[str, str]

    def problems(self, wanted: Mapping[str, str | None]) -> list[str]:
        """Unknown privileges and depths a privilege does not allow, as sentences (empty: all is well)."""
        problems = []
        for name, depth in wanted.items():
            row = self.catalogue.get(name)
            if row is None:
                problems.append(f"{name} is not a privilege of this organization")
                continue
            allowed = [d for d in DEPTHS if row.get(f"canbe{d.lower()}")]
            if depth is not None and depth not in allowed:
                problems.append(f"{name} cannot be {depth} (allowed: {', '.join(allowed) or 'none'})")
        return problems


def _depths(answer: Any, catalogue: Mapping[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """Depth by lower-case privilege name from a RetrieveRolePrivilegesRole answer.

    Microsoft documents the RolePrivilege complex type (Depth, PrivilegeId, PrivilegeName, BusinessUnitId)
    but not which of them every answer carries, nor whether Depth comes as the PrivilegeDepth name or its
    number. Read: Depth as name (Basic…Global, any case) or number (0–3, also as text); PrivilegeName, or
    else PrivilegeId resolved through `catalogue` (rows with privilegeid and name). Anything else fails
    with UnexpectedAnswer naming the operation and what was missing — never a KeyError, never a guess."""
    operation = "RetrieveRolePrivilegesRole"
    if not isinstance(answer, dict) or not isinstance(answer.get("RolePrivileges"), list):
        raise UnexpectedAnswer(operation, "the answer has no RolePrivileges list")
    by_id = {str(row.get("privilegeid", "")).lower(): row.get("name") for row in (catalogue or {}).values()}
    depths: dict[str, str] = {}
    for index, item in enumerate(answer["RolePrivileges"]):
        if not isinstance(item, dict):
            raise UnexpectedAnswer(operation, f"entry {index} of RolePrivileges is not an object")
        name = item.get("PrivilegeName") or by_id.get(str(item.get("PrivilegeId") or "").lower())
        if not isinstance(name, str) or not name:
            if item.get("PrivilegeId") and catalogue is not None:
                continue  # a privilege outside the ones asked about: not one the caller manages
            raise UnexpectedAnswer(operation, f"entry {index} of RolePrivileges names no privilege "
                                   "(neither PrivilegeName nor PrivilegeId)")
        raw = item.get("Depth")
        depth = normalize_depth(int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw)
        if depth is None:
            raise UnexpectedAnswer(operation, f"the depth of {name} is missing or not a PrivilegeDepth "
                                   "(Basic, Local, Deep, Global or 0-3)")
        depths[name.lower()] = depth
    return depths


def current_depths(client: DataverseClient, role_id: str,
                   catalogue: Mapping[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """The role's privileges and depths (NotFound when the role does not exist)."""
    return _depths(client.function("RetrieveRolePrivilegesRole", RoleId=role_id), catalogue)


def role_privilege_state(
    client: DataverseClient, names: Iterable[str], *, role_id: str | None = None, role_name: str | None = None
) -> RolePrivilegeState | None:
    """The role's root copy, the catalogue of `names` and the current depths.

    By id: one `$batch` (role, catalogue, the role's privileges; NotFound for an unknown id). By name: one
    `$batch` (root business unit, the role's copies, catalogue), then the root copy's privileges; None when
    no role of that name is in the root business unit.
    """
    names = list(names)
    catalogue_path = odata_path("privileges", {
        "$select": CATALOGUE_COLUMNS, "$filter": " or ".join(f"name eq {odata_string(n)}" for n in names)})
    current: dict[str, str] | None = None
    if role_id:
        rid = odata_guid(role_id)
        role, catalogue, privileges = batch(client, [
            odata_path(f"roles({rid})", {"$select": ROLE_COLUMNS}), catalogue_path,
            f"RetrieveRolePrivilegesRole(RoleId={rid})"])
        root = role.get("_parentrootroleid_value")
        if root and str(root).lower() != str(role["roleid"]).lower():
            role = client.get(f"roles({odata_guid(root)})", {"$select": ROLE_COLUMNS})
        else:
            current = _depths(privileges, {row["name"]: row for row in catalogue.get("value") or []})
    else:
        unit, copies, catalogue = batch(client, [
            odata_path("businessunits", {"$select": "businessunitid", "$filter": "_parentbusinessunitid_value eq null"}),
            odata_path("roles", {"$select": ROLE_COLUMNS, "$filter": f"name eq {odata_string(str(role_name))}"}),
            catalogue_path])
        root_unit = str((first(unit) or {}).get("businessunitid", "")).lower()
        found = next((r for r in copies.get("value") or []
                      if str(r.get("_businessunitid_value", "")).lower() == root_unit), None)
        if found is None:
            return None
        role = found
    by_name = {r["name"].lower(): r for r in catalogue.get("value") or []}
    rows = {name: by_name[name.lower()] for name in names if name.lower() in by_name}
    root_role = RootRole(str(role["roleid"]).lower(), role.get("_businessunitid_value"))
    if current is None:
        current = current_depths(client, root_role.id, rows)
    return RolePrivilegeState(root_role, rows, current)


def set_depths(client: DataverseClient, state: RolePrivilegeState, target: Mapping[str, str | None]) -> dict[str, str | None]:
    """Bring each listed privilege to exactly its target depth (None = absent), nothing else; returns what
    it changed ({name: depth}, empty when nothing was written).

    AddPrivilegesRole only adds or raises; lowering needs RemovePrivilegeRole first. Both are bound actions
    that set a state (idempotent), so the pipeline may resend them.
    """
    role = state.role
    to_add, changed = [], {}
    for name, depth in target.items():
        have = state.current.get(name.lower())
        if have == depth:
            continue
        changed[name] = depth
        privilege_id = state.catalogue[name]["privilegeid"]
        if have is not None and (depth is None or rank(depth) < rank(have)):
            try:
                client.action("RemovePrivilegeRole", {"Privilege": privilege_reference(privilege_id)},
                              bound=("roles", role.id))
            except NotFound:
                pass
        if depth is not None:
            to_add.append({"PrivilegeId": privilege_id, "Depth": depth, "BusinessUnitId": role.business_unit_id})
    if to_add:
        client.action("AddPrivilegesRole", {"Privileges": to_add}, bound=("roles", role.id))
    return changed
