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
    settings = parse_settings(raw)
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
