"""Security roles of users: a user's roles, the copy of a role in a user's business unit, and the
`systemuserroles_association` that gives a role to a user (an existing association counts as success).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamics_provider.client import DataverseClient, odata_guid, odata_path, odata_string
from dynamics_provider.dataverse.writes import checked, get_or_none
from dynamics_provider.errors import DataverseError, DuplicateRecord, NotFound

USER_ROLES = "systemuserroles_association"
ROLE_COLUMNS = "roleid,name,_businessunitid_value,_parentrootroleid_value"


@dataclass(frozen=True)
class UserRoles:
    """A user's business unit, the ids (lower case) of the roles it has, and its application id (an
    application user's; None for a person)."""

    user_id: str
    business_unit_id: str
    role_ids: frozenset[str]
    application_id: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UserRoles:
        return cls(str(row["systemuserid"]).lower(), str(row["_businessunitid_value"]),
                   frozenset(str(r.get("roleid", "")).lower() for r in row.get(USER_ROLES) or []),
                   row.get("applicationid"))


@dataclass(frozen=True)
class RoleCopy:
    """What `role_for_user` found: the role's name (None: no role has the given id) and the id of its copy
    in the user's business unit (None: the role has no copy there)."""

    name: str | None
    copy_id: str | None


def _user_roles_path(user_id: str) -> str:
    """The user's business unit, application id and roles, in one read."""
    return odata_path(f"systemusers({odata_guid(user_id)})", {
        "$select": "systemuserid,applicationid,_businessunitid_value", "$expand": f"{USER_ROLES}($select=roleid)"})


def user_roles(client: DataverseClient, user_id: str) -> UserRoles | None:
    row = get_or_none(client, _user_roles_path(user_id))
    return UserRoles.from_row(row) if row else None


def role_for_user(
    client: DataverseClient, user_id: str, *, role_name: str | None = None, role_id: str | None = None
) -> tuple[UserRoles | None, RoleCopy]:
    """The user's roles and the role's copy in the user's business unit, in one `$batch` (a second read
    only when `role_id` names a copy of another business unit). The user is None when it does not exist."""
    if role_id:
        role_path = odata_path(f"roles({odata_guid(role_id)})", {"$select": ROLE_COLUMNS})
    else:
        role_path = odata_path("roles", {"$select": ROLE_COLUMNS, "$filter": f"name eq {odata_string(str(role_name))}"})
    user_row, roles = client.batch_get([_user_roles_path(user_id), role_path])
    if isinstance(user_row, NotFound):
        return None, RoleCopy(None, None)
    if isinstance(roles, NotFound) and role_id:
        return UserRoles.from_row(checked([user_row])[0]), RoleCopy(None, None)
    user_row, roles = checked([user_row, roles])
    user = UserRoles.from_row(user_row)
    rows = roles.get("value") if "value" in roles else [roles]
    name = role_name or (rows[0]["name"] if rows else None)
    copy = next((r for r in rows or [] if str(r.get("_businessunitid_value", "")).lower()
                 == user.business_unit_id.lower()), None)
    if copy is None and role_id and name:
        copy = next(iter(client.query(
            "roles", select=["roleid", "name"],
            filter=f"name eq {odata_string(name)} and _businessunitid_value eq {odata_guid(user.business_unit_id)}")),
            None)
    return user, RoleCopy(name, str(copy["roleid"]).lower() if copy else None)


def assign_role(client: DataverseClient, user_id: str, role_id: str) -> None:
    """`$ref` association is idempotent (an existing one is success), so it is sent and retried as is.

    What Dataverse answers for a role the user has already is not documented: 204 (as Microsoft's examples
    answer an association), a duplicate (0x80040237, any status), or another 400/409/412 refusal. A refusal
    that is not a duplicate counts as done only when the user's roles show the role (one read); otherwise it
    is raised as it came."""
    try:
        client.associate("systemusers", user_id, USER_ROLES, "roles", role_id)
    except DuplicateRecord:
        return
    except DataverseError as exc:
        if exc.status not in (400, 409, 412):
            raise
        try:
            held = {r.lower() for r in role_ids_of(client, user_id)}
        except DataverseError:
            raise exc from None
        if odata_guid(role_id) not in held:
            raise


def unassign_role(client: DataverseClient, user_id: str, role_id: str) -> None:
    """Remove the association; one that is gone already counts as done."""
    try:
        client.disassociate("systemusers", user_id, USER_ROLES, role_id)
    except NotFound:
        return


def role_ids_of(client: DataverseClient, user_id: str) -> list[str]:
    """The ids of the roles a user has (NotFound when the user does not exist)."""
    return [str(r["roleid"]) for r in client.query(f"systemusers({odata_guid(user_id)})/{USER_ROLES}",
                                                   select=["roleid"])]
