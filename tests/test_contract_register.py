"""The contract register (contract/register.yaml, sandbox/contract.py): the file is valid and complete;
the sandbox refuses — over real HTTPS, in-process and as `python -m sandbox serve` — every request that is
not one of its operations, or that carries a name it does not list, and records it in the session's file,
so a pytest session (xdist workers included) fails on it; and every response field the client reads is in
a Microsoft source its entry quotes or in a Microsoft-published answer under contract/fixtures/."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from dynamics_provider.auth import DeployerSettings
from dynamics_provider.client import DataverseClient
from dynamics_provider.errors import BadRequest, DataverseError
from sandbox.contract import (
    REGISTER_PATH,
    VIOLATIONS_ENV,
    Register,
    RegisterError,
    Request,
    fixture_names,
    read_violations,
    undocumented_fields,
)
from sandbox.testing import SandboxHandle, start_sandbox

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "contract" / "fixtures"
MICROSOFT_HOSTS = ("https://learn.microsoft.com/", "https://raw.githubusercontent.com/MicrosoftDocs/")
MICROSOFT_OWNERS = ("microsoft/", "MicrosoftDocs/", "Azure/", "AzureAD/")


def _raw() -> dict[str, Any]:
    return yaml.safe_load(REGISTER_PATH.read_text(encoding="utf-8"))


# ----- the file ----------------------------------------------------------------------------------------
def test_every_operation_names_its_microsoft_source_with_the_names_quoted_or_why_it_is_inferred():
    register = Register.load()
    assert len(register.operations) >= 30
    problems = []
    for op in register.operations:
        sources, inferred = op.entry.get("sources"), op.entry.get("inferred")
        if bool(sources) == bool(inferred):
            problems.append(f"{op.id}: needs exactly one of `sources` and `inferred`")
        if inferred is not None and not (isinstance(inferred, str) and len(inferred.split()) >= 5):
            problems.append(f"{op.id}: `inferred` must say why in a sentence")
        for source in sources or []:
            if not source.get("quoted"):
                problems.append(f"{op.id}: a source quotes no name")
            if "url" in source and not str(source["url"]).startswith(MICROSOFT_HOSTS):
                problems.append(f"{op.id}: {source['url']} is not a Microsoft page")
            if "repository" in source and not (str(source["repository"]).startswith(MICROSOFT_OWNERS)
                                               and len(str(source.get("commit", ""))) == 40 and source.get("path")):
                problems.append(f"{op.id}: {source['repository']} needs a Microsoft repository, a path and a commit")
            if "url" not in source and "repository" not in source:
                problems.append(f"{op.id}: a source has neither url nor repository")
        if not set(op.entry.get("used_by") or []) or not set(op.entry["used_by"]) <= {"program", "tests"}:
            problems.append(f"{op.id}: used_by must name program and/or tests")
        statuses = op.entry.get("statuses")
        if not statuses or not all(isinstance(s, int) and 100 <= s < 600 for s in statuses):
            problems.append(f"{op.id}: statuses must list the HTTP statuses the client handles")
    for probe in register.probes:
        test_file = ROOT / probe.sent_by.split(" ", 1)[0].split("::", 1)[0]
        if not test_file.is_file() and "(branch " not in probe.sent_by:  # a branch not merged yet says so
            problems.append(f"{probe.id}: sent_by {probe.sent_by!r} names no test file")
    assert problems == []


def test_the_register_refuses_a_duplicate_id_an_unknown_kind_a_bad_placeholder_and_a_probe_of_no_operation():
    base = _raw()
    duplicate = copy.deepcopy(base)
    duplicate["operations"].append(copy.deepcopy(duplicate["operations"][0]))
    with pytest.raises(RegisterError, match="appears twice"):
        Register(duplicate)
    unknown_kind = copy.deepcopy(base)
    unknown_kind["operations"][0]["kind"] = "upsert"
    with pytest.raises(RegisterError, match="kind 'upsert'"):
        Register(unknown_kind)
    bad_path = copy.deepcopy(base)
    bad_path["operations"][0]["path"] = "things({id:uuid})"
    with pytest.raises(RegisterError, match="unknown placeholder type 'uuid'"):
        Register(bad_path)
    orphan = copy.deepcopy(base)
    orphan["probes"].append({"id": "probe.Orphan", "service": "dataverse", "method": "POST", "operation": "dataverse.Nope",
                             "names": ["X"], "sent_by": "tests/x.py", "why": "a probe of nothing"})
    with pytest.raises(RegisterError, match="unknown operation dataverse.Nope"):
        Register(orphan)


def test_the_register_matches_the_documented_removeprivilegerole_form_and_refuses_the_sdk_one():
    register = Register.load()
    path = f"roles({uuid.uuid4()})/Microsoft.Dynamics.CRM.RemovePrivilegeRole"
    documented = register.check(Request("dataverse", "POST", path, (), json.dumps(
        {"Privilege": {"@odata.type": "Microsoft.Dynamics.CRM.privilege", "privilegeid": str(uuid.uuid4())}}).encode()))
    assert documented.operation == "dataverse.RemovePrivilegeRole" and documented.problem is None
    sdk_body = json.dumps({"PrivilegeId": str(uuid.uuid4())}).encode()
    sdk_form = register.check(Request("dataverse", "POST", path, (), sdk_body, "application/json", "lead-destination"))
    assert sdk_form.refused and (sdk_form.status, sdk_form.code) == (400, "0x80048d19")
    assert "The parameter 'PrivilegeId' in the request payload is not a valid parameter" in sdk_form.said
    # a test's own deliberate PrivilegeId (probe.RemovePrivilegeRoleSdkParameter) is left to the emulator …
    probed = register.check(Request("dataverse", "POST", path, (), sdk_body, "application/json", "python-requests/2"))
    assert probed.probe == "probe.RemovePrivilegeRoleSdkParameter" and not probed.refused
    # … but no probe covers a name it does not list
    other = register.check(Request("dataverse", "POST", path, (), b'{"PrivilegeIds": []}', "", "python-requests/2"))
    assert other.refused


# ----- response fields ---------------------------------------------------------------------------------
def test_every_response_field_the_client_reads_is_quoted_from_microsoft_or_in_a_published_answer():
    register = Register.load()
    fixtures = fixture_names(FIXTURES)
    assert undocumented_fields(register, fixtures) == []
    known = {op.id for op in register.operations} | set(register.fixture_groups)
    assert sorted(set(fixtures) - known) == [], "fixtures name operations the register does not have"


def test_the_field_check_names_a_field_no_source_quotes_until_a_published_answer_carries_it(tmp_path):
    data = _raw()
    entry = next(e for e in data["operations"] if e["id"] == "partnercenter.GetConfigureStatus")
    entry["response_fields"]["jobProgress"] = "number"
    register = Register(data)
    assert undocumented_fields(register, {}) == ["partnercenter.GetConfigureStatus: jobProgress"]
    (tmp_path / "partnercenter").mkdir()
    (tmp_path / "partnercenter" / "status.json").write_text(json.dumps({
        "provenance": {"url": "https://learn.microsoft.com/example"}, "operation": "partnercenter.GetConfigureStatus",
        "request": {"method": "GET"}, "response": {"status": 200, "body": {"jobStatus": "running", "jobProgress": 40}}}))
    assert undocumented_fields(register, fixture_names(tmp_path)) == []
    # Partner Center keys are case-sensitive: jobid is not jobId
    entry["response_fields"] = {"jobid": "string"}
    assert undocumented_fields(Register(data), {}) == ["partnercenter.GetConfigureStatus: jobid"]


# ----- enforcement over HTTPS ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxHandle, Path]]:
    """A sandbox of its own whose refusals go to its own file, so the deliberate ones here do not fail
    the session (the session's file is the conftest's)."""
    root = tmp_path_factory.mktemp("contract")
    record = root / "violations.jsonl"
    before = os.environ.get(VIOLATIONS_ENV)
    os.environ[VIOLATIONS_ENV] = str(record)
    try:
        handle = start_sandbox(state_dir=root / "state", port=0)
    finally:
        if before is None:
            os.environ.pop(VIOLATIONS_ENV, None)
        else:
            os.environ[VIOLATIONS_ENV] = before
    try:
        yield handle, record
    finally:
        handle.stop()


def _client(handle: SandboxHandle) -> DataverseClient:
    info = handle.info
    org = handle.control.add_org(f"c{uuid.uuid4().hex[:12]}")
    settings = DeployerSettings(tenant_id=info["tenant_id"], client_id=info["admin_client_id"],
                                client_secret=info["admin_client_secret"], authority_host=info["authority_host"],
                                ca_bundle=info["ca_bundle"], allow_loopback=True)
    return DataverseClient.for_instance(org, settings)


def _mine(record: Path, test: str) -> list[dict[str, Any]]:
    return [v for v in read_violations(record) if test in (v.get("test") or "")]


def test_a_request_not_in_the_register_is_answered_501_naming_the_register_and_recorded(isolated):
    handle, record = isolated
    client = _client(handle)
    with pytest.raises(DataverseError) as err:
        client.get("accounts", {"$select": "name", "$filter": "name eq 'a-value-never-written'"})
    assert err.value.status == 501 and "not in contract/register.yaml" in err.value.message
    (line,) = _mine(record, "test_a_request_not_in_the_register_is_answered_501")
    assert (line["method"], line["service"], line["path"], line["operation"]) == ("GET", "dataverse", "accounts", None)
    assert line["query"] == ["$filter", "$select"]
    assert "a-value-never-written" not in record.read_text()  # names only: no query value, no body
    entry = next(e for e in reversed(handle.control.log()) if e["path"].endswith("/accounts"))
    assert entry["status"] == 501 and "matches no operation" in entry["contract"]


def test_an_action_parameter_the_register_does_not_list_is_refused_as_dataverse_refuses_it(isolated):
    handle, record = isolated
    client = _client(handle)
    role_id = str(uuid.uuid4())
    with pytest.raises(BadRequest) as err:
        client.action("RemovePrivilegeRole", {"PrivilegeId": str(uuid.uuid4())}, bound=("roles", role_id))
    assert err.value.code == "0x80048d19"  # Dataverse's payload error, as the emulator answers it
    assert ("The parameter 'PrivilegeId' in the request payload is not a valid parameter for the operation "
            "'RemovePrivilegeRole'.") in err.value.message
    assert [v["problem"] for v in _mine(record, "test_an_action_parameter")] == [
        "dataverse.RemovePrivilegeRole: parameter(s) PrivilegeId not in the register"]
    # the documented form passes the register (what the emulator then answers is its own business)
    try:
        client.action("RemovePrivilegeRole", {"Privilege": {"@odata.type": "Microsoft.Dynamics.CRM.privilege",
                                                            "privilegeid": str(uuid.uuid4())}}, bound=("roles", role_id))
    except DataverseError as exc:
        assert exc.status != 501 and "contract/register.yaml" not in exc.message
    last = handle.control.log()[-1]
    assert last["operation"] == "dataverse.RemovePrivilegeRole" and "contract" not in last
    assert len(_mine(record, "test_an_action_parameter")) == 1


def test_an_entity_property_or_a_select_column_the_register_does_not_list_is_refused(isolated):
    handle, record = isolated
    client = _client(handle)
    with pytest.raises(BadRequest) as err:
        client.create("leads", {"subject": "MSFT_TEST_1", "nosuchcolumn": "x"})
    assert err.value.code == "0x0"
    assert "Could not find a property named 'nosuchcolumn' on type 'Microsoft.Dynamics.CRM.lead'" in err.value.message
    with pytest.raises(BadRequest) as err:
        client.query("systemusers", select=["systemuserid", "nosuchcolumn"])
    assert "Could not find a property named 'nosuchcolumn' on type 'Microsoft.Dynamics.CRM.systemuser'" in err.value.message
    problems = [v["problem"] for v in _mine(record, "test_an_entity_property_or_a_select_column")]
    assert problems == ["dataverse.CreateLead: property(ies) nosuchcolumn not in the register",
                        "dataverse.QuerySystemUsers: $select column(s) nosuchcolumn not among its response fields"]


def test_a_batch_part_not_in_the_register_refuses_the_whole_batch(isolated):
    handle, record = isolated
    client = _client(handle)
    with pytest.raises(DataverseError) as err:
        client.batch_get(["WhoAmI", "accounts?$select=name"])
    assert err.value.status == 501 and "$batch part GET accounts" in err.value.message
    assert len(_mine(record, "test_a_batch_part_not_in_the_register")) == 1
    assert client.batch_get(["WhoAmI"])[0]["UserId"]  # registered parts pass


def test_a_probe_lets_the_emulator_answer_only_its_own_exact_request(isolated):
    handle, record = isolated
    base = handle.info["control_url"].removesuffix("/_control")
    verify = handle.info["ca_bundle"]
    assert requests.get(f"{base}/nowhere", verify=verify, timeout=20).status_code == 404  # probe.UnknownPath
    other = requests.get(f"{base}/nowhere-else", verify=verify, timeout=20)
    assert other.status_code == 501 and "not in contract/register.yaml" in other.json()["error"]["message"]
    assert [v["path"] for v in _mine(record, "test_a_probe_lets")] == ["nowhere-else"]


def test_a_sandbox_in_another_process_records_refusals_in_the_file_its_environment_names(tmp_path):
    record = tmp_path / "violations.jsonl"
    env = {**os.environ, VIOLATIONS_ENV: str(record)}
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--state-dir", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())  # the server prints its info once it listens
        answer = requests.delete(f"{info['authority']}/oauth2/v2.0/token", verify=info["ca_bundle"], timeout=20)
        assert answer.status_code == 501 and "not in contract/register.yaml" in answer.json()["error_description"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    (line,) = read_violations(record)
    assert (line["service"], line["method"]) == ("entra", "DELETE") and line["path"].endswith("oauth2/v2.0/token")


def test_the_session_sandbox_logs_the_register_operation_of_every_request(sandbox, org, deployer):
    client = DataverseClient.for_instance(org, deployer)
    sandbox.control.clear_log()
    who = client.who_am_i()
    client.query("systemusers", select=["systemuserid"], filter=f"systemuserid eq {who['UserId']}")
    entries = [e for e in sandbox.control.log() if e["kind"] != "control"]
    assert {e["operation"] for e in entries} >= {"dataverse.WhoAmI", "dataverse.QuerySystemUsers"}
    assert all(e.get("operation") and "contract" not in e for e in entries)
    assert os.environ.get(VIOLATIONS_ENV), "the conftest names the session's violations file"


def test_a_pytest_session_under_xdist_fails_on_a_refused_request_even_when_the_test_swallows_it(tmp_path):
    tests = tmp_path / "test_swallowing.py"
    tests.write_text(textwrap.dedent("""
        import requests
        from sandbox.testing import start_sandbox

        def _probe(tmp_path, path):
            with start_sandbox(state_dir=tmp_path, port=0) as sb:
                base = sb.info["control_url"].removesuffix("/_control")
                requests.get(base + path, verify=sb.info["ca_bundle"], timeout=20)  # the 501 is ignored

        def test_one(tmp_path):
            _probe(tmp_path, "/not-registered-one")

        def test_two(tmp_path):
            _probe(tmp_path, "/not-registered-two")
    """))
    env = {k: v for k, v in os.environ.items() if k != VIOLATIONS_ENV and not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                          "-n", "2", "--rootdir", str(tmp_path), str(tests)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert "requests not in contract/register.yaml" in run.stdout
    assert "unknown:/not-registered-one" in run.stdout and "unknown:/not-registered-two" in run.stdout
