"""Shared pytest fixtures: one in-process sandbox per test process (xdist worker), a fresh
organization per test, and the deploying identity's settings for that sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.testing import SandboxHandle, start_sandbox


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
