"""A cold `pulumi up` of the dev stack interrupted under the real CLI (.tools/bin/pulumi), against the sandbox.

- The whole run SIGKILLed right after each Dataverse write in turn (heavy matrix): the checkpoint keeps a
  pending create and the stale lock; the README's procedure (`pulumi cancel`, `pulumi refresh
  --clear-pending-creates`, `pulumi up`) converges with no duplicate and nothing lost, a third run changes
  nothing, and `pulumi destroy` removes what the interrupted run made (it is the stack's own).
- Only the dynamic-provider process killed: the steps in flight fail, nothing is pending, `up` converges.
- One SIGINT: Pulumi cancels gracefully (in-flight steps finish and are recorded), `up` converges.
- Ctrl-C, or the SIGINT the engine sends the program's process group when it closes the language host, at
  every point of a run (program start, registering, waiting on a provider, the end): no traceback, nothing
  of the run left (the program's SIGINT handler, __main__.py).
- `--import-pending-creates` under this CLI drops the entry without recording the resource.
- Objects that existed before the stack are adopted and released by destroy.
"""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from sandbox.solution_zip import DEFAULT_ROLE_NAME, DEFAULT_UNIQUE_NAME
from tests.harness.dev_stack_runs import (
    LEADWRITER_APP,
    LOCKED,
    OWNED,
    RESOURCES,
    UP,
    WRITES,
    HeldRead,
    assert_destroy_removed_what_the_stack_made,
    assert_third_run_changes_nothing,
    checkpoint,
    converged_without_duplicates,
    interruptible_dev_stack,
    label_of,
    last_seq,
    pending,
    recorded,
    run_procedure_and_converge,
    start,
    writes_since,
)
from tests.harness.interrupt import AtWrite, CliRun
from tools.offline_env import REPO


@pytest.fixture
def stack(sandbox, org, tmp_path):
    yield from interruptible_dev_stack(sandbox, org, tmp_path)


def test_a_cold_up_makes_exactly_the_writes_the_matrix_interrupts(sandbox, stack):
    since = last_seq(sandbox)
    first = stack.up()
    assert first.ok, first.text
    assert sorted(writes_since(sandbox, stack.org, since)) == sorted(label for label, *_ in WRITES)
    converged_without_duplicates(sandbox, stack.org)
    records = recorded(checkpoint(stack))
    assert set(records) == set(RESOURCES)
    assert all(records[name]["outputs"]["adopted"] is False for name in OWNED)


# make test kills after three of the six writes (the import, a privilege write, the lead a validation leaves);
# make test-long (its own part of .ci/run) after the other three: the whole matrix does not fit make test's budget.
LONG_KILLS = {"application user create", "role association", "validation lead delete"}


@pytest.mark.heavy
@pytest.mark.parametrize("label, method, pattern, resource",
                         [pytest.param(*w, marks=pytest.mark.long) if w[0] in LONG_KILLS else w for w in WRITES],
                         ids=[w[0].replace(" ", "-") for w in WRITES])
def test_run_killed_right_after_a_write_then_the_procedure_converges_and_destroy_removes_it(
        sandbox, stack, label, method, pattern, resource):
    started = time.monotonic()
    since = last_seq(sandbox)
    runs: list[CliRun] = []
    with AtWrite(sandbox, stack.org, method, pattern, lambda: runs[0].kill_tree()) as at:
        runs.append(start(stack, *UP))
        code = runs[0].wait()
    assert at.hit is not None and label_of(*at.hit) == label, f"the {label} write never came:\n{runs[0].output}"
    assert code == -9 and runs[0].gone() == {}, "the CLI and every plugin process are gone"
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
    assert runs[0].gone() == {}


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
    assert runs[0].gone() == {}
    again = stack.up()  # the lock was released
    assert again.ok, again.text
    assert again.names("create") == set(RESOURCES) - done
    converged_without_duplicates(sandbox, stack.org)
    assert_third_run_changes_nothing(stack)


# Where the program is when SIGINT reaches it, and what marks the point: reading its privileges spec in its
# top-level code (a FIFO holds it there: its imports are done, nothing is registered), the stack resource's
# first line (its registrations reach the engine), the first Dataverse write held (the resources that need
# its outputs are not registered yet: the program awaits a provider), the last write held (every resource is
# registered: the program awaits the last answer and the engine's shutdown).
POINTS = {
    "program start": None,
    "registering": "pulumi:pulumi:Stack lead-destination-dev creating",
    "waiting on a provider": ("POST", r"/ImportSolutionAsync$"),
    "end": ("DELETE", r"/leads\([^)]*\)$"),
}
TRACEBACK = ("Traceback", "KeyboardInterrupt")


def run_interrupted_at(sandbox, stack, tmp_path, point: str, action) -> tuple[CliRun, int]:
    """A cold `up` with `action(run)` done at `point`; returns the run and its exit code."""
    runs: list[CliRun] = []
    mark = POINTS[point]
    if mark is None:
        held = HeldRead(tmp_path / "privileges.yaml", (REPO / "components" / "privileges.yaml").read_text())
        stack.set_config("privileges", str(held.path))
        runs.append(start(stack, *UP))
        try:
            assert held.reached(120), f"the program never read its privileges spec:\n{runs[0].output}"
            action(runs[0])
        finally:
            held.release()
    elif isinstance(mark, str):
        runs.append(start(stack, *UP))
        assert runs[0].wait_for(mark, 120), runs[0].output
        action(runs[0])
    else:
        with AtWrite(sandbox, stack.org, *mark, lambda: action(runs[0])) as at:
            runs.append(start(stack, *UP))
            runs[0].wait()
        assert at.hit is not None, f"the {mark} write never came:\n{runs[0].output}"
    return runs[0], runs[0].wait()


@pytest.mark.parametrize("point", list(POINTS), ids=[p.replace(" ", "-") for p in POINTS])
def test_ctrl_c_at_any_point_of_a_run_cancels_without_a_traceback_and_leaves_no_process(
        sandbox, stack, tmp_path, point):
    acknowledged: list[bool] = []

    def ctrl_c(run: CliRun) -> None:  # at a held write: the answer waits until the CLI has taken the signal
        run.interrupt()
        acknowledged.append(run.wait_for("^C received; cancelling", timeout=60))

    run, code = run_interrupted_at(sandbox, stack, tmp_path, point, ctrl_c)
    output = run.output
    assert acknowledged == [True] and code != 0 and "error: update canceled" in output, output[-3000:]
    assert [t for t in TRACEBACK if t in output] == [], output[-3000:]
    assert run.gone() == {}, "nothing of the run outlives the CLI"


@pytest.mark.parametrize("point", list(POINTS), ids=[p.replace(" ", "-") for p in POINTS])
def test_the_engines_sigint_ends_the_program_quietly_at_any_point_of_a_run(sandbox, stack, tmp_path, point):
    """The engine closes the language host with SIGINT to its process group, the program included
    (pulumi/pulumi#19603): where Python's default handler would raise KeyboardInterrupt and Pulumi's exec
    script print its traceback, the program's handler ends the process at once, without a word."""
    programs: list[list[int]] = []
    run, code = run_interrupted_at(sandbox, stack, tmp_path, point,
                                   lambda run: programs.append(run.interrupt_program()))
    output = run.output
    assert programs and programs[0], f"no program process to interrupt:\n{output[-3000:]}"
    assert code != 0, output[-3000:]  # the language host is gone: the engine reports the run failed
    assert [t for t in TRACEBACK if t in output] == [], output[-3000:]
    assert run.gone() == {}, "nothing of the run outlives the CLI"


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
