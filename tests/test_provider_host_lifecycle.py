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
from sandbox.solution_zip import DEFAULT_ROLE_NAME, build_solution_zip
from sandbox.testing import stack_config
from tests.harness.provider_host import ProviderError, ProviderHost, Secret, provider_ref, urn_for

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


# ---------------------------------------------------------------- one resource at a time, every verb
# Each test drives its resource as the engine does: check → create → diff (no change) → a person's
# edit through the control API → read (refresh) → diff (the next preview) → update (the next up) →
# read (clean) → delete, and checks on the sandbox's own state that each write really happened.

PROCEDURE_GRANTS = (("prvCreateUserEntityUISettings", "User"), ("prvReadUserEntityUISettings", "User"),
                    ("prvWriteUserEntityUISettings", "User"), ("prvReadAsyncOperation", "Organization"),
                    ("prvWriteAsyncOperation", "Organization"), ("prvAppendToAsyncOperation", "Organization"))


def provision(host, kind: str, name: str, provider, news: dict, olds: dict | None = None):
    """check + create through the host, as `pulumi up` does for a new resource: (urn, inputs, id, outputs)."""
    u = urn(kind, name)
    inputs, failures = host.check(u, olds or {}, {"__provider": provider_ref(provider), **news})
    assert failures == []
    id_, outs = host.create(u, inputs)
    return u, inputs, id_, outs


def solution_zip(tmp_path: Path, version: str) -> str:
    path = tmp_path / f"solution-{version}.zip"
    path.write_bytes(build_solution_zip(version=version))
    return str(path)


def writer_chain(sandbox, org, host, tmp_path):
    """Solution, application user of a new app and its role assignment, all through the host."""
    secret = f"s-{uuid.uuid4().hex}"
    app_id = sandbox.control.register_app(display_name="writer", client_secret=secret)["client_id"]
    provision(host, "SolutionImport", "sol", SolutionImportProvider(),
              {"instance_url": org, "source_path": solution_zip(tmp_path, "1.0.0.0"), "import_timeout_seconds": 300})
    _, _, user_id, _ = provision(host, "ApplicationUser", "user", ApplicationUserProvider(),
                                 {"instance_url": org, "application_id": app_id, "email": "writer@contoso.example"})
    return {"secret": secret, "app_id": app_id, "user_id": user_id}


def assigned(sandbox, org, user_id: str, role_id: str) -> bool:
    return {"systemuserid": user_id.lower(), "roleid": role_id.lower()} in [
        {k: v.lower() for k, v in a.items()} for a in sandbox.control.state(org)["assignments"]]


def root_role_depths(sandbox, org, role_id: str) -> dict[str, str]:
    role = next(r for r in sandbox.control.state(org)["roles"] if r["roleid"].lower() == role_id.lower())
    return {p["name"]: p["depth"] for p in role["privileges"]}


def no_secret_in(host, sandbox, *secrets: str) -> None:
    text = host.stderr_text()
    for value in (*secrets, sandbox.info["admin_client_secret"]):
        assert value not in text


def test_solution_import_uninstalled_by_hand_is_gone_on_read_reimported_then_upgraded_in_place(
    sandbox, org, host, tmp_path
):
    v1, v2 = solution_zip(tmp_path, "1.0.0.0"), solution_zip(tmp_path, "1.1.0.0")
    news = {"instance_url": org, "source_path": v1, "import_timeout_seconds": 300}
    u, inputs, sol_id, outs = provision(host, "SolutionImport", "sol", SolutionImportProvider(), news)
    # the integer input crossed gRPC as a float and comes back as the same whole number
    assert inputs["import_timeout_seconds"] == 300 and outs["import_timeout_seconds"] == 300
    assert (outs["version"], outs["adopted"], outs["managed"]) == ("1.0.0.0", False, True)
    assert host.diff(u, sol_id, outs, inputs).changes is False
    unique_name = outs["unique_name"]

    sandbox.control.drift(org, "uninstall_solution", uniquename=unique_name)
    assert host.read(u, sol_id, outs, inputs)[0] == ""  # refresh drops it from state
    assert not [s for s in sandbox.control.state(org)["solutions"] if s["uniquename"] == unique_name]
    inputs, _ = host.check(u, {}, {"__provider": provider_ref(SolutionImportProvider()), **news})
    sol_id, outs = host.create(u, inputs)  # so the next up imports it again
    assert outs["adopted"] is False and outs["version"] == "1.0.0.0"

    upgraded, failures = host.check(u, outs, {"__provider": provider_ref(SolutionImportProvider()),
                                              **news, "source_path": v2})
    assert failures == [] and upgraded["sha256"] != inputs["sha256"]
    diff = host.diff(u, sol_id, outs, upgraded)
    assert diff.changes is True and diff.replaces == []
    jobs_before = len(sandbox.control.state(org)["importjobs"])
    after = host.update(u, sol_id, outs, upgraded)
    expected = {"unique_name", "version", "solution_id", "managed", "sha256", "adopted", "revision",
                "instance_url", "source_path", "import_timeout_seconds"}
    assert expected <= set(after)
    assert after["version"] == "1.1.0.0" and after["revision"] != outs["revision"] and after["adopted"] is False
    assert after["import_timeout_seconds"] == 300
    state = sandbox.control.state(org)
    installed = next(s for s in state["solutions"] if s["uniquename"] == unique_name)
    assert installed["version"] == "1.1.0.0" and len(state["importjobs"]) == jobs_before + 1

    rid, read, _ = host.read(u, sol_id, after, upgraded)
    assert rid == sol_id and read["version"] == "1.1.0.0" and read["revision"] == after["revision"]
    assert host.diff(u, sol_id, read, upgraded).changes is False

    # a second stack meeting the installed solution adopts it without importing, and releases it
    u2, _, adopted_id, adopted = provision(host, "SolutionImport", "again", SolutionImportProvider(owner="p/other"),
                                           {**news, "source_path": v2})
    assert adopted_id == sol_id and adopted["adopted"] is True
    assert len(sandbox.control.state(org)["importjobs"]) == jobs_before + 1
    host.delete(u2, adopted_id, adopted)
    assert any(s["uniquename"] == unique_name for s in sandbox.control.state(org)["solutions"])
    host.delete(u, sol_id, read)
    assert not [s for s in sandbox.control.state(org)["solutions"] if s["uniquename"] == unique_name]
    no_secret_in(host, sandbox)


def test_application_user_disabled_by_hand_shows_on_read_is_re_enabled_and_adopted_one_is_released(
    sandbox, org, host
):
    app_id = sandbox.control.register_app(display_name="writer")["client_id"]
    news = {"instance_url": org, "application_id": app_id, "email": "writer@contoso.example"}
    u, inputs, user_id, outs = provision(host, "ApplicationUser", "user", ApplicationUserProvider(), news)
    assert outs["adopted"] is False and outs["disabled"] is False
    assert host.diff(u, user_id, outs, inputs).changes is False

    sandbox.control.drift(org, "disable_user", systemuserid=user_id)
    rid, read, _ = host.read(u, user_id, outs, inputs)
    assert rid == user_id and read["disabled"] is True and read["revision"] == outs["revision"]
    diff = host.diff(u, user_id, read, inputs)
    assert diff.changes is True and diff.replaces == []
    after = host.update(u, user_id, read, inputs)
    assert after["disabled"] is False and after["revision"] != outs["revision"] and after["systemuser_id"] == user_id
    user = next(x for x in sandbox.control.state(org)["systemusers"] if x["systemuserid"] == user_id)
    assert user["isdisabled"] is False
    rid, clean_read, _ = host.read(u, user_id, after, inputs)
    assert rid == user_id and clean_read["disabled"] is False
    assert host.diff(u, user_id, clean_read, inputs).changes is False
    assert host.diff(u, user_id, clean_read, {**inputs, "application_id": str(uuid.uuid4())}).replaces == [
        "application_id"]

    # another stack meeting the user adopts it and releases it (the id is not the one it would derive)
    u2, _, adopted_id, adopted = provision(host, "ApplicationUser", "again", ApplicationUserProvider(owner="p/other"),
                                           news)
    assert adopted_id == user_id and adopted["adopted"] is True
    host.delete(u2, adopted_id, adopted)
    user = next(x for x in sandbox.control.state(org)["systemusers"] if x["systemuserid"] == user_id)
    assert user["isdisabled"] is False  # released, not disabled
    host.delete(u, user_id, clean_read)
    user = next(x for x in sandbox.control.state(org)["systemusers"] if x["systemuserid"] == user_id)
    assert user["isdisabled"] is True


def test_role_assignment_removed_by_hand_is_gone_on_read_restored_by_create_and_update_reasserts_it(
    sandbox, org, host, tmp_path
):
    chain = writer_chain(sandbox, org, host, tmp_path)
    news = {"instance_url": org, "user_id": chain["user_id"], "role_name": DEFAULT_ROLE_NAME}
    u, inputs, ra_id, outs = provision(host, "SecurityRoleAssignment", "role", SecurityRoleAssignmentProvider(),
                                       news)
    role_id = outs["role_id"]
    assert ra_id == f"{chain['user_id']}:{role_id}" and outs["adopted"] is False
    assert assigned(sandbox, org, chain["user_id"], role_id)
    assert host.diff(u, ra_id, outs, inputs).changes is False
    other = host.diff(u, ra_id, outs, {**inputs, "role_name": "Salesperson"})
    assert other.changes is True and other.replaces == ["role_name"]

    sandbox.control.drift(org, "remove_role", systemuserid=chain["user_id"], roleid=role_id)
    assert host.read(u, ra_id, outs, inputs)[0] == ""  # refresh drops it, so the next up creates it again
    ra_id2, restored = host.create(u, inputs)
    assert ra_id2 == ra_id and restored["adopted"] is False and restored["revision"] != outs["revision"]
    assert assigned(sandbox, org, chain["user_id"], role_id)
    rid, read, _ = host.read(u, ra_id, restored, inputs)
    assert rid == ra_id and read["role_id"] == role_id and read["revision"] == restored["revision"]
    assert host.diff(u, ra_id, read, inputs).changes is False

    # update (the engine's call for a non-replacing change) re-asserts a vanished association and
    # returns the full outputs with a new revision; with nothing to write it keeps the revision
    sandbox.control.drift(org, "remove_role", systemuserid=chain["user_id"], roleid=role_id)
    after = host.update(u, ra_id, read, inputs)
    assert {"user_id", "role_id", "business_unit_id", "adopted", "revision", "instance_url"} <= set(after)
    assert after["role_id"] == role_id and after["revision"] != read["revision"]
    assert assigned(sandbox, org, chain["user_id"], role_id)
    assert host.update(u, ra_id, after, inputs)["revision"] == after["revision"]

    u2, _, adopted_id, adopted = provision(host, "SecurityRoleAssignment", "again",
                                           SecurityRoleAssignmentProvider(owner="p/other"), {**news, "role_id": None})
    assert adopted_id == ra_id and adopted["adopted"] is True
    host.delete(u2, adopted_id, adopted)
    assert assigned(sandbox, org, chain["user_id"], role_id)  # released
    host.delete(u, ra_id, after)
    assert not assigned(sandbox, org, chain["user_id"], role_id)
    no_secret_in(host, sandbox, chain["secret"])


def test_role_privileges_lowered_and_removed_by_hand_show_per_privilege_and_are_repaired_then_restored(
    sandbox, org, host, tmp_path
):
    provision(host, "SolutionImport", "sol", SolutionImportProvider(),
              {"instance_url": org, "source_path": solution_zip(tmp_path, "1.0.0.0"), "import_timeout_seconds": 300})
    # prvReadLead comes with the solution at Global: managing it at Local records Global to restore
    grants = [{"name": n, "depth": d} for n, d in (*PROCEDURE_GRANTS, ("prvReadLead", "BusinessUnit"))]
    news = {"instance_url": org, "role_name": DEFAULT_ROLE_NAME, "privileges": grants}
    u, inputs, role_id, outs = provision(host, "RolePrivileges", "grants", RolePrivilegesProvider(), news)
    assert outs["previous_depths"]["prvReadLead"] == "Global" and outs["depths"]["prvReadLead"] == "Local"
    depths = root_role_depths(sandbox, org, role_id)
    assert depths["prvReadLead"] == "Local" and depths["prvReadAsyncOperation"] == "Global"
    assert host.diff(u, role_id, outs, inputs).changes is False

    sandbox.control.drift(org, "set_privilege_depth", roleid=role_id, privilege="prvReadAsyncOperation",
                          depth="Local")
    sandbox.control.drift(org, "remove_privilege", roleid=role_id, privilege="prvWriteAsyncOperation")
    rid, read, _ = host.read(u, role_id, outs, inputs)
    assert rid == role_id and read["revision"] == outs["revision"]
    assert read["depths"]["prvReadAsyncOperation"] == "Local"
    assert read["depths"].get("prvWriteAsyncOperation") is None
    assert {k: v for k, v in read["depths"].items() if k not in ("prvReadAsyncOperation", "prvWriteAsyncOperation")
            } == {k: v for k, v in outs["depths"].items() if k not in ("prvReadAsyncOperation",
                                                                       "prvWriteAsyncOperation")}
    diff = host.diff(u, role_id, read, inputs)
    assert diff.changes is True and diff.replaces == []

    after = host.update(u, role_id, read, inputs)
    assert {"root_role_id", "depths", "previous_depths", "revision", "privileges", "instance_url"} <= set(after)
    assert after["revision"] != outs["revision"] and after["root_role_id"] == role_id
    assert after["depths"]["prvReadAsyncOperation"] == "Global" and after["depths"]["prvWriteAsyncOperation"] == "Global"
    assert after["previous_depths"]["prvReadLead"] == "Global"  # what it found first, not the drifted depth
    depths = root_role_depths(sandbox, org, role_id)
    assert depths["prvReadAsyncOperation"] == "Global" and depths["prvWriteAsyncOperation"] == "Global"
    rid, clean_read, _ = host.read(u, role_id, after, inputs)
    assert rid == role_id and clean_read["depths"] == after["depths"]
    assert host.diff(u, role_id, clean_read, inputs).changes is False
    assert host.diff(u, role_id, clean_read, {**inputs, "role_name": "Salesperson"}).replaces == ["role_name"]

    host.delete(u, role_id, clean_read)
    depths = root_role_depths(sandbox, org, role_id)
    assert depths["prvReadLead"] == "Global"  # restored to what it found
    assert not {"prvReadAsyncOperation", "prvWriteAsyncOperation", "prvCreateUserEntityUISettings"} & set(depths)
    no_secret_in(host, sandbox)


def test_lead_write_check_keeps_its_record_on_read_and_a_moved_revision_replaces_it_with_a_secret_input(
    sandbox, org, host, tmp_path
):
    chain = writer_chain(sandbox, org, host, tmp_path)
    u_ra, ra_in, ra_id, ra_out = provision(host, "SecurityRoleAssignment", "role", SecurityRoleAssignmentProvider(),
                                           {"instance_url": org, "user_id": chain["user_id"],
                                            "role_name": DEFAULT_ROLE_NAME})
    provision(host, "RolePrivileges", "grants", RolePrivilegesProvider(),
              {"instance_url": org, "role_name": DEFAULT_ROLE_NAME,
               "privileges": [{"name": n, "depth": d} for n, d in PROCEDURE_GRANTS]})
    ref = provider_ref(LeadWriteCheckProvider())

    def news(revision: str) -> dict:
        return {"__provider": ref, "instance_url": org, "tenant_id": sandbox.info["tenant_id"],
                "client_id": chain["app_id"], "client_secret": Secret(chain["secret"]), "keep_lead": True,
                "triggers": {"assignment": revision, "rotation": 1}}

    u = urn("LeadWriteCheck", "check")
    inputs, failures = host.check(u, {}, news(ra_out["revision"]))
    assert failures == [] and isinstance(inputs["client_secret"], Secret)
    assert inputs["triggers"]["rotation"] == 1  # an integer inside an input, a float on the wire
    lw_id, outs = host.create(u, inputs)
    assert isinstance(outs["client_secret"], Secret) and outs["identity"] == chain["app_id"]
    lead_id = outs["lead_id"]
    assert [lead["leadid"] for lead in sandbox.control.state(org)["leads"]] == [lead_id]
    assert host.diff(u, lw_id, outs, inputs).changes is False

    # the writer's role is removed by hand: the check's record is an event and stays as it was
    role_id = ra_out["role_id"]
    sandbox.control.drift(org, "remove_role", systemuserid=chain["user_id"], roleid=role_id)
    rid, read, _ = host.read(u, lw_id, outs, inputs)
    assert rid == lw_id and isinstance(read["client_secret"], Secret)
    assert {k: read[k] for k in ("lead_id", "validated_at", "identity")} == {
        k: outs[k] for k in ("lead_id", "validated_at", "identity")}
    # the assignment's refresh finds it gone; until it is restored, a new validation names the broken link
    assert host.read(u_ra, ra_id, ra_out, ra_in)[0] == ""
    broken, _ = host.check(u, outs, news("not-restored"))
    with pytest.raises(ProviderError) as info:
        host.create(u, broken)
    assert "role" in info.value.message.lower()
    assert chain["secret"] not in info.value.message and chain["secret"] not in info.value.details
    _, restored = host.create(u_ra, ra_in)
    assert assigned(sandbox, org, chain["user_id"], role_id)

    # the restored assignment's new revision flows into triggers: no input updates in place, so replace
    rerun, _ = host.check(u, outs, news(restored["revision"]))
    diff = host.diff(u, lw_id, read, rerun)
    assert diff.changes is True and diff.replaces == ["triggers"]
    new_id, new_outs = host.create(u, rerun)  # create-before-delete, as the engine replaces
    assert new_id != lw_id and new_outs["lead_id"] != lead_id and new_outs["validated_at"] >= outs["validated_at"]
    assert isinstance(new_outs["client_secret"], Secret)
    host.delete(u, lw_id, read)
    assert [lead["leadid"] for lead in sandbox.control.state(org)["leads"]] == [new_outs["lead_id"]]
    rid, clean_read, _ = host.read(u, new_id, new_outs, rerun)
    assert rid == new_id and host.diff(u, new_id, clean_read, rerun).changes is False
    host.delete(u, new_id, clean_read)
    assert sandbox.control.state(org)["leads"] == []
    no_secret_in(host, sandbox, chain["secret"])
