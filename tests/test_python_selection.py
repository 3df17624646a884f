"""tools/find_python.sh, the interpreter `make` builds .venv with: the newest supported that actually runs.

Run on a PATH of its own: pyenv-like shims that answer "command not found" (what pyenv's `python3.12` /
`python3.13` do unless that version is selected), a `python3.X` that is really another version, and a
pyenv root whose `versions/` holds the interpreter running this suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tools.offline_env import REPO

SCRIPT = REPO / "tools" / "find_python.sh"
SUPPORTED = ("3.13", "3.12", "3.11")
SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""


def _real_python() -> Path:
    """The base interpreter running this suite (not the venv's link to it)."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def _find(tmp: Path, *args: str, path_entries: dict[str, str | Path], pyenv: dict[str, Path]) -> tuple[int, str]:
    bin_dir, root = tmp / "bin", tmp / "pyenv"
    bin_dir.mkdir(parents=True)
    for tool in ("ls", "sort"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    for name, target in path_entries.items():
        if isinstance(target, Path):
            (bin_dir / name).symlink_to(target)
        else:
            (bin_dir / name).write_text(target)
            (bin_dir / name).chmod(0o755)
    for version_dir, interpreter in pyenv.items():
        (root / "versions" / version_dir / "bin").mkdir(parents=True)
        (root / "versions" / version_dir / "bin" / interpreter.name).symlink_to(interpreter)
    done = subprocess.run(["/bin/sh", str(SCRIPT), *args], env={"PATH": str(bin_dir), "PYENV_ROOT": str(root)},
                          text=True, capture_output=True, timeout=60)
    return done.returncode, done.stdout.strip()


def test_shims_that_do_not_run_are_skipped_for_the_pyenv_install_that_runs(tmp_path: Path) -> None:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert version in SUPPORTED
    real = _real_python()
    named = tmp_path / "real" / f"python{version}"  # the name pyenv gives it: bin/python3.X
    named.parent.mkdir()
    named.symlink_to(real)
    code, found = _find(tmp_path, path_entries={f"python{v}": SHIM for v in SUPPORTED},
                        pyenv={f"{version}.0": named})
    assert code == 0
    assert Path(found).resolve() == real


def test_a_python3_x_that_is_another_version_does_not_count(tmp_path: Path) -> None:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    other = next(v for v in SUPPORTED if v != version)
    code, found = _find(tmp_path, other, path_entries={f"python{other}": _real_python()}, pyenv={})
    assert (code, found) == (1, "")
    code, found = _find(tmp_path / "again", version, path_entries={f"python{version}": _real_python()}, pyenv={})
    assert code == 0 and Path(found).resolve() == _real_python()


def test_an_unsupported_version_is_refused_with_the_supported_ones_named(tmp_path: Path) -> None:
    done = subprocess.run(["/bin/sh", str(SCRIPT), "3.10"], text=True, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert "3.10 is not supported" in done.stderr and "3.13 3.12 3.11" in done.stderr
