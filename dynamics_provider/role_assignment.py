"""SecurityRoleAssignment: a security role given to a systemuser (step 3.1 of the procedure).

Resolves the role's copy in the user's business unit, treats an existing association as success,
reports a removed association as gone, and disassociates on destroy unless it adopted it: an
association found on create is this stack's own when the user is one this stack made.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.application_user import made_by_stack
from dynamics_provider.base import (
    DataverseResourceProvider,
    clean,
    get_or_none,
    need_guid,
    need_https_url,
    need_role,
    new_revision,
    next_revision,
    raise_errors,
    same,
    stack_owner,
)
from dynamics_provider.errors import DuplicateRecord, NotFound

INPUTS = ("instance_url", "user_id", "role_name", "role_id")
NAV = "systemuserroles_association"


class SecurityRoleAssignmentProvider(DataverseResourceProvider):
    resource_type = "SecurityRoleAssignment"
    replace_keys = INPUTS

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = self.given(news, INPUTS)
        checks = {
            "instance_url": need_https_url(inputs.get("instance_url")),
            "user_id": need_guid(inputs.get("user_id"), "the systemuser id"),
        }
        checks.update(need_role(inputs))
        return self.checked(inputs, checks)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        # role_id is also an output (the copy in the user's BU): compare it only when it is an input.
        keys = ["instance_url", "user_id", "role_name"]
        if news.get("role_id") is not None or olds.get("role_id_input") is not None:
            changed = self.diff_inputs(olds, news, keys)
            if not same(olds.get("role_id_input"), news.get("role_id")):
                changed.append("role_id")
        else:
            changed = self.diff_inputs(olds, news, keys)
        return self.diff_result(changed)

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        subject = f"user {inputs['user_id']} / role {inputs.get('role_name') or inputs.get('role_id')}"
        with self.operation("create", subject):
            client = self.client(inputs["instance_url"])
            bu, assigned, role_id, ours = self._lookup(client, inputs, subject)
            # An association has no id of its own to prove who made it. On a user this stack made, one found
            # here is the stack's own (a create retried after a crash, or a person's edit in between): it goes
            # with the stack. On any other user it existed before: adopted, released on destroy.
            adopted = role_id in assigned and not ours
            if role_id not in assigned:
                self._associate(client, inputs["user_id"], role_id)
        return CreateResult(f"{inputs['user_id']}:{role_id}",
                            self._outs(inputs, role_id, bu, adopted, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        user_id, _, role_id = id_.partition(":")
        with self.operation("read", f"assignment {id_}"):
            user = self._user(self.client(state["instance_url"]), user_id)
        if user is None or role_id.lower() not in self._assigned(user):
            return ReadResult("", {})
        outs = {k: state.get(k) for k in INPUTS if k != "role_id"} | {"role_id": state.get("role_id_input")}
        return ReadResult(id_, self._outs(outs, role_id, user.get("_businessunitid_value"),
                                          bool(state.get("adopted")), state.get("revision")))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Every input replaces; an update only happens for cosmetic changes, so re-assert and report.
        inputs, state = clean(news), clean(olds)
        user_id, _, role_id = id_.partition(":")
        with self.operation("update", f"assignment {id_}"):
            client = self.client(inputs["instance_url"])
            user = self._user(client, user_id)
            wrote = user is None or role_id.lower() not in self._assigned(user)
            if wrote:
                self._associate(client, user_id, role_id)
        bu = (user or {}).get("_businessunitid_value") or state.get("business_unit_id")
        return UpdateResult(self._outs(inputs, role_id, bu, bool(state.get("adopted")), next_revision(state, wrote)))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        if state.get("adopted"):
            return  # the association existed before this stack: release it
        user_id, _, role_id = id_.partition(":")
        with self.operation("delete", f"assignment {id_}"):
            try:
                self.client(state["instance_url"]).disassociate("systemusers", user_id, NAV, role_id)
            except NotFound:
                pass

    # -- steps ---------------------------------------------------------------------------------

    @staticmethod
    def _user_path(user_id: str) -> str:
        """The user's business unit and its roles, in one read."""
        from dynamics_provider.client import odata_guid, odata_path

        return odata_path(f"systemusers({odata_guid(user_id)})", {
            "$select": "systemuserid,applicationid,_businessunitid_value", "$expand": f"{NAV}($select=roleid)"})

    def _user(self, client: Any, user_id: str) -> dict[str, Any] | None:
        return get_or_none(client, self._user_path(user_id))

    @staticmethod
    def _assigned(user: dict[str, Any]) -> set[str]:
        return {str(r.get("roleid", "")).lower() for r in user.get(NAV) or []}

    def _lookup(self, client: Any, inputs: dict[str, Any], subject: str) -> tuple[str, set[str], str, bool]:
        """(user's business unit, roles it has, the role's copy in that unit, whether this stack made the
        user) in one `$batch` round trip (a second read only when role_id names a copy of another unit)."""
        from dynamics_provider.client import odata_guid, odata_path, odata_string

        columns = "roleid,name,_businessunitid_value"
        if inputs.get("role_id"):
            role_path = odata_path(f"roles({odata_guid(inputs['role_id'])})", {"$select": columns})
        else:
            role_path = odata_path("roles", {"$select": columns,
                                             "$filter": f"name eq {odata_string(inputs['role_name'])}"})
        user, roles = client.batch_get([self._user_path(inputs["user_id"]), role_path])
        if isinstance(user, NotFound):
            raise self.refuse(
                "create", subject, "the systemuser does not exist in this organization",
                "create the user first (ApplicationUser / SyncedUser) and pass its systemuser_id",
            )
        if isinstance(roles, NotFound) and inputs.get("role_id"):
            raise self.refuse("create", subject, "no role has this id", "pass role_name, or the id of an existing role")
        user, roles = raise_errors([user, roles])
        bu = user["_businessunitid_value"]
        rows = roles.get("value") if "value" in roles else [roles]
        name = inputs.get("role_name") or rows[0]["name"]
        copy = next((r for r in rows if same(r.get("_businessunitid_value"), bu)), None)
        if copy is None and inputs.get("role_id"):
            copy = next(iter(client.query(
                "roles", select=["roleid", "name"],
                filter=f"name eq {odata_string(name)} and _businessunitid_value eq {odata_guid(bu)}")), None)
        if copy is None:
            raise self.refuse(
                "create", subject, f"no role named {name!r} exists in the user's business unit",
                "import the solution that brings the role (SolutionImport) before assigning it",
            )
        return (bu, self._assigned(user), copy["roleid"].lower(),
                made_by_stack(inputs["instance_url"], user, self.owner))

    @staticmethod
    def _associate(client: Any, user_id: str, role_id: str) -> None:
        """`$ref` association is idempotent (an existing one is success), so it is sent and retried as is."""
        try:
            client.associate("systemusers", user_id, NAV, "roles", role_id)
        except DuplicateRecord:
            return

    @staticmethod
    def _outs(
        inputs: dict[str, Any], role_id: str, bu: str | None, adopted: bool, revision: str | None
    ) -> dict[str, Any]:
        return {
            "instance_url": inputs.get("instance_url"),
            "user_id": inputs.get("user_id"),
            "role_name": inputs.get("role_name"),
            "role_id_input": inputs.get("role_id"),
            "role_id": role_id,
            "business_unit_id": bu,
            "adopted": adopted,
            "revision": revision,
        }


class SecurityRoleAssignment(Resource, module="dynamics", name="SecurityRoleAssignment"):
    """A security role assigned to a Dataverse user (the role's copy in the user's business unit)."""

    instance_url: pulumi.Output[str]
    user_id: pulumi.Output[str]
    role_name: pulumi.Output[str | None]
    role_id: pulumi.Output[str]
    business_unit_id: pulumi.Output[str]
    adopted: pulumi.Output[bool]
    revision: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        instance_url: pulumi.Input[str],
        user_id: pulumi.Input[str],
        role_name: pulumi.Input[str] | None = None,
        role_id: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "instance_url": instance_url,
            "user_id": user_id,
            "role_name": role_name,
            "role_id": role_id,
            "business_unit_id": None,
            "adopted": None,
            "revision": None,
        }
        super().__init__(SecurityRoleAssignmentProvider(owner=stack_owner()), resource_name, props, opts)
