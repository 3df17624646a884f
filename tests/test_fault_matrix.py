"""A fault at each write of a cold converge (application user → role → validation lead), in turn:
every run converges with no duplicate user, association or lead left behind."""

from __future__ import annotations

import uuid

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.lead_check import LeadWriteCheckProvider
from dynamics_provider.role_assignment import SecurityRoleAssignmentProvider
from sandbox.testing import stack_config

WRITES = {
    "user": ("POST", r"/systemusers$"),
    "association": ("POST", r"/systemuserroles_association/\$ref$"),
    "lead": ("POST", r"/leads$"),
}
FAULTS = {
    "429": {"status": 429, "retry_after": 1},
    "503": {"status": 503},
    "reset": {"reset": True},
}


def configured(cls, sandbox, org):
    p = cls()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def converge(sandbox, org, app_id, secret):
    users = configured(ApplicationUserProvider, sandbox, org)
    user = users.create(users.check({}, {"instance_url": org, "application_id": app_id,
                                         "email": "w@contoso.example"}).inputs)
    roles = configured(SecurityRoleAssignmentProvider, sandbox, org)
    roles.create({"instance_url": org, "user_id": user.id, "role_name": "System Administrator"})
    check = configured(LeadWriteCheckProvider, sandbox, org)
    check.create(check.check({}, {"instance_url": org, "client_id": app_id, "client_secret": secret,
                                  "tenant_id": sandbox.info["tenant_id"]}).inputs)
    return user.id


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("write", list(WRITES))
def test_a_fault_at_each_write_converges_without_duplicates(sandbox, org, write, fault):
    secret = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="w", client_secret=secret)["client_id"]
    org_name = org.rstrip("/").rsplit("/", 1)[-1]
    method, path = WRITES[write]
    sandbox.control.add_fault(method=method, path=path, org=org_name, count=1, **FAULTS[fault])
    try:
        user_id = converge(sandbox, org, app_id, secret)
    except Exception:
        user_id = converge(sandbox, org, app_id, secret)  # the next `pulumi up` must converge
    state = sandbox.control.state(org)
    assert len([u for u in state["systemusers"] if u.get("applicationid") == app_id]) == 1
    assert len([a for a in state["assignments"] if a["systemuserid"] == user_id]) == 1
    assert state["leads"] == []
    faulted = [e for e in sandbox.control.log() if e.get("org") == org_name and e["method"] == method
               and e["status"] in (429, 503, 0, None)]
    assert faulted or fault == "reset", "the fault was injected"
