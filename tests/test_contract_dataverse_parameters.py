"""Action and function parameters as Microsoft's Web API reference lists them, enforced by the emulator over
HTTPS: each documented form of an entity-typed parameter is accepted, a parameter the operation does not
have (such as the .NET SDK's PrivilegeId) is refused the way Dataverse refuses it (sandbox/dataverse/
operations.py has the sources)."""

from __future__ import annotations

import pytest
import requests

from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse.privileges import privilege_reference, role_privilege_state, set_depths
from sandbox.dataverse.operations import ACTIONS

NOT_A_PARAMETER = "in the request payload is not a valid parameter for the operation"


def _api(org: str) -> str:
    return f"{org}/api/data/v9.2/"


@pytest.fixture
def session(sandbox, org):
    token = sandbox.control.issue_token(audience=org, client_id=sandbox.info["admin_client_id"])["access_token"]
    s = requests.Session()
    s.trust_env = False
    s.verify = sandbox.info["ca_bundle"]
    s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    yield s
    s.close()


def _basic_user_role(session, org) -> tuple[str, str]:
    """(root Basic User role id, the id of one privilege it holds)."""
    unit = session.get(_api(org) + "WhoAmI", timeout=30).json()["BusinessUnitId"]
    role = session.get(_api(org) + "roles", params={
        "$select": "roleid", "$filter": f"name eq 'Basic User' and _businessunitid_value eq {unit}"},
        timeout=30).json()["value"][0]["roleid"]
    return role, _held(session, org, role)[0]


def _held(session, org, role) -> list[str]:
    answer = session.get(_api(org) + f"RetrieveRolePrivilegesRole(RoleId={role})", timeout=30).json()
    return [p["PrivilegeId"] for p in answer["RolePrivileges"]]


def _remove(session, org, role, body):
    return session.post(_api(org) + f"roles({role})/Microsoft.Dynamics.CRM.RemovePrivilegeRole", json=body, timeout=30)


@pytest.mark.parametrize("form", ["key", "key and @odata.type", "@odata.id"])
def test_remove_privilege_role_accepts_each_documented_form_of_its_privilege_entity(session, org, form):
    role, privilege = _basic_user_role(session, org)
    value = {"key": {"privilegeid": privilege},
             "key and @odata.type": privilege_reference(privilege),
             "@odata.id": {"@odata.id": _api(org) + f"privileges({privilege})"}}[form]
    answer = _remove(session, org, role, {"Privilege": value})
    assert (answer.status_code, answer.content) == (204, b"")
    assert privilege not in _held(session, org, role)


def test_remove_privilege_role_refuses_the_dotnet_sdks_privilegeid_as_dataverse_does(session, org):
    role, privilege = _basic_user_role(session, org)
    answer = _remove(session, org, role, {"PrivilegeId": privilege})
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (400, "0x80048d19")
    assert f"The parameter 'PrivilegeId' {NOT_A_PARAMETER} 'RemovePrivilegeRole'." in error["message"]
    assert privilege in _held(session, org, role), "nothing was removed"


@pytest.mark.parametrize(("value", "fragment"), [
    ({}, "EdmEntityObject passed should have the key property value set."),
    ({"@odata.type": "Microsoft.Dynamics.CRM.role", "privilegeid": "x"}, "is not compatible with the expected type"),
    ("9a2e5f4b-0000-0000-0000-000000000000", "an entity object is expected"),
    (None, "'Privilege' is required"),
])
def test_remove_privilege_role_refuses_a_privilege_not_given_as_a_privilege_entity(session, org, value, fragment):
    role, privilege = _basic_user_role(session, org)
    answer = _remove(session, org, role, {"Privilege": value})
    assert answer.status_code == 400 and fragment in answer.json()["error"]["message"]
    assert privilege in _held(session, org, role)


def _action_path(session, org, action: str) -> str:
    if action in ("AddPrivilegesRole", "ReplacePrivilegesRole", "RemovePrivilegeRole"):
        return f"roles({_basic_user_role(session, org)[0]})/Microsoft.Dynamics.CRM.{action}"
    if action == "SetBusinessSystemUser":
        user = session.get(_api(org) + "WhoAmI", timeout=30).json()["UserId"]
        return f"systemusers({user})/Microsoft.Dynamics.CRM.{action}"
    return action


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_refuses_a_parameter_it_does_not_have(session, org, action):
    answer = session.post(_api(org) + _action_path(session, org, action), json={"Colour": "blue"}, timeout=30)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (400, "0x80048d19")
    assert f"The parameter 'Colour' {NOT_A_PARAMETER} '{action}'." in error["message"]


def test_a_role_privilege_with_a_property_the_complex_type_does_not_have_is_refused(session, org):
    role, privilege = _basic_user_role(session, org)
    answer = session.post(_api(org) + f"roles({role})/Microsoft.Dynamics.CRM.AddPrivilegesRole", json={
        "Privileges": [{"PrivilegeId": privilege, "Depth": "Basic", "Level": 1}]}, timeout=30)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "0x80048d19")
    assert "'Level' does not exist on type 'Microsoft.Dynamics.CRM.RolePrivilege'" in answer.json()["error"]["message"]


def test_a_function_called_with_a_parameter_it_does_not_have_is_refused(session, org):
    role, _ = _basic_user_role(session, org)
    answer = session.get(_api(org) + f"RetrieveRolePrivilegesRole(Role={role})", timeout=30)
    assert (answer.status_code, answer.json()["error"]["message"]) == (400, "Request message has unresolved parameters.")
    assert session.get(_api(org) + f"RetrieveRolePrivilegesRole(RoleId={role})", timeout=30).status_code == 200


def test_lowering_a_depth_goes_through_remove_privilege_role_with_the_documented_parameter(sandbox, org, deployer):
    client = DataverseClient.for_instance(org, deployer)
    name = "prvReadAccount"
    state = role_privilege_state(client, [name], role_name="Basic User")
    assert state is not None
    set_depths(client, state, {name: "Global"})
    seq = sandbox.control.log()[-1]["seq"]
    lowered = role_privilege_state(client, [name], role_id=state.role.id)
    assert set_depths(client, lowered, {name: "Basic"}) == {name: "Basic"}
    assert role_privilege_state(client, [name], role_id=state.role.id).current[name.lower()] == "Basic"
    sent = [e for e in sandbox.control.log(since=seq) if "Microsoft.Dynamics.CRM" in e["path"]]
    assert [(e["path"].rsplit(".", 1)[-1], e["status"]) for e in sent] == [
        ("RemovePrivilegeRole", 204), ("AddPrivilegesRole", 204)]
