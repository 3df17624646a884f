"""SecurityRoleAssignment: a security role given to a systemuser (procedure step 3, docs/architecture.md).

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
    new_revision,
    next_revision,
    same,
    stack_owner,
    tell,
)
from dynamics_provider.checks import (
    need_guid,
    need_https_url,
    need_role,
)
from dynamics_provider.dataverse import roles

INPUTS = ("instance_url", "user_id", "role_name", "role_id")


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
        changed = self.diff_inputs(olds, news, ["instance_url", "user_id", "role_name"])
        if (news.get("role_id") is not None or olds.get("role_id_input") is not None) and not same(
                olds.get("role_id_input"), news.get("role_id")):
            changed.append("role_id")
        return self.diff_result(changed)

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        user_id = inputs["user_id"]
        subject = f"user {user_id} / role {inputs.get('role_name') or inputs.get('role_id')}"
        with self.operation("create", subject):
            client = self.client(inputs["instance_url"])
            user, role = roles.role_for_user(client, user_id, role_name=inputs.get("role_name"),
                                             role_id=inputs.get("role_id"))
            if user is None:
                raise self.refuse(
                    "create", subject, "the systemuser does not exist in this organization",
                    "create the user first (ApplicationUser / SyncedUser) and pass its systemuser_id",
                )
            if role.name is None:
                raise self.refuse("create", subject, "no role has this id",
                                  "pass role_name, or the id of an existing role")
            if role.copy_id is None:
                raise self.refuse(
                    "create", subject, f"no role named {role.name!r} exists in the user's business unit",
                    "import the solution that brings the role (SolutionImport) before assigning it",
                )
            # An association has no id of its own to prove who made it. On a user this stack made, one found
            # here is the stack's own (a create retried after a crash, or a person's edit in between): it goes
            # with the stack. On any other user it existed before: adopted, released on destroy. Either way
            # an association found is not sent again.
            found = role.copy_id in user.role_ids
            adopted = found and not made_by_stack(inputs["instance_url"], user.user_id, user.application_id,
                                                  self.owner)
            if adopted:
                tell(f"SecurityRoleAssignment: user {user_id} had role {role.name!r} before this stack: adopted; "
                     "`pulumi destroy` leaves the role assigned")
            elif not found:
                roles.assign_role(client, user_id, role.copy_id)
        return CreateResult(f"{user_id}:{role.copy_id}",
                            self._outs(inputs, role.copy_id, user.business_unit_id, adopted, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        user_id, _, role_id = id_.partition(":")
        with self.operation("read", f"assignment {id_}"):
            user = roles.user_roles(self.client(state["instance_url"]), user_id)
        if user is None or role_id.lower() not in user.role_ids:
            return ReadResult("", {})
        outs = {k: state.get(k) for k in INPUTS if k != "role_id"} | {"role_id": state.get("role_id_input")}
        return ReadResult(id_, self._outs(outs, role_id, user.business_unit_id,
                                          bool(state.get("adopted")), state.get("revision")))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Every input replaces; an update only happens for cosmetic changes, so re-assert and report.
        inputs, state = clean(news), clean(olds)
        user_id, _, role_id = id_.partition(":")
        with self.operation("update", f"assignment {id_}"):
            client = self.client(inputs["instance_url"])
            user = roles.user_roles(client, user_id)
            wrote = user is None or role_id.lower() not in user.role_ids
            if wrote:
                roles.assign_role(client, user_id, role_id)
        bu = user.business_unit_id if user is not None else state.get("business_unit_id")
        return UpdateResult(self._outs(inputs, role_id, bu, bool(state.get("adopted")), next_revision(state, wrote)))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        user_id, _, role_id = id_.partition(":")
        if state.get("adopted"):
            tell(f"SecurityRoleAssignment: role {state.get('role_name') or role_id} left assigned to user {user_id} "
                 "(it was assigned before this stack)")
            return
        with self.operation("delete", f"assignment {id_}"):
            roles.unassign_role(self.client(state["instance_url"]), user_id, role_id)

    # -- steps ---------------------------------------------------------------------------------

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
