"""The dev stack as the interruption and lock tests drive it: a throwaway project pointed at one sandbox
organization, CLI runs that never outlive a test, and what "converged" and "destroyed" look like in the
sandbox and in the checkpoint (`pulumi stack export`)."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sandbox.solution_zip import DEFAULT_ROLE_NAME, DEFAULT_UNIQUE_NAME, build_solution_zip
from tests.harness.interrupt import CliRun
from tools.stacks import Stack, dev_stack

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


def interruptible_dev_stack(sandbox: Any, org: str, tmp_path: Any) -> Iterator[Stack]:
    """For a fixture: the dev stack in a throwaway project, pointed at organization `org`; the CLI runs
    started with `start` are cleaned up afterwards (no process of theirs outlives the test)."""
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


class HeldRead:
    """A file the program reads in its top-level code, as a FIFO: the program's open blocks until `reached`
    opens the other end, which is the event "the program is running its own code" (its imports are done, no
    resource is registered yet). `release` lets it read `text`."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        os.mkfifo(path)
        self._writer: int | None = None

    def reached(self, timeout: float = 120) -> bool:
        """Whether the program opened the file within `timeout` seconds."""
        opened: list[int] = []
        opener = threading.Thread(target=lambda: opened.append(os.open(self.path, os.O_WRONLY)), daemon=True)
        opener.start()
        opener.join(timeout)
        if opener.is_alive():  # nobody came: be the reader ourselves so that the opener returns
            reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            opener.join(10)
            os.close(reader)
            for fd in opened:
                os.close(fd)
            return False
        self._writer = opened[0]
        return True

    def release(self) -> None:
        if self._writer is None:
            return
        try:
            os.write(self._writer, self.text.encode())
        except BrokenPipeError:  # the program is gone
            pass
        finally:
            os.close(self._writer)
            self._writer = None


def last_seq(sandbox) -> int:
    return max((e["seq"] for e in sandbox.control.log()), default=0)


def writes_since(sandbox, org: str, since: int) -> list[str]:
    return [label_of(e["method"], e["path"]) for e in sandbox.control.log(since=since)
            if e["kind"] == "dataverse" and e["org"] == org and e["method"] in ("POST", "PATCH", "PUT", "DELETE")
            and not e["path"].endswith("/$batch") and 200 <= e["status"] < 300]


def checkpoint(stack: Stack) -> dict[str, Any]:
    """The deployment of `pulumi stack export`."""
    exported = stack.cli("stack", "export", check=False)
    assert exported.returncode == 0, f"pulumi stack export failed:\n{exported.stderr}"
    return json.loads(exported.stdout)["deployment"]


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
