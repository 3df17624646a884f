"""A fault at each write of a cold converge (application user → role → privileges → validation lead), in
turn: 429 with Retry-After, 503, connection reset, and a read timeout (the answer comes after the
client gave up, and the write still lands). Every fault is proven injected; every run converges in one
`up` with no duplicate user, association or lead left behind."""

from __future__ import annotations

import uuid

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.lead_check import LeadWriteCheckProvider
from dynamics_provider.role_assignment import SecurityRoleAssignmentProvider
from dynamics_provider.role_privileges import RolePrivilegesProvider
from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config
from tests.harness.faults import COLD_UP_WRITES, fault_kinds, injected

TIMEOUT_SECONDS = 2  # lead-destination:requestTimeoutSeconds in the timeout cases
# How long a held request may take to be logged after the client went on: its latency, and a margin for a
# busy machine (the wait ends as soon as it is logged).
LANDED = TIMEOUT_SECONDS + 1 + 30
WRITES = {k: v for k, v in COLD_UP_WRITES.items() if k != "import"}  # the import: its own tests below
FAULTS = fault_kinds(TIMEOUT_SECONDS)
GRANT = [{"name": "prvCreateLead", "depth": "Global"}, {"name": "prvReadAsyncOperation", "depth": "Global"}]


def configured(cls, sandbox, org, timeout=None):
    config = stack_config(sandbox.info, instance_url=org)
    if timeout is not None:
        config["lead-destination:requestTimeoutSeconds"] = str(timeout)
    p = cls()
    p.configure(ConfigureRequest(Config(config, "lead-destination")))
    return p


def converge(sandbox, org, app_id, secret, timeout=None):
    users = configured(ApplicationUserProvider, sandbox, org, timeout)
    user = users.create(users.check({}, {"instance_url": org, "application_id": app_id,
                                         "email": "w@contoso.example"}).inputs)
    roles = configured(SecurityRoleAssignmentProvider, sandbox, org, timeout)
    roles.create({"instance_url": org, "user_id": user.id, "role_name": "Basic User"})
    grants = configured(RolePrivilegesProvider, sandbox, org, timeout)
    grants.create(grants.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": GRANT}).inputs)
    check = configured(LeadWriteCheckProvider, sandbox, org, timeout)
    check.create(check.check({}, {"instance_url": org, "client_id": app_id, "client_secret": secret,
                                  "tenant_id": sandbox.info["tenant_id"]}).inputs)
    return user.id


@pytest.mark.parametrize("fault", [
    # the timeout cases wait out the slow answers (~5 s each): part of the heavy matrix
    pytest.param(f, marks=pytest.mark.heavy) if f == "timeout" else f for f in FAULTS])
@pytest.mark.parametrize("write", list(WRITES))
def test_a_fault_at_each_write_converges_in_one_up_without_duplicates(sandbox, org, write, fault):
    secret = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="w", client_secret=secret)["client_id"]
    org_name = org.rstrip("/").rsplit("/", 1)[-1]
    method, path = WRITES[write]
    rule = sandbox.control.add_fault(method=method, path=path, org=org_name, count=1, **FAULTS[fault])
    # one `up`: every fault here is either retried safely or settled by a lookup, none needs a second run
    user_id = converge(sandbox, org, app_id, secret, timeout=TIMEOUT_SECONDS if fault == "timeout" else None)
    # the client is done; a held original is logged once it lands: count only then
    hits = injected(sandbox, org_name, rule, wait=LANDED)
    assert len(hits) == 1 and hits[0]["method"] == method, "the fault was injected exactly once"
    expected_status = {"429": 429, "503": 503, "reset": 0, "lost answer": 0}.get(fault)
    if expected_status is not None:
        assert hits[0]["status"] == expected_status
    else:  # the slow request was still processed by the server, after the client had stopped waiting;
        # an idempotent DELETE was resent meanwhile, so the late original finds the lead gone (404)
        assert hits[0]["duration_ms"] >= TIMEOUT_SECONDS * 1000
        assert hits[0]["status"] < 400 or (method == "DELETE" and hits[0]["status"] == 404)
    state = sandbox.control.state(org)
    assert len([u for u in state["systemusers"] if u.get("applicationid") == app_id]) == 1
    assert len([a for a in state["assignments"] if a["systemuserid"] == user_id]) == 1
    assert state["leads"] == []


@pytest.mark.heavy
def test_an_unanswered_import_is_recovered_by_its_import_job_without_a_second_import(sandbox, org, tmp_path):
    zip_path = tmp_path / "s.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    org_name = org.rstrip("/").rsplit("/", 1)[-1]
    rule = sandbox.control.add_fault(method="POST", path=r"/ImportSolutionAsync$", org=org_name, count=1,
                                     latency_ms=(TIMEOUT_SECONDS + 1) * 1000)
    p = configured(SolutionImportProvider, sandbox, org, TIMEOUT_SECONDS)
    created = p.create(p.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs)
    assert len(injected(sandbox, org_name, rule, wait=LANDED)) == 1  # the held original has landed
    imports = [e for e in sandbox.control.log() if e.get("org") == org_name and e["path"].endswith("ImportSolutionAsync")]
    assert len(imports) == 1, "the import was not sent a second time"
    solutions = [s for s in sandbox.control.state(org)["solutions"] if s["solutionid"] == created.id]
    assert len(solutions) == 1 and created.outs["version"] == "1.0.0.0" and created.outs["adopted"] is False


@pytest.mark.parametrize("fault", [
    pytest.param(f, marks=pytest.mark.heavy) if f == "timeout" else f for f in FAULTS])
def test_a_fault_on_the_import_request_converges_with_exactly_one_import_applied(sandbox, org, tmp_path, fault):
    zip_path = tmp_path / "s.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    org_name = org.rstrip("/").rsplit("/", 1)[-1]
    rule = sandbox.control.add_fault(method="POST", path=r"/ImportSolutionAsync$", org=org_name, count=1,
                                     **FAULTS[fault])
    p = configured(SolutionImportProvider, sandbox, org, TIMEOUT_SECONDS if fault == "timeout" else None)
    created = p.create(p.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs)
    # a held original is logged once it lands: count only then
    assert len(injected(sandbox, org_name, rule, wait=LANDED)) == 1, "the fault was injected exactly once"
    state = sandbox.control.state(org)
    assert [s["version"] for s in state["solutions"] if s["solutionid"] == created.id] == ["1.0.0.0"]
    applied = [job for job in state["importjobs"] if job.get("solutionname") == created.outs["unique_name"]]
    assert len(applied) == 1, f"one import applied, not {len(applied)}"
    assert created.outs["adopted"] is False
