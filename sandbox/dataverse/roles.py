"""Security roles of the Dataverse emulator: assigning roles to users (systemuserroles_association),
reading a role's or a user's privileges, and AddPrivilegesRole / ReplacePrivilegesRole /
RemovePrivilegeRole with the depths each privilege allows.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.common import GUID_PATTERN
from sandbox.dataverse import catalogue
from sandbox.dataverse.odata import matches, parse_filter, parse_select, project
from sandbox.dataverse.operations import (
    ROLE_PRIVILEGE_PROPERTIES,
    check_action_parameters,
    entity_parameter,
    payload_error,
)
from sandbox.dataverse.protocol import (
    E_INVALID_ARGUMENT,
    E_INVALID_DEPTH,
    E_WRONG_BUSINESS,
    ODataError,
    Result,
    bad_request,
    json_result,
    not_allowed,
    not_found,
    parse_body,
)
from sandbox.dataverse.schema import TABLES, parse_guid
from sandbox.dataverse.security import Principal, Security
from sandbox.dataverse.store import Store

_ROLE_REF = re.compile(rf"(?:.*/)?roles\(({GUID_PATTERN})\)")


def _by_privilege_name(item: tuple[str, str]) -> str:
    return catalogue.PRIVILEGES_BY_ID[item[0]].name


class Roles:
    """Role assignments and role privileges of one organization."""

    def __init__(self, store: Store, security: Security, base: str) -> None:
        self.store = store
        self.security = security
        self.base = base

    # ----- assignments --------------------------------------------------------------------------
    def association(self, method: str, user_id: str, role_id: str | None, ref: bool, query: dict[str, str],
                    body: bytes, pr: Principal) -> Result:
        """systemusers(id)/systemuserroles_association[(roleid)][/$ref]: list, associate, disassociate."""
        user = self.store.get("systemusers", user_id)
        if method == "GET":
            if role_id is not None:
                raise not_allowed(method)
            self.security.require_on_user(pr, "prvReadUser", user)
            self.security.require(pr, "prvReadRole")
            roles = self.store.roles_of_user(user_id)
            if ref:
                return json_result({"@odata.context": f"{self.base}$metadata#Collection($ref)",
                                    "value": [{"@odata.id": f"{self.base}roles({r['roleid']})"} for r in roles]})
            table = TABLES["roles"]
            select = parse_select(table, query.get("$select"))
            flt = parse_filter(table, query.get("$filter"))
            ctx_cols = f"({','.join(select)})" if select else ""
            return json_result({"@odata.context": f"{self.base}$metadata#roles{ctx_cols}",
                                "value": [project(table, r, select) for r in roles if matches(flt, r)]})
        if not ref:
            raise not_allowed(method)
        self.security.require_on_user(pr, "prvWriteUser", user)
        self.security.require(pr, "prvAssignRole", "Global")
        if method == "POST":
            if role_id is not None:
                raise not_allowed(method)
            m = _ROLE_REF.fullmatch(str(parse_body(body).get("@odata.id") or ""))
            if not m:
                raise bad_request("The request body must be {\"@odata.id\": \"<base>/roles(<roleid>)\"}.")
            role = self.store.get("roles", m.group(1).lower())
            if role["_businessunitid_value"] != user["_businessunitid_value"]:
                raise ODataError(400, E_WRONG_BUSINESS,
                                 "Cannot associate security role because the security role's Business Unit is not "
                                 "the same as the user's Business Unit. Details: "
                                 f"userid={user_id}, userBU={user['_businessunitid_value']}, "
                                 f"roleId={role['roleid']}, roleBU={role['_businessunitid_value']}")
            self.store.user_roles.add((user_id, role["roleid"]))  # already associated: success
            return 204, {}, b""
        if method == "DELETE":
            if role_id is None:
                m = _ROLE_REF.fullmatch(query.get("$id", ""))
                if not m:
                    raise bad_request("Specify the role: systemuserroles_association(<roleid>)/$ref or ?$id=.")
                role_id = m.group(1).lower()
            self.store.get("roles", role_id)
            self.store.user_roles.discard((user_id, role_id))  # inferred: removing an absent link is a no-op
            return 204, {}, b""
        raise not_allowed(method)

    # ----- privileges ---------------------------------------------------------------------------
    def retrieve_role_privileges(self, role_id: str, pr: Principal) -> Result:
        role = self.store.get("roles", role_id)
        self.security.require_row(pr, TABLES["roles"], role, "prvReadRole")
        rows = [{"Depth": depth, "PrivilegeId": pid, "BusinessUnitId": role["_businessunitid_value"],
                 "PrivilegeName": catalogue.PRIVILEGES_BY_ID[pid].name}
                for pid, depth in sorted(self.store.privileges_of_role(role).items(), key=_by_privilege_name)]
        return json_result({"@odata.context": self.base + "$metadata#Microsoft.Dynamics.CRM."
                                                          "RetrieveRolePrivilegesRoleResponse",
                            "RolePrivileges": rows})

    def retrieve_user_privileges(self, user_id: str, pr: Principal) -> Result:
        user = self.store.get("systemusers", user_id)
        self.security.require_on_user(pr, "prvReadUser", user)
        rows = [{"Depth": d, "PrivilegeId": p, "BusinessUnitId": user["_businessunitid_value"],
                 "PrivilegeName": catalogue.PRIVILEGES_BY_ID[p].name}
                for p, d in sorted(self.store.deepest_privileges(user_id).items(), key=_by_privilege_name)]
        return json_result({"@odata.context": self.base + "$metadata#Microsoft.Dynamics.CRM."
                                                          "RetrieveUserPrivilegesResponse",
                            "RolePrivileges": rows})

    @staticmethod
    def _parse_role_privilege(item: Any) -> tuple[catalogue.Privilege, str]:
        if not isinstance(item, dict) or "PrivilegeId" not in item:
            raise bad_request("Each RolePrivilege needs PrivilegeId and Depth.")
        unknown = sorted(k for k in item if k not in ROLE_PRIVILEGE_PROPERTIES and not k.startswith("@odata."))
        if unknown:  # Learn (reference/roleprivilege) lists the complex type's properties; wording inferred
            raise payload_error(f"The property '{unknown[0]}' does not exist on type "
                                "'Microsoft.Dynamics.CRM.RolePrivilege'. Make sure to only use property names "
                                "that are defined by the type.")
        pid = parse_guid(str(item["PrivilegeId"]))
        priv = catalogue.PRIVILEGES_BY_ID.get(pid)
        if priv is None:
            raise not_found("privilege", pid)
        depth = item.get("Depth")
        if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth <= 3:
            depth = catalogue.DEPTHS[depth]
        elif isinstance(depth, str) and depth.isdigit() and int(depth) <= 3:
            depth = catalogue.DEPTHS[int(depth)]
        if depth not in catalogue.DEPTHS:
            raise bad_request(f"Depth {item.get('Depth')!r} is not a PrivilegeDepth (Basic, Local, Deep, Global).")
        if not priv.allows(depth):
            # InvalidPrivilegeDepth: Microsoft's message is only "Invalid privilege depth."; the privilege and
            # the depth after it are the sandbox's addition (inferred, for diagnosis).
            raise ODataError(400, E_INVALID_DEPTH,
                             f"Invalid privilege depth. Depth {depth} is not valid for privilege {priv.name} "
                             f"(Id={priv.privilegeid}); allowed depths: {', '.join(priv.depths)}.")
        return priv, depth

    def privilege_action(self, action: str, role_id: str, body: dict, pr: Principal) -> Result:
        """roles(id)/Microsoft.Dynamics.CRM.{AddPrivilegesRole|ReplacePrivilegesRole|RemovePrivilegeRole}."""
        role = self.store.get("roles", role_id)
        self.security.require_row(pr, TABLES["roles"], role, "prvReadRole")
        self.security.require_row(pr, TABLES["roles"], role, "prvWriteRole")
        # Inferred (code and wording): nothing documented was found for editing an inherited copy; Dataverse
        # keeps privileges on the root role and its copies are read-only (docs/sandbox.md, "Security roles").
        if role["_parentroleid_value"] is not None:
            raise ODataError(400, E_INVALID_ARGUMENT,
                             f"The role (Id={role_id}) is an inherited copy in a child business unit; edit the "
                             f"privileges of its root role (Id={role['_parentrootroleid_value']}).")
        privs = self.store.role_privileges.setdefault(role_id, {})
        check_action_parameters(action, body)
        if action == "RemovePrivilegeRole":
            # Learn (reference/removeprivilegerole): one parameter, Privilege, of entity type privilege
            if body.get("Privilege") is None:
                raise bad_request("The parameter 'Privilege' is required for RemovePrivilegeRole and cannot be null.")
            _, pid = entity_parameter(body["Privilege"], "Privilege", "privilege")
            if pid not in catalogue.PRIVILEGES_BY_ID:
                raise not_found("privilege", pid)
            privs.pop(pid, None)
            self.store.stamp(role)
            return 204, {}, b""
        items = body.get("Privileges")
        if not isinstance(items, list):
            raise bad_request(f"{action} needs a Privileges array.")
        parsed = [self._parse_role_privilege(i) for i in items]  # all validated before anything changes
        if action == "ReplacePrivilegesRole":
            privs.clear()
        for priv, depth in parsed:
            # Inferred: AddPrivilegesRole sets the given depth of a privilege the role already holds.
            privs[priv.privilegeid] = depth
        self.store.stamp(role)
        return 204, {}, b""
