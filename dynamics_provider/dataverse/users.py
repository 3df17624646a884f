"""Dataverse users (systemusers) and business units: find an application user by its application id,
create it, rename / enable / disable it, move it to another business unit, find a licence-synced user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamics_provider.client import DataverseClient, odata_guid, odata_path, odata_string
from dynamics_provider.dataverse.writes import checked, first, get_or_none, send_once
from dynamics_provider.errors import DuplicateRecord, NotFound
from dynamics_provider.formats import GUID_RE

USER_COLUMNS = ("systemuserid", "applicationid", "isdisabled", "_businessunitid_value", "firstname", "lastname",
                "fullname", "internalemailaddress", "domainname", "azureactivedirectoryobjectid")
# what a user's name and e-mail are called in Dataverse
NAME_COLUMNS = {"first_name": "firstname", "last_name": "lastname"}
EMAIL_COLUMN = "internalemailaddress"


@dataclass(frozen=True)
class SystemUser:
    id: str
    business_unit_id: str | None
    disabled: bool
    first_name: str | None = None
    last_name: str | None = None
    full_name: str | None = None
    email: str | None = None
    application_id: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SystemUser:
        return cls(id=str(row["systemuserid"]).lower(), business_unit_id=row.get("_businessunitid_value"),
                   disabled=bool(row.get("isdisabled")), first_name=row.get("firstname"),
                   last_name=row.get("lastname"), full_name=row.get("fullname"), email=row.get(EMAIL_COLUMN),
                   application_id=row.get("applicationid"))


class BusinessUnitNotFound(NotFound):
    default_hint = "use the name shown under Settings → Business Management → Business Units, or its id"


def _select() -> dict[str, str]:
    return {"$select": ",".join(USER_COLUMNS)}


def _by_application_path(application_id: str) -> str:
    return odata_path("systemusers", {**_select(), "$filter": f"applicationid eq {odata_guid(application_id)}"})


def _business_unit_path(name: str | None) -> str:
    """The business unit called `name`, or the root one (the one without a parent)."""
    return odata_path("businessunits", {
        "$select": "businessunitid",
        "$filter": f"name eq {odata_string(name)}" if name else "_parentbusinessunitid_value eq null"})


def user_and_business_unit(
    client: DataverseClient, business_unit: str | None, *, application_id: str | None = None,
    user_id: str | None = None,
) -> tuple[SystemUser | None, str]:
    """The user (by application id or by id) and the id of the business unit named `business_unit` (a
    name, an id, or None for the root unit), in one `$batch`. BusinessUnitNotFound for an unknown name."""
    user_path = (_by_application_path(application_id) if application_id
                 else odata_path(f"systemusers({odata_guid(str(user_id))})", _select()))
    paths = [user_path]
    if not (business_unit and GUID_RE.match(business_unit)):
        paths.append(_business_unit_path(business_unit))
    answers = client.batch_get(paths)
    user: SystemUser | None = None
    if not isinstance(answers[0], NotFound):
        found = checked(answers)[0]
        row = found if "systemuserid" in found else first(found)
        user = SystemUser.from_row(row) if row else None
    if len(answers) == 1:
        return user, str(business_unit)
    unit = first(checked(answers[1:])[0])
    if unit is None:
        raise BusinessUnitNotFound(404, None, f"no business unit is named {business_unit!r}",
                                   method="GET", path="businessunits")
    return user, str(unit["businessunitid"])


def find_application_user(client: DataverseClient, application_id: str) -> SystemUser | None:
    rows = client.query("systemusers", select=USER_COLUMNS, filter=f"applicationid eq {odata_guid(application_id)}")
    return SystemUser.from_row(rows[0]) if rows else None


def find_user_by_name(client: DataverseClient, user_principal_name: str) -> SystemUser | None:
    rows = client.query("systemusers", select=USER_COLUMNS, filter=f"domainname eq {odata_string(user_principal_name)}")
    return SystemUser.from_row(rows[0]) if rows else None


def find_synced_user(client: DataverseClient, user_principal_name: str, object_id: str | None) -> SystemUser | None:
    """The systemuser licence sync made for an Entra user: by object id when known, else by its UPN."""
    if object_id:
        rows = client.query("systemusers", select=USER_COLUMNS,
                            filter=f"azureactivedirectoryobjectid eq {odata_guid(object_id)}")
        if rows:
            return SystemUser.from_row(rows[0])
    return find_user_by_name(client, user_principal_name)


def get_user(client: DataverseClient, user_id: str) -> SystemUser | None:
    row = get_or_none(client, f"systemusers({odata_guid(user_id)})", USER_COLUMNS)
    return SystemUser.from_row(row) if row else None


def create_application_user(
    client: DataverseClient, application_id: str, business_unit_id: str, names: dict[str, str], email: str | None,
    *, systemuserid: str | None = None,
) -> tuple[SystemUser, bool]:
    """Create the application user (its row comes back in the same answer); (user, created by this call).

    `systemuserid` is the id to give the user (Dataverse takes a client-supplied primary key; None: Dataverse
    picks one). A lost answer is settled by the application id (the write policy); a duplicate answered to the
    first send means the user exists already (made in the meantime, or an earlier send of ours landed late):
    the user found is returned, and its id tells whose it is."""
    body: dict[str, Any] = {"applicationid": application_id,
                            "businessunitid@odata.bind": f"/businessunits({odata_guid(business_unit_id)})"}
    if systemuserid is not None:
        body["systemuserid"] = odata_guid(systemuserid)
    body.update({NAME_COLUMNS[key]: value for key, value in names.items()})
    if email is not None:
        body[EMAIL_COLUMN] = email
    try:
        user = send_once(client, lambda: SystemUser.from_row(client.create_record("systemusers", body, USER_COLUMNS)),
                         lambda: find_application_user(client, application_id),
                         what=f"application user {application_id}")
    except DuplicateRecord:
        found = find_application_user(client, application_id)
        if found is None:
            raise
        return found, False
    return user, True


def update_user(client: DataverseClient, user_id: str, *, names: dict[str, str] | None = None,
                disabled: bool | None = None) -> None:
    patch: dict[str, Any] = {NAME_COLUMNS[key]: value for key, value in (names or {}).items()}
    if disabled is not None:
        patch["isdisabled"] = disabled
    if patch:
        client.update("systemusers", user_id, patch)


def move_user(client: DataverseClient, user_id: str, business_unit_id: str) -> None:
    """A user's business unit changes only through SetBusinessSystemUser (PATCH is refused)."""
    body = {
        "BusinessUnit": {"@odata.type": "Microsoft.Dynamics.CRM.businessunit", "businessunitid": business_unit_id},
        # ReassignPrincipal is a principal (a base type whose key is ownerid): the concrete type and ownerid,
        # as Learn's "Use Web API actions" ("Specify entity parameter type") shows for a systemuser principal
        "ReassignPrincipal": {"@odata.type": "Microsoft.Dynamics.CRM.systemuser", "ownerid": user_id},
    }
    client.action("SetBusinessSystemUser", body, bound=("systemusers", user_id))
