"""The project's stacks through Pulumi's Automation API, named by `--stack` and never selected.

`pulumi stack select` (and `stack init` without `--no-select`) writes the current stack into
`$PULUMI_HOME/workspaces/<project>-<hash>-workspace.json`, one file shared by every Pulumi process of
the user and not safe for concurrent writers (pulumi/pulumi#6287); it would also leave the user's
plain `pulumi` pointed at whichever customer a fleet run touched last. Every command here names its
stack instead, so parallel workers share the user's PULUMI_HOME, login, backend and secrets provider
without writing any shared file (the CLI's own logs under `$PULUMI_HOME/logs` are one file per process).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto
from pulumi.automation._stack import StackInitMode

# Pulumi's stack names: letters, digits, `-`, `_`, `.`; optionally qualified as org/name or org/project/name.
STACK_NAME = re.compile(r"^(?:[A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.-]{1,100}$")


class FleetError(Exception):
    """A problem the user must fix before anything runs (exit code 2), said in one message."""


class _NamedStack(auto.Stack):
    """Pulumi's Automation API `Stack`, bound to an existing stack by name only.

    `Stack.select` would run `pulumi stack select` (a write of the shared workspace file); every
    operation of `auto.Stack` passes `--stack NAME` itself, so the selection is not needed.
    """

    def __init__(self, name: str, workspace: auto.LocalWorkspace) -> None:  # noqa: D107 - no select, see above
        self.name = name
        self.workspace = workspace
        self._mode = StackInitMode.SELECT


class Workspace:
    """The Pulumi project in `project_dir` as the user's Pulumi sees it (PULUMI_* environment, login)."""

    def __init__(self, project_dir: Path) -> None:
        self.dir = project_dir.resolve()
        project_file = self.dir / "Pulumi.yaml"
        if not project_file.is_file():
            raise FleetError(f"no Pulumi.yaml in {self.dir}: run from the project directory or pass --cwd DIR")
        self.project = yaml.safe_load(project_file.read_text()) or {}
        try:
            command = auto.PulumiCommand()
        except FileNotFoundError:
            raise FleetError("the Pulumi CLI (`pulumi`) is not on PATH: install it (https://www.pulumi.com/docs/"
                             "install/), or in this repository run `make pulumi` and put .tools/bin first on PATH "
                             "(`eval \"$(.venv/bin/python -m tools.offline_env)\"` for the sandbox)") from None
        except auto.errors.InvalidVersionError as error:
            raise FleetError(f"the Pulumi CLI on PATH cannot be driven by this Automation API: {error}") from None
        self.automation = auto.LocalWorkspace(work_dir=str(self.dir), pulumi_command=command)

    @property
    def command(self) -> auto.PulumiCommand:
        return self.automation.pulumi_command

    @property
    def namespace(self) -> str:
        return str(self.project.get("name") or "")

    def declared_secret_keys(self) -> frozenset[str]:
        """Config keys that Pulumi.yaml declares `secret: true` (namespace-less)."""
        config = self.project.get("config") or {}
        return frozenset(k for k, v in config.items() if isinstance(v, dict) and v.get("secret"))

    # --- stacks ----------------------------------------------------------------------------------
    def stacks(self) -> list[str]:
        """Every stack of the project in the current backend (`pulumi stack ls --json`)."""
        try:
            return sorted(s.name for s in self.automation.list_stacks())
        except auto.errors.CommandError as error:
            raise FleetError(f"cannot list the stacks: {self.cli_failure(str(error))}") from None

    def cli_failure(self, text: str) -> str:
        """A failed CLI command in one line (its first `error:`), with the remedy when we know the cause."""
        return self.explained(first_error_line(text))

    def explained(self, said: str) -> str:
        """A CLI failure's words, with what to do when its cause is a damaged state file we can name."""
        if not re.search(r"\bEOF$", said):
            return said
        damaged = self.damaged_sidecars()
        if not damaged:
            return said
        return (f"{said} — {len(damaged)} metadata file(s) beside the checkpoints in the file backend are unreadable "
                f"(a run was killed while Pulumi wrote them; the checkpoints themselves are whole): delete "
                f"{', '.join(str(p) for p in damaged)}; then log in with ?metadata=skip so it cannot happen "
                f"again (README, \"State backend\")")

    def damaged_sidecars(self) -> list[Path]:
        """On a `file://` backend, the `.attrs` metadata files under `.pulumi/` that are not whole JSON.

        gocloud.dev's fileblob (Pulumi's file backend) writes each object atomically (temp file + rename) but
        its `<object>.attrs` sidecar in place (os.Create, then the JSON: blob/fileblob/attrs.go, setAttrs); a
        SIGKILL between the two leaves it empty, and Pulumi then fails every read of that object, and
        `stack ls`, with `EOF`. Deleting the sidecar is safe: it holds only a content type and an MD5, and
        fileblob treats a missing one as defaults. `?metadata=skip` stops fileblob writing them."""
        try:
            url = self.automation.who_am_i().url or ""
        except auto.errors.CommandError:
            url = os.environ.get("PULUMI_BACKEND_URL", "")
        if not url.startswith("file://"):
            return []
        root = Path(os.path.expanduser(url.removeprefix("file://").split("?", 1)[0])) / ".pulumi"
        damaged = []
        for path in sorted(root.rglob("*.attrs")):
            try:
                json.loads(path.read_bytes())
            except (OSError, ValueError):
                damaged.append(path)
        return damaged

    def select(self, patterns: Iterable[str]) -> list[str]:
        """Stacks matching any of the glob patterns (all stacks without patterns); a pattern that
        matches nothing is an error, so a typo never silently shrinks the fleet."""
        stacks = self.stacks()
        patterns = list(patterns)
        if not patterns:
            return stacks
        chosen: list[str] = []
        for pattern in patterns:
            hits = [s for s in stacks if fnmatch.fnmatchcase(s, pattern)
                    or fnmatch.fnmatchcase(s.rsplit("/", 1)[-1], pattern)]
            if not hits:
                known = ", ".join(stacks[:20]) + (" …" if len(stacks) > 20 else "")
                raise FleetError(f"no stack matches {pattern!r} (stacks: {known or 'none yet: fleet add'})")
            chosen += [s for s in hits if s not in chosen]
        return chosen

    def stack(self, name: str) -> auto.Stack:
        return _NamedStack(name, self.automation)

    # --- raw CLI (what the Automation API has no call for, or would do with --show-secrets) --------
    def pulumi(self, *args: str, stack: str | None = None, stdin: str | None = None) -> str:
        """Run `pulumi ARGS [--stack NAME] --non-interactive` in the project; its stdout, or CommandError."""
        argv = [*args, *(["--stack", stack] if stack else [])]
        if stdin is None:
            return self.command.run(argv, str(self.dir), {}).stdout
        # Values for `config set --secret` go through stdin, never the command line (visible in `ps`).
        done = subprocess.run([self.command.command, "--non-interactive", *argv], cwd=self.dir, input=stdin,
                              text=True, capture_output=True, env={**os.environ, "PULUMI_AUTOMATION_API": "true"})
        if done.returncode != 0:
            raise auto.errors.create_command_error(auto.CommandResult(done.stdout, done.stderr, done.returncode))
        return done.stdout

    def config(self, stack: str) -> dict[str, dict[str, Any]]:
        """`pulumi config --json` (secrets not shown: `{"secret": true}` without a value)."""
        return json.loads(self.pulumi("config", "--json", stack=stack) or "{}")

    def export(self, stack: str) -> dict[str, Any]:
        """The checkpoint (`pulumi stack export`, secrets left encrypted)."""
        return json.loads(self.pulumi("stack", "export", stack=stack) or "{}")

    def create_stack(self, name: str, config: Mapping[str, dict[str, Any]], secrets: Mapping[str, str], *,
                     secrets_provider: str | None = None, copy_config_from: str | None = None) -> None:
        """`pulumi stack init NAME --no-select`, then its config (`config set-all --json`) and each secret
        (`config set --secret`, value on stdin). Any failure removes the stack again: nothing half-made."""
        init = ["stack", "init", name, "--no-select"]
        if secrets_provider:
            init += ["--secrets-provider", secrets_provider]
        if copy_config_from:
            init += ["--copy-config-from", copy_config_from]
        self.pulumi(*init)
        try:
            if config:
                self.pulumi("config", "set-all", "--json", json.dumps(dict(config)), stack=name)
            for key, value in secrets.items():
                self.pulumi("config", "set", "--secret", key, stdin=value, stack=name)
        except BaseException:
            self.remove_stack(name)
            raise

    def remove_stack(self, name: str) -> None:
        """`pulumi stack rm --yes` of a stack with no resources (its Pulumi.<name>.yaml goes too)."""
        try:
            self.pulumi("stack", "rm", "--yes", name)
        except auto.errors.CommandError:
            pass
        stack_file = self.dir / f"Pulumi.{name.rsplit('/', 1)[-1]}.yaml"
        if stack_file.exists():
            stack_file.unlink()


def first_error_line(text: str) -> str:
    """The first `error: …` line of a CLI failure, else its last non-empty line."""
    # the Automation API's CommandError puts " stderr: " before the CLI's own first line
    lines = [ln.strip().removeprefix("stderr:").strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1] if lines else "pulumi failed"
