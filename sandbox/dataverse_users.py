"""Business-unit moves of the Dataverse emulator: the SetBusinessSystemUser bound action, the
specialised update (PATCH businessunitid@odata.bind) and the `move_user` drift share one effect.
Mixed into sandbox.dataverse.Organization.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sandbox.dataverse_odata import ODataError, bad_request, parse_guid

if TYPE_CHECKING:
    from sandbox.dataverse import Principal

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
SET_BUSINESS_PARAMETERS = {"BusinessUnit", "ReassignPrincipal", "DoNotMoveAllRecords"}


def _entity_reference(value: Any, name: str, logical: tuple[str, ...]) -> tuple[str, str]:
    """(entity logical name, id) of an entity-typed action parameter.

    Accepted shapes, as the Web API takes them: {"@odata.type": "Microsoft.Dynamics.CRM.x", "xid": guid},
    {"xid": guid}, or {"@odata.id": "x-set(guid)"}."""
    if not isinstance(value, dict):
        raise bad_request(f"The parameter '{name}' must be an entity object, e.g. "
                          f"{{\"@odata.type\": \"Microsoft.Dynamics.CRM.{logical[0]}\", \"{logical[0]}id\": \"<guid>\"}}.")
    odata_type = str(value.get("@odata.type") or "")
    for entity in logical:
        key = f"{entity}id"
        if odata_type and odata_type.rsplit(".", 1)[-1] != entity:
            continue
        if value.get(key):
            return entity, parse_guid(str(value[key]))
        ref = str(value.get("@odata.id") or "")
        if m := re.fullmatch(rf"(?:.*/)?{entity}s\(({_GUID})\)", ref):
            return entity, m.group(1).lower()
    raise bad_request(f"The parameter '{name}' does not identify a {' or '.join(logical)} "
                      f"(give @odata.type and {logical[0]}id).")


class UserMoves:
    """Moving a systemuser to another business unit; expects the Organization's rows, lock-held callers
    and helpers (_get, _require, _needed_depth, _stamp)."""

    def _set_business_system_user(self, user_id: str, body: dict, pr: Principal):
        # Parameters per Microsoft's Web API reference (SetBusinessSystemUser action): BusinessUnit and
        # ReassignPrincipal are non-nullable; DoNotMoveAllRecords (Edm.Boolean) is optional.
        unknown = set(body) - SET_BUSINESS_PARAMETERS
        if unknown:
            raise bad_request(f"The parameter '{sorted(unknown)[0]}' in the request payload is not a valid parameter "
                              "for the operation 'SetBusinessSystemUser'.")
        for required in ("BusinessUnit", "ReassignPrincipal"):
            if body.get(required) is None:
                # The SDK's SetBusinessSystemUserRequest: "If this property is set to null … an error occurs."
                raise bad_request(f"The parameter '{required}' is required for SetBusinessSystemUser and cannot be null.")
        do_not_move = body.get("DoNotMoveAllRecords", False)
        if not isinstance(do_not_move, bool):
            raise bad_request(f"Cannot convert the literal '{do_not_move}' to the expected type 'Edm.Boolean'.")
        user = self._get("systemusers", user_id)
        _, bu = _entity_reference(body["BusinessUnit"], "BusinessUnit", ("businessunit",))
        _, principal = _entity_reference(body["ReassignPrincipal"], "ReassignPrincipal", ("systemuser", "team"))
        self._get("businessunits", bu)
        if principal not in self.rows["systemusers"]:  # the sandbox has no teams
            raise ODataError(404, "0x80040217", f"systemuser With Id = {principal} Does Not Exist")
        # Privileges of the message (Microsoft's "SetBusinessSystemUser message privileges"):
        # prvReadBusinessUnit, prvReadUser, prvWriteUser.
        self._require(pr, "prvReadBusinessUnit", self._needed_depth(pr, None, bu))
        self._require(pr, "prvReadUser", self._needed_depth(pr, None, user["_businessunitid_value"]))
        self._require(pr, "prvWriteUser", self._needed_depth(pr, None, user["_businessunitid_value"]))
        self._move_user(user, bu, principal, move_records=not do_not_move)
        return 204, {}, b""

    def _move_user(self, user: dict, bu: str, reassign_to: str | None = None, move_records: bool = True) -> dict:
        """The effect of a business-unit change, whichever way it is made.

        - Every security role of the user is removed: Dataverse's default ("By changing the business unit
          for a user, you remove all security role assignments for the user", Dynamics 365 help, Change the
          business unit; the org setting DoNotRemoveRolesOnChangeBusinessUnit, off by default, is not modelled).
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
        self._stamp(user)
        new_owner = reassign_to or uid
        owner_bu = self.rows["systemusers"][new_owner]["_businessunitid_value"]
        moved = 0
        for lead in self.rows["leads"].values():
            if lead.get("_ownerid_value") != uid:
                continue
            lead["_ownerid_value"] = new_owner
            if move_records or new_owner != uid:
                lead["_owningbusinessunit_value"] = owner_bu
            self._stamp(lead)
            moved += 1
        return {"systemuserid": uid, "from_businessunitid": old_bu, "businessunitid": bu,
                "removed_roles": removed, "reassigned_records": moved}
