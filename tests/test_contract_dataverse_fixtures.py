"""Microsoft-published Dataverse answers (contract/fixtures/terraform-provider-power-platform: the recorded
answers Microsoft's Terraform provider replays in its unit tests; contract/fixtures/powerapps-docs: the
request/response examples of the Web API pages) against our client and our emulator.

1. Replay: each answer is sent back by the sandbox's `respond` rule over real HTTPS, through the client's
   azure-core pipeline, into the dataverse/*.py function that reads that answer; what it returns is asserted.
2. Compare: the same request is sent to the emulator; status, the relevant headers, and every key the
   emulator answers (it must be in Microsoft's answer, with the same JSON type) are compared. What differs on
   purpose is listed in KNOWN_DIFFERENCES with its reason (the contract register takes them from there).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse import roles as dv_roles
from dynamics_provider.dataverse import solutions as dv_solutions
from dynamics_provider.dataverse import users as dv_users
from dynamics_provider.errors import AccessDenied, BadRequest, DataverseError, DuplicateRecord, NotFound
from sandbox.solution_zip import build_solution_zip

FIXTURES = Path(__file__).resolve().parent.parent / "contract" / "fixtures"
SOURCES = ("terraform-provider-power-platform", "powerapps-docs")


def _load() -> dict[str, dict[str, Any]]:
    found = {}
    for source in SOURCES:
        for path in sorted((FIXTURES / source).glob("*.json")):
            found[f"{source}/{path.stem}"] = json.loads(path.read_text())
    return found


ALL = _load()


def fixture(name: str) -> dict[str, Any]:
    return ALL[name]


def replay(control, org: str, name: str, path: str, **rule: Any) -> None:
    """The fixture's answer, exactly, for the next request on `path` (a regex) to this organization."""
    response = fixture(name)["response"]
    control.respond(path, response["status"], response["body"], response.get("headers") or {}, org=org,
                    **rule)


# ------------------------------------------------------------------ provenance

@pytest.mark.parametrize("name", sorted(ALL))
def test_every_fixture_names_its_microsoft_source_operation_and_answer(name):
    doc = ALL[name]
    prov = doc["provenance"]
    if name.startswith("terraform-provider-power-platform/"):
        assert prov["repository"] == "microsoft/terraform-provider-power-platform"
        assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]) and prov["path"].startswith("internal/services/")
    else:
        assert prov["url"].startswith("https://learn.microsoft.com/") and prov["quote"].strip()
        assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]) and prov["path"].endswith(".md")
    assert re.fullmatch(r"dataverse\.[A-Z]\w+", doc["operation"])
    assert doc["request"]["method"] in ("GET", "POST", "PATCH", "DELETE") and doc["request"]["path"].startswith("/api/")
    assert isinstance(doc["response"]["status"], int)


def test_fixtures_of_both_sources_are_present():
    counts = {source: sum(1 for n in ALL if n.startswith(source + "/")) for source in SOURCES}
    assert counts["terraform-provider-power-platform"] >= 13 and counts["powerapps-docs"] >= 11, counts


# ------------------------------------------------------------------ 1. replay through the client


def _admin(org, deployer) -> DataverseClient:
    return DataverseClient.for_instance(org, deployer)


def _whoami(client, doc):
    assert client.who_am_i() == doc["response"]["body"]


def _import(client, doc):
    job = str(uuid.uuid4())
    assert dv_solutions.start_import(client, dv_solutions.IMPORT, b"zip", job) == doc["response"]["body"]["AsyncOperationId"]


def _async_succeeded(client, doc):
    op = doc["response"]["body"]
    # a completed job (3, 30): followed to its end without a failure
    assert dv_solutions.follow_import(client, str(uuid.uuid4()), op["asyncoperationid"], timeout=10, what="x") is None


def _solutions(client, doc):
    row = doc["response"]["body"]["value"][0]
    found = dv_solutions.installed_solution(client, row["uniquename"])
    assert found == dv_solutions.Solution(row["solutionid"], row["uniquename"], row["version"], row["ismanaged"])


def _systemusers(client, doc):
    row = doc["response"]["body"]["value"][0]
    user = dv_users.find_synced_user(client, row["domainname"], row["azureactivedirectoryobjectid"])
    assert user is not None and user.id == row["systemuserid"] and user.business_unit_id == row["_businessunitid_value"]
    assert user.disabled is row["isdisabled"] and user.email == row["internalemailaddress"]


def _user_roles(client, doc):
    row = doc["response"]["body"]
    found = dv_roles.user_roles(client, row["systemuserid"])
    assert found == dv_roles.UserRoles(row["systemuserid"], row["_businessunitid_value"],
                                       frozenset(r["roleid"] for r in row["systemuserroles_association"]),
                                       row["applicationid"])


def _associate(client, doc):
    assert dv_roles.assign_role(client, str(uuid.uuid4()), str(uuid.uuid4())) is None


def _disassociate(client, doc):
    assert dv_roles.unassign_role(client, str(uuid.uuid4()), str(uuid.uuid4())) is None


def _roles(client, doc):
    rows = client.query("roles", select=["roleid", "name", "_businessunitid_value"])
    assert [r["roleid"] for r in rows] == [r["roleid"] for r in doc["response"]["body"]["value"]]


def _business_unit(client, doc):
    row = doc["response"]["body"]
    assert client.get(f"businessunits({row['businessunitid']})")["businessunitid"] == row["businessunitid"]


def _raises(kind: type[DataverseError], send: Callable[[DataverseClient], Any]) -> Callable[[Any, Any], None]:
    def check(client, doc):
        error = doc["response"]["body"]["error"]
        with pytest.raises(kind) as raised:
            send(client)
        assert raised.value.status == doc["response"]["status"]
        assert (raised.value.code or "") == error["code"]
        assert raised.value.message.startswith(error["message"][:40])
    return check


def _create(client, doc):
    entity = re.search(r"\(([0-9a-f-]{36})\)", doc["response"]["headers"]["OData-EntityId"]).group(1)
    assert client.create("accounts", doc["request"]["body"]) == entity


def _create_record(client, doc):
    select = doc["request"]["query"]["$select"].split(",")
    assert client.create_record("accounts", doc["request"]["body"], select) == doc["response"]["body"]


def _batch(client, doc):
    [answer] = client.batch_get(["accounts(00000000-0000-0000-0000-000000000001)/Account_Tasks?$select=subject"])
    assert isinstance(answer, dict)
    assert [row["subject"] for row in answer["value"]] == ["Task Created with Test Account", "Task 1"]


TF, DOCS = "terraform-provider-power-platform/", "powerapps-docs/"
# fixture → (path regex the answer is replayed on, HTTP method, the client's reading of it)
REPLAYS: dict[str, tuple[str, str, Callable[[Any, Any], None]]] = {
    TF + "whoami": (r"/WhoAmI$", "GET", _whoami),
    TF + "import-solution-async": (r"/ImportSolutionAsync$", "POST", _import),
    TF + "get-async-operation-succeeded": (r"/asyncoperations\(", "GET", _async_succeeded),
    TF + "query-solutions": (r"/solutions$", "GET", _solutions),
    TF + "query-systemusers": (r"/systemusers$", "GET", _systemusers),
    TF + "get-systemuser-with-roles": (r"/systemusers\([^/]*\)$", "GET", _user_roles),
    TF + "associate-role": (r"/\$ref$", "POST", _associate),
    TF + "disassociate-role": (r"/\$ref$", "DELETE", _disassociate),
    TF + "query-roles": (r"/roles$", "GET", _roles),
    TF + "query-roles-of-business-unit": (r"/roles$", "GET", _roles),
    TF + "get-businessunit": (r"/businessunits\(", "GET", _business_unit),
    TF + "error-not-member-of-organization": (r"/WhoAmI$", "GET", _raises(AccessDenied, lambda c: c.who_am_i())),
    TF + "error-duplicate-record": (r"/publishers$", "POST",
                                    _raises(DuplicateRecord, lambda c: c.create("publishers", {"uniquename": "x"}))),
    DOCS + "create-basic": (r"/accounts$", "POST", _create),
    DOCS + "create-with-data-returned": (r"/accounts$", "POST", _create_record),
    DOCS + "associate-ref": (r"/\$ref$", "POST", _associate),
    DOCS + "disassociate-ref": (r"/\$ref$", "DELETE", _disassociate),
    DOCS + "batch-get": (r"/\$batch$", "POST", _batch),
    DOCS + "error-plugin-with-annotations": (r"/accounts$", "POST",
                                             _raises(BadRequest, lambda c: c.create("accounts", {"name": "x"}))),
    DOCS + "error-resource-not-found-for-segment": (r"/Account$", "GET", _raises(NotFound, lambda c: c.get("Account"))),
    DOCS + "error-property-not-found": (r"/accounts$", "GET",
                                        _raises(BadRequest, lambda c: c.query("accounts", select=["Name"]))),
    DOCS + "error-wrong-method-for-function": (r"/WhoAmI$", "POST",
                                               _raises(NotFound, lambda c: c.action("WhoAmI", idempotent=True))),
    DOCS + "error-payload-undeclared-property": (r"/contacts$", "POST",
                                                 _raises(BadRequest, lambda c: c.create("contacts", {"lastname": "x"}))),
}


def test_every_fixture_is_replayed():
    # the 429 example is replayed by its own test below
    assert set(REPLAYS) | {DOCS + "service-protection-requests"} == set(ALL)


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_a_microsoft_published_answer_replayed_over_https_is_read_by_the_clients_own_parsing(
        sandbox, control, org, deployer, name):
    path, method, check = REPLAYS[name]
    replay(control, org, name, path, method=method)
    seq = sandbox.control.log()[-1]["seq"]
    check(_admin(org, deployer), fixture(name))
    replayed = [e for e in sandbox.control.log(since=seq) if e.get("fault_respond")]
    assert [e["status"] for e in replayed] == [fixture(name)["response"]["status"]], "the recorded answer was used"


def test_the_documented_429_is_waited_out_for_its_retry_after_then_the_call_succeeds(sandbox, control, org, deployer):
    name = DOCS + "service-protection-requests"
    replay(control, org, name, r"/WhoAmI$", method="GET")
    seq = sandbox.control.log()[-1]["seq"]
    who = _admin(org, deployer).who_am_i()
    assert who["OrganizationId"]
    entries = [e for e in sandbox.control.log(since=seq) if e["kind"] == "dataverse" and e["path"].endswith("WhoAmI")]
    assert [e["status"] for e in entries] == [429, 200]
    assert entries[1]["time"] - entries[0]["time"] >= 1.0 and not entries[1]["inside_retry_after"]


# ------------------------------------------------------------------ 2. the emulator compared


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def key_differences(microsoft: Any, ours: Any, where: str = "") -> list[str]:
    """Keys the emulator answers that Microsoft's answer does not have, and shared keys whose JSON types differ
    (null matches anything: a column without a value)."""
    found: list[str] = []
    if isinstance(microsoft, dict) and isinstance(ours, dict):
        for key, value in ours.items():
            if key not in microsoft:
                found.append(f"{where}{key}: not in Microsoft's answer")
            elif value is not None and microsoft[key] is not None:
                if _type(value) != _type(microsoft[key]):
                    found.append(f"{where}{key}: {_type(value)} here, {_type(microsoft[key])} in Microsoft's answer")
                else:
                    found += key_differences(microsoft[key], value, f"{where}{key}.")
    elif isinstance(microsoft, list) and isinstance(ours, list) and microsoft and ours:
        found += key_differences(microsoft[0], ours[0], f"{where}[0].")
    return found


# differences kept on purpose, with the reason (for the contract register)
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {
    TF + "query-systemusers": {
        "@odata.context: not in Microsoft's answer":
            "the recording was trimmed: it starts at \"value\"; every Dataverse answer with a body carries "
            "@odata.context (the other recordings and every Learn example do)",
    },
    TF + "get-systemuser-with-roles": {
        "@odata.context: not in Microsoft's answer": "the same trimming as query-systemusers",
    },
}


def _api(org: str) -> str:
    return f"{org}/api/data/v9.2/"


def _session(sandbox, org: str) -> requests.Session:
    token = sandbox.control.issue_token(audience=org, client_id=sandbox.info["admin_client_id"])["access_token"]
    session = requests.Session()
    session.trust_env = False
    session.verify = sandbox.info["ca_bundle"]
    session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                            "OData-Version": "4.0", "OData-MaxVersion": "4.0"})
    return session


def _imported(sandbox, org, session) -> dict[str, Any]:
    """An import (of the Lead Writer solution) started and finished in the emulator: its action's answer."""
    sandbox.control.settings(import_seconds=0)
    try:
        body = {"OverwriteUnmanagedCustomizations": False, "PublishWorkflows": True, "ImportJobId": str(uuid.uuid4()),
                "CustomizationFile": __import__("base64").b64encode(build_solution_zip()).decode()}
        answer = session.post(_api(org) + "ImportSolutionAsync", json=body, timeout=30)
    finally:
        sandbox.control.settings(import_seconds=1.5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _root_unit(session, org) -> str:
    return session.get(_api(org) + "WhoAmI", timeout=30).json()["BusinessUnitId"]


def _compare_json(name: str, answer: requests.Response, microsoft: dict[str, Any]) -> None:
    assert answer.status_code == microsoft["response"]["status"], answer.text
    found = key_differences(microsoft["response"]["body"], answer.json())
    assert sorted(found) == sorted(KNOWN_DIFFERENCES.get(name, {})), found


def test_the_emulators_whoami_answers_microsofts_keys_and_types(sandbox, org):
    session = _session(sandbox, org)
    _compare_json(TF + "whoami", session.get(_api(org) + "WhoAmI", timeout=30), fixture(TF + "whoami"))


def test_the_emulators_import_answer_and_finished_job_match_microsofts_recording(sandbox, org):
    session = _session(sandbox, org)
    started = _imported(sandbox, org, session)
    recorded_start = fixture(TF + "import-solution-async")["response"]["body"]
    assert set(started) == set(recorded_start) and key_differences(recorded_start, started) == []
    job = session.get(_api(org) + f"asyncoperations({started['AsyncOperationId']})", timeout=30)
    _compare_json(TF + "get-async-operation-succeeded", job, fixture(TF + "get-async-operation-succeeded"))
    recorded = fixture(TF + "get-async-operation-succeeded")["response"]["body"]
    ours = job.json()
    assert (ours["statecode"], ours["statuscode"]) == (recorded["statecode"], recorded["statuscode"]) == (3, 30)
    assert ours["operationtype"] == recorded["operationtype"] == 54
    assert ours["messagename"] == recorded["messagename"] == "ImportSolutionAsync"
    assert ours["name"] == recorded["name"] == "ImportSolution"


def test_the_emulators_solution_query_answers_microsofts_keys_and_types(sandbox, org):
    session = _session(sandbox, org)
    _imported(sandbox, org, session)
    answer = session.get(_api(org) + "solutions", params={
        "$filter": "uniquename eq 'MicrosoftMarketplacesLeadIntegrationSolution'"}, timeout=30)
    _compare_json(TF + "query-solutions", answer, fixture(TF + "query-solutions"))


def test_the_emulators_users_roles_and_business_units_answer_microsofts_keys_and_types(sandbox, org):
    session = _session(sandbox, org)
    who = session.get(_api(org) + "WhoAmI", timeout=30).json()
    users = session.get(_api(org) + "systemusers", params={
        "$filter": f"azureactivedirectoryobjectid ne null and systemuserid eq {who['UserId']}"}, timeout=30)
    _compare_json(TF + "query-systemusers", users, fixture(TF + "query-systemusers"))
    user = session.get(_api(org) + f"systemusers({who['UserId']})", params={
        "$expand": "systemuserroles_association($select=roleid,name,ismanaged,_businessunitid_value)"}, timeout=30)
    _compare_json(TF + "get-systemuser-with-roles", user, fixture(TF + "get-systemuser-with-roles"))
    _compare_json(TF + "query-roles", session.get(_api(org) + "roles", timeout=30), fixture(TF + "query-roles"))
    _compare_json(TF + "get-businessunit", session.get(_api(org) + f"businessunits({who['BusinessUnitId']})", timeout=30),
                  fixture(TF + "get-businessunit"))


def test_the_emulators_associate_and_disassociate_answer_204_without_a_body(sandbox, org):
    session = _session(sandbox, org)
    who = session.get(_api(org) + "WhoAmI", timeout=30).json()
    role = session.get(_api(org) + "roles", params={
        "$select": "roleid", "$filter": f"name eq 'Basic User' and _businessunitid_value eq {who['BusinessUnitId']}"},
        timeout=30).json()["value"][0]["roleid"]
    target = _api(org) + f"systemusers({who['UserId']})/systemuserroles_association/$ref"
    for name in (TF + "associate-role", DOCS + "associate-ref"):
        answer = session.post(target, json={"@odata.id": _api(org) + f"roles({role})"}, timeout=30)
        assert (answer.status_code, answer.content) == (fixture(name)["response"]["status"], b"")
    answer = session.delete(target, params={"$id": _api(org) + f"roles({role})"}, timeout=30)
    assert (answer.status_code, answer.content) == (fixture(TF + "disassociate-role")["response"]["status"], b"")


def test_the_emulators_create_answers_as_the_create_page_shows(sandbox, org):
    session = _session(sandbox, org)
    plain = session.post(_api(org) + "leads", json={"subject": "compare"}, timeout=30)
    documented = fixture(DOCS + "create-basic")["response"]
    assert plain.status_code == documented["status"] and plain.content == b""
    assert re.search(r"/leads\([0-9a-f-]{36}\)$", plain.headers["OData-EntityId"])
    returned = session.post(_api(org) + "leads", params={"$select": "subject,createdon"}, json={"subject": "compare"},
                            headers={"Prefer": "return=representation"}, timeout=30)
    documented = fixture(DOCS + "create-with-data-returned")["response"]
    assert returned.status_code == documented["status"] == 201
    assert returned.headers["Preference-Applied"] == documented["headers"]["Preference-Applied"]
    assert "OData-EntityId" not in returned.headers and "OData-EntityId" not in documented["headers"]
    assert returned.headers["Content-Type"].startswith("application/json")
    assert {"@odata.context", "@odata.etag", "createdon"} <= set(returned.json()) & set(documented["body"])


def test_the_emulators_batch_answer_has_the_documented_multipart_shape(sandbox, org):
    session = _session(sandbox, org)
    boundary = "batch_AAA123"
    body = (f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding:binary\r\n\r\n"
            f"GET {_api(org)}roles?$select=name HTTP/1.1\r\nAccept: application/json\r\n\r\n--{boundary}--\r\n")
    answer = session.post(_api(org) + "$batch", data=body.encode(),
                          headers={"Content-Type": f"multipart/mixed;boundary={boundary}"}, timeout=30)
    documented = fixture(DOCS + "batch-get")["response"]
    assert answer.status_code == documented["status"]
    ours = re.search(r"boundary=(\S+)", answer.headers["Content-Type"]).group(1)
    assert ours.startswith("batchresponse_") and documented["headers"]["Content-Type"].split("boundary=")[1].startswith(
        "batchresponse_")
    part = answer.text.split(f"--{ours}")[1]
    assert "Content-Type: application/http" in part and "HTTP/1.1 200 OK" in part
    assert "Content-Type: application/json; odata.metadata=minimal" in part and "OData-Version: 4.0" in part


@pytest.mark.parametrize(("name", "method", "path", "body"), [
    (DOCS + "error-resource-not-found-for-segment", "GET", "Account", None),
    (DOCS + "error-property-not-found", "GET", "leads?$select=Name", None),
    (DOCS + "error-wrong-method-for-function", "POST", "WhoAmI", {}),
    (DOCS + "error-payload-undeclared-property", "POST", "leads",
     {"subject": "x", "parentcustomerid@odata.bind": "accounts(a779956b-d748-ed11-bb44-6045bd01152a)"}),
])
def test_the_emulators_errors_have_the_documented_status_code_and_wording(sandbox, org, name, method, path, body):
    session = _session(sandbox, org)
    answer = session.request(method, _api(org) + path, json=body, timeout=30)
    documented = fixture(name)["response"]
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (documented["status"], documented["body"]["error"]["code"])
    # the message up to the names the example fills in (Account / account / contacts / the request URI)
    stem = re.split(r"'", documented["body"]["error"]["message"], maxsplit=1)[0]
    assert error["message"].startswith(stem)


def test_the_emulators_refusals_of_a_non_member_and_a_duplicate_match_microsofts(sandbox, org):
    outsider = sandbox.control.register_app(display_name="not a user of the organization")
    token = sandbox.control.issue_token(audience=org, client_id=outsider["client_id"])["access_token"]
    answer = requests.get(_api(org) + "WhoAmI", headers={"Authorization": f"Bearer {token}"},
                          verify=sandbox.info["ca_bundle"], timeout=30)
    recorded = fixture(TF + "error-not-member-of-organization")["response"]
    assert (answer.status_code, answer.json()["error"]["code"]) == (recorded["status"], recorded["body"]["error"]["code"])
    session = _session(sandbox, org)
    root = _root_unit(session, org)
    user = {"applicationid": outsider["client_id"], "lastname": "x", "internalemailaddress": "x@contoso.example",
            "businessunitid@odata.bind": f"/businessunits({root})"}
    assert session.post(_api(org) + "systemusers", json=user, timeout=30).status_code == 204
    again = session.post(_api(org) + "systemusers", json=user, timeout=30)
    recorded = fixture(TF + "error-duplicate-record")["response"]
    assert (again.status_code, again.json()["error"]["code"]) == (recorded["status"], recorded["body"]["error"]["code"])
    assert again.json()["error"]["message"].startswith(recorded["body"]["error"]["message"].rstrip("."))


def test_the_emulators_service_protection_answer_matches_the_documented_one(sandbox, org):
    documented = fixture(DOCS + "service-protection-requests")["response"]
    sandbox.control.settings(throttle={"window_seconds": 300, "max_requests": 1, "retry_after": 1})
    try:
        session = _session(sandbox, org)
        answers = [session.get(_api(org) + "WhoAmI", timeout=30) for _ in range(2)]
    finally:
        sandbox.control.settings(throttle=None)
    refused = answers[1]
    assert refused.status_code == documented["status"] and refused.headers.get("Retry-After")
    assert refused.json()["error"] == documented["body"]["error"] | {"message": refused.json()["error"]["message"]}
    assert refused.json()["error"]["message"].startswith("Number of requests exceeded the limit of ")
