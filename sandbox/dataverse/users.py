"""Users of the Dataverse emulator: creating a systemuser (an application user for an Entra app, or a
user for an Entra user) and moving one to another business unit with the SetBusinessSystemUser action.
"""

from __future__ import annotations

from sandbox.dataverse.operations import check_action_parameters, entity_parameter
from sandbox.dataverse.protocol import Result, bad_request, duplicate, not_found
from sandbox.dataverse.schema import Table, parse_guid
from sandbox.dataverse.security import Principal, Security
from sandbox.dataverse.store import Store
from sandbox.dataverse.tables import created_result, split_body
from sandbox.entra import Directory


class Users:
    """systemuser creation and business-unit moves of one organization."""

    def __init__(self, store: Store, security: Security, directory: Directory | None, base: str) -> None:
        self.store = store
        self.security = security
        self.directory = directory
        self.base = base

    def create(self, table: Table, query: dict, headers: dict[str, str], body: dict, pr: Principal) -> Result:
        if "azureactivedirectoryobjectid" in body:
            raise bad_request("The property 'azureactivedirectoryobjectid' of 'systemuser' is read-only; it is "
                              "taken from the Microsoft Entra ID object of the user or application.")
        fields, binds = split_body(table, body, table.creatable | {"systemuserid"})
        bu = binds.get("businessunitid")
        if bu is None:  # inferred: businessunitid is required on create
            raise bad_request("Attribute 'businessunitid' is required: bind it with "
                              "\"businessunitid@odata.bind\": \"/businessunits(<id>)\".")
        if bu not in self.store.rows["businessunits"]:
            raise not_found("businessunit", bu)
        self.security.require(pr, "prvCreateUser", self.security.needed_depth(pr, None, bu))
        if not fields.get("lastname"):
            raise bad_request("Attribute 'lastname' cannot be NULL.")
        if not fields.get("internalemailaddress"):
            raise bad_request("Attribute 'internalemailaddress' is required for a user.")
        app_id = fields.get("applicationid")
        if app_id:
            sp = self.directory.find_service_principal(app_id) if self.directory else None
            if sp is None:  # inferred wording
                raise bad_request(f"The application with id {app_id} was not found in the organization's "
                                  "Microsoft Entra tenant (no service principal).")
            if any(u.get("applicationid") == app_id for u in self.store.rows["systemusers"].values()):
                raise duplicate(f"an application user for application id {app_id} exists.")
            fields["azureactivedirectoryobjectid"] = parse_guid(sp["object_id"])
            fields["accessmode"] = 4
            fields.setdefault("domainname", fields["internalemailaddress"])  # inferred for application users
        else:
            upn = fields.get("domainname") or fields["internalemailaddress"]
            found = self.directory.find_user(upn=upn) if self.directory else None
            if found is None:
                raise bad_request(f"The user {upn} was not found in the organization's Microsoft Entra tenant.")
            if self.store.find_user_by_domainname(upn) is not None:
                raise duplicate()
            fields.update({"domainname": upn, "azureactivedirectoryobjectid": parse_guid(found["object_id"])})
        user_id = fields.pop("systemuserid", None)
        if user_id in self.store.rows["systemusers"]:
            raise duplicate()
        uid = self.store.insert_user({**fields, "_businessunitid_value": bu}, user_id)
        return created_result(self.base, table, self.store.rows["systemusers"][uid], query, headers)

    def set_business_system_user(self, user_id: str, body: dict, pr: Principal) -> Result:
        # Parameters per the Web API reference of the SetBusinessSystemUser action (docs/sandbox.md,
        # "Business-unit moves"): BusinessUnit and ReassignPrincipal are non-nullable; DoNotMoveAllRecords
        # (Edm.Boolean) is optional.
        check_action_parameters("SetBusinessSystemUser", body)
        for required in ("BusinessUnit", "ReassignPrincipal"):
            if body.get(required) is None:
                raise bad_request(f"The parameter '{required}' is required for SetBusinessSystemUser and cannot be null.")
        do_not_move = body.get("DoNotMoveAllRecords", False)
        if not isinstance(do_not_move, bool):
            raise bad_request(f"Cannot convert the literal '{do_not_move}' to the expected type 'Edm.Boolean'.")
        user = self.store.get("systemusers", user_id)
        _, bu = entity_parameter(body["BusinessUnit"], "BusinessUnit", "businessunit")
        _, principal = entity_parameter(body["ReassignPrincipal"], "ReassignPrincipal", "principal")
        self.store.get("businessunits", bu)
        if principal not in self.store.rows["systemusers"]:  # the sandbox has no teams
            raise not_found("systemuser", principal)
        # The message's privileges: prvReadBusinessUnit, prvReadUser, prvWriteUser.
        self.security.require(pr, "prvReadBusinessUnit", self.security.needed_depth(pr, None, bu))
        self.security.require_on_user(pr, "prvReadUser", user)
        self.security.require_on_user(pr, "prvWriteUser", user)
        self.store.move_user(user, bu, principal, move_records=not do_not_move)
        return 204, {}, b""
