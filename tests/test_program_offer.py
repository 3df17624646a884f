"""The program under Pulumi's mock runtime: config `offer` registers OfferLeadDestination fed by the
lead-writer identity, with the secret as a secret input; without `offer` nothing is registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings

from components.settings import parse_settings

EXISTING_APP = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
TENANT = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"
APP_SECRET = "program-offer-test-secret"


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[tuple[str, str, dict[str, Any], str | None]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append((args.typ, args.name, dict(args.inputs), args.resource_id))
        return f"{args.name}_id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {"tenantId": TENANT, "clientId": EXISTING_APP, "objectId": TENANT}


def offer_resources(recorder: Recorder) -> list[tuple[str, str, dict[str, Any]]]:
    return [(typ, name, inputs) for typ, name, inputs, _ in recorder.resources if "offer_id" in inputs]


def run_program(tmp_path: Path, **extra: Any) -> Recorder:
    from components.lead_destination import run

    zip_path = tmp_path / "solution_managed.zip"
    zip_path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    raw: dict[str, Any] = {
        "instanceUrl": "https://contoso.crm4.dynamics.com",
        "solution": json.dumps({"path": str(zip_path)}),
        "contactEmails": "leads@contoso.com;sales@contoso.com",
        "existingApplication": json.dumps({"clientId": EXISTING_APP, "tenantId": TENANT}),
        "existingApplicationSecret": APP_SECRET,
    }
    raw.update(extra)
    settings = parse_settings(raw, secret_keys=frozenset({"existingApplicationSecret"}))
    recorder = Recorder()
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(recorder, project="lead-destination", stack="offer", preview=False)

    @pulumi.runtime.test
    def program():
        destination = run(settings)
        return destination.partner_center

    program()
    return recorder


def test_offer_config_registers_the_destination_with_the_identity_secret_as_a_secret_input(tmp_path: Path) -> None:
    recorder = run_program(tmp_path, offer="contoso-lead-offer")
    found = offer_resources(recorder)
    assert len(found) == 1
    typ, name, inputs = found[0]
    assert typ == "pulumi-python:dynamic/dynamics:OfferLeadDestination"
    assert name == "offer-offer"
    assert inputs["offer_id"] == "contoso-lead-offer"
    assert inputs["instance_url"] == "https://contoso.crm4.dynamics.com"
    assert (inputs["authentication"], inputs["application_id"], inputs["directory_id"]) == (
        "azureAD", EXISTING_APP, TENANT)
    assert inputs["contact_emails"] == ["leads@contoso.com", "sales@contoso.com"]
    assert rpc.is_rpc_secret(inputs["application_key"])
    assert rpc.unwrap_rpc_secret(inputs["application_key"]) == APP_SECRET
    assert "__provider" in inputs


def test_offer_object_form_carries_the_schema_version(tmp_path: Path) -> None:
    recorder = run_program(tmp_path, offer=json.dumps({"id": "contoso-lead-offer",
                                                       "schemaVersion": "2022-03-01-preview3"}))
    (_, _, inputs), = offer_resources(recorder)
    assert inputs["schema_version"] == "2022-03-01-preview3"


def test_without_offer_no_offer_lead_destination_is_registered(tmp_path: Path) -> None:
    recorder = run_program(tmp_path)
    assert recorder.resources, "the program registered nothing at all"
    assert offer_resources(recorder) == []
    assert not any("OfferLeadDestination" in typ for typ, *_ in recorder.resources)


@pytest.fixture(autouse=True)
def _reset_mocks():
    yield
    runtime_settings.set_root_resource(None)


# ----------------------------------------------------------------------------------------------
# every identity mode feeds the offer, and a rotation reaches it on the same run


def _graph_offer(tmp_path: Path, today: Any, **extra: Any) -> tuple[Any, Any]:
    from tests.test_program_graph import GraphMocks, ProgramRun, settings_for

    mocks = GraphMocks()
    ProgramRun(mocks)(settings_for(tmp_path, offer="contoso-lead-offer", **extra), today)
    return mocks, mocks.resources["customer1-offer"]


def test_a_new_entra_app_feeds_the_offer_its_rotating_secret_after_the_lead_validation(tmp_path: Path) -> None:
    import datetime as dt

    from components.rotation import rotation_period
    from tests.test_program_graph import APP_CLIENT_ID, TENANT, unwrap_secret

    today = dt.date(2025, 3, 10)
    period = rotation_period(today, 180)
    mocks, offer = _graph_offer(tmp_path, today)
    assert offer.typ == "pulumi-python:dynamic/dynamics:OfferLeadDestination" and offer.parent == "customer1"
    assert (offer.inputs["application_id"], offer.inputs["directory_id"]) == (APP_CLIENT_ID, TENANT)
    assert unwrap_secret(offer.inputs["application_key"]) == f"generated-secret-{period.key}"
    assert "username" not in offer.inputs and "password" not in offer.inputs
    # Partner Center hears of a credential only once the lead writer has proven it
    assert offer.depends_on == ["customer1-dynamics"]
    assert mocks.order.index("customer1-dynamics-check") < mocks.order.index("customer1-offer")

    inside = _graph_offer(tmp_path, period.end - dt.timedelta(days=1))[1].inputs
    turned = _graph_offer(tmp_path, period.end)[1].inputs
    assert inside == offer.inputs  # no change inside a period: no Partner Center job
    assert unwrap_secret(turned["application_key"]) == f"generated-secret-{rotation_period(period.end, 180).key}"


def test_an_office365_user_feeds_the_offer_its_password_as_a_secret_input(tmp_path: Path) -> None:
    import datetime as dt

    from components.rotation import rotation_period
    from tests.test_program_graph import unwrap_secret

    today = dt.date(2025, 3, 10)
    _, offer = _graph_offer(tmp_path, today, authentication="office365",
                            office365={"userPrincipalName": "leads@contoso.onmicrosoft.com"})
    assert offer.inputs["authentication"] == "office365"
    assert offer.inputs["username"] == "leads@contoso.onmicrosoft.com"
    assert unwrap_secret(offer.inputs["password"]) == f"Generated-Pa55-{rotation_period(today, 90).key}"
    assert not {"application_id", "directory_id", "application_key"} & set(offer.inputs)
