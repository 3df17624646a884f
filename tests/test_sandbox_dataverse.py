"""The sandbox's Dataverse Web API emulator: shapes, statuses and error codes of each operation of
dataverse-web-api.md, async import, role copies per business unit, depth and privilege enforcement.
Unit-level tests call Organization.handle with real werkzeug requests and the real Entra Directory;
the last ones go over real HTTPS through the sandbox server."""

from __future__ import annotations

import base64
import json
import time
import uuid

import defusedxml.ElementTree as SafeET
import pytest
import requests
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from sandbox.common import ADMIN_CLIENT_ID, LEADWRITER_CLIENT_ID, TENANT_ID, Caller, SandboxSettings
from sandbox.dataverse import Organization, catalogue
from sandbox.entra import Directory
from sandbox.solution_zip import build_solution_zip

URL = "https://127.0.0.1:1/orgs/unit"


@pytest.fixture(scope="module")
def directory():
    return Directory("https://127.0.0.1:1")


@pytest.fixture
def dv(directory):
    return Organization("unit", URL, directory, SandboxSettings(import_seconds=0.0))


def _caller(directory, app_id=ADMIN_CLIENT_ID):
    sp = directory.find_service_principal(app_id)
    return Caller(object_id=sp["object_id"], tenant_id=TENANT_ID, app_id=app_id)


def call(dv, method, path, body=None, headers=None, caller=None, raw=None):
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    builder = EnvironBuilder(method=method, path=f"/orgs/unit/api/data/v9.2/{path}", query_string=query,
                             json=body, data=raw, headers=headers)
    resp = dv.handle(Request(builder.get_environ()), caller or _caller(dv.directory), path)
    text = resp.get_data(as_text=True)
    data = json.loads(text) if text and resp.mimetype == "application/json" else text
    return resp.status_code, resp.headers, data


def ok(result, status=200):
    assert result[0] == status, result
    return result[2]


def root_bu(dv):
    return ok(call(dv, "GET", "businessunits?$select=businessunitid&$filter=_parentbusinessunitid_value eq null"))[
        "value"][0]["businessunitid"]


def role_id(dv, name, bu):
    rows = ok(call(dv, "GET", f"roles?$select=roleid,name,_parentrootroleid_value&$filter=name eq '{name}' "
                              f"and _businessunitid_value eq {bu}"))["value"]
    assert len(rows) == 1, rows
    return rows[0]


def create_app_user(dv, app_id, bu, email="writer@contoso.example"):
    status, headers, _ = call(dv, "POST", "systemusers", {
        "applicationid": app_id, "businessunitid@odata.bind": f"/businessunits({bu})",
        "firstname": "Lead", "lastname": "Writer", "internalemailaddress": email})
    assert status == 204, _
    return headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def import_zip(dv, data, action="ImportSolutionAsync"):
    body = {"OverwriteUnmanagedCustomizations": False, "PublishWorkflows": True,
            "CustomizationFile": base64.b64encode(data).decode(), "ImportJobId": str(uuid.uuid4())}
    return ok(call(dv, "POST", action, body))


def finished(dv, started):
    op = ok(call(dv, "GET", f"asyncoperations({started['AsyncOperationId']})?$select=statecode,statuscode,message"))
    job = ok(call(dv, "GET", f"importjobs({started['ImportJobKey']})?$select=progress,data,solutionname,completedon"))
    result = SafeET.fromstring(job["data"]).find("./solutionManifests/solutionManifest/result")
    return op, job, result


# ------------------------------------------------------------------ seeding and basic shapes

def test_fresh_org_is_seeded_with_root_bu_admin_role_and_admin_application_user(dv, directory):
    who = ok(call(dv, "GET", "WhoAmI"))
    assert who["OrganizationId"] == dv.organization_id and who["@odata.context"].endswith("WhoAmIResponse")
    bu = ok(call(dv, "GET", f"businessunits({who['BusinessUnitId']})?$select=name,_parentbusinessunitid_value"))
    assert bu["name"] == "unit" and bu["_parentbusinessunitid_value"] is None and "@odata.etag" in bu
    user = ok(call(dv, "GET", f"systemusers?$select=systemuserid,azureactivedirectoryobjectid,accessmode,"
                              f"_businessunitid_value&$filter=applicationid eq {ADMIN_CLIENT_ID}"))["value"][0]
    assert user["systemuserid"] == who["UserId"] and user["accessmode"] == 4
    assert user["azureactivedirectoryobjectid"] == directory.find_service_principal(ADMIN_CLIENT_ID)["object_id"]
    admin = role_id(dv, "System Administrator", who["BusinessUnitId"])
    assert admin["_parentrootroleid_value"] == admin["roleid"]
    privs = ok(call(dv, "GET", f"RetrieveRolePrivilegesRole(RoleId={admin['roleid']})"))["RolePrivileges"]
    assert {p["PrivilegeName"]: p["Depth"] for p in privs} == {p.name: p.deepest for p in catalogue.PRIVILEGES.values()}
    assert set(privs[0]) == {"Depth", "PrivilegeId", "BusinessUnitId", "PrivilegeName"}


@pytest.mark.parametrize("name, flags", [
    ("prvCreateUserEntityUISettings", (True, False, False, False)),
    ("prvReadUserEntityUISettings", (True, False, False, False)),
    ("prvWriteUserEntityUISettings", (True, False, False, False)),
    ("prvReadAsyncOperation", (True, True, True, True)),
    ("prvWriteAsyncOperation", (True, True, True, True)),
    ("prvAppendToAsyncOperation", (True, True, True, True)),
    ("prvCreateLead", (True, True, True, True)),
    ("prvReadSolution", (False, False, False, True)),
    ("prvReadRole", (False, True, True, True)),
])
def test_privileges_query_reports_allowed_depths_of_the_catalogue(dv, name, flags):
    rows = ok(call(dv, "GET", "privileges?$select=privilegeid,name,canbebasic,canbelocal,canbedeep,canbeglobal"
                              f"&$filter=name eq '{name.upper()}'"))["value"]
    assert len(rows) == 1 and rows[0]["name"] == name
    assert (rows[0]["canbebasic"], rows[0]["canbelocal"], rows[0]["canbedeep"], rows[0]["canbeglobal"]) == flags
    assert rows[0]["privilegeid"] == catalogue.privilege_id(name)


def test_odata_errors_unknown_set_column_type_mismatch_and_missing_record(dv):
    status, _, body = call(dv, "GET", "widgets")
    assert (status, body["error"]["code"]) == (404, "0x8006088a")
    status, _, body = call(dv, "GET", "systemusers?$select=systemuserid,nope")
    assert (status, body["error"]["code"]) == (400, "0x0") and "nope" in body["error"]["message"]
    status, _, body = call(dv, "GET", f"systemusers?$filter=applicationid eq '{ADMIN_CLIENT_ID}'")
    assert status == 400 and "incompatible types" in body["error"]["message"]
    missing = str(uuid.uuid4())
    status, _, body = call(dv, "GET", f"leads({missing})")
    assert (status, body["error"]) == (404, {"code": "0x80040217", "message": f"lead With Id = {missing} Does Not Exist"})


def test_filter_strings_are_case_insensitive_with_quote_escaping_and_or_ne_null(dv):
    bu = root_bu(dv)
    dv.drift("create_systemuser", {"domainname": "o'brien@contoso.example",
                                   "azureactivedirectoryobjectid": str(uuid.uuid4()), "lastname": "O'Brien"})
    rows = ok(call(dv, "GET", "systemusers?$select=domainname&$filter=domainname eq 'O''BRIEN@contoso.example'"))
    assert [r["domainname"] for r in rows["value"]] == ["o'brien@contoso.example"]
    rows = ok(call(dv, "GET", "systemusers?$select=domainname&$filter=(applicationid ne null or lastname eq "
                              f"'o''brien') and _businessunitid_value eq {bu}&$top=5"))["value"]
    assert len(rows) == 2
    assert len(ok(call(dv, "GET", "systemusers?$select=domainname&$top=1"))["value"]) == 1


# ------------------------------------------------------------------ systemusers

def test_application_user_create_lookup_duplicate_and_immutable_fields(dv, directory):
    bu = root_bu(dv)
    uid = create_app_user(dv, LEADWRITER_CLIENT_ID, bu)
    row = ok(call(dv, "GET", "systemusers?$select=systemuserid,isdisabled,azureactivedirectoryobjectid,"
                             "_businessunitid_value,fullname,internalemailaddress,accessmode"
                             f"&$filter=applicationid eq {LEADWRITER_CLIENT_ID}"))["value"]
    assert len(row) == 1 and row[0]["systemuserid"] == uid
    assert row[0]["fullname"] == "Lead Writer" and row[0]["accessmode"] == 4 and row[0]["isdisabled"] is False
    assert row[0]["azureactivedirectoryobjectid"] == directory.find_service_principal(LEADWRITER_CLIENT_ID)["object_id"]
    by_oid = ok(call(dv, "GET", f"systemusers?$select=systemuserid&$filter=azureactivedirectoryobjectid eq "
                                f"{row[0]['azureactivedirectoryobjectid']}"))["value"]
    assert [r["systemuserid"] for r in by_oid] == [uid]

    status, _, body = call(dv, "POST", "systemusers", {
        "applicationid": LEADWRITER_CLIENT_ID, "businessunitid@odata.bind": f"/businessunits({bu})",
        "lastname": "Again", "internalemailaddress": "again@contoso.example"})
    assert (status, body["error"]["code"]) == (412, "0x80040237")
    status, _, body = call(dv, "PATCH", f"systemusers({uid})", {"internalemailaddress": "other@contoso.example"})
    assert status == 400 and "internalemailaddress" in body["error"]["message"]
    status, _, body = call(dv, "PATCH", f"systemusers({uid})", {"azureactivedirectoryobjectid": str(uuid.uuid4())})
    assert status == 400
    assert call(dv, "PATCH", f"systemusers({uid})", {"isdisabled": True})[0] == 204
    assert ok(call(dv, "GET", f"systemusers({uid})?$select=isdisabled"))["isdisabled"] is True
    status, _, body = call(dv, "DELETE", f"systemusers({uid})")
    assert body["error"]["code"] == "0x80048610" and status == 400


@pytest.mark.parametrize("body, status, fragment", [
    ({"applicationid": str(uuid.uuid4()), "lastname": "X", "internalemailaddress": "x@y.example"}, 400,
     "not found"),
    ({"applicationid": LEADWRITER_CLIENT_ID, "lastname": "X", "internalemailaddress": "x@y.example",
      "azureactivedirectoryobjectid": str(uuid.uuid4())}, 400, "read-only"),
    ({"applicationid": LEADWRITER_CLIENT_ID, "lastname": "X", "internalemailaddress": "x@y.example",
      "favouritecolour": "blue"}, 400, "favouritecolour"),
    ({"applicationid": LEADWRITER_CLIENT_ID, "lastname": "X", "internalemailaddress": "x@y.example",
      "fullname": "X"}, 400, "read-only"),
])
def test_application_user_create_refuses_bad_bodies(dv, body, status, fragment):
    body = {**body, "businessunitid@odata.bind": f"/businessunits({root_bu(dv)})"}
    got, _, err = call(dv, "POST", "systemusers", body)
    assert got == status and err["error"]["code"] == "0x0" and fragment in err["error"]["message"]


# ------------------------------------------------------------------ roles and associations

def test_role_copies_per_business_unit_and_assignment_in_the_users_unit_only(dv):
    root = root_bu(dv)
    child = dv.drift("add_business_unit", {"name": "Sales"})["businessunitid"]
    kids = ok(call(dv, "GET", f"businessunits?$select=name&$filter=_parentbusinessunitid_value eq {root}"))["value"]
    assert [k["businessunitid"] for k in kids] == [child]
    root_copy = role_id(dv, "Basic User", root)
    child_copy = role_id(dv, "Basic User", child)
    assert child_copy["roleid"] != root_copy["roleid"]
    assert child_copy["_parentrootroleid_value"] == root_copy["roleid"]
    uid = create_app_user(dv, LEADWRITER_CLIENT_ID, child)
    ref = f"systemusers({uid})/systemuserroles_association/$ref"
    status, _, body = call(dv, "POST", ref, {"@odata.id": f"{URL}/api/data/v9.2/roles({root_copy['roleid']})"})
    assert (status, body["error"]["code"]) == (400, "0x80041409")  # UserInWrongBusiness
    assert body["error"]["message"] == (
        "Cannot associate security role because the security role's Business Unit is not the same as the user's "
        f"Business Unit. Details: userid={uid}, userBU={child}, roleId={root_copy['roleid']}, roleBU={root}")
    for _ in range(2):  # already associated: still 204
        assert call(dv, "POST", ref, {"@odata.id": f"{URL}/api/data/v9.2/roles({child_copy['roleid']})"})[0] == 204
    listed = ok(call(dv, "GET", f"systemusers({uid})/systemuserroles_association?$select=roleid,name"))["value"]
    assert [(r["roleid"], r["name"]) for r in listed] == [(child_copy["roleid"], "Basic User")]
    expanded = ok(call(dv, "GET", f"systemusers({uid})?$select=fullname&$expand=systemuserroles_association"
                                  "($select=name)"))
    assert [r["name"] for r in expanded["systemuserroles_association"]] == ["Basic User"]
    status = call(dv, "DELETE", f"systemusers({uid})/systemuserroles_association({child_copy['roleid']})/$ref")[0]
    assert status == 204
    assert ok(call(dv, "GET", f"systemusers({uid})/systemuserroles_association?$select=roleid"))["value"] == []


def test_privilege_actions_enforce_allowed_depths_all_or_nothing_and_show_on_every_copy(dv):
    root = root_bu(dv)
    child = dv.drift("add_business_unit", {"name": "Sales"})["businessunitid"]
    role = role_id(dv, "Basic User", root)["roleid"]
    copy = role_id(dv, "Basic User", child)["roleid"]
    before = ok(call(dv, "GET", f"RetrieveRolePrivilegesRole(RoleId={role})"))["RolePrivileges"]
    uis, job = catalogue.find("prvReadUserEntityUISettings"), catalogue.find("prvAppendToAsyncOperation")
    for action in ("AddPrivilegesRole", "ReplacePrivilegesRole"):
        status, _, body = call(dv, "POST", f"roles({role})/Microsoft.Dynamics.CRM.{action}", {"Privileges": [
            {"PrivilegeId": job.privilegeid, "Depth": "Global", "BusinessUnitId": root},
            {"PrivilegeId": uis.privilegeid, "Depth": "Global", "BusinessUnitId": root}]})
        assert (status, body["error"]["code"]) == (400, "0x8004140b")  # InvalidPrivilegeDepth
        message = body["error"]["message"]
        assert message.startswith("Invalid privilege depth.") and "prvReadUserEntityUISettings" in message
        assert ok(call(dv, "GET", f"RetrieveRolePrivilegesRole(RoleId={role})"))["RolePrivileges"] == before
    assert call(dv, "POST", f"roles({role})/Microsoft.Dynamics.CRM.AddPrivilegesRole", {"Privileges": [
        {"PrivilegeId": job.privilegeid, "Depth": "Global", "BusinessUnitId": root}]})[0] == 204
    on_copy = ok(call(dv, "GET", f"RetrieveRolePrivilegesRole(RoleId={copy})"))["RolePrivileges"]
    assert {"Depth": "Global", "PrivilegeId": job.privilegeid, "BusinessUnitId": child,
            "PrivilegeName": "prvAppendToAsyncOperation"} in on_copy
    status, _, body = call(dv, "POST", f"roles({copy})/Microsoft.Dynamics.CRM.AddPrivilegesRole",
                           {"Privileges": [{"PrivilegeId": job.privilegeid, "Depth": "Basic"}]})
    assert (status, body["error"]["code"]) == (400, "0x80040203") and role in body["error"]["message"]
    assert call(dv, "POST", f"roles({role})/Microsoft.Dynamics.CRM.RemovePrivilegeRole",
                {"Privilege": {"privilegeid": job.privilegeid}})[0] == 204
    assert ok(call(dv, "GET", f"RetrieveRolePrivilegesRole(RoleId={role})"))["RolePrivileges"] == before
    assert call(dv, "POST", f"roles({role})/Microsoft.Dynamics.CRM.ReplacePrivilegesRole", {"Privileges": [
        {"PrivilegeId": uis.privilegeid, "Depth": "Basic"}]})[0] == 204
    after = ok(call(dv, "GET", f"RetrieveRolePrivilegesRole(RoleId={role})"))["RolePrivileges"]
    assert [(p["PrivilegeName"], p["Depth"]) for p in after] == [("prvReadUserEntityUISettings", "Basic")]


# ------------------------------------------------------------------ solutions

def test_import_progresses_over_time_then_succeeds_and_creates_roles_per_business_unit(directory):
    # 2 s: in progress a moment after it started even when this thread is held up for a while on a busy
    # machine; then polled, like a client, until it completes (bounded)
    dv = Organization("unit", URL, directory, SandboxSettings(import_seconds=2.0))
    child = dv.drift("add_business_unit", {"name": "Sales"})["businessunitid"]
    started = import_zip(dv, build_solution_zip())
    op = ok(call(dv, "GET", f"asyncoperations({started['AsyncOperationId']})?$select=statecode,statuscode"))
    # Learn (reference/entities/asyncoperation): Ready/Waiting For Resources, then Locked/In Progress
    assert (op["statecode"], op["statuscode"]) in ((0, 0), (2, 20))
    time.sleep(0.2)  # time passing is what this test is about: the import progresses with it
    job = ok(call(dv, "GET", f"importjobs({started['ImportJobKey']})?$select=progress,completedon"))
    assert 0 < job["progress"] < 100 and job["completedon"] is None
    deadline = time.monotonic() + 60
    while ok(call(dv, "GET", f"importjobs({started['ImportJobKey']})?$select=completedon"))["completedon"] is None:
        assert time.monotonic() < deadline, "the import never completed"
        time.sleep(0.1)
    op, job, result = finished(dv, started)
    assert (op["statecode"], op["statuscode"]) == (3, 30) and job["progress"] == 100
    assert result.get("result") == "success" and job["solutionname"] == "MicrosoftMarketplacesLeadIntegrationSolution"
    sol = ok(call(dv, "GET", "solutions?$select=solutionid,uniquename,version,ismanaged&$filter=uniquename eq "
                             "'MicrosoftMarketplacesLeadIntegrationSolution'"))["value"]
    assert [(s["version"], s["ismanaged"]) for s in sol] == [("1.0.0.0", True)]
    root_copy = role_id(dv, "Microsoft Marketplace Lead Writer", root_bu(dv))
    assert role_id(dv, "Microsoft Marketplace Lead Writer", child)["_parentrootroleid_value"] == root_copy["roleid"]


@pytest.mark.parametrize("first, second, code, fragment", [
    (None, b"PK-not-really-a-zip", "0x80048060", "The solution file is invalid."),
    (build_solution_zip("2.0.0.0"), build_solution_zip("1.0.0.0"), "0x80048541",
     "The import solution must have a higher version than the existing solution it is upgrading."),
    (build_solution_zip("1.0.0.0"), build_solution_zip("1.0.0.0", managed=False), "0x80048041",
     "already installed on this system as a managed solution and the package supplied is attempting to install "
     "it in unmanaged mode"),
    (build_solution_zip("1.0.0.0", managed=False), build_solution_zip("1.0.0.0"), "0x80048040",
     "already installed on this system as an unmanaged solution and the package supplied is attempting to "
     "install it in managed mode"),
    (None, build_solution_zip(privileges=[("prvReadLead", "Global"), ("prvReadMsdyn_Widget", "Global")]),
     "0x8004801D", "cannot be imported: MicrosoftMarketplacesLeadIntegrationSolution. Some dependencies are missing."),
    (None, build_solution_zip(privileges=[("prvReadUserEntityUISettings", "Global")]), "0x80048058",
     "The privilege to be imported is invalid"),
], ids=["bad-zip", "downgrade", "unmanaged-over-managed", "managed-over-unmanaged", "missing-dependency",
        "depth-not-allowed"])
def test_import_fails_with_microsofts_errorcode_and_errortext(dv, first, second, code, fragment):
    if first is not None:
        assert finished(dv, import_zip(dv, first))[2].get("result") == "success"
    op, job, result = finished(dv, import_zip(dv, second))
    assert (op["statecode"], op["statuscode"]) == (3, 31)
    assert result.get("result") == "failure" and fragment in result.get("errortext")
    assert result.get("errorcode") == code and fragment in op["message"]


def test_upgrade_to_the_installed_version_fails_like_a_downgrade(dv):
    assert finished(dv, import_zip(dv, build_solution_zip("1.0.0.0")))[2].get("result") == "success"
    op, _, result = finished(dv, import_zip(dv, build_solution_zip("1.0.0.0"), "StageAndUpgradeAsync"))
    assert op["statuscode"] == 31 and result.get("errorcode") == "0x80048541"
    assert "must have a higher version" in result.get("errortext")


def test_armed_fault_fails_the_next_import_only(dv):
    dv.drift("fail_next_import", {"errortext": "Simulated import failure"})
    assert finished(dv, import_zip(dv, build_solution_zip()))[2].get("errortext") == "Simulated import failure"
    assert finished(dv, import_zip(dv, build_solution_zip()))[2].get("result") == "success"


def test_stage_and_upgrade_keeps_role_ids_and_assignments_and_delete_uninstalls(dv):
    bu = root_bu(dv)
    op, _, result = finished(dv, import_zip(dv, build_solution_zip("1.0.0.0"), "StageAndUpgradeAsync"))
    assert op["statuscode"] == 31 and "not installed" in result.get("errortext")
    finished(dv, import_zip(dv, build_solution_zip("1.0.0.0")))
    role = role_id(dv, "Microsoft Marketplace Lead Writer", bu)["roleid"]
    uid = create_app_user(dv, LEADWRITER_CLIENT_ID, bu)
    call(dv, "POST", f"systemusers({uid})/systemuserroles_association/$ref", {"@odata.id": f"roles({role})"})
    op, _, result = finished(dv, import_zip(dv, build_solution_zip("1.1.0.0"), "StageAndUpgradeAsync"))
    assert op["statuscode"] == 30, result.attrib
    assert role_id(dv, "Microsoft Marketplace Lead Writer", bu)["roleid"] == role
    assert [r["roleid"] for r in ok(call(dv, "GET", f"systemusers({uid})/systemuserroles_association"
                                                    "?$select=roleid"))["value"]] == [role]
    [sol] = ok(call(dv, "GET", "solutions?$filter=uniquename eq 'MicrosoftMarketplacesLeadIntegrationSolution'"
                               "&$select=solutionid,version"))["value"]
    assert sol["version"] == "1.1.0.0"
    assert call(dv, "DELETE", f"solutions({sol['solutionid']})")[0] == 204
    assert ok(call(dv, "GET", "roles?$select=roleid&$filter=name eq 'Microsoft Marketplace Lead Writer'"))[
        "value"] == []
    assert dv.state()["assignments"] == [a for a in dv.state()["assignments"] if a["systemuserid"] != uid]


# ------------------------------------------------------------------ leads, batch

def test_leads_create_read_delete_shapes(dv):
    status, headers, body = call(dv, "POST", "leads?$select=subject,fullname", {
        "subject": "MSFT_TEST_1", "firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada@x.example",
        "companyname": "Analytical"}, headers={"Prefer": "return=representation"})
    assert status == 201 and body["fullname"] == "Ada Lovelace" and body["@odata.etag"].startswith('W/"')
    lead = body["leadid"]
    # Learn, "Create with data returned": Preference-Applied, and no OData-EntityId then
    assert headers["Preference-Applied"] == "return=representation" and "OData-EntityId" not in headers
    assert ok(call(dv, "GET", f"leads({lead})?$select=subject"))["subject"] == "MSFT_TEST_1"
    status, headers, body = call(dv, "POST", "leads", {"subject": "plain"})
    assert status == 204 and body == "" and "leads(" in headers["OData-EntityId"]
    assert call(dv, "POST", "leads", {"subjectline": "x"})[0] == 400
    assert call(dv, "DELETE", f"leads({lead})")[0] == 204
    status, _, body = call(dv, "DELETE", f"leads({lead})")
    assert (status, body["error"]["code"]) == (404, "0x80040217")


def _batch_body(urls):
    parts = []
    for url in urls:
        parts.append(f"--batch_x\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                     f"GET {url} HTTP/1.1\r\nAccept: application/json\r\n\r\n")
    return ("".join(parts) + "--batch_x--\r\n").encode()


def test_lead_rewrite_drift_alters_every_new_lead_as_a_plug_in_would_until_cleared(dv):
    assert dv.drift("add_lead_rewrite", {"field": "lastname", "value": "Byron"}) == {"rewrites": {"lastname": "Byron"}}
    dv.drift("add_lead_rewrite", {"field": "companyname", "value": None})
    lead = {"subject": "MSFT_TEST_3", "firstname": "Ada", "lastname": "Lovelace", "companyname": "Analytical"}
    status, _, body = call(dv, "POST", "leads?$select=lastname,companyname,fullname,subject", lead,
                           headers={"Prefer": "return=representation"})
    assert status == 201 and (body["lastname"], body["companyname"]) == ("Byron", None)
    assert body["fullname"] == "Ada Byron" and body["subject"] == "MSFT_TEST_3"  # other fields as sent
    stored = ok(call(dv, "GET", f"leads({body['leadid']})?$select=lastname"))
    assert stored["lastname"] == "Byron"
    for bad in ({"field": "leadid", "value": "x"}, {"field": "fullname", "value": "x"},
                {"field": "nope", "value": "x"}, {"field": "subject", "value": 3}):
        with pytest.raises(ValueError):
            dv.drift("add_lead_rewrite", bad)
    assert dv.drift("clear_lead_rewrites", {}) == {"removed": ["companyname", "lastname"]}
    status, _, body = call(dv, "POST", "leads?$select=lastname,companyname", lead,
                           headers={"Prefer": "return=representation"})
    assert (body["lastname"], body["companyname"]) == ("Lovelace", "Analytical")


def test_batch_answers_each_get_with_its_own_status(dv):
    missing = str(uuid.uuid4())
    raw = _batch_body([f"{URL}/api/data/v9.2/WhoAmI", "/api/data/v9.2/businessunits?$select=name",
                       f"systemusers?$filter=applicationid eq {ADMIN_CLIENT_ID}&$select=fullname",
                       f"leads({missing})"])
    status, headers, text = call(dv, "POST", "$batch", raw=raw,
                                 headers={"Content-Type": "multipart/mixed; boundary=batch_x",
                                          "Prefer": "odata.continue-on-error"})
    assert status == 200 and headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    boundary = headers["Content-Type"].split("boundary=")[1]
    parts = [p for p in text.split(f"--{boundary}") if "HTTP/1.1" in p]
    assert [int(p.split("HTTP/1.1 ")[1][:3]) for p in parts] == [200, 200, 200, 404]
    bodies = [json.loads(p.strip().rsplit("\r\n\r\n", 1)[1]) for p in parts]
    assert bodies[1]["value"][0]["name"] == "unit" and bodies[2]["value"][0]["fullname"] == "# Sandbox Deployer"
    assert bodies[3]["error"]["code"] == "0x80040217"
    status, _, body = call(dv, "POST", "$batch", raw=_batch_body(["WhoAmI"] * 1001),
                           headers={"Content-Type": "multipart/mixed; boundary=batch_x"})
    assert status == 400 and "1000" in body["error"]["message"]


# ------------------------------------------------------------------ enforcement and drift

def _privilege_error(result, name):
    status, _, body = result
    assert status == 403 and body["error"]["code"] == "0x80040220", result
    assert f"is missing {name} privilege (Id={catalogue.privilege_id(name)})" in body["error"]["message"]
    return body["error"]["message"]


def test_non_admin_lead_writer_needs_each_privilege_and_drift_breaks_it(dv, directory):
    bu = root_bu(dv)
    writer = _caller(directory, LEADWRITER_CLIENT_ID)
    lead = {"subject": "MSFT_TEST_2", "lastname": "Test"}
    status, _, body = call(dv, "POST", "leads", lead, caller=writer)
    assert (status, body["error"]) == (403, {"code": "0x80072560", "message": "The user is not a member of the organization."})
    uid = create_app_user(dv, LEADWRITER_CLIENT_ID, bu)
    message = _privilege_error(call(dv, "POST", "leads", lead, caller=writer), "prvCreateLead")
    assert "OTC=4 for entity 'lead'" in message and f"Principal user (Id={uid}, type=8, roleCount=0" in message
    assert "accessMode=4" in message
    assert finished(dv, import_zip(dv, build_solution_zip()))[0]["statuscode"] == 30
    role = role_id(dv, "Microsoft Marketplace Lead Writer", bu)["roleid"]
    call(dv, "POST", f"systemusers({uid})/systemuserroles_association/$ref", {"@odata.id": f"roles({role})"})
    _privilege_error(call(dv, "POST", "leads", lead, caller=writer), "prvCreateUserEntityUISettings")
    grants = [{"PrivilegeId": catalogue.privilege_id(n), "Depth": d} for n, d in catalogue.PROCEDURE_GRANTS]
    _privilege_error(call(dv, "POST", f"roles({role})/Microsoft.Dynamics.CRM.AddPrivilegesRole",
                          {"Privileges": grants}, caller=writer), "prvReadRole")
    assert call(dv, "POST", f"roles({role})/Microsoft.Dynamics.CRM.AddPrivilegesRole", {"Privileges": grants})[0] == 204
    assert call(dv, "POST", "leads", lead, caller=writer)[0] == 204
    assert ok(call(dv, "GET", "WhoAmI", caller=writer))["UserId"] == uid
    _privilege_error(call(dv, "GET", "roles?$select=name", caller=writer), "prvReadRole")

    dv.drift("set_privilege_depth", {"roleid": role, "privilege": "prvReadAsyncOperation", "depth": "Local"})
    message = _privilege_error(call(dv, "POST", "leads", lead, caller=writer), "prvReadAsyncOperation")
    assert "needs depth Global, has Local" in message
    dv.drift("set_privilege_depth", {"roleid": role, "privilege": "prvReadAsyncOperation", "depth": "Global"})
    dv.drift("remove_privilege", {"roleid": role, "privilege": "prvWriteUserEntityUISettings"})
    _privilege_error(call(dv, "POST", "leads", lead, caller=writer), "prvWriteUserEntityUISettings")
    dv.drift("set_privilege_depth", {"roleid": role, "privilege": "prvWriteUserEntityUISettings", "depth": "Basic"})
    assert call(dv, "POST", "leads", lead, caller=writer)[0] == 204
    dv.drift("remove_role", {"systemuserid": uid, "roleid": role})
    _privilege_error(call(dv, "POST", "leads", lead, caller=writer), "prvCreateLead")
    dv.drift("disable_user", {"systemuserid": uid})
    status, _, body = call(dv, "POST", "leads", lead, caller=writer)
    assert (status, body["error"]["code"]) == (400, "0x80040225")  # as the Web API answers a disabled caller
    assert body["error"]["message"].startswith(f"The user with SystemUserId={uid} in OrganizationContext=")
    assert "is disabled" in body["error"]["message"]


def test_drift_actions_and_state_dump(dv):
    with pytest.raises(ValueError, match="unknown drift action"):
        dv.drift("paint_it_red", {})
    with pytest.raises(ValueError, match="allows Basic"):
        dv.drift("set_privilege_depth", {"roleid": role_id(dv, "Basic User", root_bu(dv))["roleid"],
                                         "privilege": "prvReadUserEntityUISettings", "depth": "Global"})
    oid = str(uuid.uuid4())
    uid = dv.drift("create_systemuser", {"domainname": "leads@contoso.example", "azureactivedirectoryobjectid": oid,
                                         "firstname": "Lead", "lastname": "Service"})["systemuserid"]
    row = ok(call(dv, "GET", "systemusers?$select=systemuserid,accessmode&$filter=domainname eq "
                             "'LEADS@contoso.example'"))["value"]
    assert [(r["systemuserid"], r["accessmode"]) for r in row] == [(uid, 0)]
    finished(dv, import_zip(dv, build_solution_zip()))
    assert dv.drift("uninstall_solution", {"uniquename": "MicrosoftMarketplacesLeadIntegrationSolution"})
    state = json.loads(json.dumps(dv.state()))
    assert {"solutions", "businessunits", "systemusers", "roles", "assignments", "leads", "asyncoperations",
            "importjobs"} <= set(state)
    assert all(s["uniquename"] != "MicrosoftMarketplacesLeadIntegrationSolution" for s in state["solutions"])
    admin = next(r for r in state["roles"] if r["name"] == "System Administrator")
    assert len(admin["privileges"]) == len(catalogue.PRIVILEGES)


# ------------------------------------------------------------------ over real HTTPS

def _session(sandbox, instance_url, **token_kw):
    token = sandbox.control.issue_token(audience=instance_url, **token_kw)["access_token"]
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE must not override the sandbox CA
    s.verify = sandbox.info["ca_bundle"]
    s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                      "OData-MaxVersion": "4.0", "OData-Version": "4.0"})
    return s


def test_over_https_admin_whoami_and_user_lookup(sandbox, org):
    api = f"{org}/api/data/v9.2/"
    with _session(sandbox, org, client_id=sandbox.info["admin_client_id"]) as s:
        who = s.get(api + "WhoAmI")
        assert who.status_code == 200 and who.headers["OData-Version"] == "4.0"
        rows = s.get(api + "systemusers", params={"$select": "systemuserid",
                                                  "$filter": f"applicationid eq {sandbox.info['admin_client_id']}"})
        assert rows.json()["value"][0]["systemuserid"] == who.json()["UserId"]
    assert requests.get(api + "WhoAmI", verify=sandbox.info["ca_bundle"]).status_code == 401


def test_over_https_lead_writer_without_roles_is_refused_naming_the_privilege(sandbox, org):
    api = f"{org}/api/data/v9.2/"
    with _session(sandbox, org, client_id=sandbox.info["admin_client_id"]) as admin:
        bu = admin.get(api + "WhoAmI").json()["BusinessUnitId"]
        created = admin.post(api + "systemusers", json={
            "applicationid": LEADWRITER_CLIENT_ID, "businessunitid@odata.bind": f"/businessunits({bu})",
            "lastname": "Writer", "internalemailaddress": "writer@contoso.example"})
        assert created.status_code == 204
    with _session(sandbox, org, client_id=LEADWRITER_CLIENT_ID) as writer:
        resp = writer.post(api + "leads", json={"subject": "MSFT_TEST_3"})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "0x80040220"
        assert "prvCreateLead" in resp.json()["error"]["message"]
    state = sandbox.control.state(org)
    assert state["leads"] == []


def test_office365_user_is_mapped_by_object_id_and_reads_only_within_its_depth(dv, directory):
    oid = str(uuid.uuid4())
    uid = dv.drift("create_systemuser", {"domainname": "leads@contoso.example", "azureactivedirectoryobjectid": oid,
                                         "lastname": "Service"})["systemuserid"]
    person = Caller(object_id=oid, tenant_id=TENANT_ID, upn="leads@contoso.example")
    assert ok(call(dv, "GET", "WhoAmI", caller=person))["UserId"] == uid
    role = role_id(dv, "Basic User", root_bu(dv))["roleid"]
    call(dv, "POST", f"systemusers({uid})/systemuserroles_association/$ref", {"@odata.id": f"roles({role})"})
    dv.drift("set_privilege_depth", {"roleid": role, "privilege": "prvCreateLead", "depth": "Basic"})
    dv.drift("set_privilege_depth", {"roleid": role, "privilege": "prvReadLead", "depth": "Basic"})
    own = call(dv, "POST", "leads", {"subject": "mine"}, caller=person)[1]["OData-EntityId"].rsplit("(", 1)[1][:-1]
    admins = call(dv, "POST", "leads", {"subject": "admin's"})[1]["OData-EntityId"].rsplit("(", 1)[1][:-1]
    listed = ok(call(dv, "GET", "leads?$select=subject", caller=person))["value"]
    assert [r["leadid"] for r in listed] == [own]
    message = _privilege_error(call(dv, "GET", f"leads({admins})", caller=person), "prvReadLead")
    assert "needs depth Local, has Basic" in message


# ------------------------------------------------------------------ paging and Retry-After dates, end to end

def _leads(client, n):
    return [client.create("leads", {"subject": f"page lead {i}", "lastname": f"L{i:02d}"}) for i in range(n)]


def test_paging_maxpagesize_next_links_are_followed_by_the_client(sandbox, org, deployer):
    from dynamics_provider.client import DataverseClient

    client = DataverseClient.for_instance(org, deployer)
    created = _leads(client, 7)
    api = f"{org}/api/data/v9.2/"
    with _session(sandbox, org, client_id=sandbox.info["admin_client_id"]) as s:
        first = s.get(api + "leads", params={"$select": "leadid,subject", "$orderby": "lastname"},
                      headers={"Prefer": "odata.maxpagesize=3"})
        assert first.headers["Preference-Applied"] == "odata.maxpagesize=3"
        page = first.json()
        pages = [[r["leadid"] for r in page["value"]]]
        while "@odata.nextLink" in page:
            assert page["@odata.nextLink"].startswith(api + "leads?") and "$skiptoken=" in page["@odata.nextLink"]
            page = s.get(page["@odata.nextLink"], headers={"Prefer": "odata.maxpagesize=3"}).json()
            pages.append([r["leadid"] for r in page["value"]])
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == created  # $orderby kept across pages, nothing repeated or skipped
    # the client, which sends no Prefer, follows the links the server's page_size makes
    mark = max((e["seq"] for e in sandbox.control.log()), default=0)
    sandbox.control.settings(page_size=2)
    try:
        rows = client.query("leads", select=["leadid"], filter="subject ne null")
    finally:
        sandbox.control.settings(page_size=5000)
    assert sorted(r["leadid"] for r in rows) == sorted(created)
    gets = [e for e in sandbox.control.log(since=mark) if e["kind"] == "dataverse" and e["path"].endswith("/leads")
            and e["status"] == 200]
    assert len(gets) == 4 and sum("skiptoken" in e["query"] for e in gets) == 3
    # $top is not paged
    assert len(client.query("leads", select=["leadid"], top=5)) == 5


def test_paging_resumes_after_the_last_row_served_when_rows_are_deleted_between_pages(sandbox, org, deployer):
    from dynamics_provider.client import DataverseClient

    client = DataverseClient.for_instance(org, deployer)
    created = _leads(client, 6)
    api = f"{org}/api/data/v9.2/"
    with _session(sandbox, org, client_id=sandbox.info["admin_client_id"]) as s:
        s.headers["Prefer"] = "odata.maxpagesize=2"
        page = s.get(api + "leads", params={"$select": "leadid", "$orderby": "lastname"}).json()
        client.delete("leads", created[0])  # a row of the page already served disappears
        second = s.get(page["@odata.nextLink"]).json()
        assert [r["leadid"] for r in second["value"]] == created[2:4]
        bad = s.get(api + "leads", params={"$select": "leadid", "$skiptoken": "garbage"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "0x0"


def test_client_honours_a_retry_after_http_date_end_to_end(sandbox, org, deployer):
    from dynamics_provider.client import DataverseClient

    client = DataverseClient.for_instance(org, deployer)
    client.get("WhoAmI")
    mark = max((e["seq"] for e in sandbox.control.log()), default=0)
    sandbox.control.add_fault(method="GET", path="WhoAmI$", status=429, retry_after=2, retry_after_http_date=True,
                              org=org.rsplit("/", 1)[-1])
    started = time.monotonic()
    assert client.get("WhoAmI")["UserId"]
    elapsed = time.monotonic() - started
    gets = [e for e in sandbox.control.log(since=mark) if e["kind"] == "dataverse" and e["path"].endswith("WhoAmI")]
    assert [e["status"] for e in gets] == [429, 200]
    assert gets[1]["time"] >= gets[0]["throttled_until"]  # the date, not a misread number, set the wait
    assert not any(e["inside_retry_after"] for e in gets)
    assert elapsed >= 1.0  # waited for the date (how long beyond it is make bench's business)
