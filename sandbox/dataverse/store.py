"""The rows and links of one Dataverse organization and the rules that keep them consistent: row
versions, inherited role copies in every business unit, role privileges held on the root role, and
the user-role links. No HTTP and no privilege checks here; callers hold the organization's lock.
"""

from __future__ import annotations

import uuid

from sandbox.dataverse import catalogue
from sandbox.dataverse.protocol import not_found
from sandbox.dataverse.schema import TABLES, now_iso


class Store:
    """One organization's data: `rows[entity_set][id]`, privileges per root role, user-role links."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, dict]] = {t: {} for t in TABLES}
        self.role_privileges: dict[str, dict[str, str]] = {}  # root role id -> {privilegeid: depth}
        self.user_roles: set[tuple[str, str]] = set()  # (systemuserid, roleid)
        self._version = 1000

    def stamp(self, row: dict, created: bool = False) -> dict:
        """Record a write: a new versionnumber (the row's ETag) and modifiedon (and createdon on create)."""
        self._version += 1
        now = now_iso()
        if created:
            row.setdefault("createdon", now)
        row["modifiedon"] = now
        row["versionnumber"] = self._version
        return row

    def get(self, entity_set: str, record_id: str) -> dict:
        """The row, or the Web API's 404 for it."""
        row = self.rows[entity_set].get(record_id)
        if row is None:
            raise not_found(TABLES[entity_set].logical, record_id)
        return row

    # ----- business units ----------------------------------------------------------------------
    def root_business_unit(self) -> str:
        return next(b for b, r in self.rows["businessunits"].items() if r["_parentbusinessunitid_value"] is None)

    def add_business_unit(self, name: str, parent: str | None, bu_id: str | None = None) -> str:
        bu_id = bu_id or str(uuid.uuid4())
        self.rows["businessunits"][bu_id] = self.stamp({
            "businessunitid": bu_id, "name": name, "_parentbusinessunitid_value": parent, "isdisabled": False,
            "divisionname": None}, created=True)
        if parent is not None:  # every root role gets an inherited copy in the new business unit
            for role in list(self.rows["roles"].values()):
                if role["_parentroleid_value"] is None:
                    self._add_role_copy(role, bu_id)
        return bu_id

    def descendants(self, bu: str) -> set[str]:
        """Every business unit below `bu` (not `bu` itself)."""
        out: set[str] = set()
        frontier = {bu}
        while frontier:
            nxt = {b for b, r in self.rows["businessunits"].items() if r["_parentbusinessunitid_value"] in frontier}
            nxt -= out
            out |= nxt
            frontier = nxt
        return out

    # ----- roles -------------------------------------------------------------------------------
    def create_role(self, name: str, role_id: str, managed: bool, solution_id: str | None) -> str:
        """A root role in the root business unit, with its inherited copy in every other unit."""
        root_bu = self.root_business_unit()
        self.rows["roles"][role_id] = self.stamp({
            "roleid": role_id, "name": name, "_businessunitid_value": root_bu, "_parentrootroleid_value": role_id,
            "_parentroleid_value": None, "ismanaged": managed, "solutionid": solution_id}, created=True)
        self.role_privileges.setdefault(role_id, {})
        for bu in self.rows["businessunits"]:
            if bu != root_bu:
                self._add_role_copy(self.rows["roles"][role_id], bu)
        return role_id

    def _add_role_copy(self, root: dict, bu: str) -> None:
        copy_id = str(uuid.uuid5(uuid.UUID(root["roleid"]), bu))
        self.rows["roles"][copy_id] = self.stamp({
            **root, "roleid": copy_id, "_businessunitid_value": bu, "_parentroleid_value": root["roleid"],
            "_parentrootroleid_value": root["roleid"]}, created=True)

    def delete_role(self, root_id: str) -> None:
        """A root role, its copies, their assignments and its privileges."""
        for rid in [r for r, row in self.rows["roles"].items() if row["_parentrootroleid_value"] == root_id]:
            del self.rows["roles"][rid]
            self.user_roles = {(u, r) for (u, r) in self.user_roles if r != rid}
        self.role_privileges.pop(root_id, None)

    def privileges_of_role(self, role: dict) -> dict[str, str]:
        """{privilegeid: depth} a role (root or copy) grants: its root role's."""
        return self.role_privileges.get(role["_parentrootroleid_value"], {})

    def roles_of_user(self, user_id: str) -> list[dict]:
        return [self.rows["roles"][r] for (u, r) in sorted(self.user_roles) if u == user_id and r in self.rows["roles"]]

    def deepest_privileges(self, user_id: str) -> dict[str, str]:
        """{privilegeid: deepest depth} over every role of the user."""
        best: dict[str, str] = {}
        for role in self.roles_of_user(user_id):
            for pid, depth in self.privileges_of_role(role).items():
                if pid not in best or catalogue.DEPTH_RANK[depth] > catalogue.DEPTH_RANK[best[pid]]:
                    best[pid] = depth
        return best

    # ----- users -------------------------------------------------------------------------------
    def insert_user(self, fields: dict, user_id: str | None = None) -> str:
        user_id = user_id or str(uuid.uuid4())
        row: dict = {c: None for c in TABLES["systemusers"].columns}
        row.update({"isdisabled": False, "islicensed": fields.get("accessmode") != 4, "accessmode": 0})
        row.update(fields)
        row["systemuserid"] = user_id
        row["fullname"] = " ".join(x for x in (row.get("firstname"), row.get("lastname")) if x)
        self.rows["systemusers"][user_id] = self.stamp(row, created=True)
        return user_id

    def find_user_by_domainname(self, upn: str) -> dict | None:
        return next((u for u in self.rows["systemusers"].values()
                     if (u.get("domainname") or "").casefold() == upn.casefold()), None)

    def move_user(self, user: dict, bu: str, reassign_to: str | None = None, move_records: bool = True) -> dict:
        """The effect of a business-unit change, whichever way it is made (SetBusinessSystemUser, the
        specialised update of businessunitid, the `move_user` drift).

        - Every security role of the user is removed: Dataverse's default (docs/sandbox.md, "Business-unit
          moves"; the org setting DoNotRemoveRolesOnChangeBusinessUnit, off by default, is not modelled).
          A "move" to the unit the user is already in changes nothing (inferred).
        - Records the user owns go to `reassign_to` (SetBusinessSystemUserRequest.ReassignPrincipal; the same
          user keeps them) and, unless DoNotMoveAllRecords, their owning business unit follows the owner.
        """
        uid = user["systemuserid"]
        old_bu = user["_businessunitid_value"]
        if old_bu == bu and reassign_to in (None, uid):
            return {"systemuserid": uid, "from_businessunitid": old_bu, "businessunitid": bu,
                    "removed_roles": [], "reassigned_records": 0}
        removed = sorted(r for (u, r) in self.user_roles if u == uid)
        self.user_roles.difference_update({(uid, r) for r in removed})
        user["_businessunitid_value"] = bu
        self.stamp(user)
        new_owner = reassign_to or uid
        owner_bu = self.rows["systemusers"][new_owner]["_businessunitid_value"]
        moved = 0
        for lead in self.rows["leads"].values():
            if lead.get("_ownerid_value") != uid:
                continue
            lead["_ownerid_value"] = new_owner
            if move_records or new_owner != uid:
                lead["_owningbusinessunit_value"] = owner_bu
            self.stamp(lead)
            moved += 1
        return {"systemuserid": uid, "from_businessunitid": old_bu, "businessunitid": bu,
                "removed_roles": removed, "reassigned_records": moved}
