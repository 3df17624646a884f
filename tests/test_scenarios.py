"""End-to-end scenarios: the real program and Pulumi.dev.yaml through the rehearsal engine against the sandbox.

Upgrade, downgrade, each drift, reinstall after an uninstall, in-place config changes, destroy (created
objects removed, adopted ones released).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sandbox.solution_zip import build_solution_zip
from sandbox.testing import dev_stack_rehearsal

REPO = Path(__file__).resolve().parent.parent
ROLE = "Microsoft Marketplace Lead Writer"
LEADWRITER_APP = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"


@pytest.fixture
def stack(sandbox, org, tmp_path):
    zips = {}
    for version in ("1.0.0.0", "1.1.0.0"):
        zips[version] = tmp_path / f"sol_{version}.zip"
        zips[version].write_bytes(build_solution_zip(version))

    def run(verb="up", version="1.0.0.0", refresh=False, **extra):
        reh = dev_stack_rehearsal(sandbox.info, org, solution_zip=zips[version], state_path=tmp_path / "state.json",
                                  key_path=tmp_path / "key",
                                  config={f"lead-destination:{k}": v for k, v in extra.items()})
        return reh.run(verb, refresh=refresh)

    run.org = org.rstrip("/").rsplit("/", 1)[-1]
    return run


def dump(sandbox, stack):
    return sandbox.control.state(stack.org)


def lead_writer_role(state):
    return next(r for r in state["roles"] if r["name"] == ROLE and not r.get("_parentroleid_value"))


def assigned(state, user_id):
    return user_id in json.dumps(state.get("assignments", []))


def log_mark(sandbox):
    return max((e["seq"] for e in sandbox.control.log()), default=0)


def validation_leads_since(sandbox, stack, mark):
    """Test leads written into the organization after `mark` (validatedAt has one-second resolution,
    so two validations in the same second are told apart by the sandbox log, not by the output)."""
    return [e for e in sandbox.control.log(since=mark) if e.get("org") == stack.org and e["method"] == "POST"
            and e["path"].endswith("/leads") and e["status"] in (201, 204)]


def test_upgrade_from_1_0_to_1_1_uses_the_upgrade_path_and_keeps_the_users_assignment(sandbox, stack):
    first = stack()
    assert first.ok, first.text
    user_id = first.outputs["applicationUserId"]
    mark = log_mark(sandbox)
    upgrade = stack(version="1.1.0.0")
    assert upgrade.ok, upgrade.text
    assert [s.name for s in upgrade.ops("update")] == ["dev-dynamics-solution"]
    assert [s.name for s in upgrade.ops("replace")] == ["dev-dynamics-check"], "the upgraded chain is re-validated"
    assert upgrade.ops("delete") == []
    assert len(validation_leads_since(sandbox, stack, mark)) == 1, "a fresh validation lead proves the upgraded chain"
    state = dump(sandbox, stack)
    assert any(s.get("version") == "1.1.0.0" for s in state["solutions"])
    assert assigned(state, user_id)
    assert stack(version="1.1.0.0").changes() == []


def test_downgrade_is_refused_with_an_explanation(sandbox, stack):
    assert stack(version="1.1.0.0").ok
    down = stack(version="1.0.0.0")
    assert not down.ok and down.exit_code == 1
    assert "downgrade" in down.text.lower()
    assert any(s.get("version") == "1.1.0.0" for s in dump(sandbox, stack)["solutions"])


@pytest.mark.parametrize(
    "action, resource",
    [("remove_role", "dev-dynamics-role"), ("set_privilege_depth", "dev-dynamics-privileges"),
     ("disable_user", "dev-dynamics-user")],
)
def test_each_drift_edit_is_shown_by_preview_and_repaired_by_up(sandbox, stack, action, resource):
    first = stack()
    assert first.ok, first.text
    user_id = first.outputs["applicationUserId"]
    role = lead_writer_role(dump(sandbox, stack))
    params = {
        "remove_role": {"systemuserid": user_id, "roleid": role["roleid"]},
        "set_privilege_depth": {"roleid": role["roleid"], "privilege": "prvReadAsyncOperation", "depth": "Basic"},
        "disable_user": {"systemuserid": user_id},
    }[action]
    sandbox.control.drift(stack.org, action, **params)
    preview = stack("preview", refresh=True)
    assert preview.ok, preview.text
    drifted = {s.name for s in preview.steps if s.op in ("refresh-update", "refresh-delete")}
    assert drifted == {resource}, preview.text
    planned = {s.name: s for s in preview.changes() if not s.op.startswith("refresh")}
    assert {resource, "dev-dynamics-check"} <= set(planned)
    for name, step in planned.items():  # as in Pulumi: an updated resource's outputs are unknown in preview
        if name not in (resource, "dev-dynamics-check"):
            assert step.details and all("[unknown]" in d for d in step.details), preview.text
    if action != "remove_role":
        assert any(d.endswith("(restores)") for d in planned[resource].details), preview.text
    mark = log_mark(sandbox)
    repair = stack("up", refresh=True)
    assert repair.ok, repair.text
    repaired = {s.name for s in repair.changes() if not s.op.startswith("refresh")}
    assert repaired == {resource, "dev-dynamics-check"}, repair.text
    assert [s.name for s in repair.ops("replace")] == ["dev-dynamics-check"], "a repaired chain is re-validated"
    assert len(validation_leads_since(sandbox, stack, mark)) == 1, "a fresh validation lead proves the repair"
    assert dump(sandbox, stack)["leads"] == [], "the validation lead is deleted"
    state = dump(sandbox, stack)
    user = next(u for u in state["systemusers"] if u["systemuserid"] == user_id)
    assert not user["isdisabled"] and assigned(state, user_id)
    depth = next(p["depth"] for p in lead_writer_role(state)["privileges"] if p["name"] == "prvReadAsyncOperation")
    assert depth == "Global"
    assert stack("preview", refresh=True).changes() == []


def test_destroy_removes_what_the_stack_created(sandbox, stack):
    first = stack()
    assert first.ok, first.text
    user_id = first.outputs["applicationUserId"]
    destroy = stack("destroy")
    assert destroy.ok, destroy.text
    assert len(destroy.ops("delete")) == len(first.ops("create"))
    state = dump(sandbox, stack)
    assert not assigned(state, user_id)
    assert not any(s.get("uniquename", "").startswith("MicrosoftMarketplace") for s in state["solutions"])


def test_uninstalled_solution_is_reimported_and_the_role_chain_rebuilt(sandbox, stack):
    first = stack()
    assert first.ok, first.text
    user_id = first.outputs["applicationUserId"]
    unique = next(s["uniquename"] for s in dump(sandbox, stack)["solutions"] if s["uniquename"].startswith("Microsoft"))
    sandbox.control.drift(stack.org, "uninstall_solution", uniquename=unique)
    assert not assigned(dump(sandbox, stack), user_id)

    repair = stack("up", refresh=True)
    assert repair.ok, repair.text
    state = dump(sandbox, stack)
    assert any(s["uniquename"] == unique for s in state["solutions"])
    role = lead_writer_role(state)
    depths = {p["name"]: p["depth"] for p in role["privileges"]}
    assert depths["prvReadAsyncOperation"] == "Global" and depths["prvCreateUserEntityUISettings"] == "Basic"
    copies = {r["roleid"] for r in state["roles"] if r["name"] == ROLE}
    assert any(a["systemuserid"] == user_id and a["roleid"] in copies for a in state["assignments"])
    assert "dev-dynamics-check" in {s.name for s in repair.changes()}, "the rebuilt chain is re-validated"
    assert stack("preview", refresh=True).changes() == []


def test_config_change_of_business_unit_emails_and_privileges_updates_in_place(sandbox, stack, tmp_path):
    first = stack()
    assert first.ok, first.text
    user_id = first.outputs["applicationUserId"]
    sales = sandbox.control.drift(stack.org, "add_business_unit", name="Sales")
    spec = yaml.safe_load((REPO / "components" / "privileges.yaml").read_text())
    spec["privileges"].append({"name": "prvReadLead", "depth": "Basic"})
    (tmp_path / "privileges.yaml").write_text(yaml.safe_dump(spec))

    changed = stack(businessUnit="Sales", contactEmails=json.dumps(["sales@contoso.example", "ops@contoso.example"]),
                    privileges=str(tmp_path / "privileges.yaml"))
    assert changed.ok, changed.text
    # the user moves (update); its role assignment is made again in the new business unit (replace)
    assert {s.name for s in changed.ops("replace")} == {"dev-dynamics-role", "dev-dynamics-check"}, changed.text
    assert {"dev-dynamics-user", "dev-dynamics-privileges"} <= {s.name for s in changed.ops("update")}
    assert changed.outputs["applicationUserId"] == user_id, "the user is updated, not replaced"
    state = dump(sandbox, stack)
    user = next(u for u in state["systemusers"] if u["systemuserid"] == user_id)
    sales_id = sales.get("businessunitid") or sales.get("id")
    assert user["_businessunitid_value"] == sales_id
    assert assigned(state, user_id), "the user holds the role after its move"
    depths = {p["name"]: p["depth"] for p in lead_writer_role(state)["privileges"]}
    assert depths["prvReadLead"] == "Basic"
    partner = changed.outputs["partnerCenter"]
    partner = getattr(partner, "value", partner)
    assert "sales@contoso.example" in json.dumps(partner)
    again = stack(businessUnit="Sales", contactEmails=json.dumps(["sales@contoso.example", "ops@contoso.example"]),
                  privileges=str(tmp_path / "privileges.yaml"), refresh=True)
    assert again.ok and [s for s in again.changes() if not s.op.startswith("refresh")] == [], again.text


def test_destroy_releases_the_application_user_it_adopted(sandbox, stack, deployer):
    from dynamics_provider.auth import deployer_tokens
    from dynamics_provider.client import DataverseClient  # the admin's own client, as a person would use

    instance_url = f"{sandbox.info['instance_url'].rsplit('/orgs/', 1)[0]}/orgs/{stack.org}"
    root_bu = next(b for b in dump(sandbox, stack)["businessunits"] if not b.get("_parentbusinessunitid_value"))
    client = DataverseClient(instance_url, deployer_tokens(deployer), ca_bundle=deployer.ca_bundle)
    client.create("systemusers", {"applicationid": LEADWRITER_APP, "firstname": "Pre", "lastname": "Existing",
                                  "internalemailaddress": "pre@contoso.example",
                                  "businessunitid@odata.bind": f"/businessunits({root_bu['businessunitid']})"})
    pre = next(u for u in dump(sandbox, stack)["systemusers"] if u.get("applicationid") == LEADWRITER_APP)

    up = stack()
    assert up.ok, up.text
    assert up.outputs["applicationUserId"] == pre["systemuserid"], "up adopts the existing application user"
    destroy = stack("destroy")
    assert destroy.ok, destroy.text
    state = dump(sandbox, stack)
    user = next(u for u in state["systemusers"] if u["systemuserid"] == pre["systemuserid"])
    assert user["isdisabled"] is False, "an adopted user is released, not disabled"
    assert not any(s["uniquename"].startswith("Microsoft") for s in state["solutions"])
