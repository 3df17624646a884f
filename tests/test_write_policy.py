"""The one settle-and-resend policy for writes that are not idempotent (a user's create, a solution
import, the validation lead), against the sandbox: an answer lost before the write was processed is
looked up, then sent once more; lost again, the resource fails after two sends in all (it used to resend
an import without bound) and says that the outcome is unknown; an answer lost after the write landed is
found by the lookup and never sent again."""

from __future__ import annotations

import uuid

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.base import (
    ResourceOperationError,
)
from dynamics_provider.dataverse.writes import MAX_SENDS
from dynamics_provider.lead_check import LeadWriteCheckProvider
from dynamics_provider.role_assignment import SecurityRoleAssignmentProvider
from dynamics_provider.role_privileges import RolePrivilegesProvider
from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config

GRANT = [{"name": "prvCreateLead", "depth": "Global"}, {"name": "prvReadLead", "depth": "Global"}]


def configured(cls, sandbox, org):
    p = cls()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def org_name(org: str) -> str:
    return org.rstrip("/").rsplit("/", 1)[-1]


def sends(sandbox, org, method, path_end):
    return [e for e in sandbox.control.log() if e.get("org") == org_name(org) and e["method"] == method
            and e["path"].endswith(path_end)]


def solution_create(sandbox, org, tmp_path):
    zip_path = tmp_path / "solution.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    p = configured(SolutionImportProvider, sandbox, org)
    inputs = p.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs
    return lambda: p.create(inputs)


def user_create(sandbox, org, tmp_path):
    app_id = sandbox.control.register_app(display_name="w", client_secret=f"s-{uuid.uuid4().hex}")["client_id"]
    p = configured(ApplicationUserProvider, sandbox, org)
    inputs = p.check({}, {"instance_url": org, "application_id": app_id, "email": "w@contoso.example"}).inputs
    return lambda: p.create(inputs)


def lead_create(sandbox, org, tmp_path):
    secret = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="w", client_secret=secret)["client_id"]
    users = configured(ApplicationUserProvider, sandbox, org)
    user = users.create(users.check({}, {"instance_url": org, "application_id": app_id,
                                         "email": "w@contoso.example"}).inputs)
    configured(SecurityRoleAssignmentProvider, sandbox, org).create(
        {"instance_url": org, "user_id": user.id, "role_name": "Basic User"})
    grants = configured(RolePrivilegesProvider, sandbox, org)
    grants.create(grants.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": GRANT}).inputs)
    p = configured(LeadWriteCheckProvider, sandbox, org)
    inputs = p.check({}, {"instance_url": org, "client_id": app_id, "client_secret": secret,
                          "tenant_id": sandbox.info["tenant_id"]}).inputs
    return lambda: p.create(inputs)


WRITES = {  # resource: (how to make its create, the write's method and path end)
    "SolutionImport": (solution_create, "POST", "/ImportSolutionAsync"),
    "ApplicationUser": (user_create, "POST", "/systemusers"),
    "LeadWriteCheck": (lead_create, "POST", "/leads"),
}


@pytest.mark.parametrize("resource", list(WRITES))
def test_a_write_whose_answer_is_always_lost_is_sent_three_times_then_reported_as_unknown(sandbox, org, tmp_path,
                                                                                            resource):
    make, method, path_end = WRITES[resource]
    create = make(sandbox, org, tmp_path)
    # every send is dropped before it is processed: each lookup finds nothing
    sandbox.control.add_fault(method=method, path=path_end + "$", reset=True, count=10,
                              org=org_name(org))
    with pytest.raises(ResourceOperationError, match="outcome unknown") as failure:
        create()
    assert f"{resource} create failed" in str(failure.value)
    assert len(sends(sandbox, org, method, path_end)) == MAX_SENDS == 3


@pytest.mark.parametrize("resource", list(WRITES))
def test_a_write_lost_once_before_it_was_processed_is_sent_once_more_and_converges(sandbox, org, tmp_path,
                                                                                    resource):
    make, method, path_end = WRITES[resource]
    create = make(sandbox, org, tmp_path)
    sandbox.control.add_fault(method=method, path=path_end + "$", reset=True, count=1, org=org_name(org))
    result = create()
    assert len(sends(sandbox, org, method, path_end)) == 2
    assert result.outs.get("adopted") in (None, False)  # what the resend made is the stack's own


@pytest.mark.parametrize("resource", list(WRITES))
def test_a_write_that_landed_but_lost_its_answer_is_found_and_not_sent_again(sandbox, org, tmp_path, resource):
    make, method, path_end = WRITES[resource]
    create = make(sandbox, org, tmp_path)
    sandbox.control.add_fault(method=method, path=path_end + "$", reset=True, after=True, count=1,
                              org=org_name(org))
    result = create()
    assert len(sends(sandbox, org, method, path_end)) == 1
    assert result.outs.get("adopted") in (None, False)
