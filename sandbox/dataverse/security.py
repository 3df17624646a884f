"""Security of the Dataverse emulator: who a caller is in the organization (its systemuser, roles and
deepest privilege depths), which depth an operation on a row needs (the user's own row, its business
unit, a child unit, the whole organization), and the 403 Dataverse answers when a privilege is missing.
System Administrators pass every check, as in Dataverse.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.common import Caller
from sandbox.dataverse import catalogue
from sandbox.dataverse.protocol import E_DISABLED, E_NOT_MEMBER, E_PRIVILEGE, ODataError
from sandbox.dataverse.schema import Table
from sandbox.dataverse.store import Store

# The privilege that reads each table.
READ_PRIVILEGE = {"businessunits": "prvReadBusinessUnit", "systemusers": "prvReadUser", "roles": "prvReadRole",
                  "solutions": "prvReadSolution", "asyncoperations": "prvReadAsyncOperation",
                  "importjobs": "prvReadImportJob", "privileges": "prvReadPrivilege", "leads": "prvReadLead"}


@dataclass
class Principal:
    """The systemuser a request runs as."""

    user: dict
    is_admin: bool
    privileges: dict[str, str]  # privilegeid -> deepest depth over all roles
    role_count: int


class Security:
    """Privilege checks against one organization's store."""

    def __init__(self, store: Store, organization_id: str, admin_role_id: str) -> None:
        self.store = store
        self.organization_id = organization_id
        self.admin_role_id = admin_role_id  # the root System Administrator role

    def principal(self, caller: Caller) -> Principal:
        """The caller's systemuser (an application user by app id, else a user by object id or UPN)."""
        users = self.store.rows["systemusers"].values()
        if caller.app_id:
            user = next((u for u in users if (u.get("applicationid") or "") == caller.app_id.lower()), None)
        else:
            oid = (caller.object_id or "").lower()
            upn = (caller.upn or "").casefold()
            user = next((u for u in users if u.get("azureactivedirectoryobjectid") == oid), None) or next(
                (u for u in users if upn and (u.get("domainname") or "").casefold() == upn), None)
        if user is None:
            raise ODataError(403, E_NOT_MEMBER, "The user is not a member of the organization.")
        if user["isdisabled"]:
            raise ODataError(400, E_DISABLED,
                             f"The user with SystemUserId={user['systemuserid']} in OrganizationContext="
                             f"{self.organization_id} is disabled. Disabled users cannot access the system. "
                             "Consider enabling this user. Also, users are disabled if they don't have a license.")
        roles = self.store.roles_of_user(user["systemuserid"])
        is_admin = any(r["_parentrootroleid_value"] == self.admin_role_id for r in roles)
        return Principal(user, is_admin, self.store.deepest_privileges(user["systemuserid"]), len(roles))

    def needed_depth(self, pr: Principal, owner: str | None, owner_bu: str | None) -> str:
        """The depth a privilege must have to act on a row owned by `owner` in business unit `owner_bu`."""
        if owner is not None and owner == pr.user["systemuserid"]:
            return "Basic"
        if owner_bu is None or owner_bu == pr.user["_businessunitid_value"]:
            return "Local"
        if owner_bu in self.store.descendants(pr.user["_businessunitid_value"]):
            return "Deep"
        return "Global"

    @staticmethod
    def has(pr: Principal, name: str, depth: str = "Basic") -> bool:
        if pr.is_admin:
            return True
        priv = catalogue.find(name)
        held = pr.privileges.get(priv.privilegeid)
        # A privilege that only allows deeper depths is satisfied by its shallowest allowed depth.
        need = max(catalogue.DEPTH_RANK[depth], min(catalogue.DEPTH_RANK[d] for d in priv.depths))
        return held is not None and catalogue.DEPTH_RANK[held] >= need

    def require(self, pr: Principal, name: str, depth: str = "Basic") -> None:
        """Dataverse's PrivilegeDenied (403) unless the principal holds `name` at `depth` or deeper."""
        if self.has(pr, name, depth):
            return
        priv = catalogue.find(name)
        user = pr.user
        where = ""
        if priv.entity:
            where = f" on OTC={catalogue.ENTITY_BY_NAME[priv.entity].otc} for entity '{priv.entity}'"
        held = pr.privileges.get(priv.privilegeid)
        detail = f" (needs depth {depth}, has {held})" if held else ""
        raise ODataError(403, E_PRIVILEGE,
                         f"Principal user (Id={user['systemuserid']}, type=8, roleCount={pr.role_count}, "
                         f"privilegeCount={len(pr.privileges)}, accessMode={user['accessmode']}), is missing "
                         f"{priv.name} privilege (Id={priv.privilegeid}){where}{detail}. "
                         f"context.Caller={user['systemuserid']}")

    def row_scope(self, table: Table, row: dict) -> tuple[str | None, str | None]:
        """(owning user, owning business unit) of a row, for depth checks."""
        if table.entity_set in ("leads", "asyncoperations", "importjobs"):
            owner = row.get("_ownerid_value")
            bu = row.get("_owningbusinessunit_value") or (
                self.store.rows["systemusers"].get(owner, {}).get("_businessunitid_value") if owner else None)
            return owner, bu
        if table.entity_set in ("systemusers", "roles"):
            return None, row.get("_businessunitid_value")
        if table.entity_set == "businessunits":
            return None, row["businessunitid"]
        return None, None

    def can_read_row(self, pr: Principal, table: Table, row: dict) -> bool:
        owner, bu = self.row_scope(table, row)
        return self.has(pr, READ_PRIVILEGE[table.entity_set], self.needed_depth(pr, owner, bu))

    def require_row(self, pr: Principal, table: Table, row: dict, name: str) -> None:
        owner, bu = self.row_scope(table, row)
        self.require(pr, name, self.needed_depth(pr, owner, bu))

    def require_on_user(self, pr: Principal, name: str, user: dict) -> None:
        """`name` at the depth acting on a systemuser (in its business unit) needs."""
        self.require(pr, name, self.needed_depth(pr, None, user["_businessunitid_value"]))
