"""Shared pytest fixtures: one in-process sandbox per test process (xdist worker), a fresh
organization per test, and the deploying identity's settings for that sandbox.

The contract register: every sandbox the session starts (in-process, or `python -m sandbox serve` in a
subprocess, which inherits the environment) appends each request it refused as not in
contract/register.yaml to one file, named by SANDBOX_CONTRACT_VIOLATIONS; the controller sets it before
xdist starts its workers and fails the session at its end when the file has a line, listing them — so a
501 a caller swallowed still fails the run (sandbox/contract.py)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.contract import VIOLATIONS_ENV, read_violations
from sandbox.testing import SandboxHandle, start_sandbox


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or os.environ.get(VIOLATIONS_ENV):
        return  # an xdist worker inherits the controller's file; an explicit one is kept
    fd, path = tempfile.mkstemp(prefix="contract-violations-", suffix=".jsonl")
    os.close(fd)
    os.environ[VIOLATIONS_ENV] = path
    config.stash[_OWN_FILE] = path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or not os.environ.get(VIOLATIONS_ENV):
        return
    violations = read_violations(os.environ[VIOLATIONS_ENV])
    if violations:
        session.config.stash[_FOUND] = violations
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif (own := session.config.stash.get(_OWN_FILE, None)) is not None:
        Path(own).unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    violations = terminalreporter.config.stash.get(_FOUND, [])
    if violations:
        terminalreporter.section("requests not in contract/register.yaml", red=True)
        for v in violations:
            terminalreporter.line(f"{v['method']} {v['service']}:/{v['path']}  {v['problem']}  (test: {v['test']})")
        terminalreporter.line(f"{len(violations)} request(s) refused; the list: {os.environ[VIOLATIONS_ENV]}")


_OWN_FILE = pytest.StashKey[str]()
_FOUND = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHandle]:
    handle = start_sandbox(state_dir=tmp_path_factory.mktemp("sandbox-state"), port=0)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def control(sandbox: SandboxHandle) -> Iterator[Any]:
    """The sandbox's control API; the fault rules a test leaves are cleared after it (modules with their
    own `control` fixture keep theirs)."""
    yield sandbox.control
    sandbox.control.clear_faults()


@pytest.fixture
def org(sandbox: SandboxHandle) -> str:
    """The instance URL of a new, freshly seeded organization (unique per test)."""
    return sandbox.control.add_org(f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def deployer(sandbox: SandboxHandle) -> Any:
    from dynamics_provider.auth import DeployerSettings

    info = sandbox.info
    return DeployerSettings(tenant_id=info["tenant_id"], client_id=info["admin_client_id"],
                            client_secret=info["admin_client_secret"], authority_host=info["authority_host"],
                            ca_bundle=info["ca_bundle"], allow_loopback=True)
