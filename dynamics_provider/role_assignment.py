"""SecurityRoleAssignment: a security role given to a systemuser (step 3.1 of the procedure).

Resolves the role's copy in the user's business unit, treats an existing association as success,
reports a removed association as gone, and disassociates on destroy unless it adopted it.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    DataverseResourceProvider,
    clean,
    failures_for,
    need_guid,
    need_https_url,
    need_text,
    same,
)
from dynamics_provider.errors import AmbiguousWriteError, DuplicateRecord, NotFound

INPUTS = ("instance_url", "user_id", "role_name", "role_id")
NAV = "systemuserroles_association"


class SecurityRoleAssignmentProvider(DataverseResourceProvider):
    resource_type = "SecurityRoleAssignment"
    replace_keys = INPUTS

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = {k: v for k, v in clean(news).items() if k in INPUTS and v is not None}
        checks = {
            "instance_url": need_https_url(inputs.get("instance_url")),
            "user_id": need_guid(inputs.get("user_id"), "the systemuser id"),
        }
        if "role_name" in inputs and "role_id" in inputs:
            checks["role_id"] = "give either role_name or role_id, not both"
        elif "role_id" in inputs:
            checks["role_id"] = need_guid(inputs["role_id"], "the role id")
        else:
            checks["role_name"] = need_text(inputs.get("role_name"), "the security role's name (or role_id)", 100)
        checks = {k: v for k, v in checks.items() if not (k in inputs and not self.known(inputs, k))}
        return self.check_result(inputs, failures_for(checks))

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
            bu = self._user_business_unit(client, inputs["user_id"])
            if bu is None:
                raise self.refuse(
                    "create", subject, "the systemuser does not exist in this organization",
                    "create the user first (ApplicationUser / SyncedUser) and pass its systemuser_id",
                )
            role_id = self._role_copy(client, inputs, bu, subject)
            adopted = self._associated(client, inputs["user_id"], role_id)
            if not adopted:
                self._associate(client, inputs["user_id"], role_id)
        return CreateResult(f"{inputs['user_id']}:{role_id}", self._outs(inputs, role_id, bu, adopted))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        user_id, _, role_id = id_.partition(":")
        with self.operation("read", f"assignment {id_}"):
            client = self.client(state["instance_url"])
            bu = self._user_business_unit(client, user_id)
            if bu is None or not self._associated(client, user_id, role_id):
                return ReadResult("", {})
        outs = {k: state.get(k) for k in INPUTS if k != "role_id"}
        return ReadResult(id_, self._outs(outs | {"role_id": state.get("role_id_input")}, role_id, bu,
                                          bool(state.get("adopted"))))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Every input replaces; an update only happens for cosmetic changes, so re-assert and report.
        inputs, state = clean(news), clean(olds)
        user_id, _, role_id = id_.partition(":")
        with self.operation("update", f"assignment {id_}"):
            client = self.client(inputs["instance_url"])
            bu = self._user_business_unit(client, user_id)
            if not self._associated(client, user_id, role_id):
                self._associate(client, user_id, role_id)
        return UpdateResult(self._outs(inputs, role_id, bu, bool(state.get("adopted"))))

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
    def _user_business_unit(client: Any, user_id: str) -> str | None:
        try:
            return client.get(f"systemusers({user_id})", {"$select": "_businessunitid_value"})[
                "_businessunitid_value"
            ]
        except NotFound:
            return None

    def _role_copy(self, client: Any, inputs: dict[str, Any], bu: str, subject: str) -> str:
        """The copy of the role that lives in the user's business unit."""
        from dynamics_provider.client import odata_guid, odata_string

        name = inputs.get("role_name")
        if name is None:
            try:
                role = client.get(f"roles({inputs['role_id']})", {"$select": "roleid,name,_businessunitid_value"})
            except NotFound:
                raise self.refuse(
                    "create", subject, "no role has this id", "pass role_name, or the id of an existing role"
                ) from None
            if same(role.get("_businessunitid_value"), bu):
                return role["roleid"]
            name = role["name"]
        rows = client.query(
            "roles",
            select=["roleid", "name"],
            filter=f"name eq {odata_string(name)} and _businessunitid_value eq {odata_guid(bu)}",
        )
        if not rows:
            raise self.refuse(
                "create", subject, f"no role named {name!r} exists in the user's business unit",
                "import the solution that brings the role (SolutionImport) before assigning it",
            )
        return rows[0]["roleid"]

    @staticmethod
    def _associated(client: Any, user_id: str, role_id: str) -> bool:
        from dynamics_provider.client import odata_guid

        rows = client.query(f"systemusers({user_id})/{NAV}", select=["roleid"], filter=f"roleid eq {odata_guid(role_id)}")
        return any(same(r.get("roleid"), role_id) for r in rows)

    def _associate(self, client: Any, user_id: str, role_id: str) -> None:
        try:
            client.associate("systemusers", user_id, NAV, "roles", role_id)
        except DuplicateRecord:
            return  # already associated: success
        except AmbiguousWriteError:
            if not self._associated(client, user_id, role_id):
                client.associate("systemusers", user_id, NAV, "roles", role_id)

    @staticmethod
    def _outs(inputs: dict[str, Any], role_id: str, bu: str | None, adopted: bool) -> dict[str, Any]:
        return {
            "instance_url": inputs.get("instance_url"),
            "user_id": inputs.get("user_id"),
            "role_name": inputs.get("role_name"),
            "role_id_input": inputs.get("role_id"),
            "role_id": role_id,
            "business_unit_id": bu,
            "adopted": adopted,
        }


class SecurityRoleAssignment(Resource, module="dynamics", name="SecurityRoleAssignment"):
    """A security role assigned to a Dataverse user (the role's copy in the user's business unit)."""

    instance_url: pulumi.Output[str]
    user_id: pulumi.Output[str]
    role_name: pulumi.Output[str | None]
    role_id: pulumi.Output[str]
    business_unit_id: pulumi.Output[str]
    adopted: pulumi.Output[bool]

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
        }
        super().__init__(SecurityRoleAssignmentProvider(), resource_name, props, opts)
