"""The fleet on a shared backend: Azure Blob Storage (`azblob://`) served by Azurite, Microsoft's storage
emulator (tools/azurite.py, installed by `make azurite`), and many runners on one backend.

- The Pulumi CLI built here uses Azurite as its state backend (login, stack init, ls, up), through the
  latency proxy too.
- The fleet story of tests/test_fleet.py (onboarding, cold up, drift named exactly, faults isolated per
  stack, repair, all in sync) on azblob, its 20 stacks under `long` (make test-long, a part of .ci/run of its
  own: it does not fit make test's budget; make test runs the 6-stack story on the file backend).
- Two `fleet up` runs on overlapping stacks: each stack is updated once; the stack the other run holds is
  `locked` with the lock's owner (exit code 4), never drift or a failure; nothing duplicated in Dataverse.
- A run killed mid-update: the next run reports the stale lock, the pending creates and the commands to
  run; `--recover-stale-locks-older-than` performs them. Lock tests run on azblob and on the file backend.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.locks import Lock
from tests.harness.dev_stack_runs import converged_without_duplicates
from tests.harness.interrupt import AtWrite, CliRun, Held
from tests.test_fleet import DRIFTED, FAULTED, FLEET_SIZE, FleetProject, fleet_story, orgs, report
from tools.azurite import Azurite
from tools.offline_env import PULUMI, REPO


@pytest.fixture
def azurite(tmp_path: Path) -> Iterator[Azurite]:
    """Azurite on a free port, its data under the test's temp dir, stopped after the test."""
    handle = Azurite.start(tmp_path)
    try:
        yield handle
    finally:
        handle.stop()
    assert handle.process.poll() is not None


# The Azure Blob variants of the lock stories run under make test-long (make test's budget); make test keeps the
# file variants and test_the_pulumi_cli_keeps_its_stacks_in_azurite for the azblob backend itself.
@pytest.fixture(params=["file", pytest.param("azblob", marks=pytest.mark.long)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment that points Pulumi at the backend: the test project's own file backend, or Azurite."""
    if request.param == "file":
        yield {}
        return
    with Azurite.start(tmp_path / "azurite") as handle:
        yield handle.env


# --- the CLI on Azurite ------------------------------------------------------------------------------
def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PULUMI), *args, "--non-interactive"], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120)


def test_the_pulumi_cli_keeps_its_stacks_in_azurite_and_the_proxy_adds_latency_to_each_request(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: azblob-check\nruntime: python\n")
    base = {**os.environ, "PULUMI_HOME": str(tmp_path / "home"), "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_CONFIG_PASSPHRASE": "azurite-test"}
    with Azurite.start(tmp_path / "plain") as plain, Azurite.start(tmp_path / "slow", latency_ms=20) as slow:
        assert slow.port != plain.port and slow.endpoint_port != slow.port
        for azurite in (plain, slow):
            env = base | azurite.env
            login = _cli(project, env, "login", azurite.backend_url)
            assert login.returncode == 0 and azurite.backend_url in login.stdout, login.stderr
            for name in ("alpha", "beta"):
                assert _cli(project, env, "stack", "init", name, "--no-select").returncode == 0
            listed = _cli(project, env, "stack", "ls", "--json")
            assert sorted(s["name"] for s in json.loads(listed.stdout)) == ["alpha", "beta"], listed.stderr
        # The state is Azurite's, not a file of this machine: the plain emulator has its own two stacks.
        status, body = plain.request("GET", f"/{plain.container}", {"restype": "container", "comp": "list"})
        assert status == 200 and b".pulumi/stacks/azblob-check/alpha.json" in body
        before, started = slow.requests, time.monotonic()
        assert _cli(project, base | slow.env, "stack", "ls", "--json").returncode == 0
        elapsed, requests = time.monotonic() - started, slow.requests - before
        assert requests >= 2 and elapsed >= requests * 0.020, (requests, elapsed)
    assert plain.process.poll() is not None and slow.process.poll() is not None


# --- the fleet story on azblob ---------------------------------------------------------------------------
@pytest.mark.heavy
@pytest.mark.long  # 242 s on a loaded 2-core machine: make test-long, its own part of .ci/run (not make test)
def test_a_fleet_of_20_on_azblob_drift_in_3_faults_in_2_then_repaired_and_in_sync(
        tmp_path: Path, sandbox: Any, azurite: Azurite):
    fp = FleetProject(tmp_path, sandbox.info, azurite.env)
    seconds = fleet_story(fp, sandbox, FLEET_SIZE, DRIFTED, FAULTED)
    print(f"azblob, {FLEET_SIZE} stacks: {seconds}")


# --- many runners, one backend -------------------------------------------------------------------------
class FleetRun:
    """`python -m fleet ARGS` started in its own session, for `CliRun` (output as it comes, processes, kill_tree)."""

    def __init__(self, fp: FleetProject) -> None:
        self.fp = fp

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "fleet", *args, "-C", str(self.fp.dir)], cwd=REPO,
                                env=self.fp.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _onboard(fp: FleetProject, sandbox: Any, names: list[str]) -> dict[str, str]:
    """The stacks `names`, each on a fresh organization: name -> organization (the URL's last segment)."""
    urls = orgs(sandbox, len(names))
    inventory = fp.root / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"defaults": fp.settings(),
                                         "stacks": [{"name": n, "instanceUrl": u} for n, u in zip(names, urls, strict=True)]}))
    added = fp.fleet("add", "--from", str(inventory))
    assert added.returncode == 0, added.stdout + added.stderr
    return {n: u.rstrip("/").rsplit("/", 1)[-1] for n, u in zip(names, urls, strict=True)}


def _updates(fp: FleetProject, stack: str) -> list[dict[str, Any]]:
    history = json.loads(fp.pulumi("stack", "history", "--json", "--stack", stack).stdout or "[]")
    return [h for h in history if h.get("kind") == "update"]


def _pulumi_up_pids(run: CliRun) -> set[int]:
    return {pid for pid, cmd in run.seen.items() if cmd.split(" ", 1)[0].endswith("pulumi") and " up " in f"{cmd} "}


def test_two_runs_on_overlapping_stacks_update_each_stack_once_and_report_the_held_one_locked_with_its_owner(
        tmp_path: Path, sandbox: Any, backend: dict[str, str]):
    fp = FleetProject(tmp_path, sandbox.info, backend)
    org = _onboard(fp, sandbox, ["r-a", "r-b", "r-c"])
    held = Held()
    with AtWrite(sandbox, org["r-b"], "POST", r"/systemusers$", held):
        first = CliRun(FleetRun(fp), "up", "r-a", "r-b", "--json", str(fp.root / "first.json"))
        try:
            assert held.reached.wait(300), first.output
            first.processes()  # the first run's processes (kept in .seen), the `pulumi up` of r-b among them
            second = fp.fleet("up", "r-b", "r-c", "--json", str(fp.root / "second.json"),
                              "--markdown", str(fp.root / "second.md"))
        finally:
            held.release.set()
            code = first.wait()
            first.cleanup()
    assert code == 0, first.output
    assert second.returncode == 4, second.stdout + second.stderr  # locked: not a failure (1), not drift (3)
    ours, theirs = report(fp.root / "first.json"), report(fp.root / "second.json")
    assert {n: r["status"] for n, r in ours.items()} == {"r-a": "changed", "r-b": "changed"}
    assert {n: r["status"] for n, r in theirs.items()} == {"r-b": "locked", "r-c": "changed"}

    # The owner is the first run's `pulumi up` of r-b, as Pulumi names it: user@host (pid N).
    lock = theirs["r-b"]["lock"]
    owner_pid = int(lock["owner"].rsplit("(pid ", 1)[1].rstrip(")"))
    assert owner_pid in _pulumi_up_pids(first), (lock, first.seen)
    assert lock["owner"].split(" (pid")[0].endswith(f"@{socket.gethostname()}")
    assert lock["holder_alive"] is True and lock["recovery"] == []  # a live run: no `pulumi cancel` advice
    assert theirs["r-b"]["error"].startswith(f"locked by {lock['owner']} since ")
    assert "still in progress" in theirs["r-b"]["error"] and theirs["r-b"]["changes"] == []
    assert "fleet up: 2 stack(s)" in second.stdout and "1 locked by another run" in second.stdout
    assert f"| `r-b` | 🔒 locked | locked by {lock['owner']}" in (fp.root / "second.md").read_text()

    # Each stack updated once, by one of the runs; nothing duplicated in the organizations.
    for name in org:
        updates = _updates(fp, name)
        assert len(updates) == 1, (name, updates)
        assert updates[0]["result"] == "succeeded" and updates[0]["resourceChanges"].get("create", 0) > 0
        converged_without_duplicates(sandbox, org[name])


def test_a_run_killed_mid_update_is_reported_as_a_stale_lock_with_its_pending_creates_then_recovered_by_flag(
        tmp_path: Path, sandbox: Any, backend: dict[str, str]):
    fp = FleetProject(tmp_path, sandbox.info, backend)
    org = _onboard(fp, sandbox, ["k-a", "k-b"])
    runs: list[CliRun] = []

    def crash() -> None:  # the CI runner is lost: the fleet, its pulumi, the language host, the providers
        # The run's processes noted while they run (the write is held): kill_tree's first SIGKILL takes the
        # fleet's whole process group, its `pulumi up` with it, before its own listing could see that process.
        runs[0].processes()
        runs[0].kill_tree()

    with AtWrite(sandbox, org["k-a"], "POST", r"/systemusers$", crash):
        runs.append(CliRun(FleetRun(fp), "up", "k-a"))
        try:
            assert runs[0].wait() == -signal.SIGKILL, runs[0].output
        finally:
            runs[0].cleanup()
    dead = _pulumi_up_pids(runs[0])
    assert len(dead) == 1, (runs[0].seen, runs[0].output[-3000:])

    # The next run: k-a locked by the dead CLI, its pending create named, the recovery spelled out; k-b goes on.
    after = fp.fleet("up", "--json", str(fp.root / "after.json"), "--markdown", str(fp.root / "after.md"))
    assert after.returncode == 4, after.stdout + after.stderr
    result = report(fp.root / "after.json")
    assert result["k-b"]["status"] == "changed"
    stale = result["k-a"]
    assert stale["status"] == "locked"
    assert stale["lock"]["owner"].endswith(f"(pid {dead.pop()})") and stale["lock"]["holder_alive"] is False
    assert "k-a-dynamics-user" in stale["pending"]
    commands = ["pulumi cancel --stack k-a --yes",
                "pulumi refresh --stack k-a --clear-pending-creates --yes --skip-preview",
                "pulumi up --stack k-a"]
    assert stale["lock"]["recovery"] == commands
    assert "that process no longer runs (stale lock): run " + " && ".join(commands) in stale["error"]
    assert "pending creates: " in stale["error"] and "k-a-dynamics-user" in stale["error"]
    assert "k-a-dynamics-user" in (fp.root / "after.md").read_text()

    # The flag recovers only locks old enough: this one is seconds old.
    young = fp.fleet("up", "k-a", "--recover-stale-locks-older-than", "2h", "--json", str(fp.root / "young.json"))
    assert young.returncode == 4, young.stdout + young.stderr
    assert "(not 2 h old yet: not recovered)" in report(fp.root / "young.json")["k-a"]["error"]

    recovered = fp.fleet("up", "k-a", "--recover-stale-locks-older-than", "1s", "--json", str(fp.root / "rec.json"))
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    entry = report(fp.root / "rec.json")["k-a"]
    assert entry["status"] == "changed" and entry["lock"]["recovered"] is True
    assert "k-a-dynamics-user" in entry["pending"]
    checkpoint = json.loads(fp.pulumi("stack", "export", "--stack", "k-a").stdout)
    assert not checkpoint["deployment"].get("pending_operations"), "refresh --clear-pending-creates ran"
    for name in org:
        converged_without_duplicates(sandbox, org[name])
    again = fp.fleet("up", "--json", str(fp.root / "again.json"))
    assert again.returncode == 0 and {r["status"] for r in report(fp.root / "again.json").values()} == {"in-sync"}


def test_two_runs_started_together_on_the_same_stacks_change_each_stack_once(
        tmp_path: Path, sandbox: Any, azurite: Azurite):
    """Whichever run reaches a stack first updates it; the other finds it locked or, later, in sync. Two runs
    reaching it at the same instant may both give way (Pulumi writes its lock, then lists the locks): fleet
    tries again, so the stack is never left to nobody."""
    fp = FleetProject(tmp_path, sandbox.info, azurite.env)
    org = _onboard(fp, sandbox, ["t-a", "t-b"])
    runs = [CliRun(FleetRun(fp), "up", "--parallel", "2", "--json", str(fp.root / f"run{i}.json")) for i in (1, 2)]
    try:
        codes = [run.wait() for run in runs]
    finally:
        for run in runs:
            run.cleanup()
    assert set(codes) <= {0, 4}, [run.output for run in runs]
    results = [report(fp.root / f"run{i}.json") for i in (1, 2)]
    for name in org:
        statuses = sorted(r[name]["status"] for r in results)
        assert statuses in (["changed", "locked"], ["changed", "in-sync"]), (name, statuses)
        creating = [u for u in _updates(fp, name) if u["resourceChanges"].get("create", 0) > 0]
        assert len(creating) == 1, (name, _updates(fp, name))
        converged_without_duplicates(sandbox, org[name])


def test_a_lock_held_by_a_killed_process_not_yet_reaped_is_not_held_by_a_running_one():
    """A SIGKILLed `pulumi up` stays a zombie until its parent (PID 1 for an orphan) reaps it, and a signal
    still finds a zombie: the lock's holder is judged by the process state, not by the signal alone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock = Lock(url="x", user="ci", host=socket.gethostname(), pid=child.pid)
        assert lock.holder_alive() is True
        os.kill(child.pid, signal.SIGKILL)
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 30  # until the kernel has made it a zombie (not reaped: no wait() yet)
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert lock.holder_alive() is False
    finally:
        child.kill()
        child.wait()
    assert Lock(url="x", user="ci", host="another-machine", pid=os.getpid()).holder_alive() is None
