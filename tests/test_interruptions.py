"""A cold `pulumi up` of the dev stack interrupted under the real CLI (.tools/bin/pulumi), against the sandbox.

- The whole run SIGKILLed right after each Dataverse write in turn (heavy matrix): the checkpoint keeps a
  pending create and the stale lock; the README's procedure (`pulumi cancel`, `pulumi refresh
  --clear-pending-creates`, `pulumi up`) converges with no duplicate and nothing lost, a third run changes
  nothing, and `pulumi destroy` removes what the interrupted run made (it is the stack's own).
- Only the dynamic-provider process killed: the steps in flight fail, nothing is pending, `up` converges.
- One SIGINT: Pulumi cancels gracefully (in-flight steps finish and are recorded), `up` converges.
- `--import-pending-creates` under this CLI drops the entry without recording the resource.
- Objects that existed before the stack are adopted and released by destroy.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any

import pytest

from sandbox.solution_zip import DEFAULT_ROLE_NAME, DEFAULT_UNIQUE_NAME, build_solution_zip
from tests.harness.interrupt import AtWrite, CliRun
from tests.harness.stacks import Stack, dev_stack

LEADWRITER_APP = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"  # the dev stack's existing application
RESOURCES = ("dev-dynamics-solution", "dev-dynamics-user", "dev-dynamics-role", "dev-dynamics-privileges",
             "dev-dynamics-check")
OWNED = ("dev-dynamics-solution", "dev-dynamics-user", "dev-dynamics-role")  # resources with `adopted`
UP = ("up", "--yes", "--skip-preview")
LOCKED = "the stack is currently locked by 1 lock(s)"

# The Dataverse writes of a cold up: (label, method, path pattern, resource that sends it).
WRITES = [
    ("solution import", "POST", r"/ImportSolutionAsync$", "dev-dynamics-solution"),
    ("application user create", "POST", r"/systemusers$", "dev-dynamics-user"),
    ("role association", "POST", r"/systemuserroles_association/\$ref$", "dev-dynamics-role"),
    ("role privileges", "POST", r"AddPrivilegesRole$", "dev-dynamics-privileges"),
    ("validation lead create", "POST", r"/leads$", "dev-dynamics-check"),
    ("validation lead delete", "DELETE", r"/leads\([^)]*\)$", "dev-dynamics-check"),
]


def label_of(method: str, path: str) -> str:
    for label, m, pattern, _ in WRITES:
        if method == m and re.search(pattern, path):
            return label
    return f"{method} {path}"


@pytest.fixture
def stack(sandbox, org, tmp_path):
    """The dev stack in a throwaway project, pointed at a fresh organization; CLI runs it starts are
    cleaned up (no process of theirs outlives the test)."""
    zip_path = tmp_path / "solution.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    st = dev_stack(tmp_path / "stack", sandbox.info, org, zip_path)
    st.org = org.rstrip("/").rsplit("/", 1)[-1]
    st.runs = []
    yield st
    for run in st.runs:
        run.cleanup()


def start(stack: Stack, *args: str) -> CliRun:
    run = CliRun(stack, *args)
    stack.runs.append(run)
    return run


def last_seq(sandbox) -> int:
    return max((e["seq"] for e in sandbox.control.log()), default=0)


def writes_since(sandbox, org: str, since: int) -> list[str]:
    return [label_of(e["method"], e["path"]) for e in sandbox.control.log(since=since)
            if e["kind"] == "dataverse" and e["org"] == org and e["method"] in ("POST", "PATCH", "PUT", "DELETE")
            and not e["path"].endswith("/$batch") and 200 <= e["status"] < 300]


def checkpoint(stack: Stack) -> dict[str, Any]:
    return stack.export()["deployment"]


def pending(deployment: dict[str, Any]) -> list[tuple[str, str]]:
    """(operation, resource name) of the checkpoint's pending operations."""
    return sorted((op["type"], op["resource"]["urn"].rsplit("::", 1)[-1])
                  for op in deployment.get("pending_operations") or [])


def recorded(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Dataverse resources the checkpoint records, by name."""
    return {r["urn"].rsplit("::", 1)[-1]: r for r in deployment.get("resources") or []
            if "dynamic/dynamics:" in r["type"] and r.get("id")}


def writer_role_ids(state: dict[str, Any]) -> set[str]:
    return {r["roleid"] for r in state["roles"] if r["name"] == DEFAULT_ROLE_NAME}


def converged_without_duplicates(sandbox, org: str, imports: int = 1) -> dict[str, Any]:
    """One enabled lead-writer user holding the role once, the procedure's depths, the solution once, no
    test lead left; returns the user."""
    state = sandbox.control.state(org)
    users = [u for u in state["systemusers"] if (u.get("applicationid") or "").lower() == LEADWRITER_APP]
    assert len(users) == 1, f"one application user for the lead writer, found {len(users)}"
    user = users[0]
    assert user["isdisabled"] is False
    held = [a for a in state["assignments"]
            if a["systemuserid"] == user["systemuserid"] and a["roleid"] in writer_role_ids(state)]
    assert len(held) == 1, f"the lead writer holds the role once, found {len(held)}"
    assert state["leads"] == [], "no validation lead is left behind"
    assert [s["version"] for s in state["solutions"] if s["uniquename"] == DEFAULT_UNIQUE_NAME] == ["1.0.0.0"]
    jobs = [j for j in state["importjobs"] if j.get("solutionname") == DEFAULT_UNIQUE_NAME]
    assert len(jobs) == imports, f"{imports} import job(s) expected, found {len(jobs)}"
    root = next(r for r in state["roles"] if r["name"] == DEFAULT_ROLE_NAME and not r.get("_parentroleid_value"))
    depths = {p["name"]: p["depth"] for p in root["privileges"]}
    assert depths["prvReadAsyncOperation"] == "Global" and depths["prvCreateUserEntityUISettings"] == "Basic"
    return user


def assert_destroy_removed_what_the_stack_made(sandbox, org: str, user_id: str) -> None:
    """The user disabled without roles, the solution (and its role) uninstalled, no lead."""
    state = sandbox.control.state(org)
    user = next(u for u in state["systemusers"] if u["systemuserid"] == user_id)
    assert user["isdisabled"] is True, "the stack's own application user is disabled"
    assert not [a for a in state["assignments"] if a["systemuserid"] == user_id], "and holds no role"
    assert not [s for s in state["solutions"] if s["uniquename"] == DEFAULT_UNIQUE_NAME], "the solution is gone"
    assert writer_role_ids(state) == set(), "with its role"
    assert state["leads"] == []


def assert_third_run_changes_nothing(stack: Stack) -> None:
    """`up --refresh` plans nothing and the engine counts every resource unchanged."""
    third = stack.up(refresh=True)
    assert third.ok, third.text
    assert third.planned() == {} and set(third.summary) == {"same"}, third.text


def run_procedure_and_converge(sandbox, stack: Stack, recorded_before: set[str], imports: int = 1):
    """`pulumi refresh --clear-pending-creates --yes`, then `up` creates exactly what was not recorded, every
    object made by this stack is its own (not adopted), and `up --refresh` changes nothing."""
    cleared = stack.cli("refresh", "--clear-pending-creates", "--yes", "--skip-preview")
    assert cleared.returncode == 0
    assert pending(checkpoint(stack)) == [], "the pending creates are cleared"
    again = stack.up()
    assert again.ok, again.text
    assert again.names("create") == set(RESOURCES) - recorded_before, again.text
    user = converged_without_duplicates(sandbox, stack.org, imports)
    records = recorded(checkpoint(stack))
    assert set(records) == set(RESOURCES)
    assert {name: records[name]["outputs"]["adopted"] for name in OWNED} == dict.fromkeys(OWNED, False)
    assert again.outputs["applicationUserId"] == user["systemuserid"]
    assert_third_run_changes_nothing(stack)
    return again, user


def test_a_cold_up_makes_exactly_the_writes_the_matrix_interrupts(sandbox, stack):
    since = last_seq(sandbox)
    first = stack.up()
    assert first.ok, first.text
    assert sorted(writes_since(sandbox, stack.org, since)) == sorted(label for label, *_ in WRITES)
    converged_without_duplicates(sandbox, stack.org)
    records = recorded(checkpoint(stack))
    assert set(records) == set(RESOURCES)
    assert all(records[name]["outputs"]["adopted"] is False for name in OWNED)


@pytest.mark.heavy
@pytest.mark.parametrize("label, method, pattern, resource", WRITES, ids=[w[0].replace(" ", "-") for w in WRITES])
def test_run_killed_right_after_a_write_then_the_procedure_converges_and_destroy_removes_it(
        sandbox, stack, label, method, pattern, resource):
    started = time.monotonic()
    since = last_seq(sandbox)
    runs: list[CliRun] = []
    with AtWrite(sandbox, stack.org, method, pattern, lambda: runs[0].kill_tree()) as at:
        runs.append(start(stack, *UP))
        code = runs[0].wait()
    assert at.hit is not None and label_of(*at.hit) == label, f"the {label} write never came:\n{runs[0].output}"
    assert code == -9 and runs[0].leftovers() == {}, "the CLI and every plugin process are gone"
    landed = writes_since(sandbox, stack.org, since)  # requests already sent may land after the kill, too
    assert landed[:len(at.writes)] == [label_of(*w) for w in at.writes], "the write was applied before the kill"

    after_kill = checkpoint(stack)
    in_flight = pending(after_kill)
    recorded_before = set(recorded(after_kill))
    assert resource not in recorded_before, "the interrupted create is not recorded"
    # Pulumi saves a pending create before it calls the provider, so the killed create is pending (once in
    # ~20 runs the checkpoint read back held no pending operation at all: the procedure converges either way)
    assert set(in_flight) <= {("creating", name) for name in RESOURCES if name not in recorded_before}, in_flight
    if ("creating", resource) not in in_flight:
        print(f"\n[killed after {label}] the checkpoint holds no pending create for {resource}: {in_flight}")

    refused = stack.cli(*UP, check=False)
    assert refused.returncode != 0 and LOCKED in refused.stderr and "pulumi cancel" in refused.stderr
    canceled = stack.cli("cancel", "--yes")
    assert "has been canceled" in canceled.stdout

    since = last_seq(sandbox)
    again, user = run_procedure_and_converge(sandbox, stack, recorded_before)
    recovery = writes_since(sandbox, stack.org, since)
    if "solution import" in landed:
        assert "solution import" not in recovery, "the import that ran is waited for or found, never repeated"

    destroyed = stack.destroy()
    assert destroyed.ok, destroyed.text
    assert_destroy_removed_what_the_stack_made(sandbox, stack.org, user["systemuserid"])
    print(f"\n[killed after write {len(at.writes)}/{len(WRITES)}: {label}] pending {in_flight}; "
          f"recorded before {sorted(recorded_before)}; recovery writes {recovery}; "
          f"{time.monotonic() - started:.1f} s")


def test_sigkill_of_the_cli_group_alone_leaves_its_plugins_running(sandbox, stack):
    """Pulumi starts the language host and providers in process groups of their own: `kill -9` of the CLI's
    group orphans them (they can still be finishing a write), hence kill_tree for a crash, and the README's
    advice to check that no plugin process of the stack is left before `pulumi cancel`."""
    runs: list[CliRun] = []
    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", lambda: runs[0].kill_cli_group()) as at:
        runs.append(start(stack, *UP))
        assert runs[0].wait() == -9
    assert at.hit is not None
    left = runs[0].leftovers()
    assert any("pulumi-language-python" in cmd for cmd in left.values()), left
    assert any("-m pulumi.dynamic" in cmd for cmd in left.values()), left
    runs[0].cleanup()
    assert runs[0].leftovers() == {}


def test_provider_process_killed_mid_up_fails_its_steps_then_up_converges_and_destroy_removes_it(sandbox, stack):
    runs: list[CliRun] = []
    killed: list[int] = []
    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", lambda: killed.extend(runs[0].kill_providers())) as at:
        runs.append(start(stack, *UP))
        code = runs[0].wait()
    output = runs[0].output
    assert at.hit is not None and killed, output
    assert code != 0 and "dev-dynamics-user **creating failed**" in output, output
    deployment = checkpoint(stack)
    assert pending(deployment) == [], "a failed step leaves nothing pending"
    assert "dev-dynamics-user" not in recorded(deployment)
    again = stack.up()  # no lock left, nothing to clear
    assert again.ok, again.text
    assert again.names("create") == set(RESOURCES) - set(recorded(deployment))
    user = converged_without_duplicates(sandbox, stack.org)
    records = recorded(checkpoint(stack))
    assert records["dev-dynamics-user"]["outputs"]["adopted"] is False, "the killed create's user is the stack's own"
    assert_third_run_changes_nothing(stack)
    destroyed = stack.destroy()
    assert destroyed.ok, destroyed.text
    assert_destroy_removed_what_the_stack_made(sandbox, stack.org, user["systemuserid"])


def test_one_sigint_cancels_gracefully_then_up_converges(sandbox, stack):
    runs: list[CliRun] = []
    acknowledged: list[bool] = []

    def ctrl_c() -> None:  # hold the answer until the CLI has taken the signal
        runs[0].interrupt()
        acknowledged.append(runs[0].wait_for("^C received; cancelling", timeout=60))

    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", ctrl_c) as at:
        runs.append(start(stack, *UP))
        code = runs[0].wait()
    output = runs[0].output
    assert at.hit is not None and acknowledged == [True], output
    assert code != 0 and "error: update canceled" in output, output
    deployment = checkpoint(stack)
    assert pending(deployment) == [], "a graceful cancel lets in-flight steps finish: nothing pending"
    done = set(recorded(deployment))
    assert "dev-dynamics-user" in done, "the create in flight finished and is recorded"
    assert runs[0].leftovers() == {}
    again = stack.up()  # the lock was released
    assert again.ok, again.text
    assert again.names("create") == set(RESOURCES) - done
    converged_without_duplicates(sandbox, stack.org)
    assert_third_run_changes_nothing(stack)


def test_import_pending_creates_drops_the_entry_without_recording_it_and_up_claims_the_object(sandbox, stack):
    """Why the README says `--clear-pending-creates`: under this CLI, `--import-pending-creates URN ID` turns
    the entry into an import that the refresh then drops; the resource is not recorded and the next `up`
    creates it, finding what the killed run made (no duplicate, still the stack's own)."""
    runs: list[CliRun] = []
    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", lambda: runs[0].kill_tree()):
        runs.append(start(stack, *UP))
        assert runs[0].wait() == -9
    stack.cli("cancel", "--yes")
    deployment = checkpoint(stack)
    user_urn = next(op["resource"]["urn"] for op in deployment["pending_operations"]
                    if op["resource"]["urn"].endswith("::dev-dynamics-user"))
    state = sandbox.control.state(stack.org)
    user_id = next(u["systemuserid"] for u in state["systemusers"] if u["applicationid"] == LEADWRITER_APP)
    imported = stack.cli("refresh", "--import-pending-creates", user_urn, "--import-pending-creates", user_id,
                         "--yes", "--skip-preview")
    assert imported.returncode == 0
    deployment = checkpoint(stack)
    assert "dev-dynamics-user" not in [name for _, name in pending(deployment)]
    assert "dev-dynamics-user" not in recorded(deployment), "not recorded by the import"
    again = stack.up()
    assert again.ok, again.text
    assert "dev-dynamics-user" in again.names("create")
    user = converged_without_duplicates(sandbox, stack.org)
    assert user["systemuserid"] == user_id
    assert recorded(checkpoint(stack))["dev-dynamics-user"]["outputs"]["adopted"] is False


def test_objects_that_existed_before_the_stack_are_adopted_and_released_by_destroy(
        sandbox, org, stack, deployer, tmp_path):
    from dynamics_provider.client import DataverseClient

    client = DataverseClient.for_instance(org, deployer)
    # a person installed the solution, made the application user and gave it the role, in the UI
    zip_bytes = (tmp_path / "solution.zip").read_bytes()
    client.action("ImportSolutionAsync", {"OverwriteUnmanagedCustomizations": False, "PublishWorkflows": True,
                                          "CustomizationFile": base64.b64encode(zip_bytes).decode(),
                                          "ImportJobId": str(uuid.uuid4())})
    deadline = time.monotonic() + 60
    while not [s for s in sandbox.control.state(stack.org)["solutions"] if s["uniquename"] == DEFAULT_UNIQUE_NAME]:
        assert time.monotonic() < deadline, "the import by hand never finished"
        time.sleep(0.2)
    state = sandbox.control.state(stack.org)
    root_bu = next(b["businessunitid"] for b in state["businessunits"] if not b.get("_parentbusinessunitid_value"))
    user_id = client.create("systemusers", {"applicationid": LEADWRITER_APP, "lastname": "Writer",
                                            "internalemailaddress": "writer@contoso.example",
                                            "businessunitid@odata.bind": f"/businessunits({root_bu})"})
    role = next(r["roleid"] for r in state["roles"]
                if r["name"] == DEFAULT_ROLE_NAME and r["_businessunitid_value"] == root_bu)
    client.associate("systemusers", user_id, "systemuserroles_association", "roles", role)

    first = stack.up()
    assert first.ok, first.text
    user = converged_without_duplicates(sandbox, stack.org)
    assert user["systemuserid"] == user_id
    records = recorded(checkpoint(stack))
    assert {name: records[name]["outputs"]["adopted"] for name in OWNED} == dict.fromkeys(OWNED, True)

    destroyed = stack.destroy()
    assert destroyed.ok, destroyed.text
    state = sandbox.control.state(stack.org)
    user = next(u for u in state["systemusers"] if u["systemuserid"] == user_id)
    assert user["isdisabled"] is False, "the adopted user is released, not disabled"
    assert {"systemuserid": user_id, "roleid": role} in state["assignments"], "it keeps the role it had"
    assert [s["uniquename"] for s in state["solutions"] if s["uniquename"] == DEFAULT_UNIQUE_NAME], "still installed"
    root = next(r for r in state["roles"] if r["roleid"] == role)
    assert "prvReadAsyncOperation" not in {p["name"] for p in root["privileges"]}, "depths restored as found"
    assert state["leads"] == []
