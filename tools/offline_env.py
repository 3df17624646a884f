"""The environment of every offline run of the real Pulumi CLI: the one place `make`, the tests and the bench read.

`.tools/bin` first on PATH (the CLI, the language host and the dynamic-provider shim side by side, as in
a Pulumi release), no update check, no automatic plugin download, a file backend and a `PULUMI_HOME` of
the project's own, the passphrase secrets provider with the sandbox-only passphrase, and the project's
virtualenv for the language host. `python -m tools.offline_env` prints it as `export` lines for a shell:

    eval "$(.venv/bin/python -m tools.offline_env)"   # then .tools/bin/pulumi works as `make demo` runs it
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO / ".tools" / "bin"
PULUMI = TOOLS_BIN / "pulumi"
# The passphrase of the dev stack's secrets (Pulumi.dev.yaml): sandbox-only, documented, protects nothing
# real. Real stacks use a passphrase of their own (PULUMI_CONFIG_PASSPHRASE[_FILE]) or another provider.
SANDBOX_PASSPHRASE = "lead-destination-sandbox"  # noqa: S105 - documented sandbox-only value
# What Pulumi would otherwise fetch or print from the internet, or read from the user's own setup.
OFFLINE = {
    "PULUMI_SKIP_UPDATE_CHECK": "true",
    "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",  # plugins come from .tools/bin, never from another install
}


# The file backend's URL option that keeps a killed run from leaving a stack unreadable. Pulumi stores a
# file backend through gocloud.dev's fileblob, which writes each object to a temporary file and renames it
# (atomic), but by default also writes a metadata sidecar `<object>.attrs` in place: os.Create (truncating)
# then encode (gocloud.dev blob/fileblob/attrs.go, setAttrs, at the version Pulumi v3.274.1 pins). A SIGKILL
# between the two leaves `<stack>.json.attrs` empty, and every later read of the stack fails with
# `error: failed to load checkpoint: EOF` although the checkpoint itself is whole. `metadata=skip`
# (fileblob's documented URL option, "won't write metadata such as blob.Attributes") writes no sidecar;
# Pulumi reads none of those attributes. README.md "State backend" recommends it to users.
FILE_BACKEND_OPTIONS = "?metadata=skip"


def file_backend_url(directory: Path) -> str:
    """The `file://` backend URL of a state directory, with FILE_BACKEND_OPTIONS."""
    return directory.resolve().as_uri() + FILE_BACKEND_OPTIONS


def file_backend_dir(url: str) -> Path:
    """The state directory of a `file://` backend URL (its query, if any, dropped)."""
    return Path(url.removeprefix("file://").split("?", 1)[0])


def virtualenv(project: Path = REPO) -> Path:
    """The virtualenv that Pulumi.yaml names (runtime.options.virtualenv), as an absolute path."""
    doc = yaml.safe_load((project / "Pulumi.yaml").read_text())
    name = ((doc.get("runtime") or {}).get("options") or {}).get("virtualenv") or ".venv"
    path = Path(name)
    return path if path.is_absolute() else project / path


def pulumi_env(
    project: Path = REPO,
    *,
    home: Path | None = None,
    backend: Path | None = None,
    passphrase: str | None = SANDBOX_PASSPHRASE,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (default: this process's environment) with the offline Pulumi settings on top.

    `home` / `backend` default to `.pulumi-home` and `.pulumi-state` under the project: give each
    concurrent worker its own `home` (the workspace file under it is not safe for concurrent writers).
    """
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE)
    env["PATH"] = os.pathsep.join([str(TOOLS_BIN), env.get("PATH", "")])
    home, backend = (home or project / ".pulumi-home"), (backend or project / ".pulumi-state")
    home.mkdir(parents=True, exist_ok=True)
    backend.mkdir(parents=True, exist_ok=True)
    env["PULUMI_HOME"] = str(home)
    env["PULUMI_BACKEND_URL"] = file_backend_url(backend)
    if passphrase is not None:
        env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
        env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
    # The language host built here (sdk v3.68.0, see tools/pulumi/README.md) predates the CLI handing it
    # Pulumi.yaml's `virtualenv` option: it runs the program with PULUMI_PYTHON_CMD. The dynamic-provider
    # shim gets the option from the engine itself (PULUMI_RUNTIME_VIRTUALENV).
    env["PULUMI_PYTHON_CMD"] = str(virtualenv(project) / "bin" / "python")
    return env


def main() -> int:
    env = pulumi_env()
    for key in sorted(set(env) - set(os.environ) | {k for k in env if env[k] != os.environ.get(k)}):
        print(f"export {key}={shlex.quote(env[key])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
