"""The sandbox's business-unit moves over real HTTPS: SetBusinessSystemUser (parameters, privileges,
roles dropped, owned records reassigned), the specialised PATCH of businessunitid, and the
`move_user` drift a person makes in the UI, all with the same effect."""

from __future__ import annotations

import uuid

import pytest

from dynamics_provider.client import DataverseClient
from dynamics_provider.errors import AccessDenied, BadRequest, NotFound
from sandbox.common import LEADWRITER_CLIENT_ID
from sandbox.testing import ControlError


def _admin(org, deployer):
    return DataverseClient.for_instance(org, deployer)


def _state_user(sandbox, org, uid):
    return next(u for u in sandbox.control.state(org)["systemusers"] if u["systemuserid"] == uid)


def _roles_of(sandbox, org, uid):
    return sorted(a["roleid"] for a in sandbox.control.state(org)["assignments"] if a["systemuserid"] == uid)


def _role_in(sandbox, org, name, bu):
    return next(r["roleid"] for r in sandbox.control.state(org)["roles"]
                if r["name"] == name and r["_businessunitid_value"] == bu)


def _app_user_with_role(sandbox, org, client, app_id, bu):
    uid = client.create("systemusers", {
        "applicationid": app_id, "businessunitid@odata.bind": f"/businessunits({bu})",
        "lastname": "Writer", "internalemailaddress": f"{uuid.uuid4().hex[:8]}@contoso.example"})
    client.associate("systemusers", uid, "systemuserroles_association", "roles",
                     _role_in(sandbox, org, "Basic User", bu))
    return uid


def _move_body(bu, principal):
    return {"BusinessUnit": {"@odata.type": "Microsoft.Dynamics.CRM.businessunit", "businessunitid": bu},
            "ReassignPrincipal": {"@odata.type": "Microsoft.Dynamics.CRM.systemuser", "ownerid": principal}}


def test_set_business_system_user_moves_the_user_and_drops_every_role(sandbox, org, deployer):
    client = _admin(org, deployer)
    root = client.get("WhoAmI")["BusinessUnitId"]
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    uid = _app_user_with_role(sandbox, org, client, LEADWRITER_CLIENT_ID, root)
    assert _roles_of(sandbox, org, uid)
    assert client.action("SetBusinessSystemUser", _move_body(sales, uid), bound=("systemusers", uid)) is None
    row = client.get(f"systemusers({uid})", {"$select": "_businessunitid_value"})
    assert row["_businessunitid_value"] == sales
    assert _roles_of(sandbox, org, uid) == []
    # the copy of the role in the new unit can be assigned afterwards (assignment follows the unit)
    client.associate("systemusers", uid, "systemuserroles_association", "roles",
                     _role_in(sandbox, org, "Basic User", sales))
    assert _roles_of(sandbox, org, uid) == [_role_in(sandbox, org, "Basic User", sales)]


def test_set_business_system_user_reassigns_owned_leads_to_the_principal(sandbox, org, deployer):
    client = _admin(org, deployer)
    admin_id = client.get("WhoAmI")["UserId"]
    root = client.get("WhoAmI")["BusinessUnitId"]
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    lead = client.create("leads", {"subject": "owned by the admin"})
    other = _app_user_with_role(sandbox, org, client, LEADWRITER_CLIENT_ID, root)
    # move the admin itself, handing its records to the other user
    client.action("SetBusinessSystemUser", _move_body(sales, other), bound=("systemusers", admin_id))
    state = sandbox.control.state(org)
    row = next(x for x in state["leads"] if x["leadid"] == lead)
    assert row["_ownerid_value"] == other and row["_owningbusinessunit_value"] == root
    assert not [a for a in state["assignments"] if a["systemuserid"] == admin_id]  # it lost System Administrator
    with pytest.raises(AccessDenied):  # …and so the privileges to call anything needing them
        client.query("leads", select=["leadid"])


@pytest.mark.parametrize(("drop", "extra", "fragment"), [
    ("BusinessUnit", {}, "BusinessUnit"),
    ("ReassignPrincipal", {}, "ReassignPrincipal"),
    (None, {"Color": "blue"}, "Color"),
    (None, {"BusinessUnit": "not-an-entity"}, "BusinessUnit"),
    (None, {"DoNotMoveAllRecords": "yes"}, "Edm.Boolean"),
])
def test_set_business_system_user_refuses_bad_parameters(org, deployer, drop, extra, fragment):
    client = _admin(org, deployer)
    who = client.get("WhoAmI")
    body = {k: v for k, v in _move_body(who["BusinessUnitId"], who["UserId"]).items() if k != drop}
    with pytest.raises(BadRequest) as err:
        client.action("SetBusinessSystemUser", {**body, **extra}, bound=("systemusers", who["UserId"]))
    assert err.value.status == 400 and fragment in err.value.message


def test_set_business_system_user_unknown_unit_or_user_is_404(org, deployer):
    client = _admin(org, deployer)
    who = client.get("WhoAmI")
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound) as err:
        client.action("SetBusinessSystemUser", _move_body(missing, who["UserId"]), bound=("systemusers", who["UserId"]))
    assert err.value.code == "0x80040217" and missing in err.value.message
    with pytest.raises(NotFound):
        client.action("SetBusinessSystemUser", _move_body(who["BusinessUnitId"], who["UserId"]),
                      bound=("systemusers", missing))


def test_set_business_system_user_needs_write_user_privilege(sandbox, org, deployer):
    admin = _admin(org, deployer)
    who = admin.get("WhoAmI")
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    secret = f"mover-{uuid.uuid4().hex}"
    writer_app = sandbox.control.register_app(display_name="mover", client_secret=secret)
    _app_user_with_role(sandbox, org, admin, writer_app["client_id"], who["BusinessUnitId"])
    from dynamics_provider.auth import DeployerSettings

    info = sandbox.info
    settings = DeployerSettings(tenant_id=info["tenant_id"], client_id=writer_app["client_id"],
                                client_secret=secret, authority_host=info["authority_host"],
                                ca_bundle=info["ca_bundle"], allow_loopback=True)
    basic = DataverseClient.for_instance(org, settings)
    move = _move_body(sales, who["UserId"])
    with pytest.raises(AccessDenied) as err:  # Basic User reads business units of its own unit only
        basic.action("SetBusinessSystemUser", move, bound=("systemusers", who["UserId"]))
    assert err.value.code == "0x80040220" and "prvReadBusinessUnit" in err.value.message
    sandbox.control.drift(org, "set_privilege_depth", roleid=_role_in(sandbox, org, "Basic User", who["BusinessUnitId"]),
                          privilege="prvReadBusinessUnit", depth="Global")
    with pytest.raises(AccessDenied) as err:  # …and reads users but does not write them
        basic.action("SetBusinessSystemUser", move, bound=("systemusers", who["UserId"]))
    assert err.value.code == "0x80040220" and "prvWriteUser" in err.value.message
    assert _state_user(sandbox, org, who["UserId"])["_businessunitid_value"] == who["BusinessUnitId"]


def test_patch_of_businessunitid_is_the_same_move(sandbox, org, deployer):
    client = _admin(org, deployer)
    root = client.get("WhoAmI")["BusinessUnitId"]
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    uid = _app_user_with_role(sandbox, org, client, LEADWRITER_CLIENT_ID, root)
    client.update("systemusers", uid, {"businessunitid@odata.bind": f"/businessunits({sales})"})
    assert _state_user(sandbox, org, uid)["_businessunitid_value"] == sales
    assert _roles_of(sandbox, org, uid) == []


def test_move_user_drift_has_the_effect_of_a_person_changing_the_unit(sandbox, org, deployer):
    client = _admin(org, deployer)
    root = client.get("WhoAmI")["BusinessUnitId"]
    sales = sandbox.control.drift(org, "add_business_unit", name="Sales")["businessunitid"]
    uid = _app_user_with_role(sandbox, org, client, LEADWRITER_CLIENT_ID, root)
    role = _roles_of(sandbox, org, uid)
    result = sandbox.control.drift(org, "move_user", systemuserid=uid, businessunitid=sales)
    assert result["removed_roles"] == role and result["from_businessunitid"] == root
    assert client.query("systemusers", select=["_businessunitid_value"],
                        filter=f"systemuserid eq {uid}")[0]["_businessunitid_value"] == sales
    assert _roles_of(sandbox, org, uid) == []
    # repair, as the ApplicationUser resource does: move back with the action, then the role again
    client.action("SetBusinessSystemUser", _move_body(root, uid), bound=("systemusers", uid))
    assert _state_user(sandbox, org, uid)["_businessunitid_value"] == root
    with pytest.raises(ControlError, match="400"):
        sandbox.control.drift(org, "move_user", systemuserid=uid, businessunitid=str(uuid.uuid4()))
