"""RolePrivileges against the sandbox: exact depths, untouched others, drift repair, restore on destroy.

The provider is called in-process with a fresh organization per test; depths are read from the sandbox.
"""

from __future__ import annotations

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.base import (
    ResourceOperationError,
)
from dynamics_provider.role_privileges import RolePrivilegesProvider
from sandbox.testing import stack_config

GRANTS = [
    {"name": "prvCreateUserEntityUISettings", "depth": "User"},
    {"name": "prvReadAsyncOperation", "depth": "Organization"},
    {"name": "prvWriteAsyncOperation", "depth": "Global"},
]


def provider(sandbox, org) -> RolePrivilegesProvider:
    p = RolePrivilegesProvider()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def role_depths(sandbox, org, role_name) -> dict[str, str]:
    """The sandbox's own record of a role's privileges: {privilege name: depth}."""
    state = sandbox.control.state(org)
    role = next(r for r in state["roles"] if r["name"] == role_name and r["roleid"] == r["_parentrootroleid_value"])
    raw = role["privileges"]
    return {p["name"]: p["depth"] for p in raw}


def root_role_id(sandbox, org, role_name) -> str:
    return next(r["roleid"] for r in sandbox.control.state(org)["roles"]
                if r["name"] == role_name and r["roleid"] == r["_parentrootroleid_value"])


def test_check_normalizes_ui_depth_names_and_rejects_bad_ones_offline():
    p = RolePrivilegesProvider()
    ok = p.check({}, {"instance_url": "https://x.crm4.dynamics.com", "role_name": "R", "privileges": GRANTS})
    assert ok.failures == []
    assert [g["depth"] for g in ok.inputs["privileges"]] == ["Basic", "Global", "Global"]
    bad = p.check({}, {"instance_url": "https://x.crm4.dynamics.com", "role_name": "R",
                       "privileges": [{"name": "prvReadLead", "depth": "Everything"}, {"name": "ReadLead", "depth": 2.0}]})
    assert [f.property for f in bad.failures] == ["privileges"]
    assert "Everything" in bad.failures[0].reason and "prvReadLead" in bad.failures[0].reason


def test_sets_exact_depths_records_previous_and_leaves_other_privileges_alone(sandbox, org):
    p = provider(sandbox, org)
    before = role_depths(sandbox, org, "Basic User")
    news = p.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": GRANTS}).inputs
    created = p.create(news)
    assert created.id == root_role_id(sandbox, org, "Basic User")
    assert created.outs["depths"] == {"prvCreateUserEntityUISettings": "Basic", "prvReadAsyncOperation": "Global",
                                      "prvWriteAsyncOperation": "Global"}
    assert created.outs["previous_depths"] == {"prvCreateUserEntityUISettings": "Basic",
                                               "prvReadAsyncOperation": None, "prvWriteAsyncOperation": None}
    after = role_depths(sandbox, org, "Basic User")
    untouched = {k: v for k, v in after.items() if k not in {g["name"] for g in GRANTS}}
    assert untouched == {k: v for k, v in before.items() if k not in {g["name"] for g in GRANTS}}
    assert p.diff(created.id, created.outs, news).changes is False


@pytest.mark.parametrize("edit", ["lowered", "raised", "removed"])
def test_depth_drift_shows_on_read_and_diff_and_update_repairs_it(sandbox, org, edit):
    p = provider(sandbox, org)
    grants = [{"name": "prvReadAsyncOperation", "depth": "Local"}]
    news = p.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": grants}).inputs
    created = p.create(news)
    rid = created.id
    if edit == "removed":
        sandbox.control.drift(org, "remove_privilege", roleid=rid, privilege="prvReadAsyncOperation")
        expected = None
    else:
        expected = "Basic" if edit == "lowered" else "Global"
        sandbox.control.drift(org, "set_privilege_depth", roleid=rid, privilege="prvReadAsyncOperation",
                              depth=expected)
    read = p.read(rid, created.outs)
    assert read.outs["depths"] == {"prvReadAsyncOperation": expected}
    diff = p.diff(rid, read.outs, news)
    assert diff.changes is True and diff.replaces == []
    updated = p.update(rid, read.outs, news).outs
    assert updated["depths"] == {"prvReadAsyncOperation": "Local"}
    assert updated["previous_depths"] == {"prvReadAsyncOperation": None}
    assert role_depths(sandbox, org, "Basic User")["prvReadAsyncOperation"] == "Local"


def test_delete_restores_previous_depths_and_removes_added_privileges(sandbox, org):
    p = provider(sandbox, org)
    before = role_depths(sandbox, org, "Basic User")
    grants = [{"name": "prvReadUser", "depth": "Local"}, {"name": "prvAppendToAsyncOperation", "depth": "Global"}]
    created = p.create(p.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": grants}).inputs)
    assert role_depths(sandbox, org, "Basic User")["prvReadUser"] == "Local"  # lowered from Global
    p.delete(created.id, created.outs)
    assert role_depths(sandbox, org, "Basic User") == before


def test_update_that_stops_managing_a_privilege_restores_it(sandbox, org):
    p = provider(sandbox, org)
    first = p.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": GRANTS}).inputs
    created = p.create(first)
    second = p.check({}, {"instance_url": org, "role_name": "Basic User", "privileges": GRANTS[:1]}).inputs
    assert p.diff(created.id, created.outs, second).changes is True
    updated = p.update(created.id, created.outs, second).outs
    assert updated["previous_depths"] == {"prvCreateUserEntityUISettings": "Basic"}
    assert "prvReadAsyncOperation" not in role_depths(sandbox, org, "Basic User")


def test_disallowed_depth_is_refused_before_anything_is_written(sandbox, org):
    p = provider(sandbox, org)
    since = sandbox.control.log()[-1]["seq"] if sandbox.control.log() else 0
    news = p.check({}, {"instance_url": org, "role_name": "Basic User",
                        "privileges": [{"name": "prvCreateUserEntityUISettings", "depth": "Global"}]}).inputs
    with pytest.raises(ResourceOperationError, match="cannot be Global"):
        p.create(news)
    org_name = org.rstrip("/").rsplit("/", 1)[-1]
    sent = [e for e in sandbox.control.log(since=since) if e.get("org") == org_name and e["kind"] == "dataverse"]
    assert sent, "the lookups reached the organization"
    # a $batch of GETs is a read; anything else that is not a GET would be a write
    assert [e for e in sent if e["method"] != "GET" and not e["path"].endswith("$batch")] == []
