"""Where Microsoft documents nothing, the client accepts every plausible answer and fails on anything else
with a message naming the operation and what was unexpected (never a KeyError, never a silently wrong
result). Each variant is a real HTTPS answer of the sandbox's `respond` rule, read by the client's own code:
the RetrieveRolePrivilegesRole body, the import job's `data` XML, associating a role already assigned, a 401
with and without its bearer challenge, and the texts of 0x80040220 / 0x80040225 in the lead check."""

from __future__ import annotations

import uuid

import pytest

from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse import privileges, roles, solutions
from dynamics_provider.errors import BadRequest, Unauthorized, UnexpectedAnswer
from tests.test_resource_lead_check import chain, check_inputs, configured, diagnosis  # noqa: F401 - fixture

ROLE = "5e1a6f0c-0000-4000-8000-000000000001"
READ_LEAD = "a1b2c3d4-0000-4000-8000-0000000000aa"


@pytest.fixture
def client(org, deployer):
    return DataverseClient.for_instance(org, deployer)


def entries_since(sandbox, seq: int) -> list[dict]:
    return [e for e in sandbox.control.log(since=seq) if e["kind"] == "dataverse"]


def last_seq(sandbox) -> int:
    return sandbox.control.log()[-1]["seq"]


# ------------------------------------------------------------------ RetrieveRolePrivilegesRole

def _privileges_answer(control, org, *entries, body=None):
    control.respond(r"/RetrieveRolePrivilegesRole\(", 200,
                    body if body is not None else {"RolePrivileges": list(entries)}, org=org)


@pytest.mark.parametrize(("depth", "expected"), [
    ("Global", "Global"), ("local", "Local"), (3, "Global"), (0, "Basic"), ("2", "Deep"), ("Organization", "Global"),
])
def test_a_role_privilege_depth_is_read_as_name_number_or_numeric_text(control, org, client, depth, expected):
    _privileges_answer(control, org, {"Depth": depth, "PrivilegeId": READ_LEAD, "PrivilegeName": "prvReadLead"})
    assert privileges.current_depths(client, ROLE) == {"prvreadlead": expected}


def test_a_role_privilege_without_its_name_is_named_through_the_catalogue_asked_about(control, org, client):
    _privileges_answer(control, org, {"Depth": "Basic", "PrivilegeId": READ_LEAD.upper()},
                       {"Depth": "Global", "PrivilegeId": str(uuid.uuid4())})
    catalogue = {"prvReadLead": {"privilegeid": READ_LEAD, "name": "prvReadLead"}}
    assert privileges.current_depths(client, ROLE, catalogue) == {"prvreadlead": "Basic"}


@pytest.mark.parametrize(("answer", "what"), [
    ({"value": []}, "no RolePrivileges list"),
    ({"RolePrivileges": ["prvReadLead"]}, "entry 0 of RolePrivileges is not an object"),
    ({"RolePrivileges": [{"Depth": "Basic", "PrivilegeId": READ_LEAD}]}, "names no privilege"),
    ({"RolePrivileges": [{"Depth": "Sekr3t-Depth", "PrivilegeName": "prvReadLead"}]}, "not a PrivilegeDepth"),
    ({"RolePrivileges": [{"PrivilegeName": "prvReadLead"}]}, "not a PrivilegeDepth"),
    ({"RolePrivileges": [{"Depth": 9, "PrivilegeName": "prvReadLead"}]}, "not a PrivilegeDepth"),
])
def test_a_role_privileges_answer_not_understood_fails_naming_the_operation_and_what(control, org, client, answer,
                                                                                     what):
    _privileges_answer(control, org, body=answer)
    with pytest.raises(UnexpectedAnswer) as failed:
        privileges.current_depths(client, ROLE)
    text = str(failed.value)
    assert "RetrieveRolePrivilegesRole" in text and what in text
    assert "Sekr3t" not in text, "the value itself is not echoed"


# ------------------------------------------------------------------ the import job's data XML

def _completed_job(control, org, data):
    control.respond(r"/importjobs\(", 200, {"importjobid": str(uuid.uuid4()), "progress": 100.0,
                                            "completedon": "2026-01-01T00:00:00Z", "solutionname": "S", "data": data},
                    org=org, method="GET")


def _follow(client):
    return solutions.follow_import(client, str(uuid.uuid4()), None, timeout=10, what="the solution S")


@pytest.mark.parametrize("data", [
    '<importexportxml processed="true"><solutionManifests><solutionManifest><result result="success" errorcode="0" '
    'errortext="" /></solutionManifest></solutionManifests></importexportxml>',
    '<ImportExportXml xmlns="urn:x"><SolutionManifests><SolutionManifest><Result Result="Success"/></SolutionManifest>'
    '</SolutionManifests></ImportExportXml>',
    '<importexportxml><entities><entity><result result="succeeded"/></entity></entities></importexportxml>',
])
def test_an_import_job_whose_results_all_say_success_is_a_success_in_any_case_or_namespace(control, org, client,
                                                                                           data):
    _completed_job(control, org, data)
    assert _follow(client) is None


@pytest.mark.parametrize("data", [
    '<importexportxml><solutionManifests><solutionManifest><result result="failure" errorcode="0x8004801D" '
    'errortext="Some dependencies are missing." /></solutionManifest></solutionManifests></importexportxml>',
    '<ImportExportXml><SolutionManifests><SolutionManifest><Result Result="Failed" ErrorCode="0x8004801D" '
    'ErrorText="Some dependencies are missing."/></SolutionManifest></SolutionManifests></ImportExportXml>',
    '<importexportxml><entities><entity><result result="success"/></entity><entity><result result="error" '
    'errorcode="0x8004801D" errortext="Some dependencies are missing."/></entity></entities></importexportxml>',
])
def test_an_import_job_with_a_failed_result_fails_with_its_text_and_code(control, org, client, data):
    _completed_job(control, org, data)
    with pytest.raises(solutions.SolutionImportFailed) as failed:
        _follow(client)
    assert "Some dependencies are missing. (0x8004801D)" in str(failed.value)


@pytest.mark.parametrize(("data", "what"), [
    (None, "has no result data"),
    ("Sekr3t plain text, not XML", "not readable XML"),
    ("<importexportxml><solutionManifests/></importexportxml>", "has no result element"),
])
def test_an_import_job_whose_outcome_cannot_be_read_fails_instead_of_counting_as_done(control, org, client, data,
                                                                                      what):
    _completed_job(control, org, data)
    with pytest.raises(UnexpectedAnswer) as failed:
        _follow(client)
    text = str(failed.value)
    assert "import of the solution S" in text and what in text and "Sekr3t" not in text


# ------------------------------------------------------------------ a role already assigned

def _user_and_role(client) -> tuple[str, str]:
    me = client.who_am_i()
    role = client.query("roles", select=["roleid"], filter=f"name eq 'Basic User' and _businessunitid_value eq "
                                                          f"{me['BusinessUnitId']}")[0]["roleid"]
    return me["UserId"], role


@pytest.mark.parametrize(("status", "body"), [
    (204, None),
    (412, {"error": {"code": "0x80040237", "message": "A record with matching key values already exists."}}),
    (400, {"error": {"code": "0x80040237", "message": "Cannot insert duplicate key."}}),
    (400, {"error": {"code": "0x80048d19", "message": "Error identified in Payload provided by the user."}}),
    (409, {"error": {"code": "", "message": "Conflict"}}),
])
def test_associating_a_role_the_user_already_has_is_done_whatever_refusal_comes_back(
        sandbox, control, org, client, status, body):
    user, role = _user_and_role(client)
    roles.assign_role(client, user, role)  # really assigned
    control.respond(r"/systemuserroles_association/\$ref$", status, body, org=org, method="POST")
    assert roles.assign_role(client, user, role) is None
    assert role in roles.role_ids_of(client, user)


def test_a_refused_association_of_a_role_the_user_does_not_have_is_raised(sandbox, control, org, client):
    user, role = _user_and_role(client)
    roles.unassign_role(client, user, role)
    control.respond(r"/systemuserroles_association/\$ref$", 400,
                    {"error": {"code": "0x80048d19", "message": "Error identified in Payload provided by the user."}},
                    org=org, method="POST")
    seq = last_seq(sandbox)
    with pytest.raises(BadRequest) as failed:
        roles.assign_role(client, user, role)
    assert failed.value.code == "0x80048d19"
    assert [e["method"] for e in entries_since(sandbox, seq)] == ["POST", "GET"], "one read to check, no resend"


# ------------------------------------------------------------------ the 401 challenge

@pytest.mark.parametrize("headers", [
    {},
    {"WWW-Authenticate": "Bearer"},
    {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                         'resource_id="https://contoso.crm.dynamics.com/"'},
])
def test_a_401_with_or_without_a_challenge_gets_one_fresh_token_and_one_resend(sandbox, control, org, deployer,
                                                                               headers):
    client = DataverseClient.for_instance(org, deployer)
    client.who_am_i()
    control.respond(r"/WhoAmI$", 401, "", headers, org=org, method="GET")
    seq = last_seq(sandbox)
    assert client.who_am_i()["UserId"]
    assert [e["status"] for e in entries_since(sandbox, seq)] == [401, 200]


def test_a_second_401_without_a_challenge_is_the_answer_not_a_loop(sandbox, control, org, deployer):
    client = DataverseClient.for_instance(org, deployer)
    control.respond(r"/WhoAmI$", 401, "", {}, org=org, method="GET", count=5)
    seq = last_seq(sandbox)
    with pytest.raises(Unauthorized):
        client.who_am_i()
    assert [e["status"] for e in entries_since(sandbox, seq)] == [401, 401]


# ------------------------------------------------------------------ 0x80040220 / 0x80040225 texts

SECLIB = ("SecLib::AccessCheckEx failed. Returned hr = -2147220960, ObjectID: 00000000-0000-0000-0000-000000000000, "
          "OwnerId: 11111111-1111-1111-1111-111111111111,  OwnerIdType: 8 and CallingUser: "
          "22222222-2222-2222-2222-222222222222. ObjectTypeCode: 4, objectBusinessUnitId: "
          "33333333-3333-3333-3333-333333333333, AccessRights: CreateAccess ")


@pytest.mark.parametrize(("message", "named"), [
    ("Principal user (Id=x, type=8, roleCount=1, privilegeCount=5, accessMode=4), is missing prvCreateLead "
     "privilege (Id=y) on OTC=4 for entity 'lead'.", "missing prvCreateLead"),
    (SECLIB, "missing prvCreateLead"),
    ("The user does not hold the necessary privileges.", "missing a privilege"),
])
def test_each_wording_of_a_missing_privilege_is_diagnosed(sandbox, control, org, chain, message, named):  # noqa: F811
    control.respond(r"/leads$", 403, {"error": {"code": "0x80040220", "message": message}}, org=org,
                    method="POST")
    assert named in diagnosis(sandbox, org, chain)


def test_user_not_enabled_for_an_enabled_user_is_not_mistaken_for_a_missing_privilege(sandbox, control, org,
                                                                                       chain):  # noqa: F811
    control.respond(r"/leads$", 400, {"error": {"code": "0x80040225", "message": "The user with SystemUserId="
                                                "x in OrganizationContext=y is disabled."}},
                    org=org, method="POST")
    text = diagnosis(sandbox, org, chain)
    assert "reports the lead writer's user as not enabled" in text and "missing" not in text
