"""The program's stacks under the real Pulumi CLI (.tools/bin/pulumi), for tests and the bench.

A `Project` is a throwaway copy of the program (its files symlinked from the repository, Pulumi.yaml
copied) with a file backend and a `PULUMI_HOME` of its own, so tests run side by side without touching
the repository's `Pulumi.<stack>.yaml` files or each other's state. A `Stack` is one of its stacks, made
from the dev stack's settings pointed at one sandbox organization; `up`, `preview`, `refresh` and
`destroy` go through Pulumi's Automation API (engine events included), `cli()` runs the CLI itself
(for signals, locks and pending operations), with the environment of `tools/offline_env.py`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from tools.offline_env import REPO, TOOLS_BIN, pulumi_env

PROGRAM_FILES = ("__main__.py", "components", "dynamics_provider", ".venv")
NAMESPACE = "lead-destination"
# Keys of the dev stack that point at the sandbox, replaced by the sandbox actually running.
SECRET_KEYS = ("existingApplicationSecret", "deployerClientSecret")


@dataclass
class Step:
    """One resource step the engine reported: `op` is Pulumi's (create, update, replace, delete, same,
    refresh, read, create-replacement, delete-replaced, …); `diffs` the changed top-level properties."""

    op: str
    urn: str
    type: str
    diffs: tuple[str, ...] = ()
    detailed: Mapping[str, str] = field(default_factory=dict)
    failed: bool = False

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass
class Diagnostic:
    """One diagnostic the engine reported (`severity`: info, info#err, warning, error), for `urn` or none."""

    severity: str
    message: str
    urn: str = ""

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1] if self.urn else ""


@dataclass
class Run:
    """What one CLI operation did: its exit, its printed text, the steps and diagnostics of its engine events."""

    verb: str
    ok: bool
    exit_code: int
    stdout: str
    stderr: str
    steps: list[Step]
    outputs: dict[str, Any]
    summary: dict[str, int]
    seconds: float
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def errors(self) -> list[Diagnostic]:
        """The diagnostics of severity `error`, in the order the engine reported them."""
        return [d for d in self.diagnostics if d.severity == "error"]

    def ops(self, *ops: str) -> list[Step]:
        return [s for s in self.steps if s.op in ops]

    def names(self, *ops: str) -> set[str]:
        return {s.name for s in self.ops(*ops)}

    def changes(self) -> list[Step]:
        """Steps that change something (refresh steps that found drift included); not `same`/`read`."""
        return [s for s in self.steps if s.op not in ("same", "read") and not (s.op == "refresh" and not s.diffs)]

    def planned(self) -> dict[str, str]:
        """name -> op (create, update, replace, delete) of the steps that change something, drift reads
        left out; the three steps of a replacement count as one `replace`."""
        ops = {"create-replacement": "replace", "delete-replaced": "replace", "discard-replaced": "replace"}
        return {s.name: ops.get(s.op, s.op) for s in self.changes()
                if s.op != "refresh" and "pulumi:pulumi:Stack" not in s.type}

    def drift(self) -> dict[str, tuple[str, ...]]:
        """name -> properties a refresh found changed (`("<gone>",)` when the object is gone)."""
        return {s.name: s.diffs for s in self.ops("refresh") if s.diffs}


def _step(event: auto.EngineEvent) -> Step | None:
    for pre, failed in ((event.resource_pre_event, False), (event.res_outputs_event, False),
                        (event.res_op_failed_event, True)):
        if pre is None:
            continue
        meta = pre.metadata
        op = meta.op.value if hasattr(meta.op, "value") else str(meta.op)
        detailed = {k: (v.diff_kind.value if hasattr(v.diff_kind, "value") else str(v.diff_kind))
                    for k, v in (meta.detailed_diff or {}).items()}
        diffs = tuple(meta.diffs or ())
        if op == "refresh" and not diffs and meta.old is not None and meta.old.id:
            # A refresh's drift: the outputs it read against the ones in the checkpoint ("" id: gone).
            old = dict(meta.old.outputs or {})
            new = dict(meta.new.outputs or {}) if meta.new is not None else {}
            if meta.new is None or not meta.new.id:
                diffs = ("<gone>",)
            else:
                diffs = tuple(sorted(k for k in set(old) | set(new) if _bare(old.get(k)) != _bare(new.get(k))))
        return Step(op, meta.urn, meta.type, diffs, detailed, failed)
    return None


def _bare(value: Any) -> Any:
    """A value without its null map entries: the engine keeps `{"a": null}` from a create but drops the
    null entries of what a refresh read, and shows no difference between the two (nor do we)."""
    if isinstance(value, dict):
        return {k: _bare(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_bare(v) for v in value]
    return value


class Project:
    """A copy of the program with its own backend and PULUMI_HOME (`root/state`, `root/home`)."""

    def __init__(self, root: Path, *, home: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.dir = root / "project"
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in PROGRAM_FILES:
            link = self.dir / name
            if not link.exists():
                link.symlink_to(REPO / name)
        shutil.copy(REPO / "Pulumi.yaml", self.dir / "Pulumi.yaml")
        self.env = pulumi_env(self.dir, home=home or root / "home", backend=root / "state")
        self.env.update(env or {})  # e.g. TMPDIR, where the CLI writes its -v logs

    def workspace(self) -> auto.LocalWorkspace:
        return auto.LocalWorkspace(
            work_dir=str(self.dir), env_vars=self.env,
            pulumi_command=auto.PulumiCommand(root=str(TOOLS_BIN.parent)),
        )

    def stack(self, name: str, config: Mapping[str, Any], secrets: Mapping[str, str]) -> Stack:
        """A new stack `name`: `config` (keys without namespace, YAML values) in its Pulumi.<name>.yaml,
        `secrets` set with `pulumi config set --secret`."""
        ws = self.workspace()
        stack = auto.Stack.create(name, ws)
        path = self.dir / f"Pulumi.{name}.yaml"
        doc = yaml.safe_load(path.read_text()) if path.exists() else {}
        doc = doc or {}
        doc.setdefault("config", {}).update({f"{NAMESPACE}:{k}": v for k, v in config.items()})
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        for key, value in secrets.items():
            stack.set_config(f"{NAMESPACE}:{key}", auto.ConfigValue(value=value, secret=True))
        return Stack(self, stack)


class Stack:
    def __init__(self, project: Project, stack: auto.Stack) -> None:
        self.project = project
        self.auto = stack
        self.name = stack.name

    # --- Automation API --------------------------------------------------------------------------
    def _run(self, verb: str, call: Any, **kwargs: Any) -> Run:
        steps: list[Step] = []
        outputs_seen: list[Step] = []
        diagnostics: list[Diagnostic] = []

        def on_event(event: auto.EngineEvent) -> None:
            diag = event.diagnostic_event
            if diag is not None:
                diagnostics.append(Diagnostic(str(diag.severity), diag.message or "", diag.urn or ""))
            step = _step(event)
            if step is None:
                return
            if event.resource_pre_event is not None or event.res_op_failed_event is not None:
                steps.append(step)
            else:
                outputs_seen.append(step)

        started = time.monotonic()
        try:
            result = call(on_event=on_event, **kwargs)
        except auto.errors.CommandError as error:
            stdout, stderr, code = _output(error)
            return Run(verb, False, code, stdout, stderr, _merge(steps, outputs_seen), {}, {},
                       time.monotonic() - started, diagnostics)
        seconds = time.monotonic() - started
        summary = getattr(result, "change_summary", None) or {}
        if hasattr(result, "summary") and result.summary is not None:
            summary = result.summary.resource_changes or {}
        outputs = {k: v.value for k, v in (getattr(result, "outputs", None) or {}).items()}
        return Run(verb, True, 0, result.stdout or "", result.stderr or "", _merge(steps, outputs_seen),
                   outputs, {str(k): int(v) for k, v in summary.items()}, seconds, diagnostics)

    def up(self, refresh: bool = False, **kwargs: Any) -> Run:
        return self._run("up", self.auto.up, refresh=refresh or None, diff=True, **kwargs)

    def preview(self, refresh: bool = False, expect_no_changes: bool = False, **kwargs: Any) -> Run:
        return self._run("preview", self.auto.preview, refresh=refresh or None, diff=True,
                         expect_no_changes=expect_no_changes or None, **kwargs)

    def refresh(self, **kwargs: Any) -> Run:
        return self._run("refresh", self.auto.refresh, **kwargs)

    def destroy(self, **kwargs: Any) -> Run:
        return self._run("destroy", self.auto.destroy, **kwargs)

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self.auto.outputs().items()}

    def export(self, show_secrets: bool = False) -> dict[str, Any]:
        """The checkpoint as `pulumi stack export` gives it (secrets encrypted, unless `show_secrets`: then
        the plaintext stays in memory, never written anywhere)."""
        return json.loads(self.cli("stack", "export", *(["--show-secrets"] if show_secrets else [])).stdout)

    def set_config(self, key: str, value: Any, *, secret: bool = False) -> None:
        """Set one key (namespace added); objects and lists go in as YAML via the stack file."""
        if isinstance(value, (dict, list)):
            path = self.project.dir / f"Pulumi.{self.name}.yaml"
            doc = yaml.safe_load(path.read_text())
            doc["config"][f"{NAMESPACE}:{key}"] = value
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            return
        self.auto.set_config(f"{NAMESPACE}:{key}", auto.ConfigValue(value=str(value), secret=secret))

    def remove_config(self, key: str) -> None:
        self.auto.remove_config(f"{NAMESPACE}:{key}")

    # --- the CLI itself ---------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 600, **popen: Any) -> subprocess.CompletedProcess:
        """`pulumi ARGS -s STACK --non-interactive` in the project, with the offline environment."""
        return subprocess.run(self.command(*args), cwd=self.project.dir, env=self.project.env, text=True,
                              capture_output=True, check=check, timeout=timeout, **popen)

    def command(self, *args: str) -> list[str]:
        return [str(TOOLS_BIN / "pulumi"), *args, "--stack", self.name, "--non-interactive"]

    def popen(self, *args: str, **popen: Any) -> subprocess.Popen:
        """The CLI started in its own process group (so a test can signal the whole group)."""
        return subprocess.Popen(self.command(*args), cwd=self.project.dir, env=self.project.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)


def _merge(pre: list[Step], outputs: list[Step]) -> list[Step]:
    """Pre-events name every step; a refresh's drift (its diffs) is known only in its outputs event."""
    by_key = {(s.urn, s.op): s for s in outputs}
    merged = []
    for step in pre:
        done = by_key.get((step.urn, step.op))
        if done is not None and done.diffs and not step.diffs:
            step = Step(step.op, step.urn, step.type, done.diffs, done.detailed, step.failed)
        merged.append(step)
    return merged


def _output(error: Exception) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of a failed command. The Automation API's CommandError keeps them only
    in its text, "\n code: N\n stdout: ...\n stderr: ..." (pulumi.automation._cmd.CommandResult)."""
    text = str(error)
    head, _, stderr = text.partition("\n stderr: ")
    head, _, stdout = head.partition("\n stdout: ")
    digits = head.partition("code: ")[2].strip()
    return stdout, stderr, int(digits) if digits.lstrip("-").isdigit() else 1


def dev_config(info: Mapping[str, Any], instance_url: str, solution_zip: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The dev stack's settings (Pulumi.dev.yaml) pointed at one organization of a running sandbox:
    (plain config, secrets)."""
    doc = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    prefix = NAMESPACE + ":"
    config = {k[len(prefix):]: v for k, v in doc["config"].items()
              if k.startswith(prefix) and not (isinstance(v, dict) and "secure" in v)}
    config.update({
        "instanceUrl": instance_url,
        "deployerTenantId": info["tenant_id"],
        "deployerClientId": info["admin_client_id"],
        "authorityHost": info["authority_host"],
        "caBundle": info["ca_bundle"],
        "partnerCenterEndpoint": info["partner_center_url"],
        "solution": {"path": str(solution_zip)},
    })
    secrets = {"existingApplicationSecret": info["leadwriter_client_secret"],
               "deployerClientSecret": info["admin_client_secret"]}
    return config, secrets


def dev_stack(root: Path, info: Mapping[str, Any], instance_url: str, solution_zip: Path, *,
              name: str = "dev", extra: Mapping[str, Any] | None = None, home: Path | None = None,
              secrets: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> Stack:
    """A fresh project under `root` with the dev stack pointed at `instance_url` of the sandbox `info`;
    `extra` and `secrets` override its settings, `env` adds to the CLI's environment."""
    config, dev_secrets = dev_config(info, instance_url, solution_zip)
    config.update(extra or {})
    dev_secrets.update(secrets or {})
    return Project(root, home=home, env=env).stack(name, config, dev_secrets)


def leaked(texts: Iterable[str], needles: Iterable[str]) -> list[str]:
    """The needles found in any of the texts."""
    blob = "\n".join(texts)
    return [n for n in needles if n and n in blob]

