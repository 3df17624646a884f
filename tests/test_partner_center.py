"""The Partner Center Product Ingestion API emulator over HTTPS: versions, Manager-role callers,
product lookup, configure jobs that progress and validate the customer-leads schema, masked secrets."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest
import requests

from sandbox.partner_center import MASKED, SCHEMA_BASE

VERSION = "2022-03-01-preview2"
GRAPH = "https://graph.microsoft.com"
APP_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
TENANT = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"


class Api:
    def __init__(self, sandbox: Any, token: str) -> None:
        self.base = sandbox.info["partner_center_url"]
        self.verify = sandbox.info["ca_bundle"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, version: str | None = VERSION, **params: str) -> requests.Response:
        if version is not None:
            params["$version"] = version
        return requests.get(f"{self.base}/{path}", params=params, headers=self.headers, verify=self.verify,
                            timeout=30)

    def configure(self, *resources: dict[str, Any]) -> dict[str, Any]:
        body = {"$schema": f"{SCHEMA_BASE}/configure/{VERSION}", "resources": list(resources)}
        resp = requests.post(f"{self.base}/configure", params={"$version": VERSION}, json=body,
                             headers=self.headers, verify=self.verify, timeout=30)
        assert resp.status_code == 202, resp.text
        return resp.json()

    def wait(self, job_id: str) -> tuple[list[str], dict[str, Any]]:
        seen = []
        deadline = time.monotonic() + 60  # the job completes job_seconds after it started; polled like a client
        while time.monotonic() < deadline:
            status = self.get(f"configure/{job_id}/status").json()
            seen.append(status["jobStatus"])
            if status["jobStatus"] == "completed":
                return seen, status
            time.sleep(0.05)
        raise AssertionError(f"job never completed in 60 s: {seen[-3:]}")


def graph_token(sandbox: Any, client_id: str) -> str:
    """A Graph token minted by the sandbox's Entra for an app (the client/msal path is tested elsewhere)."""
    return sandbox.control.issue_token(audience=GRAPH, client_id=client_id)["access_token"]


@pytest.fixture
def api(sandbox: Any) -> Api:
    return Api(sandbox, graph_token(sandbox, sandbox.info["admin_client_id"]))


@pytest.fixture
def product(sandbox: Any) -> tuple[str, str]:
    offer = f"offer-{uuid.uuid4().hex[:10]}"
    guid = sandbox.control.partner_center("POST", "products", {"externalId": offer, "name": "Test offer"})["id"]
    return offer, guid


def leads(guid: str, **config: Any) -> dict[str, Any]:
    dynamics = {"instanceUrl": "https://contoso.crm4.dynamics.com", "authentication": "azureAD",
                "applicationId": APP_ID, "applicationKey": "key-value-123", "directoryId": TENANT,
                "contactEmail": ["leads@contoso.com"]}
    dynamics.update(config)
    dynamics = {k: v for k, v in dynamics.items() if v is not None}
    return {"$schema": f"{SCHEMA_BASE}/customer-leads/{VERSION}", "id": f"customer-leads/{guid}",
            "product": f"product/{guid}", "leadDestination": "dynamics", "dynamicsLeadConfiguration": dynamics}


def draft_leads(api: Api, guid: str) -> dict[str, Any] | None:
    tree = api.get(f"resource-tree/product/{guid}", targetType="draft").json()
    return next((r for r in tree["resources"] if r["id"].startswith("customer-leads/")), None)


def test_every_call_needs_a_known_api_version(api: Api) -> None:
    missing = api.get("product", version=None, externalID="x")
    assert missing.status_code == 400 and "$version" in missing.json()["error"]["message"]
    unknown = api.get("product", version="2019-01-01", externalID="x")
    assert unknown.status_code == 400 and "2019-01-01" in unknown.json()["error"]["message"]


def test_only_apps_with_the_manager_role_may_call(sandbox: Any, product: tuple[str, str]) -> None:
    client_id = str(uuid.uuid4())
    sandbox.control.register_app(client_id=client_id, display_name="not a manager")
    outsider = Api(sandbox, graph_token(sandbox, client_id))
    refused = outsider.get("product", externalID=product[0])
    assert refused.status_code == 403 and "Manager" in refused.json()["error"]["message"]
    sandbox.control.partner_center("POST", "managers", {"client_id": client_id})
    assert outsider.get("product", externalID=product[0]).json()["value"][0]["id"] == f"product/{product[1]}"


def test_product_lookup_by_external_id_returns_the_durable_id(api: Api, product: tuple[str, str]) -> None:
    offer, guid = product
    found = api.get("product", externalID=offer).json()["value"]
    assert [(p["id"], p["identity"]["externalID"]) for p in found] == [(f"product/{guid}", offer)]
    assert api.get("product", externalID=f"{offer}-missing").json()["value"] == []


def test_configure_job_progresses_then_draft_shows_the_destination_with_the_key_masked(
    sandbox: Any, api: Api, product: tuple[str, str]
) -> None:
    _, guid = product
    assert draft_leads(api, guid) is None
    job = api.configure(leads(guid))
    assert (job["jobStatus"], job["jobResult"], job["jobEnd"]) == ("notStarted", "pending", "0001-01-01T00:00:00")
    assert "resourceUri" not in job
    seen, status = api.wait(job["jobID"])
    assert "running" in seen and status["jobResult"] == "succeeded" and status["errors"] == []
    assert status["jobEnd"] > status["jobStart"] and status["resourceUri"].endswith(f"/configure/{job['jobID']}")
    draft = draft_leads(api, guid)
    config = draft["dynamicsLeadConfiguration"]
    assert draft["leadDestination"] == "dynamics" and config["instanceUrl"] == "https://contoso.crm4.dynamics.com"
    assert config["applicationKey"] == MASKED
    details = api.get(f"configure/{job['jobID']}").json()
    assert details["resources"][0]["dynamicsLeadConfiguration"]["applicationKey"] == MASKED
    stored = next(p for p in sandbox.control.partner_center("GET", "state")["products"] if p["id"] == guid)
    assert stored["secretSha256"] == hashlib.sha256(b"key-value-123").hexdigest()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"username": "writer@contoso.com"}, "username: is not allowed when authentication is 'azureAD'"),
        ({"applicationKey": None}, "applicationKey: is required"),
        ({"directoryId": "not-a-uuid"}, "directoryId: 'not-a-uuid' is not a valid uuid"),
        ({"applicationKey": "k" * 2049}, "applicationKey: length must be between 1 and 2048"),
        ({"instanceUrl": "http://contoso.crm4.dynamics.com"}, "is not an https URL"),
        ({"authentication": "basic"}, "authentication: value 'basic'"),
        ({"contactEmail": ["not-an-email"]}, "'not-an-email' is not a valid e-mail address"),
        ({"authentication": "office365", "username": "w@contoso.com", "password": "pw-value-1"},
         "applicationId: is not allowed when authentication is 'office365'"),
    ],
)
def test_configure_job_fails_with_schema_errors_that_never_echo_the_secret(
    api: Api, product: tuple[str, str], config: dict[str, Any], expected: str
) -> None:
    _, guid = product
    _, status = api.wait(api.configure(leads(guid, **config))["jobID"])
    assert status["jobResult"] == "failed"
    messages = " | ".join(e["message"] for e in status["errors"])
    assert expected in messages
    assert all(e["code"] for e in status["errors"])
    assert "key-value-123" not in messages and "pw-value-1" not in messages
    assert draft_leads(api, guid) is None


def test_office365_destination_needs_username_and_password_only(api: Api, product: tuple[str, str]) -> None:
    _, guid = product
    resource = leads(guid, authentication="office365", applicationId=None, applicationKey=None, directoryId=None,
                     username="writer@contoso.com", password="pw-value-1")
    _, status = api.wait(api.configure(resource)["jobID"])
    assert status["jobResult"] == "succeeded", status
    config = draft_leads(api, guid)["dynamicsLeadConfiguration"]
    assert config["password"] == MASKED and config["username"] == "writer@contoso.com"


def test_portal_drift_and_fail_next_are_visible_through_the_api(
    sandbox: Any, api: Api, product: tuple[str, str]
) -> None:
    offer, guid = product
    api.wait(api.configure(leads(guid))["jobID"])
    sandbox.control.partner_center("POST", "drift", {"product": offer, "instanceUrl": "https://other.crm.dynamics.com"})
    assert draft_leads(api, guid)["dynamicsLeadConfiguration"]["instanceUrl"] == "https://other.crm.dynamics.com"
    sandbox.control.partner_center("POST", "fail-next", {"message": "Validation lead could not be written"})
    _, status = api.wait(api.configure(leads(guid))["jobID"])
    assert status["jobResult"] == "failed"
    assert status["errors"][0]["message"] == "Validation lead could not be written"
    assert draft_leads(api, guid)["dynamicsLeadConfiguration"]["instanceUrl"] == "https://other.crm.dynamics.com"


def test_unknown_product_and_job_are_not_found(api: Api) -> None:
    assert api.get(f"resource-tree/product/{uuid.uuid4()}", targetType="draft").status_code == 404
    assert api.get(f"configure/{uuid.uuid4()}/status").status_code == 404


@pytest.fixture
def spelling_2022(sandbox: Any) -> Any:
    sandbox.control.partner_center("POST", "settings", {"spelling": "2022"})
    try:
        yield
    finally:
        sandbox.control.partner_center("POST", "settings", {"spelling": "current"})


def test_the_2022_spelling_setting_answers_jobId_and_externalId(
    api: Api, product: tuple[str, str], spelling_2022: Any
) -> None:
    offer, guid = product
    found = api.get("product", externalId=offer).json()["value"]
    assert [p["identity"] for p in found] == [{"externalId": offer}]
    job = api.configure(leads(guid))
    assert "jobID" not in job
    _, status = api.wait(job["jobId"])
    assert status["jobId"] == job["jobId"] and status["jobResult"] == "succeeded"


def test_the_product_query_reads_externalID_in_either_case(api: Api, product: tuple[str, str]) -> None:
    offer, guid = product
    for name in ("externalID", "externalId"):
        assert [p["id"] for p in api.get("product", **{name: offer}).json()["value"]] == [f"product/{guid}"]


def test_errors_carry_code_message_and_details_as_the_learn_example(api: Api) -> None:
    missing = api.get("product", version=None, externalID="x")
    assert missing.json() == {"error": {"code": "badRequest", "message": missing.json()["error"]["message"],
                                        "details": []}}


def test_configure_details_fail_before_the_job_completes(sandbox: Any, api: Api, product: tuple[str, str]) -> None:
    sandbox.control.partner_center("POST", "settings", {"job_seconds": 30})
    try:
        job = api.configure(leads(product[1]))
        early = api.get(f"configure/{job['jobID']}")
    finally:
        sandbox.control.partner_center("POST", "settings", {"job_seconds": 0.4})
    assert early.status_code == 400 and early.json()["error"]["code"] == "badRequest"
