"""`make pulumi` (tools/pulumi/build.sh): the pinned CLI in .tools/bin, and what it does on a machine without Go.

The build itself runs before the suite (`make test` depends on it); these tests check its result and run the
script in a copy of the project whose PATH has no Go: with the real CLI on PATH (at, or older than, the pin)
and with nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.offline_env import PULUMI, REPO, file_backend_url, pulumi_env

PIN_FILES = ("cli/go.mod", "language-python/go.mod", "python-sdk/go.mod")


def pinned(module_dir: str, module: str) -> str:
    text = (REPO / "tools" / "pulumi" / module_dir / "go.mod").read_text()
    return re.search(rf"{re.escape(module)} (v\S+)", text).group(1)


def test_the_built_cli_reports_the_pinned_release_and_sits_beside_the_language_host_and_the_shims():
    assert PULUMI.exists(), "run `make pulumi` first"
    version = subprocess.run([str(PULUMI), "version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == pinned("cli", "github.com/pulumi/pulumi/pkg/v3")
    for name in ("pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python"):
        assert os.access(PULUMI.parent / name, os.X_OK), name
    sdk = re.search(r"^pulumi==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert pinned("python-sdk", "github.com/pulumi/pulumi/sdk/v3") == f"v{sdk}", "the scripts come from the SDK's release"


@pytest.fixture
def copy_without_go(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The build script and its pins in a fresh project tree, and an environment whose PATH has no `go`."""
    root = tmp_path / "project"
    (root / "tools" / "pulumi").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "pulumi" / "build.sh", root / "tools" / "pulumi" / "build.sh")
    for rel in PIN_FILES:
        (root / "tools" / "pulumi" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "tools" / "pulumi" / rel, root / "tools" / "pulumi" / rel)
    shutil.copy(REPO / "requirements.txt", root / "requirements.txt")
    system = [d for d in ("/usr/bin", "/bin") if not (Path(d) / "go").exists()]
    return root, {"PATH": os.pathsep.join(system), "HOME": str(tmp_path)}


def build(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "tools" / "pulumi" / "build.sh")], env=env, capture_output=True,
                          text=True, timeout=120)


def test_without_go_a_pulumi_on_path_at_least_as_new_as_the_pin_is_used(copy_without_go):
    root, env = copy_without_go
    on_path = root.parent / "installed"
    on_path.mkdir()
    for name in ("pulumi", "pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python"):
        (on_path / name).symlink_to(PULUMI.parent / name)
    env["PATH"] = f"{on_path}{os.pathsep}{env['PATH']}"
    done = build(root, env)
    assert done.returncode == 0, done.stderr
    assert "no Go here; using the Pulumi CLI" in done.stdout
    linked = root / ".tools" / "bin" / "pulumi"
    assert linked.resolve() == PULUMI.resolve()
    version = subprocess.run([str(linked), "version"], capture_output=True, text=True, env=env).stdout.strip()
    assert version == pinned("cli", "github.com/pulumi/pulumi/pkg/v3")


def test_without_go_an_older_pulumi_on_path_is_refused_with_both_ways_out(copy_without_go):
    root, env = copy_without_go
    go_mod = root / "tools" / "pulumi" / "cli" / "go.mod"
    go_mod.write_text(re.sub(r"v3\.\d+\.\d+", "v3.999.0", go_mod.read_text()))  # a pin newer than the CLI here
    on_path = root.parent / "installed"
    on_path.mkdir()
    (on_path / "pulumi").symlink_to(PULUMI)
    env["PATH"] = f"{on_path}{os.pathsep}{env['PATH']}"
    done = build(root, env)
    assert done.returncode == 2
    assert "older than the pin v3.999.0" in done.stderr
    assert "install Go" in done.stderr and "install the Pulumi CLI v3.999.0 or newer" in done.stderr
    assert not (root / ".tools" / "bin" / "pulumi").exists()


def test_with_neither_go_nor_pulumi_the_build_stops_naming_both_ways_out(copy_without_go):
    root, env = copy_without_go
    done = build(root, env)
    assert done.returncode == 2
    assert "install Go 1.26 or newer" in done.stderr and "so that 'pulumi' is on PATH" in done.stderr


def test_the_offline_environment_points_the_cli_at_the_project_and_nothing_online(tmp_path: Path):
    env = pulumi_env(REPO, home=tmp_path / "home", backend=tmp_path / "state", base={"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep)[0] == str(PULUMI.parent)
    assert env["PULUMI_SKIP_UPDATE_CHECK"] == "true"
    assert env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] == "true"
    assert env["PULUMI_BACKEND_URL"] == (tmp_path / "state").as_uri() + "?metadata=skip"
    assert env["PULUMI_HOME"] == str(tmp_path / "home")
    assert env["PULUMI_PYTHON_CMD"] == str(REPO / ".venv" / "bin" / "python")
    # the CLI really uses that backend and home: a stack made there is listed there and nowhere else
    done = subprocess.run([str(PULUMI), "stack", "ls", "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_file_backend_writes_no_metadata_sidecar_that_a_kill_could_leave_empty(tmp_path: Path):
    """With fileblob's default, Pulumi writes `<stack>.json.attrs` in place next to each checkpoint; an empty
    one (a run killed between its create and its write) makes the stack unreadable. The project's backend
    URL (metadata=skip) writes none, and an empty one is exactly Pulumi's `failed to load checkpoint: EOF`."""
    def init(url: str, stack: str) -> Path:
        env = pulumi_env(REPO, home=tmp_path / "home", backend=tmp_path / "state", base={"PATH": "/usr/bin"})
        env["PULUMI_BACKEND_URL"] = url
        done = subprocess.run([str(PULUMI), "stack", "init", stack, "--non-interactive"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return next((tmp_path / "state").rglob(f"{stack}.json"))

    ours = init(file_backend_url(tmp_path / "state"), "skip")
    assert ours.read_text().strip() and not list((tmp_path / "state").rglob("*.attrs"))

    default = init((tmp_path / "state").as_uri(), "sidecar")
    sidecar = default.with_name(default.name + ".attrs")
    assert sidecar.stat().st_size > 0, "fileblob's default writes the sidecar"
    sidecar.write_bytes(b"")  # what a SIGKILL between os.Create and the JSON write leaves
    env = pulumi_env(REPO, home=tmp_path / "home", backend=tmp_path / "state", base={"PATH": "/usr/bin"})
    done = subprocess.run([str(PULUMI), "stack", "export", "--stack", "sidecar"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "failed to load checkpoint: EOF" in done.stderr
