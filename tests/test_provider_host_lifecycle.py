"""Every Dataverse resource through the real provider host (`python -m pulumi.dynamic`) over gRPC:
configure → check → create → diff → update → read → delete, with secret and integer inputs in play,
plus 8 concurrent creates on one provider instance."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.lead_check import LeadWriteCheckProvider
from dynamics_provider.role_assignment import SecurityRoleAssignmentProvider
from dynamics_provider.role_privileges import RolePrivilegesProvider
from dynamics_provider.solution import SolutionImportProvider
from dynamics_provider.synced_user import SyncedUserProvider
from sandbox.provider_host import ProviderHost, Secret, provider_ref, urn_for
from sandbox.solution_zip import DEFAULT_ROLE_NAME, build_solution_zip
from sandbox.testing import stack_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def host(sandbox, org):
    with ProviderHost(REPO, project="lead-destination", stack="test") as h:
        config = stack_config(sandbox.info, instance_url=org)
        config["lead-destination:deployerClientSecret"] = Secret(config["lead-destination:deployerClientSecret"])
        h.configure(config)
        yield h


def urn(kind: str, name: str) -> str:
    return urn_for("test", "lead-destination", name, f"pulumi-python:dynamic/dynamics:{kind}")


def test_whole_chain_lifecycle_through_the_provider_host(sandbox, org, host, tmp_path):
    zip_path = tmp_path / "s.zip"
    zip_path.write_bytes(build_solution_zip(version="1.0.0.0"))
    # SolutionImport: integer input (import_timeout_seconds) arrives as a float over gRPC
    sol_ref = provider_ref(SolutionImportProvider())
    u = urn("SolutionImport", "sol")
    sol_in, failures = host.check(u, {}, {"__provider": sol_ref, "instance_url": org,
                                          "source_path": str(zip_path), "import_timeout_seconds": 300})
    assert failures == []
    sol_id, sol_out = host.create(u, sol_in)
    assert sol_out["import_timeout_seconds"] == 300 and sol_out["version"] == "1.0.0.0"
    assert host.diff(u, sol_id, sol_out, sol_in).changes is False

    # ApplicationUser
    secret = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="writer", client_secret=secret)["client_id"]
    au_ref = provider_ref(ApplicationUserProvider())
    u_au = urn("ApplicationUser", "user")
    au_in, failures = host.check(u_au, {}, {"__provider": au_ref, "instance_url": org, "application_id": app_id,
                                            "email": "writer@contoso.example"})
    assert failures == []
    user_id, au_out = host.create(u_au, au_in)
    sandbox.control.drift(org, "disable_user", systemuserid=user_id)
    rid, au_read, _ = host.read(u_au, user_id, au_out)
    assert rid == user_id and au_read["disabled"] is True
    diff = host.diff(u_au, user_id, au_read, au_in)
    assert diff.changes is True and diff.replaces == []
    assert au_read["revision"] == au_out["revision"]  # read reports drift, it does not write
    repaired = host.update(u_au, user_id, au_read, au_in)
    assert repaired["disabled"] is False and repaired["revision"] != au_out["revision"]
    assert host.update(u_au, user_id, repaired, au_in)["revision"] == repaired["revision"]  # nothing to write

    # SecurityRoleAssignment + RolePrivileges
    ra_ref = provider_ref(SecurityRoleAssignmentProvider())
    u_ra = urn("SecurityRoleAssignment", "role")
    ra_in, _ = host.check(u_ra, {}, {"__provider": ra_ref, "instance_url": org, "user_id": user_id,
                                     "role_name": DEFAULT_ROLE_NAME})
    ra_id, ra_out = host.create(u_ra, ra_in)
    assert ra_id.startswith(user_id + ":")
    rp_ref = provider_ref(RolePrivilegesProvider())
    u_rp = urn("RolePrivileges", "grants")
    grants = [{"name": n, "depth": d} for n, d in (
        ("prvCreateUserEntityUISettings", "User"), ("prvReadUserEntityUISettings", "User"),
        ("prvWriteUserEntityUISettings", "User"), ("prvReadAsyncOperation", "Organization"),
        ("prvWriteAsyncOperation", "Organization"), ("prvAppendToAsyncOperation", "Organization"))]
    rp_in, failures = host.check(u_rp, {}, {"__provider": rp_ref, "instance_url": org,
                                            "role_name": DEFAULT_ROLE_NAME, "privileges": grants})
    assert failures == []
    rp_id, rp_out = host.create(u_rp, rp_in)
    assert rp_out["previous_depths"].get("prvReadAsyncOperation") is None  # absent before (a null may be dropped)
    assert host.diff(u_rp, rp_id, rp_out, rp_in).changes is False

    # LeadWriteCheck: secret input stays secret in inputs and outputs; never in the host's stderr
    lw_ref = provider_ref(LeadWriteCheckProvider())
    u_lw = urn("LeadWriteCheck", "check")
    lw_in, failures = host.check(u_lw, {}, {"__provider": lw_ref, "instance_url": org, "client_id": app_id,
                                            "tenant_id": sandbox.info["tenant_id"], "client_secret": Secret(secret),
                                            "triggers": {"rotation": 1}})
    assert failures == [] and isinstance(lw_in["client_secret"], Secret)
    lw_id, lw_out = host.create(u_lw, lw_in)
    assert isinstance(lw_out["client_secret"], Secret) and lw_out["identity"] == app_id
    rotated = {**lw_in, "triggers": {"rotation": 2}}
    assert host.diff(u_lw, lw_id, lw_out, rotated).replaces == ["triggers"]
    host.delete(u_lw, lw_id, lw_out)

    # destroy in reverse order: privileges restored, role unassigned, user disabled, solution removed
    host.delete(u_rp, rp_id, rp_out)
    role = next(r for r in sandbox.control.state(org)["roles"] if r["roleid"] == rp_id)
    assert "prvReadAsyncOperation" not in {p["name"] for p in role["privileges"]}  # absent again
    host.delete(u_ra, ra_id, ra_out)
    assert host.read(u_ra, ra_id, ra_out)[0] == ""
    host.delete(u_au, user_id, au_out)
    host.delete(u, sol_id, sol_out)
    state = sandbox.control.state(org)
    assert not [s for s in state["solutions"] if s["solutionid"] == sol_id]
    assert next(x for x in state["systemusers"] if x["systemuserid"] == user_id)["isdisabled"] is True
    assert secret not in host.stderr_text() and sandbox.info["admin_client_secret"] not in host.stderr_text()


def test_synced_user_is_adopted_after_licence_sync_through_the_host(sandbox, org, host):
    upn = f"leads-{uuid.uuid4().hex[:6]}@contoso.example"
    oid = str(uuid.uuid4())
    ref = provider_ref(SyncedUserProvider())
    u = urn("SyncedUser", "o365")
    news, failures = host.check(u, {}, {"__provider": ref, "instance_url": org, "user_principal_name": upn,
                                        "azure_object_id": oid, "wait_timeout_seconds": 30})
    assert failures == [] and news["wait_timeout_seconds"] == 30

    def sync_later():
        import time

        time.sleep(1.5)
        return sandbox.control.drift(org, "create_systemuser", domainname=upn, azureactivedirectoryobjectid=oid)

    with ThreadPoolExecutor(1) as pool:
        synced = pool.submit(sync_later)
        id_, outs = host.create(u, news)
    assert id_ == synced.result()["systemuserid"] and outs["disabled"] is False
    sandbox.control.drift(org, "disable_user", systemuserid=id_)
    _, read, _ = host.read(u, id_, outs)
    assert host.diff(u, id_, read, news).changes is True
    assert host.update(u, id_, read, news)["disabled"] is False
    host.delete(u, id_, outs)
    assert any(x["systemuserid"] == id_ for x in sandbox.control.state(org)["systemusers"])


def test_eight_concurrent_creates_on_one_provider_make_one_user_and_one_token_request(sandbox, org, host):
    app_id = sandbox.control.register_app(display_name="concurrent")["client_id"]
    ref = provider_ref(ApplicationUserProvider())
    u = urn("ApplicationUser", "same")
    news, _ = host.check(u, {}, {"__provider": ref, "instance_url": org, "application_id": app_id,
                                 "email": "c@contoso.example"})
    since = max((e["seq"] for e in sandbox.control.log()), default=0)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: host.create(u, news), range(8)))
    assert len({id_ for id_, _ in results}) == 1
    assert [x for x in sandbox.control.state(org)["systemusers"] if x.get("applicationid") == app_id].__len__() == 1
    tokens = [e for e in sandbox.control.log(since=since) if e["kind"] == "entra" and "token" in e["path"]]
    assert len(tokens) == 1
