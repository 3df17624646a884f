"""SecurityRoleAssignment against the sandbox: BU copy resolution, adopt, drift → gone, destroy.

The provider is called in-process with a fresh organization per test; state is read from the sandbox.
"""

from __future__ import annotations

import uuid

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.base import (
    ResourceOperationError,
)
from dynamics_provider.role_assignment import SecurityRoleAssignmentProvider
from sandbox.testing import stack_config


def configured(cls, sandbox, org):
    p = cls()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def new_user(sandbox, org, business_unit=None) -> str:
    app_id = sandbox.control.register_app(display_name=f"app-{uuid.uuid4().hex[:6]}")["client_id"]
    p = configured(ApplicationUserProvider, sandbox, org)
    props = {"instance_url": org, "application_id": app_id, "first_name": "A", "last_name": "B",
             "email": "writer@contoso.example"}
    if business_unit:
        props["business_unit"] = business_unit
    return p.create(p.check({}, props).inputs).id


def assignments(sandbox, org, user_id):
    return {a["roleid"] for a in sandbox.control.state(org)["assignments"] if a["systemuserid"] == user_id}


def role_copy(sandbox, org, name, bu):
    return next(r["roleid"] for r in sandbox.control.state(org)["roles"]
                if r["name"] == name and r["_businessunitid_value"] == bu)


def test_assigns_the_role_copy_of_the_users_business_unit_and_diff_is_noop(sandbox, org):
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    user = new_user(sandbox, org, business_unit="Sales")
    p = configured(SecurityRoleAssignmentProvider, sandbox, org)
    news = p.check({}, {"instance_url": org, "user_id": user, "role_name": "Basic User"}).inputs
    created = p.create(news)
    copy = role_copy(sandbox, org, "Basic User", sales)
    assert created.id == f"{user}:{copy}" and created.outs["role_id"] == copy
    assert created.outs["business_unit_id"] == sales and created.outs["adopted"] is False
    assert assignments(sandbox, org, user) == {copy}
    diff = p.diff(created.id, created.outs, news)
    assert diff.changes is False and diff.replaces == []


def test_role_id_of_the_root_copy_resolves_to_the_users_copy(sandbox, org):
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    root_bu = next(b["businessunitid"] for b in sandbox.control.state(org)["businessunits"]
                   if not b.get("_parentbusinessunitid_value"))
    user = new_user(sandbox, org, business_unit="Sales")
    p = configured(SecurityRoleAssignmentProvider, sandbox, org)
    news = p.check({}, {"instance_url": org, "user_id": user,
                        "role_id": role_copy(sandbox, org, "Basic User", root_bu)}).inputs
    created = p.create(news)
    assert created.outs["role_id"] == role_copy(sandbox, org, "Basic User", sales)
    assert p.diff(created.id, created.outs, news).changes is False
    other = {**news, "role_id": role_copy(sandbox, org, "System Administrator", root_bu)}
    assert p.diff(created.id, created.outs, other).replaces == ["role_id"]


def test_existing_association_of_a_user_made_by_hand_is_adopted_and_released_on_delete(sandbox, org):
    from dynamics_provider.client import DataverseClient

    p = configured(SecurityRoleAssignmentProvider, sandbox, org)
    app_id = sandbox.control.register_app(display_name=f"app-{uuid.uuid4().hex[:6]}")["client_id"]
    root = next(b["businessunitid"] for b in sandbox.control.state(org)["businessunits"]
                if not b.get("_parentbusinessunitid_value"))
    client = DataverseClient.for_instance(org, p.settings)
    user = client.create("systemusers", {"applicationid": app_id, "lastname": "By Hand",
                                         "internalemailaddress": "hand@contoso.example",
                                         "businessunitid@odata.bind": f"/businessunits({root})"})
    role = role_copy(sandbox, org, "Basic User", root)
    client.associate("systemusers", user, "systemuserroles_association", "roles", role)
    news = p.check({}, {"instance_url": org, "user_id": user, "role_name": "Basic User"}).inputs
    adopted = p.create(news)
    assert adopted.id == f"{user}:{role}" and adopted.outs["adopted"] is True
    p.delete(adopted.id, adopted.outs)
    assert assignments(sandbox, org, user) == {role}


def test_association_found_on_a_user_this_program_made_is_the_stacks_own(sandbox, org):
    user = new_user(sandbox, org)
    p = configured(SecurityRoleAssignmentProvider, sandbox, org)
    news = p.check({}, {"instance_url": org, "user_id": user, "role_name": "Basic User"}).inputs
    first = p.create(news)  # its answer "never reached the checkpoint": the engine creates again
    mark = max(e["seq"] for e in sandbox.control.log())
    second = p.create(news)
    assert second.id == first.id and second.outs["adopted"] is False
    assert not [e for e in sandbox.control.log(since=mark) if e["method"] == "POST" and e["path"].endswith("/$ref")]
    p.delete(second.id, second.outs)
    assert assignments(sandbox, org, user) == set()


def test_association_removed_by_hand_reads_as_gone_and_create_restores_it(sandbox, org):
    user = new_user(sandbox, org)
    p = configured(SecurityRoleAssignmentProvider, sandbox, org)
    news = p.check({}, {"instance_url": org, "user_id": user, "role_name": "Basic User"}).inputs
    created = p.create(news)
    assert p.read(created.id, created.outs).id == created.id
    sandbox.control.drift(org, "remove_role", systemuserid=user, roleid=created.outs["role_id"])
    assert p.read(created.id, created.outs).id == ""
    again = p.create(news)
    assert again.id == created.id and again.outs["adopted"] is False
    assert assignments(sandbox, org, user) == {created.outs["role_id"]}


def test_missing_role_or_user_fails_naming_what_to_do(sandbox, org):
    user = new_user(sandbox, org)
    p = configured(SecurityRoleAssignmentProvider, sandbox, org)
    with pytest.raises(ResourceOperationError, match="SolutionImport"):
        p.create({"instance_url": org, "user_id": user, "role_name": "Microsoft Marketplace Lead Writer"})
    with pytest.raises(ResourceOperationError, match="does not exist"):
        p.create({"instance_url": org, "user_id": str(uuid.uuid4()), "role_name": "Basic User"})


def test_check_rejects_both_role_name_and_role_id_and_bad_guids():
    p = SecurityRoleAssignmentProvider()
    failures = p.check({}, {"instance_url": "https://x.crm.dynamics.com", "user_id": "u",
                            "role_name": "A", "role_id": str(uuid.uuid4())}).failures
    assert {f.property for f in failures} == {"user_id", "role_id"}
