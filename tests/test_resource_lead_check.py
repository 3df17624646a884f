"""LeadWriteCheck against the sandbox: passes when the chain is whole, names each broken link."""

from __future__ import annotations

import uuid

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.base import (
    ResourceOperationError,
    is_secret,
)
from dynamics_provider.lead_check import LeadWriteCheckProvider
from dynamics_provider.role_assignment import SecurityRoleAssignmentProvider
from dynamics_provider.role_privileges import RolePrivilegesProvider
from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import DEFAULT_ROLE_NAME, build_solution_zip
from sandbox.testing import stack_config

PROCEDURE_GRANTS = [("prvCreateUserEntityUISettings", "User"), ("prvReadUserEntityUISettings", "User"),
                    ("prvWriteUserEntityUISettings", "User"), ("prvReadAsyncOperation", "Organization"),
                    ("prvWriteAsyncOperation", "Organization"), ("prvAppendToAsyncOperation", "Organization")]


def configured(cls, sandbox, org):
    p = cls()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


@pytest.fixture
def chain(sandbox, org, tmp_path):
    """A whole chain: solution with the Lead Writer role, application user of a new app, role assigned,
    the procedure's grants on the role."""
    secret = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="writer", client_secret=secret)["client_id"]
    zip_path = tmp_path / "s.zip"
    zip_path.write_bytes(build_solution_zip())
    sol = configured(SolutionImportProvider, sandbox, org)
    sol.create(sol.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs)
    users = configured(ApplicationUserProvider, sandbox, org)
    user = users.create(users.check({}, {"instance_url": org, "application_id": app_id,
                                         "email": "writer@contoso.example"}).inputs)
    assign = configured(SecurityRoleAssignmentProvider, sandbox, org)
    role = assign.create({"instance_url": org, "user_id": user.id, "role_name": DEFAULT_ROLE_NAME})
    grants = configured(RolePrivilegesProvider, sandbox, org)
    grants.create(grants.check({}, {"instance_url": org, "role_name": DEFAULT_ROLE_NAME, "privileges": [
        {"name": n, "depth": d} for n, d in PROCEDURE_GRANTS]}).inputs)
    return {"app_id": app_id, "secret": secret, "user_id": user.id, "role_id": role.outs["role_id"]}


def check_inputs(p, org, chain, **extra):
    news = {"instance_url": org, "tenant_id": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001",
            "client_id": chain["app_id"], "client_secret": {"4dabf18193072939515e22adb298388d":
                                                            "1b47061264138c4ac30d75fd1eb44270",
                                                            "value": chain["secret"]},
            "triggers": {"key_id": "k1", "rotations": 1.0}, **extra}
    return p.check({}, news).inputs


def leads(sandbox, org):
    return sandbox.control.state(org)["leads"]


def test_whole_chain_passes_writes_and_removes_the_test_lead(sandbox, org, chain):
    p = configured(LeadWriteCheckProvider, sandbox, org)
    news = check_inputs(p, org, chain)
    assert is_secret(news["client_secret"])
    created = p.create(news)
    assert created.outs["lead_id"] is None and created.outs["identity"] == chain["app_id"]
    assert created.outs["validated_at"].endswith("+00:00")
    assert is_secret(created.outs["client_secret"]) and chain["secret"] not in repr(created.outs["identity"])
    assert leads(sandbox, org) == []
    assert p.diff(created.id, created.outs, news).changes is False
    rotated = {**news, "triggers": {"key_id": "k2", "rotations": 2}}
    assert p.diff(created.id, created.outs, rotated).replaces == ["triggers"]


def test_kept_lead_has_the_partner_center_shape_and_is_deleted_with_the_resource(sandbox, org, chain):
    p = configured(LeadWriteCheckProvider, sandbox, org)
    created = p.create(check_inputs(p, org, chain, keep_lead=True))
    [lead] = leads(sandbox, org)
    assert lead["leadid"] == created.outs["lead_id"]
    assert lead["subject"].startswith("MSFT_TEST_") and lead["firstname"] == lead["subject"]
    p.delete(created.id, created.outs)
    assert leads(sandbox, org) == []


def diagnosis(sandbox, org, chain, **extra) -> str:
    p = configured(LeadWriteCheckProvider, sandbox, org)
    with pytest.raises(ResourceOperationError) as err:
        p.create(check_inputs(p, org, chain, **extra))
    text = str(err.value)
    assert chain["secret"] not in text
    assert leads(sandbox, org) == []
    return text


def test_wrong_secret_is_diagnosed_as_credentials_rejected(sandbox, org, chain):
    text = diagnosis(sandbox, org, {**chain, "secret": "wrong-" + chain["secret"]})
    assert "credentials rejected" in text and "AADSTS" in text
    assert "wrong-" not in text


def test_disabled_user_is_diagnosed_from_dataverses_400_user_not_enabled(sandbox, org, chain):
    sandbox.control.drift(org, "disable_user", systemuserid=chain["user_id"])
    text = diagnosis(sandbox, org, chain)
    assert "user is disabled" in text and "Dataverse answered 400 0x80040225" in text


def test_missing_role_is_diagnosed(sandbox, org, chain):
    sandbox.control.drift(org, "remove_role", systemuserid=chain["user_id"], roleid=chain["role_id"])
    assert "no security role" in diagnosis(sandbox, org, chain)


def test_missing_privilege_is_diagnosed_by_name(sandbox, org, chain):
    sandbox.control.drift(org, "remove_privilege", roleid=chain["role_id"], privilege="prvCreateLead")
    assert "missing prvCreateLead" in diagnosis(sandbox, org, chain)


def test_app_without_application_user_is_diagnosed_as_not_a_member(sandbox, org, chain):
    other = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="stranger", client_secret=other)["client_id"]
    text = diagnosis(sandbox, org, {**chain, "app_id": app_id, "secret": other})
    assert "not a user of this organization" in text


@pytest.mark.parametrize("keep_lead", [False, True])
def test_lead_rewritten_by_a_plug_in_is_diagnosed_naming_the_field_and_deleted(sandbox, org, chain, keep_lead):
    sandbox.control.drift(org, "add_lead_rewrite", field="companyname", value="Contoso (normalised)")
    sandbox.control.clear_log()
    text = diagnosis(sandbox, org, chain, keep_lead=keep_lead)  # asserts no lead is left behind
    assert "landed with companyname changed" in text and "plug-in or business rule" in text
    for untouched in ("subject", "firstname", "lastname", "emailaddress1"):
        assert untouched not in text.split("landed with", 1)[1].split("(", 1)[0]
    writes = [(e["method"], e["path"].rsplit("/", 1)[-1].split("(")[0], e["status"]) for e in sandbox.control.log()
              if e["kind"] == "dataverse" and e["method"] in ("POST", "DELETE")]
    assert writes == [("POST", "leads", 204), ("DELETE", "leads", 204)], writes  # written once, then removed
    sandbox.control.drift(org, "clear_lead_rewrites")
    p = configured(LeadWriteCheckProvider, sandbox, org)
    p.create(check_inputs(p, org, chain))  # the chain passes again once the rewrite is gone
    assert leads(sandbox, org) == []


def test_check_requires_one_credential_kind_and_never_echoes_secrets():
    p = LeadWriteCheckProvider()
    both = p.check({}, {"instance_url": "https://x.crm.dynamics.com", "client_id": str(uuid.uuid4()),
                        "client_secret": "abc", "username": "u@x", "password": "pw-xyz"})
    assert [f.property for f in both.failures] == ["username"]
    none = p.check({}, {"instance_url": "https://x.crm.dynamics.com"})
    assert [f.property for f in none.failures] == ["client_id"]
    empty = p.check({}, {"instance_url": "https://x.crm.dynamics.com", "username": "u@x", "password": ""})
    assert [f.property for f in empty.failures] == ["password"]
