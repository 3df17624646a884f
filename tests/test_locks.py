"""Stack locks of the file backend under the real CLI (.tools/bin/pulumi), against the sandbox.

A second `up` (or refresh, destroy) while one runs is refused at once with Pulumi's lock message and changes
nothing; preview takes no lock. A run that dies leaves its lock behind, naming a process that no longer exists;
`pulumi cancel` removes it. On this backend `pulumi cancel` only deletes the lock: a run still alive goes on.
"""

from __future__ import annotations

import pytest
from pulumi import automation as auto

from tests.harness.dev_stack_runs import (
    LOCKED,
    RESOURCES,
    UP,
    assert_third_run_changes_nothing,
    checkpoint,
    converged_without_duplicates,
    interruptible_dev_stack,
    pending,
    recorded,
    start,
)
from tests.harness.interrupt import AtWrite, CliRun, Held


@pytest.fixture
def stack(sandbox, org, tmp_path):
    yield from interruptible_dev_stack(sandbox, org, tmp_path)


def lock_files(stack) -> list[str]:
    return sorted(str(p) for p in (stack.project.root / "state" / ".pulumi" / "locks").rglob("*.json"))


def test_a_second_up_while_one_runs_is_refused_with_the_lock_message_and_nothing_is_duplicated(sandbox, stack):
    held = Held(limit=120)
    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", held):
        first = start(stack, *UP)
        try:
            assert held.reached.wait(120), first.output
            assert len(lock_files(stack)) == 1
            with pytest.raises(auto.errors.ConcurrentUpdateError) as refused:
                stack.auto.up()
            assert LOCKED in str(refused.value) and "pulumi cancel" in str(refused.value)
            for verb, run in (("refresh", stack.refresh), ("destroy", stack.destroy)):
                other = run()
                assert not other.ok and LOCKED in other.text, (verb, other.text)
            preview = stack.preview()  # no lock: it reads the checkpoint as it is
            assert preview.ok, preview.text
            assert "dev-dynamics-user" in preview.names("create")
        finally:
            held.release.set()
        assert first.wait() == 0, first.output
    assert lock_files(stack) == [], "the run released its lock"
    converged_without_duplicates(sandbox, stack.org)
    assert set(recorded(checkpoint(stack))) == set(RESOURCES)
    assert_third_run_changes_nothing(stack)


def test_a_dead_run_leaves_a_stale_lock_that_pulumi_cancel_removes(sandbox, stack):
    runs: list[CliRun] = []
    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", lambda: runs[0].kill_tree()):
        runs.append(start(stack, *UP))
        assert runs[0].wait() == -9
    dead_pid = runs[0].proc.pid
    assert len(lock_files(stack)) == 1, "the lock outlives the run"
    refused = stack.cli(*UP, check=False)
    assert refused.returncode != 0 and LOCKED in refused.stderr
    assert f"(pid {dead_pid})" in refused.stderr, "the lock names the dead CLI"
    canceled = stack.cli("cancel", "--yes")
    assert "has been canceled" in canceled.stdout
    assert lock_files(stack) == []

    left = pending(checkpoint(stack))
    assert left, "the killed run's creates are pending"
    # `up` right away works too: it warns, creates what is missing (finding what the killed run made) and
    # leaves the pending entries for `refresh --clear-pending-creates` to drop
    again = stack.up()
    assert again.ok, again.text
    assert f"with {len(left)} pending operations from previous deployment" in again.text
    converged_without_duplicates(sandbox, stack.org)
    assert pending(checkpoint(stack)) == left
    cleared = stack.cli("refresh", "--clear-pending-creates", "--yes", "--skip-preview")
    assert cleared.returncode == 0 and pending(checkpoint(stack)) == []
    assert_third_run_changes_nothing(stack)


def test_pulumi_cancel_on_this_backend_removes_the_lock_of_a_live_run_without_stopping_it(sandbox, stack):
    held = Held(limit=120)
    with AtWrite(sandbox, stack.org, "POST", r"/systemusers$", held):
        first = start(stack, *UP)
        try:
            assert held.reached.wait(120), first.output
            canceled = stack.cli("cancel", "--yes")
            assert "has been canceled" in canceled.stdout
            assert lock_files(stack) == [] and first.proc.poll() is None, "the lock is gone, the run goes on"
        finally:
            held.release.set()
        assert first.wait() == 0, first.output
    assert "there was a problem deleting the lock" in first.output
    converged_without_duplicates(sandbox, stack.org)
    assert set(recorded(checkpoint(stack))) == set(RESOURCES)
