"""The sandbox's `respond` fault rule: a recorded answer replayed exactly, over the sandbox's real HTTPS and
through the client's real azure-core pipeline (the means by which Microsoft-published examples are fed to
the client's parsing in tests/test_contract_dataverse*.py)."""

from __future__ import annotations

import pytest
import requests

from dynamics_provider.client import DataverseClient
from dynamics_provider.errors import DataverseError
from sandbox.testing import ControlError


def last_seq(sandbox) -> int:
    entries = sandbox.control.log()
    return entries[-1]["seq"] if entries else 0


def test_a_respond_rule_answers_exactly_the_recorded_status_headers_and_json_body_through_the_client(
        sandbox, control, org, deployer):
    recorded = {"@odata.context": "https://x.crm.dynamics.com/api/data/v9.2/$metadata#"
                                  "Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": "00000000-0000-0000-0000-00000000b001",
                "UserId": "00000000-0000-0000-0000-00000000c001",
                "OrganizationId": "00000000-0000-0000-0000-00000000d001"}
    client = DataverseClient.for_instance(org, deployer)
    seq = last_seq(sandbox)
    control.respond(r"/WhoAmI$", 200, recorded, {"OData-Version": "4.0", "x-ms-service-request-id": "abc"},
                    method="GET", org=org)
    assert client.who_am_i() == recorded
    raw = client.request("GET", "WhoAmI")  # the rule was used up: the emulator answers again
    assert raw.json()["UserId"] != recorded["UserId"]
    entries = [e for e in sandbox.control.log(since=seq) if e["kind"] == "dataverse"]
    replayed = [e for e in entries if e.get("fault_respond")]
    assert len(replayed) == 1
    assert replayed[0]["status"] == 200 and replayed[0]["caller"] == sandbox.info["admin_client_id"]


def test_a_respond_rule_sends_its_headers_verbatim_and_a_text_body_without_a_content_type(sandbox, control, org):
    token = sandbox.control.issue_token(audience=org, client_id=sandbox.info["admin_client_id"])["access_token"]
    control.respond(r"/WhoAmI$", 418, "plain words", {"X-Recorded": "yes", "Retry-After": "7"}, org=org)
    answer = requests.get(f"{org}/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {token}"},
                          verify=sandbox.info["ca_bundle"], timeout=20)
    assert (answer.status_code, answer.text) == (418, "plain words")
    assert answer.headers["X-Recorded"] == "yes" and answer.headers["Retry-After"] == "7"
    assert "Content-Type" not in answer.headers


def test_a_respond_rule_leaves_an_unauthenticated_request_to_the_services_own_401_and_stays(sandbox, control, org):
    control.respond(r"/WhoAmI$", 200, {"recorded": True}, org=org)
    anonymous = requests.get(f"{org}/api/data/v9.2/WhoAmI", verify=sandbox.info["ca_bundle"], timeout=20)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer ")
    assert [(rule["remaining"], rule["respond"]["status"]) for rule in control.faults()] == [(1, 200)]


def test_a_respond_rule_with_after_lets_the_write_land_and_replaces_its_answer(sandbox, control, org, deployer):
    client = DataverseClient.for_instance(org, deployer)
    control.respond(r"/leads$", 400, {"error": {"code": "0x80040216", "message": "recorded failure"}},
                    method="POST", org=org, after=True)
    with pytest.raises(DataverseError) as failed:
        client.create("leads", {"subject": "respond-after"})
    assert failed.value.status == 400 and "recorded failure" in str(failed.value)
    assert any(lead.get("subject") == "respond-after" for lead in sandbox.control.state(org)["leads"])


@pytest.mark.parametrize("respond", [{"status": 99}, {"status": "200"}, {"status": 200, "headers": {"a": 1}},
                                     {"status": 200, "extra": 1}, "200"])
def test_a_malformed_respond_rule_is_refused_with_400(control, respond):
    with pytest.raises(ControlError, match="400"):
        control.add_fault(path="WhoAmI", respond=respond)
