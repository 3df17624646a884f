"""OfferLeadDestination's provider against the sandbox's Partner Center over HTTPS, called directly:
check, create, no-op diff, portal drift read and repaired, secret rotation, API errors, delete semantics."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config

from dynamics_provider.base import (
    UNKNOWN,
    ResourceOperationError,
)
from dynamics_provider.offer_destination import DEFAULT_SCHEMA_VERSION, OfferLeadDestinationProvider
from sandbox.testing import stack_config

APP_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
TENANT = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"
KEY = "offer-test-key-value-1"
ROTATED = "offer-test-key-value-2"


@pytest.fixture
def provider(sandbox: Any) -> OfferLeadDestinationProvider:
    prov = OfferLeadDestinationProvider()
    prov.configure(ConfigureRequest(Config(stack_config(sandbox.info), "lead-destination")))
    return prov


@pytest.fixture
def offer(sandbox: Any) -> tuple[str, str]:
    offer_id = f"offer-{uuid.uuid4().hex[:10]}"
    guid = sandbox.control.partner_center("POST", "products", {"externalId": offer_id, "name": "Test offer"})["id"]
    return offer_id, guid


def inputs(offer_id: str, org: str, **over: Any) -> dict[str, Any]:
    props = {"offer_id": offer_id, "instance_url": org, "authentication": "azureAD", "application_id": APP_ID,
             "directory_id": TENANT, "application_key": KEY, "contact_emails": ["leads@contoso.com"]}
    props.update(over)
    return props


def checked(provider: OfferLeadDestinationProvider, props: dict[str, Any], olds: dict[str, Any] | None = None):
    result = provider.check(olds or {}, props)
    assert not result.failures, [(f.property, f.reason) for f in result.failures]
    return result.inputs


def remote(sandbox: Any, guid: str) -> dict[str, Any]:
    return next(p for p in sandbox.control.partner_center("GET", "state")["products"] if p["id"] == guid)


def test_check_refuses_bad_inputs_without_echoing_the_key(provider: OfferLeadDestinationProvider, org: str) -> None:
    bad = inputs("Offer With Spaces", "http://contoso.crm.dynamics.com", application_id="nope",
                 application_key="x" * 2049, username="someone@contoso.com", contact_emails="a@b.com;bogus")
    failures = {f.property: f.reason for f in provider.check({}, bad).failures}
    assert set(failures) == {"offer_id", "instance_url", "application_id", "application_key", "username",
                             "contact_emails"}
    assert "x" * 50 not in " ".join(failures.values())
    office = provider.check({}, inputs("contoso-offer", org, authentication="office365"))
    assert {f.property for f in office.failures} >= {"username", "password", "application_id", "directory_id",
                                                    "application_key"}


def test_check_normalizes_emails_and_schema_version_and_keeps_the_key_secret(
    provider: OfferLeadDestinationProvider, org: str
) -> None:
    secret_key = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": KEY}
    result = checked(provider, inputs("contoso-offer", org + "/", application_key=secret_key,
                                      contact_emails="a@contoso.com; b@contoso.com"))
    assert result["instance_url"] == org
    assert result["contact_emails"] == ["a@contoso.com", "b@contoso.com"]
    assert result["schema_version"] == DEFAULT_SCHEMA_VERSION
    assert result["application_key"] == secret_key


def test_lifecycle_create_noop_drift_repair_rotation_and_delete(
    sandbox: Any, provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    offer_id, guid = offer
    news = checked(provider, inputs(offer_id, org))
    created = provider.create(news)
    outs = created.outs
    assert created.id == f"customer-leads/{guid}"
    assert outs["product_id"] == f"product/{guid}" and outs["set_by_stack"] is True and outs["job_id"]
    assert KEY not in repr(outs) and "application_key" not in outs
    state = remote(sandbox, guid)
    config = state["customerLeads"]["dynamicsLeadConfiguration"]
    assert (config["instanceUrl"], config["applicationId"], config["contactEmail"]) == (
        org, APP_ID, ["leads@contoso.com"])
    assert state["secretSha256"] == hashlib.sha256(KEY.encode()).hexdigest()

    # no-op: same inputs, nothing changed remotely
    read = provider.read(created.id, outs)
    assert read.id == created.id
    assert not provider.diff(created.id, read.outs, news).changes

    # a person edits the destination in the portal → read shows it → diff → update repairs
    sandbox.control.partner_center("POST", "drift", {"product": offer_id, "instanceUrl": "https://other.crm.dynamics.com",
                                                     "contactEmail": ["someone@else.com"]})
    drifted = provider.read(created.id, outs).outs
    assert drifted["instance_url"] == "https://other.crm.dynamics.com"
    assert drifted["contact_emails"] == ["someone@else.com"]
    diff = provider.diff(created.id, drifted, news)
    assert diff.changes and not diff.replaces
    repaired = provider.update(created.id, drifted, news).outs
    assert remote(sandbox, guid)["customerLeads"]["dynamicsLeadConfiguration"]["instanceUrl"] == org
    assert repaired["secret_hash"] == outs["secret_hash"]
    assert not provider.diff(created.id, provider.read(created.id, repaired).outs, news).changes

    # secret rotation: only the hash of our own input can tell → update sends the new key
    rotated = checked(provider, inputs(offer_id, org, application_key=ROTATED), repaired)
    diff = provider.diff(created.id, repaired, rotated)
    assert diff.changes and not diff.replaces
    after = provider.update(created.id, repaired, rotated).outs
    assert after["secret_hash"] != repaired["secret_hash"] and ROTATED not in repr(after)
    assert remote(sandbox, guid)["secretSha256"] == hashlib.sha256(ROTATED.encode()).hexdigest()
    assert not provider.diff(created.id, after, rotated).changes

    # another offer replaces; delete sets the destination to none because this stack set it
    assert provider.diff(created.id, after, {**rotated, "offer_id": "another-offer"}).replaces == ["offer_id"]
    provider.delete(created.id, after)
    assert remote(sandbox, guid)["customerLeads"]["leadDestination"] == "none"
    assert provider.read(created.id, after).outs["instance_url"] is None


def test_delete_leaves_a_destination_that_existed_before_the_stack(
    sandbox: Any, provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    offer_id, guid = offer
    sandbox.control.partner_center("POST", "drift", {"product": offer_id, "leadDestination": "dynamics",
                                                     "instanceUrl": org, "authentication": "azureAD"})
    created = provider.create(checked(provider, inputs(offer_id, org)))
    assert created.outs["set_by_stack"] is False
    provider.delete(created.id, created.outs)
    leads = remote(sandbox, guid)["customerLeads"]
    assert leads["leadDestination"] == "dynamics" and leads["dynamicsLeadConfiguration"]["instanceUrl"] == org


def test_delete_leaves_a_destination_someone_pointed_elsewhere(
    sandbox: Any, provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    offer_id, guid = offer
    created = provider.create(checked(provider, inputs(offer_id, org)))
    sandbox.control.partner_center("POST", "drift", {"product": offer_id, "instanceUrl": "https://other.crm.dynamics.com"})
    provider.delete(created.id, created.outs)
    leads = remote(sandbox, guid)["customerLeads"]
    assert leads["dynamicsLeadConfiguration"]["instanceUrl"] == "https://other.crm.dynamics.com"


def test_api_validation_errors_are_surfaced_with_the_secret_redacted(
    sandbox: Any, provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    offer_id, guid = offer
    sandbox.control.partner_center("POST", "fail-next", {"message": f"Test lead rejected by {org} using key {KEY}"})
    with pytest.raises(ResourceOperationError) as info:
        provider.create(checked(provider, inputs(offer_id, org)))
    text = str(info.value)
    assert "businessValidationFailed" in text and "Test lead rejected by" in text and offer_id in text
    assert KEY not in text and KEY not in repr(info.value) and "[redacted]" in text
    assert remote(sandbox, guid)["customerLeads"] is None


def test_unknown_offer_is_refused_and_an_office365_password_is_set_and_its_change_diffs(
    sandbox: Any, provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    with pytest.raises(ResourceOperationError, match="no product with external id 'no-such-offer'"):
        provider.create(checked(provider, inputs("no-such-offer", org)))
    offer_id, guid = offer
    office = checked(provider, {"offer_id": offer_id, "instance_url": org, "authentication": "office365",
                                "username": "writer@contoso.com", "password": "pw-1-secret"})
    created = provider.create(office)
    assert remote(sandbox, guid)["secretSha256"] == hashlib.sha256(b"pw-1-secret").hexdigest()
    assert not provider.diff(created.id, created.outs, office).changes
    assert provider.diff(created.id, created.outs, {**office, "password": "pw-2-secret"}).changes


def test_a_job_that_never_completes_fails_within_the_bounded_timeout(
    sandbox: Any, offer: tuple[str, str], org: str
) -> None:
    offer_id, _ = offer
    impatient = OfferLeadDestinationProvider(job_timeout_seconds=1.5)
    impatient.configure(ConfigureRequest(Config(stack_config(sandbox.info), "lead-destination")))
    sandbox.control.partner_center("POST", "settings", {"job_seconds": 60})
    try:  # the job ends after 60 s: without the bound, create would wait for it and succeed
        with pytest.raises(ResourceOperationError, match="timed out after 2 s waiting for Partner Center configure job"):
            impatient.create(checked(impatient, inputs(offer_id, org)))
    finally:
        sandbox.control.partner_center("POST", "settings", {"job_seconds": 0.4})


def test_preview_unknowns_pass_check_and_count_as_changes(
    provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    offer_id, _ = offer
    result = provider.check({}, inputs(offer_id, org, application_id=UNKNOWN, application_key=UNKNOWN))
    assert result.failures == []
    created = provider.create(checked(provider, inputs(offer_id, org)))
    diff = provider.diff(created.id, created.outs, inputs(offer_id, org, application_key=UNKNOWN))
    assert diff.changes and not diff.replaces


def test_transient_partner_center_errors_are_retried(
    sandbox: Any, provider: OfferLeadDestinationProvider, offer: tuple[str, str], org: str
) -> None:
    offer_id, guid = offer
    log = sandbox.control.log()
    since = log[-1]["seq"] if log else 0
    sandbox.control.add_fault(method="POST", path=r"/rp/product-ingestion/configure$", status=503, retry_after=0,
                              count=1)
    try:
        provider.create(checked(provider, inputs(offer_id, org)))
    finally:
        sandbox.control.clear_faults()
    assert remote(sandbox, guid)["customerLeads"]["leadDestination"] == "dynamics"
    statuses = [e["status"] for e in sandbox.control.log(since) if e["path"].endswith("/configure")]
    assert statuses == [503, 202]


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [("https://graph.example.com/rp/product-ingestion", "true"), (None, "false"),
     ("http://127.0.0.1:1/rp/product-ingestion", "true")],
)
def test_graph_tokens_only_go_to_the_graph_host_or_an_opted_in_loopback(
    sandbox: Any, offer: tuple[str, str], org: str, endpoint: str | None, loopback: str
) -> None:
    config = stack_config(sandbox.info)
    config["lead-destination:partnerCenterEndpoint"] = endpoint or config["lead-destination:partnerCenterEndpoint"]
    config["lead-destination:allowLoopback"] = loopback
    guarded = OfferLeadDestinationProvider()
    guarded.configure(ConfigureRequest(Config(config, "lead-destination")))
    log = sandbox.control.log()
    since = log[-1]["seq"] if log else 0
    with pytest.raises(ResourceOperationError, match="Partner Center endpoint .* refused"):
        guarded.create({**inputs(offer[0], org), "schema_version": DEFAULT_SCHEMA_VERSION})
    assert [e for e in sandbox.control.log(since) if e["kind"] in ("entra", "partnercenter")] == []
