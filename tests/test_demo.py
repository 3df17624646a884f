"""`make demo`, the README's main job, run as a user runs it, on a port of its own: the whole story through
.tools/bin/pulumi, the port honoured by every step, the project's files untouched, no secret or token printed."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys

import pytest

from tools.offline_env import REPO

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.long  # make test's budget: CI runs it in make test-long, and `make demo` itself on 3.12 and 3.11
def test_the_demo_tells_the_whole_story_on_the_port_it_is_given():
    port = free_port()
    before = {name: digest(REPO / name) for name in ("Pulumi.yaml", "Pulumi.dev.yaml")}
    done = subprocess.run([sys.executable, "-m", "tools.demo", "--port", str(port)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    for step in ("1. pulumi up", "2. pulumi up again", "3. a person clicks", "4. pulumi preview --refresh --diff",
                 "5. pulumi up --refresh", "6. pulumi preview --refresh --expect-no-changes", "8. pulumi destroy"):
        assert step in out
    assert f"https://127.0.0.1:{port}/orgs/contoso" in out
    assert ":48443" not in out, "every step uses the port given"
    assert "~ disabled        : false => true" in out, "the drift is shown property by property"
    assert "chain proven" in out
    assert "8 deleted" in out
    assert {name: digest(REPO / name) for name in before} == before, "the project's stack files are not touched"
    for secret in ("sandbox-admin-secret", "sandbox-leadwriter-secret"):
        assert secret not in out
    assert not JWT.search(out)
