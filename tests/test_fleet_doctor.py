"""`python -m fleet doctor` as a user runs it: a subprocess in a throwaway copy of the project, the real Pulumi
CLI (file backend, passphrase secrets) reading each stack's config, organizations of the sandbox over HTTPS.

One fleet of stacks is shared by the module: each stack breaks one precondition (or none), one `fleet doctor`
run checks them all, and each test reads what that run found for its stack.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynamics_provider.auth import DeployerSettings
from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse.preflight import HeldRole, is_system_administrator
from dynamics_provider.dataverse.roles import assign_role
from dynamics_provider.dataverse.solutions import follow_import, start_import
from sandbox.solution_zip import build_solution_zip
from tests.test_fleet import FleetProject

SYSADMIN_TEMPLATE = "627090ff-40a3-4053-8790-584edc5be201"  # Learn, "Security roles and templates"
WRONG_SECRET = f"not-the-secret-{uuid.uuid4().hex}"
CHECK_NAMES = ["configuration", "deployer-sign-in", "web-api", "system-administrator", "solution", "role",
               "privileges", "lead-writer-sign-in", "offer"]


@dataclass
class DoctorRun:
    fp: FleetProject
    sandbox: Any
    urls: dict[str, str]
    exit_code: int
    stdout: str
    stderr: str
    report: dict[str, dict[str, Any]]
    markdown: str
    requests: list[dict[str, Any]]
    states_before: dict[str, Any]
    states_after: dict[str, Any]

    def checks(self, stack: str) -> dict[str, dict[str, Any]]:
        entry = self.report[stack]
        assert [c["name"] for c in entry["checks"]] == CHECK_NAMES, entry
        return {c["name"]: c for c in entry["checks"]}

    def found(self, stack: str, check: str, status: str) -> dict[str, Any]:
        """The stack's check, asserted to have ended with `status`."""
        result = self.checks(stack)[check]
        assert result["status"] == status, result
        return result


def _install(client: DataverseClient, zip_bytes: bytes) -> None:
    """Import a solution as the deploying identity would (test setup, before doctor runs)."""
    job_id = str(uuid.uuid4())
    operation = start_import(client, "ImportSolutionAsync", zip_bytes, job_id)
    follow_import(client, job_id, operation, timeout=120, what="the test's solution")


def _write_zip(root: Path, name: str, **kw: Any) -> Path:
    path = root / name
    path.write_bytes(build_solution_zip(**kw))
    return path


@pytest.fixture(scope="module")
def doctor_run(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> DoctorRun:
    root = tmp_path_factory.mktemp("doctor")
    fp = FleetProject(root, sandbox.info)
    control = sandbox.control
    info = sandbox.info
    tag = uuid.uuid4().hex[:6]
    names = ["ready", "fresh", "new-app", "bad-deployer", "not-admin", "impostor", "unmanaged", "older", "newer",
             "no-role", "bad-privileges", "bad-secret", "no-offer", "unreachable", "bad-config"]
    urls = {n: control.add_org(f"d{tag}-{n}") for n in names}

    deployer = DeployerSettings(tenant_id=info["tenant_id"], client_id=info["admin_client_id"],
                                client_secret=info["admin_client_secret"], authority_host=info["authority_host"],
                                ca_bundle=info["ca_bundle"], allow_loopback=True)
    installs = {"ready": build_solution_zip("1.0.0.0"), "unmanaged": build_solution_zip("1.0.0.0", managed=False),
                "older": build_solution_zip("1.0.0.0"), "newer": build_solution_zip("2.0.0.0"),
                "no-role": build_solution_zip("1.0.0.0"),
                # a custom role that is called System Administrator, with enough privileges to read roles
                "impostor": build_solution_zip("1.0.0.0", unique_name="ContosoAdmins", role_name="System Administrator",
                                               privileges=[("prvReadUser", "Global"), ("prvReadRole", "Global")])}
    with ThreadPoolExecutor(max_workers=len(installs)) as pool:
        list(pool.map(lambda kv: _install(DataverseClient.for_instance(urls[kv[0]], deployer), kv[1]),
                      installs.items()))

    bad_spec = root / "bad-privileges.yaml"
    bad_spec.write_text(yaml.safe_dump({"privileges": [
        {"name": "prvReadAsyncOperation", "depth": "Global"},
        {"name": "prvReadNoSuchThing", "depth": "Basic"},
        {"name": "prvReadUserEntityUISettings", "depth": "Global"}]}))
    extra: dict[str, dict[str, Any]] = {
        "ready": {"offer": "contoso-lead-offer"},
        "older": {"solution": {"path": str(_write_zip(root, "v1.1.zip", version="1.1.0.0"))}},
        "no-role": {"roleName": "Marketplace Lead Reader"},
        "bad-privileges": {"privileges": str(bad_spec)},
        "bad-secret": {"existingApplicationSecret": WRONG_SECRET},
        "bad-deployer": {"deployerClientSecret": WRONG_SECRET},
        "no-offer": {"offer": "no-such-offer"},
    }
    # `fresh` holds the dev settings and is the template of the others (fewer CLI calls than each on its own);
    # `new-app` has no existing app, so it cannot be copied from `fresh`.
    own = fp.root / "own.yaml"
    new_app = {k: v for k, v in fp.settings(urls["new-app"]).items()
               if k not in ("existingApplication", "existingApplicationSecret")}
    own.write_text(yaml.safe_dump([{"name": "fresh", **fp.settings(urls["fresh"])}, {"name": "new-app", **new_app}]))
    copied = fp.root / "copied.yaml"
    copied.write_text(yaml.safe_dump([{"name": n, "instanceUrl": urls[n], **extra.get(n, {})}
                                      for n in names if n not in ("fresh", "new-app")]))
    for inventory, template in ((own, []), (copied, ["--copy-config-from", "fresh"])):
        added = fp.fleet("add", "--from", str(inventory), "--parallel", "6", *template)
        assert added.returncode == 0, added.stdout + added.stderr
    # A stack whose config went bad after it was made (a hand edit): `validate` must be a boolean.
    fp.pulumi("config", "set", "lead-destination:validate", "maybe", "--stack", "bad-config")

    # The deploying identity loses System Administrator in two organizations; in one it keeps only the custom
    # role that is named System Administrator.
    for stack in ("not-admin", "impostor"):
        state = control.state(urls[stack])
        admin_user = next(u for u in state["systemusers"] if u["applicationid"] == info["admin_client_id"])
        in_its_unit = [r for r in state["roles"] if r["_businessunitid_value"] == admin_user["_businessunitid_value"]]
        if stack == "impostor":
            custom = next(r for r in in_its_unit if r["name"] == "System Administrator"
                          and r.get("_roletemplateid_value") is None)
            assign_role(DataverseClient.for_instance(urls[stack], deployer), admin_user["systemuserid"], custom["roleid"])
        builtin = next(r for r in in_its_unit if r.get("_roletemplateid_value") == SYSADMIN_TEMPLATE)
        control.drift(urls[stack], "remove_role", systemuserid=admin_user["systemuserid"], roleid=builtin["roleid"])

    states_before = {n: control.state(u) for n, u in urls.items()}
    states_before["partner-center"] = control.partner_center("GET", "state")
    mark = max((e["seq"] for e in control.log()), default=0)
    control.add_fault(org=urls["unreachable"].rsplit("/", 1)[-1], reset=True, count=100000)
    try:
        done = fp.fleet("doctor", "--parallel", "6", "--json", str(root / "doctor.json"),
                        "--markdown", str(root / "doctor.md"), timeout=600)
    finally:
        control.clear_faults()
    requests = control.log(since=mark)
    states_after = {n: control.state(u) for n, u in urls.items()}
    states_after["partner-center"] = control.partner_center("GET", "state")
    report = {s["name"]: s for s in json.loads((root / "doctor.json").read_text())["stacks"]}
    return DoctorRun(fp, sandbox, urls, done.returncode, done.stdout, done.stderr, report,
                     (root / "doctor.md").read_text(), requests, states_before, states_after)


# --- no writes -----------------------------------------------------------------------------------------
def test_doctor_sends_token_requests_and_reads_only_and_changes_nothing(doctor_run: DoctorRun):
    sent = [e for e in doctor_run.requests if e["kind"] != "control"]
    assert sent, "doctor talked to no service"
    kinds = {e["kind"] for e in sent}
    assert {"entra", "dataverse", "partnercenter"} <= kinds, kinds
    writes = []
    for entry in sent:
        if entry["kind"] == "entra":
            if entry["method"] != "GET" and not entry["path"].endswith("/oauth2/v2.0/token"):
                writes.append(entry)
        elif entry["method"] == "POST" and entry["path"].endswith("/$batch"):
            writes += [{**entry, "part": p} for p in entry["parts"] if p["method"] != "GET"]
        elif entry["method"] != "GET":
            writes.append(entry)
    assert writes == [], writes
    assert doctor_run.states_after == doctor_run.states_before  # nothing in any organization or in Partner Center


# --- a ready stack ----------------------------------------------------------------------------------------
def test_a_ready_stack_passes_every_check_it_can_make(doctor_run: DoctorRun):
    checks = doctor_run.checks("ready")
    assert {n: c["status"] for n, c in checks.items()} == dict.fromkeys(CHECK_NAMES, "ok"), checks
    assert doctor_run.report["ready"]["status"] == "in-sync" and doctor_run.report["ready"]["error"] is None
    assert "9.2." in checks["web-api"]["detail"]
    assert "by its role template" in checks["system-administrator"]["detail"]
    assert "1.0.0.0 (managed) is installed" in checks["solution"]["detail"]
    assert "'Microsoft Marketplace Lead Writer' in business unit" in checks["role"]["detail"]
    assert "pulumi up creates its application user" in checks["lead-writer-sign-in"]["detail"]
    assert "'contoso-lead-offer' is product/" in checks["offer"]["detail"]


def test_a_fresh_organization_warns_that_up_imports_the_solution_and_the_role_comes_with_it(doctor_run: DoctorRun):
    checks = doctor_run.checks("fresh")
    assert checks["solution"]["status"] == "warn"
    assert "is not installed" in checks["solution"]["detail"]
    assert "pulumi up imports version 1.0.0.0" in checks["solution"]["advice"]
    assert checks["role"]["status"] == "skipped" and "will come with the solution" in checks["role"]["detail"]
    assert checks["offer"]["status"] == "skipped"
    assert all(checks[n]["status"] == "ok" for n in ("deployer-sign-in", "web-api", "system-administrator",
                                                     "privileges", "lead-writer-sign-in"))
    assert doctor_run.report["fresh"]["status"] == "drifted"  # warnings only: needs a look


# --- one broken precondition per stack ------------------------------------------------------------------
def test_a_new_app_stack_has_no_lead_writer_credential_to_check_yet(doctor_run: DoctorRun):
    checks = doctor_run.checks("new-app")
    assert checks["configuration"]["detail"].endswith("lead writer: a new Entra app")
    assert checks["lead-writer-sign-in"]["status"] == "skipped"
    assert "the stack creates the lead writer's Entra app" in checks["lead-writer-sign-in"]["detail"]
    assert checks["system-administrator"]["status"] == "ok"


def test_a_deployer_secret_entra_refuses_fails_its_sign_in_and_skips_what_needs_the_organization(
        doctor_run: DoctorRun):
    sign_in = doctor_run.found("bad-deployer", "deployer-sign-in", "fail")
    assert "AADSTS7000215" in sign_in["detail"] and "client secret is wrong" in sign_in["advice"]
    checks = doctor_run.checks("bad-deployer")
    for name in ("web-api", "system-administrator", "solution", "role", "privileges"):
        assert checks[name]["status"] == "skipped" and "needs the deploying identity's token" in checks[name]["detail"]
    assert checks["lead-writer-sign-in"]["status"] == "ok"  # its own credential, checked all the same


def test_a_deployer_without_system_administrator_fails_that_check_and_the_others_are_still_reported(
        doctor_run: DoctorRun):
    checks = doctor_run.checks("not-admin")
    admin = checks["system-administrator"]
    assert admin["status"] == "fail"
    assert "Edit security roles" in admin["advice"] and "System Administrator" in admin["advice"]
    assert checks["deployer-sign-in"]["status"] == "ok" and checks["web-api"]["status"] == "ok"
    # The reads it may not make fail on their own, each named; the independent checks still pass.
    assert checks["solution"]["status"] == "fail" and "prvReadSolution" in checks["solution"]["detail"]
    assert checks["lead-writer-sign-in"]["status"] == "ok"
    assert doctor_run.report["not-admin"]["error"].startswith("system-administrator: ")


def test_a_custom_role_named_system_administrator_does_not_count(doctor_run: DoctorRun):
    admin = doctor_run.found("impostor", "system-administrator", "fail")
    assert "holds System Administrator, not System Administrator" in admin["detail"]
    assert "not built from Microsoft's System Administrator template" in admin["detail"]
    assert "Edit security roles" in admin["advice"]


def test_the_role_name_counts_only_when_the_answer_carries_no_role_template():
    named = dict(id="1", name="System Administrator")
    assert is_system_administrator(HeldRole(**named, template_id=SYSADMIN_TEMPLATE, template_answered=True))
    assert is_system_administrator(HeldRole(**named, template_id=None, template_answered=False))
    assert not is_system_administrator(HeldRole(**named, template_id=None, template_answered=True))
    assert not is_system_administrator(HeldRole(id="2", name="Basic User", template_id=None, template_answered=False))


def test_an_unmanaged_solution_installed_fails_the_solution_check(doctor_run: DoctorRun):
    solution = doctor_run.found("unmanaged", "solution", "fail")
    assert "1.0.0.0 (unmanaged) is installed" in solution["detail"]
    assert "remove the unmanaged solution" in solution["advice"] and "allowUnmanaged" in solution["advice"]


def test_an_older_solution_warns_of_the_upgrade_and_a_newer_one_fails_as_a_downgrade(doctor_run: DoctorRun):
    older = doctor_run.checks("older")["solution"]
    assert older["status"] == "warn" and "1.0.0.0 (managed) is installed; the zip is 1.1.0.0" in older["detail"]
    assert older["advice"] == "pulumi up upgrades it to 1.1.0.0"
    newer = doctor_run.checks("newer")["solution"]
    assert newer["status"] == "fail" and "2.0.0.0 (managed) is installed, newer than the zip's 1.0.0.0" in newer["detail"]
    assert "never downgrades" in newer["advice"]


def test_a_role_missing_from_the_business_unit_fails_the_role_check(doctor_run: DoctorRun):
    role = doctor_run.found("no-role", "role", "fail")
    assert "no role named 'Marketplace Lead Reader'" in role["detail"] and "is installed" in role["detail"]
    assert "roleName" in role["advice"]


def test_an_unknown_privilege_and_a_depth_not_allowed_fail_the_privileges_check(doctor_run: DoctorRun):
    privileges = doctor_run.found("bad-privileges", "privileges", "fail")
    assert "prvReadNoSuchThing is not a privilege of this organization" in privileges["detail"]
    assert "prvReadUserEntityUISettings cannot be Global (allowed: Basic)" in privileges["detail"]
    assert "prvReadAsyncOperation" not in privileges["detail"]
    assert "bad-privileges.yaml" in privileges["advice"]


def test_a_wrong_lead_writer_secret_fails_its_sign_in_without_showing_it(doctor_run: DoctorRun):
    sign_in = doctor_run.found("bad-secret", "lead-writer-sign-in", "fail")
    assert "AADSTS7000215" in sign_in["detail"] and "client secret is wrong" in sign_in["advice"]
    assert doctor_run.checks("bad-secret")["deployer-sign-in"]["status"] == "ok"


def test_an_offer_partner_center_does_not_know_fails_the_offer_check(doctor_run: DoctorRun):
    offer = doctor_run.found("no-offer", "offer", "fail")
    assert "no product with external id 'no-such-offer'" in offer["detail"]
    assert "Offer ID" in offer["advice"] and "Manager" in offer["advice"]


def test_an_unreachable_organization_fails_the_web_api_check_and_skips_what_needs_it(doctor_run: DoctorRun):
    checks = doctor_run.checks("unreachable")
    assert checks["deployer-sign-in"]["status"] == "ok"
    assert checks["web-api"]["status"] == "fail"
    assert "no answer after 3 attempt(s)" in checks["web-api"]["detail"]
    assert "check instanceUrl" in checks["web-api"]["advice"]
    for name in ("system-administrator", "solution", "role", "privileges"):
        assert checks[name]["status"] == "skipped" and "needs an answer" in checks[name]["detail"]
    assert checks["lead-writer-sign-in"]["status"] == "ok"  # Entra still answers


def test_a_stack_with_an_invalid_config_is_reported_and_the_run_goes_on(doctor_run: DoctorRun):
    checks = doctor_run.checks("bad-config")
    assert checks["configuration"]["status"] == "fail"
    assert "lead-destination:validate = 'maybe'" in checks["configuration"]["detail"]
    assert all(checks[n]["status"] == "skipped" for n in CHECK_NAMES[1:])
    assert len(doctor_run.report) == len(doctor_run.urls)  # every stack reported


# --- the reports and the command line ------------------------------------------------------------------
def test_reports_exit_code_progress_and_no_secret_anywhere(doctor_run: DoctorRun):
    assert doctor_run.exit_code == 1, doctor_run.stdout + doctor_run.stderr  # failures outrank warnings
    out = doctor_run.stdout
    finished = {ln.split("] ", 1)[1].split()[0] for ln in out.splitlines() if ln.startswith("[")}
    assert finished == set(doctor_run.urls)  # one progress line per finished stack
    assert "fleet doctor: 15 stack(s) in" in out and "1 ready" in out
    assert "  ✗ system-administrator" in out and "→ assign the System Administrator" in out
    md = doctor_run.markdown
    assert "| Stack | Status | configuration | deployer-sign-in |" in md
    assert "**`no-offer`**" in md and "no product with external id 'no-such-offer'" in md
    assert "<summary>1 ready</summary>" in md and "`ready`" in md
    info = doctor_run.sandbox.info
    texts = [out, doctor_run.stderr, md, json.dumps(doctor_run.report)]
    for secret in (info["admin_client_secret"], info["leadwriter_client_secret"], WRONG_SECRET):
        assert not any(secret in t for t in texts), "a secret reached the output"


def test_a_config_that_cannot_be_decrypted_fails_the_configuration_check_without_showing_values(
        doctor_run: DoctorRun):
    fp = doctor_run.fp
    locked = fp.fleet("doctor", "ready", "--json", str(fp.root / "locked.json"),
                      env={**fp.env, "PULUMI_CONFIG_PASSPHRASE": "not-the-passphrase"})
    assert locked.returncode == 1, locked.stdout + locked.stderr
    entry = json.loads((fp.root / "locked.json").read_text())["stacks"][0]
    configuration = entry["checks"][0]
    assert configuration["name"] == "configuration" and configuration["status"] == "fail"
    assert configuration["detail"].startswith("cannot read the stack's config: ")
    assert "passphrase" in configuration["detail"]  # Pulumi's own reason, from its stderr
    assert "PULUMI_CONFIG_PASSPHRASE" in configuration["advice"]
    assert {c["status"] for c in entry["checks"][1:]} == {"skipped"}
    assert doctor_run.sandbox.info["admin_client_secret"] not in locked.stdout + locked.stderr


def test_a_ready_stack_exits_0_and_warnings_only_exit_3(doctor_run: DoctorRun):
    ready = doctor_run.fp.fleet("doctor", "ready")
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "fleet doctor: 1 stack(s)" in ready.stdout and "  ✓ offer" in ready.stdout
    warned = doctor_run.fp.fleet("doctor", "older", "fresh")
    assert warned.returncode == 3, warned.stdout + warned.stderr
    missing = doctor_run.fp.fleet("doctor", "nope-*")
    assert missing.returncode == 2 and "no stack matches 'nope-*'" in missing.stderr

