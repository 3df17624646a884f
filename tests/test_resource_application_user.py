"""ApplicationUser against the sandbox over HTTPS: create, adopt, no-op diff, drift repair, destroy.

The provider is called in-process with a fresh organization per test; state is read from the sandbox.
"""

from __future__ import annotations

import uuid

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.base import (
    ResourceOperationError,
)
from sandbox.testing import stack_config


def provider(sandbox, org) -> ApplicationUserProvider:
    p = ApplicationUserProvider()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def new_app(sandbox) -> str:
    """A fresh Entra app (service principal) of the sandbox tenant; returns its client id."""
    return sandbox.control.register_app(display_name=f"lead-writer-{uuid.uuid4().hex[:6]}")["client_id"]


def users_of(sandbox, org, app_id):
    return [u for u in sandbox.control.state(org)["systemusers"] if (u.get("applicationid") or "") == app_id]


def inputs(org, app_id, **extra):
    news = {"instance_url": org, "application_id": app_id, "first_name": "Marketplace", "last_name": "Leads",
            "email": "leads@contoso.example", "__provider": "opaque"}
    news.update(extra)
    return news


def test_check_reports_each_bad_property_without_network():
    p = ApplicationUserProvider()  # not configured: check needs no settings and no network
    result = p.check({}, {"instance_url": "http://contoso.crm.dynamics.com", "application_id": "nope",
                          "email": "not-an-email", "first_name": ""})
    assert {f.property for f in result.failures} == {"instance_url", "application_id", "email", "first_name"}


def test_create_makes_one_enabled_user_in_the_root_business_unit_and_diff_is_noop(sandbox, org):
    p = provider(sandbox, org)
    app_id = new_app(sandbox)
    news = p.check({}, inputs(org, app_id)).inputs
    created = p.create(news)
    outs = created.outs
    assert outs["systemuser_id"] == created.id
    assert outs["adopted"] is False and outs["disabled"] is False
    [user] = users_of(sandbox, org, app_id)
    assert user["systemuserid"] == created.id and user["firstname"] == "Marketplace"
    root = next(b for b in sandbox.control.state(org)["businessunits"] if not b.get("_parentbusinessunitid_value"))
    assert outs["business_unit_id"] == root["businessunitid"]
    diff = p.diff(created.id, outs, news)
    assert diff.changes is False and diff.replaces == []
    # read with no drift reports the same outputs
    assert p.read(created.id, outs).outs == outs


def test_create_adopts_a_user_someone_else_made_and_delete_releases_it(sandbox, org):
    p = provider(sandbox, org)
    app_id = new_app(sandbox)
    from dynamics_provider.client import DataverseClient

    root = next(b["businessunitid"] for b in sandbox.control.state(org)["businessunits"]
                if not b.get("_parentbusinessunitid_value"))
    made_by_hand = DataverseClient.for_instance(org, p.settings).create("systemusers", {
        "applicationid": app_id, "lastname": "By Hand", "internalemailaddress": "hand@contoso.example",
        "businessunitid@odata.bind": f"/businessunits({root})"})  # Dataverse picks its id, as the UI does
    adopted = p.create(p.check({}, inputs(org, app_id)).inputs)
    assert adopted.id == made_by_hand and adopted.outs["adopted"] is True
    assert len(users_of(sandbox, org, app_id)) == 1
    p.delete(adopted.id, adopted.outs)
    [user] = users_of(sandbox, org, app_id)
    assert user["isdisabled"] is False  # adopted → released untouched


def test_a_create_retried_after_a_crash_knows_the_user_as_its_own_and_delete_disables_it(sandbox, org):
    from dynamics_provider.application_user import owned_systemuser_id

    p = provider(sandbox, org)
    app_id = new_app(sandbox)
    first = p.create(p.check({}, inputs(org, app_id)).inputs)  # its answer "never reached the checkpoint"
    assert first.id == owned_systemuser_id(org, app_id, p.owner)
    again = p.create(p.check({}, inputs(org, app_id)).inputs)
    assert again.id == first.id and again.outs["adopted"] is False
    assert len(users_of(sandbox, org, app_id)) == 1
    p.delete(again.id, again.outs)
    [user] = users_of(sandbox, org, app_id)
    assert user["isdisabled"] is True


def test_disabled_by_hand_shows_on_read_and_diff_and_update_reenables(sandbox, org):
    p = provider(sandbox, org)
    news = p.check({}, inputs(org, new_app(sandbox))).inputs
    created = p.create(news)
    sandbox.control.drift(org, "disable_user", systemuserid=created.id)
    read = p.read(created.id, created.outs)
    assert read.id == created.id and read.outs["disabled"] is True
    diff = p.diff(created.id, read.outs, news)
    assert diff.changes is True and diff.replaces == []
    updated = p.update(created.id, read.outs, news).outs
    assert updated["disabled"] is False and updated["systemuser_id"] == created.id
    user = next(u for u in sandbox.control.state(org)["systemusers"] if u["systemuserid"] == created.id)
    assert user["isdisabled"] is False


def test_business_unit_by_name_and_a_change_of_unit_moves_the_user_with_a_new_revision(sandbox, org):
    p = provider(sandbox, org)
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    news = p.check({}, inputs(org, new_app(sandbox), business_unit="Sales")).inputs
    created = p.create(news)
    assert created.outs["business_unit_id"] == sales
    assert p.diff(created.id, created.outs, news).changes is False
    # back to the root unit (by omission): a change, not a replace (one user per app per org)
    news_root = p.check({}, inputs(org, news["application_id"])).inputs
    diff = p.diff(created.id, created.outs, news_root)
    assert diff.changes is True and diff.replaces == []
    # Dataverse moves users with SetBusinessSystemUser: the update repairs it in place
    updated = p.update(created.id, created.outs, news_root).outs
    root = next(b["businessunitid"] for b in sandbox.control.state(org)["businessunits"]
                if not b.get("_parentbusinessunitid_value"))
    user = next(u for u in sandbox.control.state(org)["systemusers"] if u["systemuserid"] == created.id)
    assert user["_businessunitid_value"] == root and updated["business_unit_id"] == root
    assert updated["systemuser_id"] == created.id and updated["revision"] != created.outs["revision"]
    assert p.diff(created.id, updated, news_root).changes is False


def test_changing_email_or_application_id_replaces(sandbox, org):
    p = ApplicationUserProvider()
    olds = {**inputs(org, new_app(sandbox)), "disabled": False}
    assert p.diff("x", olds, {**olds, "email": "other@contoso.example"}).replaces == ["email"]
    assert p.diff("x", olds, {**olds, "application_id": str(uuid.uuid4())}).replaces == ["application_id"]


def test_delete_of_a_created_user_disables_it_and_removes_its_roles(sandbox, org):
    p = provider(sandbox, org)
    created = p.create(p.check({}, inputs(org, new_app(sandbox))).inputs)
    role = next(r for r in sandbox.control.state(org)["roles"] if r["name"] == "Basic User")
    from dynamics_provider.client import DataverseClient

    DataverseClient.for_instance(org, p.settings).associate(
        "systemusers", created.id, "systemuserroles_association", "roles", role["roleid"])
    p.delete(created.id, created.outs)
    state = sandbox.control.state(org)
    user = next(u for u in state["systemusers"] if u["systemuserid"] == created.id)
    assert user["isdisabled"] is True
    assert not [a for a in state["assignments"] if a["systemuserid"] == created.id]
    assert p.read(created.id, created.outs).outs["disabled"] is True


def test_unknown_business_unit_name_fails_with_what_to_do(sandbox, org):
    p = provider(sandbox, org)
    with pytest.raises(ResourceOperationError) as err:
        p.create(p.check({}, inputs(org, new_app(sandbox), business_unit="Nowhere")).inputs)
    assert str(err.value).startswith("ApplicationUser") and "Nowhere" in str(err.value)
    assert "Business Units" in str(err.value)
