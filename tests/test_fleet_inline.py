"""`python -m fleet --program-host inline`: each stack's program hosted in the fleet's own process (Pulumi's
Automation API serves it to the CLI), against the real CLI and the sandbox over HTTPS.

- A stack converged inline is one the plain CLI (language host + `__main__.py`) finds unchanged, and the
  reverse; the inputs the engine records, the dynamic providers' pickled `__provider` among them, are the
  same under both hosts (the state contract).
- Stacks run at once in one process keep their own config: each reaches its own organization only, with
  its own settings, and its providers carry their own stack as owner.
- A stack whose config the program refuses fails with the program's one message (no traceback, no second
  line from the engine), the same reason as with a process per stack, and the others go on.
"""

from __future__ import annotations

import _pickle
import base64
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dill
import pytest
import yaml

from fleet import inline
from sandbox.testing import _org_name
from tests.harness.dev_stack_runs import converged_without_duplicates
from tests.harness.interrupt import KILL_DEADLINE, AtWrite, CliRun, wait_gone
from tests.test_fleet import FleetProject, orgs, report
from tests.test_fleet_azblob import FleetRun
from tools.offline_env import REPO

LEADWRITER = "pulumi-python:dynamic/dynamics:ApplicationUser"


@pytest.fixture
def fleet_project(tmp_path: Path, sandbox: Any) -> FleetProject:
    return FleetProject(tmp_path, sandbox.info)


def _onboard(fp: FleetProject, stacks: dict[str, dict[str, Any]]) -> None:
    inventory = fp.root / f"inv-{uuid.uuid4().hex[:6]}.yaml"
    inventory.write_text(yaml.safe_dump([{"name": name, **settings} for name, settings in stacks.items()]))
    added = fp.fleet("add", "--from", str(inventory))
    assert added.returncode == 0, added.stdout + added.stderr


SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's signature key of a secret value in a checkpoint


def _plain(value: Any) -> Any:
    """A checkpoint value with its secrets decrypted (`export --show-secrets` gives their JSON as `plaintext`):
    the ciphertext of one value differs on every write, its plaintext is what the engine recorded."""
    if isinstance(value, dict) and SECRET_SIG in value:
        return {"secret": _plain(json.loads(value["plaintext"]))}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _inputs(fp: FleetProject, stack: str) -> dict[str, dict[str, Any]]:
    """Every custom resource's recorded inputs (by URN), decrypted, read from the checkpoint."""
    exported = json.loads(fp.pulumi("stack", "export", "--show-secrets", "--stack", stack).stdout)
    return {r["urn"]: _plain(r.get("inputs", {})) for r in exported["deployment"]["resources"]
            if r.get("custom") and not r["type"].startswith("pulumi:providers:")}


def _differences(left: dict[str, dict[str, Any]], right: dict[str, dict[str, Any]]) -> list[str]:
    """`resource name.input` for every input recorded differently (or only on one side)."""
    found = sorted(set(left) ^ set(right))
    for urn in sorted(set(left) & set(right)):
        keys = set(left[urn]) | set(right[urn])
        found += [f"{urn.rsplit('::', 1)[-1]}.{k}" for k in sorted(keys) if left[urn].get(k) != right[urn].get(k)]
    return found


def _owner(serialized: Any) -> str:
    """The stack a pickled dynamic provider says declared it (dynamics_provider.base.stack_owner)."""
    if isinstance(serialized, dict):
        serialized = serialized["secret"]
    return dill.loads(base64.b64decode(serialized)).owner  # noqa: S301 - our own checkpoint, written by this test


def test_a_stack_converged_inline_is_unchanged_for_the_plain_cli_with_the_same_inputs_and_the_reverse(
        fleet_project: FleetProject, sandbox: Any):
    fp = fleet_project
    url_a, url_b = orgs(sandbox, 2)
    # stack a names its solution by a path relative to the project: the CLI runs the program there, inline
    # runs it in the fleet's process, whose working directory is elsewhere (the repository)
    shutil.copy(fp.solution, fp.dir / "solution-a.zip")
    _onboard(fp, {"a": {**fp.settings(url_a), "solution": {"path": "solution-a.zip"}}, "b": fp.settings(url_b)})

    # a: converged inline; the plain CLI's preview --refresh sees no change; its `up` records the same inputs
    up = fp.fleet("up", "a", "--program-host", "inline", "--json", str(fp.root / "up-a.json"))
    assert up.returncode == 0, up.stdout + up.stderr
    assert "programs: inline in this process" in up.stdout
    assert report(fp.root / "up-a.json")["a"]["status"] == "changed"
    inline_inputs = _inputs(fp, "a")
    assert any(i.get("__provider") for i in inline_inputs.values())
    assert str(fp.dir / "solution-a.zip") in json.dumps(inline_inputs), "the relative path is the project's"
    preview = fp.pulumi("preview", "--stack", "a", "--refresh", "--diff", "--expect-no-changes", check=False)
    assert preview.returncode == 0, preview.stdout + preview.stderr
    plain = fp.pulumi("up", "--stack", "a", "--yes", "--skip-preview", "--expect-no-changes", check=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert _differences(_inputs(fp, "a"), inline_inputs) == []

    # b: converged by the plain CLI; the fleet's inline preview finds it in sync, its inline up changes
    # nothing and records the inputs the CLI recorded
    fp.pulumi("up", "--stack", "b", "--yes", "--skip-preview")
    cli_inputs = _inputs(fp, "b")
    review = fp.fleet("preview", "b", "--program-host", "inline", "--json", str(fp.root / "preview-b.json"))
    assert review.returncode == 0, review.stdout + review.stderr
    assert report(fp.root / "preview-b.json")["b"]["status"] == "in-sync"
    again = fp.fleet("up", "b", "--program-host", "inline", "--json", str(fp.root / "up-b.json"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert report(fp.root / "up-b.json")["b"]["status"] == "in-sync"
    assert _differences(_inputs(fp, "b"), cli_inputs) == []
    for url in (url_a, url_b):
        converged_without_duplicates(sandbox, url)


def test_stacks_run_inline_at_once_each_reach_only_their_own_organization_with_their_own_settings(
        fleet_project: FleetProject, sandbox: Any):
    fp = fleet_project
    names = [f"par-{i}" for i in range(5)]
    urls = dict(zip(names, orgs(sandbox, len(names)), strict=True))
    _onboard(fp, {name: {**fp.settings(urls[name]),
                         "applicationUser": {"email": f"leads@{name}.example", "firstName": f"Writer {name}"}}
                  for name in names})
    sandbox.control.clear_log()
    up = fp.fleet("up", "par-*", "--parallel", "5", "--program-host", "inline", "--json", str(fp.root / "up.json"))
    assert up.returncode == 0, up.stdout + up.stderr
    assert {r["status"] for r in report(fp.root / "up.json").values()} == {"changed"}

    for name in names:
        inputs = _inputs(fp, name)
        for urn, given in inputs.items():
            if "instance_url" in given:
                assert given["instance_url"] == urls[name], (name, urn)
        # the providers that derive ids of their own (the application user, the lead check) carry the stack
        owners = {_owner(given["__provider"]) for given in inputs.values()} - {""}
        assert owners == {f"lead-destination/{name}"}, (name, owners)
        user = converged_without_duplicates(sandbox, urls[name])  # nothing another stack made in this org
        assert user["firstname"] == f"Writer {name}"
        assert user["systemuserid"] == fp.outputs(name)["applicationUserId"]
    hosts = {entry.get("org") for entry in sandbox.control.log() if entry.get("org")}
    assert hosts == {_org_name(url) for url in urls.values()}, hosts


def test_a_stack_whose_config_the_program_refuses_fails_with_its_one_message_and_the_others_go_on(
        fleet_project: FleetProject, sandbox: Any):
    fp = fleet_project
    names = ["cfg-a", "cfg-bad", "cfg-c"]
    urls = dict(zip(names, orgs(sandbox, len(names)), strict=True))
    _onboard(fp, {name: fp.settings(urls[name]) for name in names})
    # a value `fleet add` would refuse, set behind its back: only the program finds it
    fp.pulumi("config", "set", "--path", "applicationUser.email", "not-an-address", "--stack", "cfg-bad")

    reasons = {}
    for host in ("process", "inline"):
        run = fp.fleet("preview", "--program-host", host, "--parallel", "3", "--log-dir", str(fp.root / host),
                       "--json", str(fp.root / f"{host}.json"))
        assert run.returncode == 1, run.stdout + run.stderr
        result = report(fp.root / f"{host}.json")
        assert {n: r["status"] for n, r in result.items()} == {"cfg-a": "drifted", "cfg-bad": "failed",
                                                               "cfg-c": "drifted"}
        reasons[host] = result["cfg-bad"]["error"]
        log = (fp.root / host / "cfg-bad.log").read_text()
        assert log.count("invalid stack configuration") == 2, log  # the diagnostic, then fleet's own line
        for noise in ("Traceback", "unhandled", "inline source runtime error"):
            assert noise not in log, log
    assert reasons["inline"] == reasons["process"]
    assert reasons["inline"].startswith("invalid stack configuration (1 problem(s))")
    assert "applicationUser.email" in reasons["inline"]


@pytest.mark.parametrize("host", [pytest.param("process", marks=pytest.mark.long), "inline"])  # process: budget
def test_the_fleet_process_killed_alone_mid_update_leaves_a_stack_the_next_fleet_up_converges(
        fleet_project: FleetProject, sandbox: Any, host: str):
    """SIGKILL of `python -m fleet` alone (its `pulumi up` not killed with it) while a create is answered: the
    CLI loses its output pipe, its event log and, inline, its program; whatever it leaves (a lock, pending
    creates), the next `fleet up --recover-stale-locks-older-than` converges the stack, nothing duplicated."""
    fp = fleet_project
    url = orgs(sandbox, 1)[0]
    _onboard(fp, {"solo": fp.settings(url)})
    runs: list[CliRun] = []

    def crash() -> None:
        runs[0].processes()  # noted while the write is held: the run's `pulumi up` among them
        os.kill(runs[0].proc.pid, signal.SIGKILL)

    with AtWrite(sandbox, _org_name(url), "POST", r"/systemusers$", crash):
        runs.append(CliRun(FleetRun(fp), "up", "solo", "--program-host", host))
        try:
            assert runs[0].wait() == -signal.SIGKILL, runs[0].output
            clis = {pid: cmd for pid, cmd in runs[0].seen.items()
                    if cmd.split(" ", 1)[0].endswith("pulumi") and " up " in f"{cmd} "}
            assert len(clis) == 1, runs[0].seen
            left = wait_gone(clis, KILL_DEADLINE * 4)  # it ends by itself: nothing of the run waits for it
            assert not left, left
        finally:
            runs[0].cleanup()

    after = fp.fleet("up", "solo", "--program-host", host, "--recover-stale-locks-older-than", "1s",
                     "--json", str(fp.root / "after.json"))
    assert after.returncode == 0, after.stdout + after.stderr
    assert report(fp.root / "after.json")["solo"]["status"] in ("changed", "in-sync")  # whatever the CLI finished
    converged_without_duplicates(sandbox, url)
    again = fp.fleet("preview", "solo", "--program-host", host, "--json", str(fp.root / "again.json"))
    assert again.returncode == 0 and report(fp.root / "again.json")["solo"]["status"] == "in-sync"


SERIALIZE = ("import sys; from pulumi.dynamic.dynamic import serialize_provider; "
             "from dynamics_provider.application_user import ApplicationUserProvider; "
             "provider = ApplicationUserProvider(owner='lead-destination/x'); "
             "print([serialize_provider(provider) for _ in range(int(sys.argv[1]))][-1])")


def test_a_process_hosting_programs_serializes_providers_as_a_fresh_program_does_however_many_it_declares():
    """The SDK's serialize_provider piles a layer onto pickle._Pickler per call: a process that declares a
    few hundred dynamic resources (a fleet of ~100 stacks inline) fails with RecursionError. Under
    fleet.inline.install(), 2000 calls from 8 threads give the bytes a fresh program's first call gives, and
    leave the module's C pickler in place."""
    fresh = subprocess.run([sys.executable, "-c", SERIALIZE, "1"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip()
    sdk_alone = subprocess.run([sys.executable, "-c", SERIALIZE, "2000"], cwd=REPO, capture_output=True, text=True)
    assert sdk_alone.returncode != 0 and "RecursionError" in sdk_alone.stderr, sdk_alone.stderr[-500:]

    from pulumi.automation import _stack
    from pulumi.dynamic import dynamic

    from dynamics_provider.application_user import ApplicationUserProvider

    before = (_stack.LanguageServer, dynamic.serialize_provider)
    inline.install()
    try:
        provider = ApplicationUserProvider(owner="lead-destination/x")
        with ThreadPoolExecutor(8) as pool:
            serialized = set(pool.map(lambda _: dynamic.serialize_provider(provider), range(2000)))
        assert serialized == {fresh}
        assert pickle.Pickler is _pickle.Pickler
    finally:
        _stack.LanguageServer, dynamic.serialize_provider = before
