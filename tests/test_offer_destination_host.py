"""OfferLeadDestination through the real dynamic-provider host over gRPC, as the engine drives it:
provider pickled by reference, stack config via Configure, the application key as a Secret input."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from dynamics_provider.offer_destination import OfferLeadDestinationProvider
from sandbox.testing import stack_config
from tests.harness.provider_host import ProviderError, ProviderHost, Secret, provider_ref, urn_for

REPO = Path(__file__).resolve().parent.parent
APP_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
TENANT = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"
KEY = "host-test-key-value-1"
ROTATED = "host-test-key-value-2"
TYPE = "pulumi-python:dynamic/dynamics:OfferLeadDestination"


@pytest.fixture
def host(sandbox: Any):
    config = stack_config(sandbox.info)
    config["lead-destination:deployerClientSecret"] = Secret(config["lead-destination:deployerClientSecret"])
    with ProviderHost(REPO, project="lead-destination", stack="test") as h:
        h.configure(config)
        yield h


def props(offer_id: str, org: str, key: str = KEY, **over: Any) -> dict[str, Any]:
    values = {"__provider": provider_ref(OfferLeadDestinationProvider()), "offer_id": offer_id,
              "instance_url": org, "authentication": "azureAD", "application_id": APP_ID, "directory_id": TENANT,
              "application_key": Secret(key), "contact_emails": ["leads@contoso.com"]}
    values.update(over)
    return values


def remote(sandbox: Any, guid: str) -> dict[str, Any]:
    return next(p for p in sandbox.control.partner_center("GET", "state")["products"] if p["id"] == guid)


def test_lifecycle_over_grpc_with_the_key_as_a_secret_input(sandbox: Any, host: ProviderHost, org: str) -> None:
    offer_id = f"offer-{uuid.uuid4().hex[:10]}"
    guid = sandbox.control.partner_center("POST", "products", {"externalId": offer_id})["id"]
    urn = urn_for("test", "lead-destination", "offer", TYPE)

    inputs, failures = host.check(urn, {}, props(offer_id, org))
    assert failures == [] and isinstance(inputs["application_key"], Secret)
    id_, outs = host.create(urn, inputs)
    assert id_ == f"customer-leads/{guid}" and outs["set_by_stack"] is True
    assert KEY not in repr(outs) and not any(KEY in str(v) for v in outs.values())
    assert remote(sandbox, guid)["secretSha256"] == hashlib.sha256(KEY.encode()).hexdigest()

    assert host.diff(urn, id_, outs, inputs).changes is False

    sandbox.control.partner_center("POST", "drift", {"product": guid, "applicationId": str(uuid.uuid4())})
    rid, drifted, _ = host.read(urn, id_, outs)
    assert rid == id_ and drifted["application_id"] != APP_ID
    assert host.diff(urn, id_, drifted, inputs).changes is True
    assert host.diff(urn, id_, drifted, inputs).replaces == []
    repaired = host.update(urn, id_, drifted, inputs)
    assert remote(sandbox, guid)["customerLeads"]["dynamicsLeadConfiguration"]["applicationId"] == APP_ID
    assert repaired["application_id"] == APP_ID and repaired["job_id"] != outs["job_id"]
    assert {"product_id", "resource_id", "secret_hash", "set_by_stack", "job_id"} <= set(repaired)
    rid, clean_read, _ = host.read(urn, id_, repaired, inputs)
    assert rid == id_ and clean_read["application_id"] == APP_ID
    assert host.diff(urn, id_, clean_read, inputs).changes is False

    # the key cleared in the portal: read forgets the hash, the next up sets the key again
    sandbox.control.partner_center("POST", "drift", {"product": guid, "applicationKey": None})
    _, keyless, _ = host.read(urn, id_, clean_read, inputs)
    assert keyless.get("secret_hash") is None
    diff = host.diff(urn, id_, keyless, inputs)
    assert diff.changes is True and diff.replaces == []
    repaired = host.update(urn, id_, keyless, inputs)
    assert remote(sandbox, guid)["secretSha256"] == hashlib.sha256(KEY.encode()).hexdigest()
    assert host.diff(urn, id_, repaired, inputs).changes is False

    rotated, _ = host.check(urn, repaired, props(offer_id, org, ROTATED))
    diff = host.diff(urn, id_, repaired, rotated)
    assert diff.changes is True and diff.replaces == []
    after = host.update(urn, id_, repaired, rotated)
    assert remote(sandbox, guid)["secretSha256"] == hashlib.sha256(ROTATED.encode()).hexdigest()
    assert host.diff(urn, id_, after, rotated).changes is False

    assert host.diff(urn, id_, after, props("another-offer", org, ROTATED)).replaces == ["offer_id"]
    host.delete(urn, id_, after)
    assert remote(sandbox, guid)["customerLeads"]["leadDestination"] == "none"


def test_api_failure_reaches_the_engine_readable_and_without_the_key(
    sandbox: Any, host: ProviderHost, org: str
) -> None:
    offer_id = f"offer-{uuid.uuid4().hex[:10]}"
    sandbox.control.partner_center("POST", "products", {"externalId": offer_id})
    sandbox.control.partner_center("POST", "fail-next", {"message": f"key {KEY} was refused by the organization"})
    urn = urn_for("test", "lead-destination", "offer-fails", TYPE)
    inputs, _ = host.check(urn, {}, props(offer_id, org))
    with pytest.raises(ProviderError) as info:
        host.create(urn, inputs)
    assert "configure job" in info.value.message and "was refused by the organization" in info.value.message
    assert KEY not in info.value.details and KEY not in host.stderr_text()


def test_destination_switched_elsewhere_by_hand_is_restored_and_one_set_before_the_stack_is_released(
    sandbox: Any, host: ProviderHost, org: str
) -> None:
    offer_id = f"offer-{uuid.uuid4().hex[:10]}"
    guid = sandbox.control.partner_center("POST", "products", {"externalId": offer_id})["id"]
    # someone configured Dynamics for this offer before the stack existed
    sandbox.control.partner_center("POST", "drift", {"product": guid, "leadDestination": "dynamics",
                                                     "instanceUrl": org, "authentication": "azureAD",
                                                     "applicationId": APP_ID, "directoryId": TENANT,
                                                     "applicationKey": "old-key", "contactEmail": "a@contoso.com"})
    urn = urn_for("test", "lead-destination", "offer-adopted", TYPE)
    inputs, failures = host.check(urn, {}, props(offer_id, org))
    assert failures == []
    id_, outs = host.create(urn, inputs)
    assert outs["set_by_stack"] is False
    assert remote(sandbox, guid)["secretSha256"] == hashlib.sha256(KEY.encode()).hexdigest()
    assert host.diff(urn, id_, outs, inputs).changes is False

    sandbox.control.partner_center("POST", "drift", {"product": guid, "leadDestination": "email"})
    rid, drifted, _ = host.read(urn, id_, outs, inputs)
    assert rid == id_ and drifted.get("instance_url") is None and drifted.get("application_id") is None
    diff = host.diff(urn, id_, drifted, inputs)
    assert diff.changes is True and diff.replaces == []
    repaired = host.update(urn, id_, drifted, inputs)
    leads = remote(sandbox, guid)["customerLeads"]
    assert leads["leadDestination"] == "dynamics" and leads["dynamicsLeadConfiguration"]["instanceUrl"] == org
    assert repaired["set_by_stack"] is False  # still the destination someone else set up first
    _, clean_read, _ = host.read(urn, id_, repaired, inputs)
    assert host.diff(urn, id_, clean_read, inputs).changes is False

    host.delete(urn, id_, clean_read)
    assert remote(sandbox, guid)["customerLeads"]["leadDestination"] == "dynamics"  # released, not switched off
    assert KEY not in host.stderr_text() and "old-key" not in host.stderr_text()
