"""Crash recovery (issue 5): the provider host SIGKILLed right after each Dataverse write of a cold `up`
in turn, then `up` again with the real program and Pulumi.dev.yaml through the rehearsal engine.

The second `up` must converge with no duplicate and nothing lost, and a third one change nothing.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from sandbox.rehearsal import Rehearsal
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import dev_stack_rehearsal

REPO = Path(__file__).resolve().parent.parent
ROLE = "Microsoft Marketplace Lead Writer"
LEADWRITER_APP = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
RESOURCES = ("dev-dynamics-solution", "dev-dynamics-user", "dev-dynamics-role", "dev-dynamics-privileges",
             "dev-dynamics-check")
WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")

# The Dataverse writes of a cold converge: (label, method, path pattern, resource that sends it).
WRITES = [
    ("solution import", "POST", r"/ImportSolutionAsync$", "dev-dynamics-solution"),
    ("application user create", "POST", r"/systemusers$", "dev-dynamics-user"),
    ("role association", "POST", r"/systemuserroles_association/\$ref$", "dev-dynamics-role"),
    ("role privileges", "POST", r"AddPrivilegesRole$", "dev-dynamics-privileges"),
    ("validation lead create", "POST", r"/leads$", "dev-dynamics-check"),
    ("validation lead delete", "DELETE", r"/leads\([^)]*\)$", "dev-dynamics-check"),
]


def is_write(entry: dict) -> bool:
    """A Dataverse write: POST/PATCH/PUT/DELETE, except `$batch` (our client batches GETs only)."""
    return (entry["kind"] == "dataverse" and entry["method"] in WRITE_METHODS
            and not entry["path"].endswith("/$batch"))


def label_of(entry: dict) -> str:
    for label, method, pattern, _ in WRITES:
        if entry["method"] == method and re.search(pattern, entry["path"]):
            return label
    return f"{entry['method']} {entry['path']}"


class KillAfterWrite:
    """WSGI middleware on the in-process sandbox's server: once Dataverse has applied the targeted write of
    one organization (status 2xx), SIGKILL the rehearsal's provider host before the answer is sent back.

    The sandbox logs a request before its answer goes out, and werkzeug writes the answer only when the
    returned body is iterated, so the write is in Dataverse and in the log while the provider never
    learns it succeeded: the crash window of a real `pulumi up`.
    """

    def __init__(self, sandbox, org: str, reh: Rehearsal, method: str, pattern: str) -> None:
        self.server = sandbox._sandbox._server  # werkzeug's server calls `server.app` for every request
        self.prefix = f"/orgs/{org}/api/data/"
        self.reh, self.method, self.pattern = reh, method, re.compile(pattern)
        self.lock = threading.Lock()
        self.writes: list[str] = []  # labels of the org's writes, in the order Dataverse applied them
        self.hit: str | None = None

    def __enter__(self) -> KillAfterWrite:
        self.app = self.server.app
        self.server.app = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.app = self.app

    def __call__(self, environ: dict, start_response):
        status: list[int] = []

        def capture(line: str, headers: list, exc_info=None):
            status.append(int(line.split()[0]))
            return start_response(line, headers, exc_info)

        body = self.app(environ, capture)  # handled and logged; nothing is written to the socket yet
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        entry = {"kind": "dataverse", "method": method, "path": path}
        if path.startswith(self.prefix) and is_write(entry) and status and 200 <= status[0] < 300:
            with self.lock:
                if self.hit is None:
                    self.writes.append(label_of(entry))
                    if method == self.method and self.pattern.search(path):
                        self.hit = label_of(entry)  # before the kill: the engine fails fast once the host is gone
                        host = self.reh.host
                        assert host is not None, "a write reached Dataverse, so the host is running"
                        host.kill()  # SIGKILL, waited for: the answer below goes to a dead process
        return body


@pytest.fixture
def stack(sandbox, org, tmp_path):
    zips = {}
    for version in ("1.0.0.0", "1.1.0.0"):
        zips[version] = tmp_path / f"sol_{version}.zip"
        zips[version].write_bytes(build_solution_zip(version))

    def rehearsal(version: str = "1.0.0.0") -> Rehearsal:
        return dev_stack_rehearsal(sandbox.info, org, solution_zip=zips[version], state_path=tmp_path / "state.json",
                                   key_path=tmp_path / "key")

    def run(verb: str = "up", refresh: bool = False, version: str = "1.0.0.0"):
        return rehearsal(version).run(verb, refresh=refresh)

    run.rehearsal = rehearsal
    run.org = org.rstrip("/").rsplit("/", 1)[-1]
    run.state_path = tmp_path / "state.json"
    return run


def org_writes(sandbox, org: str, since: int = 0) -> list[dict]:
    return [e for e in sandbox.control.log(since=since) if e["org"] == org and is_write(e)]


def last_seq(sandbox) -> int:
    entries = sandbox.control.log()
    return entries[-1]["seq"] if entries else 0


def stored(stack) -> dict[str, dict]:
    """The custom resources recorded in the rehearsal state, by name (only non-secret outputs are read)."""
    if not stack.state_path.exists():
        return {}
    raw = json.loads(stack.state_path.read_text())
    return {r["name"]: r for r in raw["resources"] if r.get("custom") and r.get("id")}


def assert_converged_without_duplicates(sandbox, stack, version: str = "1.0.0.0", imports_expected: int = 1) -> dict:
    state = sandbox.control.state(stack.org)
    users = [u for u in state["systemusers"] if (u.get("applicationid") or "").lower() == LEADWRITER_APP]
    assert len(users) == 1, f"one application user for the lead writer, found {len(users)}"
    user = users[0]
    assert user["isdisabled"] is False
    writer_roles = {r["roleid"] for r in state["roles"] if r["name"] == ROLE}
    held = [a for a in state["assignments"] if a["systemuserid"] == user["systemuserid"] and a["roleid"] in writer_roles]
    assert len(held) == 1, f"the lead writer holds the role once, found {len(held)}"
    assert state["leads"] == [], "no validation lead is left behind"
    solutions = [s for s in state["solutions"] if s["uniquename"].startswith("MicrosoftMarketplace")]
    assert [s["version"] for s in solutions] == [version]
    imports = [j for j in state["importjobs"] if (j.get("solutionname") or "").startswith("MicrosoftMarketplace")]
    assert len(imports) == imports_expected, f"{imports_expected} import job(s) expected, found {len(imports)}"
    root = next(r for r in state["roles"] if r["name"] == ROLE and not r.get("_parentroleid_value"))
    depths = {p["name"]: p["depth"] for p in root["privileges"]}
    assert depths["prvReadAsyncOperation"] == "Global" and depths["prvCreateUserEntityUISettings"] == "Basic"
    return {"user": user, "state": state}


def test_cold_up_makes_exactly_the_writes_the_crash_matrix_kills_after(sandbox, stack):
    since = last_seq(sandbox)
    first = stack()
    assert first.ok, first.text
    writes = [label_of(e) for e in org_writes(sandbox, stack.org, since)]
    assert sorted(writes) == sorted(label for label, *_ in WRITES), writes
    assert_converged_without_duplicates(sandbox, stack)
    assert set(stored(stack)) == set(RESOURCES)


@pytest.mark.heavy
@pytest.mark.parametrize("label, method, pattern, resource", WRITES, ids=[w[0].replace(" ", "-") for w in WRITES])
def test_provider_killed_right_after_a_write_then_up_converges_without_duplicates(
        sandbox, stack, label, method, pattern, resource):
    since = last_seq(sandbox)
    reh = stack.rehearsal()
    with KillAfterWrite(sandbox, stack.org, reh, method, pattern) as killer:
        crashed = reh.run("up")
    assert killer.hit == label, f"the {label} write never reached Dataverse:\n{crashed.text}"
    ordinal = len(killer.writes)
    assert not crashed.ok and crashed.exit_code == 1, crashed.text
    failed = {s.name for s in crashed.ops("failed")}
    assert resource in failed, crashed.text
    recorded = stored(stack)
    assert resource not in recorded, "the in-flight resource is not recorded in state, as with Pulumi"
    landed = [label_of(e) for e in org_writes(sandbox, stack.org, since)]
    assert landed[:ordinal] == killer.writes, "the log shows the write applied before the kill"

    since = last_seq(sandbox)
    again = stack()
    assert again.ok, again.text
    assert set(stored(stack)) == set(RESOURCES), "every resource is in state"
    converged = assert_converged_without_duplicates(sandbox, stack)
    recovery = [label_of(e) for e in org_writes(sandbox, stack.org, since)]
    if "solution import" in landed and "dev-dynamics-solution" not in recorded:
        # started before the kill (or landed with the killed write) and never seen finishing
        assert "solution import" not in recovery, "the running import is waited for, not started again"
        assert stored(stack)["dev-dynamics-solution"]["outputs"]["adopted"] is False, "the stack's own import"
    created = {s.name for s in again.ops("create")}
    assert created == set(RESOURCES) - set(recorded), again.text
    assert again.outputs["applicationUserId"] == converged["user"]["systemuserid"]
    adopted = {name: rec["outputs"].get("adopted") for name, rec in stored(stack).items() if name in created}
    print(f"\n[crash after write {ordinal}/{len(WRITES)}: {label}] landed before kill: {landed}; "
          f"recovery created {sorted(created)} (adopted: {adopted}) with writes {recovery}")

    third = stack(refresh=True)
    assert third.ok, third.text
    assert [s for s in third.changes() if not s.op.startswith("refresh")] == [], third.text
    assert third.ops("refresh-update") == [] and third.ops("refresh-delete") == [], third.text


@pytest.mark.heavy
@pytest.mark.parametrize("upgrade_done_before_recovery", [False, True], ids=["upgrade-still-running",
                                                                             "upgrade-finished-while-down"])
def test_provider_killed_right_after_the_upgrade_request_then_up_completes_it_once_and_revalidates(
        sandbox, stack, upgrade_done_before_recovery):
    first = stack()
    assert first.ok, first.text
    user_id = first.outputs["applicationUserId"]
    since = last_seq(sandbox)
    reh = stack.rehearsal("1.1.0.0")
    with KillAfterWrite(sandbox, stack.org, reh, "POST", r"StageAndUpgradeAsync$") as killer:
        crashed = reh.run("up")
    assert killer.hit is not None and not crashed.ok, crashed.text
    assert stored(stack)["dev-dynamics-solution"]["outputs"]["version"] == "1.0.0.0", "the update is not recorded"
    if upgrade_done_before_recovery:
        deadline = time.monotonic() + 30
        while any(not j.get("completedon") for j in sandbox.control.state(stack.org)["importjobs"]):
            assert time.monotonic() < deadline, "the upgrade job never finished"
            time.sleep(0.2)

    since = last_seq(sandbox)
    again = stack(version="1.1.0.0")
    assert again.ok, again.text
    assert not [e for e in org_writes(sandbox, stack.org, since) if e["path"].endswith("StageAndUpgradeAsync")], \
        "the upgrade already started is not started again"
    converged = assert_converged_without_duplicates(sandbox, stack, "1.1.0.0", imports_expected=2)
    assert converged["user"]["systemuserid"] == user_id
    assert again.outputs["solutionVersion"] == "1.1.0.0"
    assert [s.name for s in again.ops("replace")] == ["dev-dynamics-check"], "the upgraded chain is re-validated"
    assert [e for e in org_writes(sandbox, stack.org, since) if e["method"] == "POST" and e["path"].endswith("/leads")], \
        "a fresh validation lead proves the upgraded chain"
    third = stack(refresh=True, version="1.1.0.0")
    assert third.ok and third.changes() == [], third.text
