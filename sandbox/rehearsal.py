"""The rehearsal engine: preview/up/refresh/destroy of a Pulumi Python program without the Pulumi CLI.

Runs `__main__.py` under Pulumi's mock runtime and drives every dynamic resource through ONE real
provider host (`python -m pulumi.dynamic`) with Pulumi's step semantics; keeps state in a local
JSON file with secret values encrypted. A test and demo harness for our dynamic resources only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import runpy
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.fernet import Fernet, InvalidToken

from sandbox.provider_host import (
    PROVIDER_KEY,
    ProviderError,
    ProviderHost,
    Secret,
    _from_wire,
    _plain,
    from_struct,
    guard_provider_serialization,
    to_struct,
)

VERBS = ("preview", "up", "refresh", "destroy")
STACK_TYPE = "pulumi:pulumi:Stack"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN
SECRET_MARK = "__rehearsal_secret"
# Threads for resource registrations: the CLI's language host sizes the program's default executor by
# `--parallel` (unbounded by default), so independent resources register, and are created, at once.
PROGRAM_PARALLELISM = 64


def is_dynamic_type(type_: str) -> bool:
    return type_ == "pulumi-python:dynamic:Resource" or type_.startswith("pulumi-python:dynamic/")


class RehearsalError(Exception):
    """The program cannot be rehearsed (config, non-dynamic resources, usage); exit code 2."""


# ---------------------------------------------------------------- results


@dataclass
class Step:
    op: str  # create, update, replace, delete, same, read, refresh-update, refresh-delete, failed
    urn: str
    type: str
    name: str
    changed: list[str] = field(default_factory=list)
    duration: float = 0.0
    error: str = ""
    details: list[str] = field(default_factory=list)  # "key: old => new" per changed property, secrets masked

    def line(self) -> str:
        symbol = {
            "create": "+ create ",
            "update": "~ update ",
            "replace": "+- replace",
            "delete": "- delete ",
            "refresh-update": "~ update ",
            "refresh-delete": "- delete ",
            "failed": "! failed ",
        }.get(self.op, self.op)
        text = f"    {symbol}  {self.type}  {self.name}"
        if self.changed:
            text += f"  [diff: {', '.join('~' + c for c in self.changed)}]"
        if self.op == "refresh-delete":
            text += "  (gone)"
        if self.duration >= 0.05:
            text += f"  ({self.duration:.1f}s)"
        for detail in self.details:
            text += f"\n        ~ {detail}"
        if self.error:
            text += f"\n        error: {self.error}"
        return text


@dataclass
class RunResult:
    verb: str
    steps: list[Step]
    outputs: dict[str, Any]
    ok: bool
    text: str
    duration: float = 0.0
    exit_code: int = 0

    def ops(self, op: str) -> list[Step]:
        return [s for s in self.steps if s.op == op]

    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.op not in ("same", "read")]


# ---------------------------------------------------------------- state with encrypted secrets


class SecretBox:
    """Fernet encryption of secret values with a key file kept outside the state directory."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._fernet: Fernet | None = None

    def _f(self) -> Fernet:
        if self._fernet is None:
            if not self.key_path.exists():
                self.key_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.key_path.with_name(f"{self.key_path.name}.{os.getpid()}.{threading.get_ident()}")
                tmp.write_bytes(Fernet.generate_key())
                os.chmod(tmp, 0o600)
                try:
                    os.link(tmp, self.key_path)  # atomic: first writer wins
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink()
            self._fernet = Fernet(self.key_path.read_bytes().strip())
        return self._fernet

    def seal(self, value: Any) -> Any:
        if isinstance(value, Secret):
            token = self._f().encrypt(json.dumps(_jsonable(value.value)).encode()).decode()
            return {SECRET_MARK: "fernet-v1", "ciphertext": token}
        if isinstance(value, dict):
            return {k: self.seal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.seal(v) for v in value]
        return value

    def open(self, value: Any) -> Any:
        if isinstance(value, dict) and SECRET_MARK in value:
            try:
                return Secret(json.loads(self._f().decrypt(value["ciphertext"].encode())))
            except InvalidToken:
                raise RehearsalError(f"state secrets cannot be decrypted with key file {self.key_path}") from None
        if isinstance(value, dict):
            return {k: self.open(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.open(v) for v in value]
        return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Secret):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class StateFile:
    """`{resources: {urn: record}, providers: {digest: sealed provider ref}, outputs}` on disk."""

    def __init__(self, path: Path, box: SecretBox) -> None:
        self.path = path
        self.box = box
        self.lock = threading.RLock()
        self.resources: dict[str, dict[str, Any]] = {}
        self.providers: dict[str, str] = {}
        self.outputs: dict[str, Any] = {}
        self.pending_deletes: list[dict[str, Any]] = []
        self.readonly = False
        if path.exists():
            raw = json.loads(path.read_text(encoding="utf-8"))
            self.resources = {r["urn"]: r for r in raw.get("resources", [])}
            self.providers = raw.get("providers", {})
            self.outputs = raw.get("outputs", {})
            self.pending_deletes = raw.get("pending_deletes", [])

    def provider_digest(self, ref: Any) -> str | None:
        if ref is None:
            return None
        plain = ref.value if isinstance(ref, Secret) else ref
        digest = hashlib.sha256(str(plain).encode()).hexdigest()[:24]
        with self.lock:
            if digest not in self.providers:
                self.providers[digest] = self.box.seal(Secret(plain))
        return digest

    def provider_ref(self, digest: str | None) -> Any:
        if digest is None or digest not in self.providers:
            return None
        return self.box.open(self.providers[digest])

    def with_provider(self, record: dict[str, Any], key: str) -> dict[str, Any]:
        props = self.box.open(record.get(key) or {})
        ref = self.provider_ref(record.get("provider"))
        if ref is not None:
            props[PROVIDER_KEY] = ref
        return props

    def put(self, record: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        with self.lock:
            record["provider"] = self.provider_digest(inputs.get(PROVIDER_KEY) or outputs.get(PROVIDER_KEY))
            record["inputs"] = self.box.seal({k: v for k, v in inputs.items() if k != PROVIDER_KEY})
            record["outputs"] = self.box.seal({k: v for k, v in outputs.items() if k != PROVIDER_KEY})
            self.resources[record["urn"]] = record
            self.save()

    def drop(self, urn: str) -> None:
        with self.lock:
            self.resources.pop(urn, None)
            self.save()

    def save(self) -> None:
        if self.readonly:
            return
        with self.lock:
            used = {r.get("provider") for r in self.resources.values()} | {
                r.get("provider") for r in self.pending_deletes
            }
            self.providers = {k: v for k, v in self.providers.items() if k in used}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "version": 1,
                        "resources": list(self.resources.values()),
                        "pending_deletes": self.pending_deletes,
                        "providers": self.providers,
                        "outputs": self.outputs,
                    },
                    indent=1,
                    sort_keys=True,
                ),
                encoding="utf-8",
            )
            os.replace(tmp, self.path)


# ---------------------------------------------------------------- config


def load_stack_config(
    project_dir: Path, stack: str, overrides: dict[str, Any] | None = None
) -> tuple[str, dict[str, str], list[str]]:
    """Config as the CLI hands it to a program: `ns:key` → string (objects as JSON), plus secret keys."""
    project_file = project_dir / "Pulumi.yaml"
    project_doc = yaml.safe_load(project_file.read_text()) if project_file.exists() else {}
    project = (project_doc or {}).get("name", project_dir.name)

    def full(key: str) -> str:
        return key if ":" in key else f"{project}:{key}"

    def as_string(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        return json.dumps(value)

    config: dict[str, str] = {}
    secrets: set[str] = set()
    for key, spec in ((project_doc or {}).get("config") or {}).items():
        if isinstance(spec, dict):
            if "default" in spec:
                config[full(key)] = as_string(spec["default"])
            if spec.get("secret"):
                secrets.add(full(key))
        elif spec is not None:
            config[full(key)] = as_string(spec)
    stack_file = project_dir / f"Pulumi.{stack}.yaml"
    stack_doc = yaml.safe_load(stack_file.read_text()) if stack_file.exists() else {}
    encrypted: list[str] = []
    for key, value in ((stack_doc or {}).get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            encrypted.append(full(key))
            continue
        config[full(key)] = as_string(value)
    for key, value in (overrides or {}).items():
        if isinstance(value, Secret):
            secrets.add(full(key))
            value = value.value
        config[full(key)] = as_string(value)
        if full(key) in encrypted:
            encrypted.remove(full(key))
    if encrypted:
        raise RehearsalError(
            "these config values are encrypted with the Pulumi CLI's secrets provider and cannot be read "
            f"here: {', '.join(encrypted)}; pass them with --config-override key=value"
        )
    return project, config, sorted(secrets)


# ---------------------------------------------------------------- the engine


class _Engine:
    """One run: the mock monitor calls `register` for every resource the program declares."""

    def __init__(self, reh: Rehearsal, verb: str, state: StateFile, host: ProviderHost | None, scan: bool) -> None:
        self.reh = reh
        self.verb = verb
        self.preview = verb == "preview"
        self.scan = scan
        self.state = state
        self.host = host
        self.steps: list[Step] = []
        self.errors: list[str] = []
        self.declared: set[str] = set()
        self.foreign: list[str] = []
        self.drift: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.in_flight = 0

    def wait_idle(self, timeout: float = 3600.0) -> None:
        """A failed step ends the program early; let the steps still running finish before the host stops."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=timeout)

    def urn(self, parent: str, type_: str, name: str) -> str:
        if parent:
            qualified = parent.split("::")[2]
            type_ = qualified.split("$")[-1] + "$" + type_
        return f"urn:pulumi:{self.reh.stack}::{self.reh.project}::{type_}::{name}"

    def add_step(self, step: Step) -> None:
        with self.lock:
            self.steps.append(step)
        if self.reh.on_step is not None:
            self.reh.on_step(step)

    def register(self, request: Any) -> tuple[str, str, dict[str, Any]]:
        urn = self.urn(request.parent, request.type, request.name)
        with self.lock:
            self.declared.add(urn)
        inputs = from_struct(request.object)
        record = {
            "urn": urn,
            "type": request.type,
            "name": request.name,
            "custom": bool(request.custom),
            "parent": request.parent or None,
            "dependencies": sorted(set(request.dependencies)),
        }
        if request.HasField("replacement_trigger"):
            from google.protobuf import json_format

            trigger = json_format.MessageToDict(request.replacement_trigger)
            record["replacement_trigger"] = "[unknown]" if trigger == UNKNOWN else trigger
        if not request.custom:
            if not self.preview and not self.scan:
                old = self.state.resources.get(urn)
                if old is None or old.get("parent") != record["parent"]:
                    self.state.put({**record, "id": ""}, {}, {})
            return urn, "", inputs
        if not is_dynamic_type(request.type):
            with self.lock:
                self.foreign.append(f"{request.type} '{request.name}'")
            return urn, "", inputs  # never sent anywhere; the run is refused once the program ends
        if self.scan:
            return urn, "", inputs
        for key in request.ignoreChanges:
            old = self.state.resources.get(urn)
            if old and key in (old.get("inputs") or {}):
                inputs[key] = self.state.box.open(old["inputs"][key])
        step = Step("same", urn, request.type, request.name)
        started = time.monotonic()
        with self.lock:
            self.in_flight += 1
        try:
            id_, outs = self._step(step, record, inputs, bool(request.deleteBeforeReplace))
        except Exception as exc:
            step.op, step.error = "failed", _message(exc)
            with self.lock:
                self.errors.append(f"{request.name}: {step.error}")
            step.duration = time.monotonic() - started
            self.add_step(step)
            raise
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()
        step.duration = time.monotonic() - started
        self.add_step(step)
        for key in request.additionalSecretOutputs:
            if key in outs and not isinstance(outs[key], Secret):
                outs[key] = Secret(outs[key])
        return urn, id_, outs

    def _step(
        self, step: Step, record: dict[str, Any], news: dict[str, Any], dbr_option: bool
    ) -> tuple[str, dict[str, Any]]:
        assert self.host is not None
        urn = record["urn"]
        old = self.state.resources.get(urn)
        if old is not None and not old.get("id"):
            old = None
        olds_in = self.state.with_provider(old, "inputs") if old else {}
        checked, failures = self.host.check(urn, olds_in, news)
        if failures:
            raise ProviderError(
                "; ".join(f"{f['property']}: {f['reason']}" for f in failures), method="check", code="CHECK"
            )
        if old is None:
            step.op = "create"
            if self.preview:
                return "", {k: v for k, v in checked.items() if k != PROVIDER_KEY}
            id_, outs = self.host.create(urn, checked)
            self.state.put({**record, "id": id_}, checked, outs)
            return id_, outs
        olds_out = self.state.with_provider(old, "outputs")
        diff = self.host.diff(urn, old["id"], olds_out, checked)
        trigger_before, trigger_now = old.get("replacement_trigger"), record.get("replacement_trigger")
        if trigger_before is not None and trigger_now != trigger_before:  # ResourceOptions.replacement_trigger
            diff.changes, diff.replaces = True, sorted(set(diff.replaces) | {"[replacement_trigger]"})
            step.details = [f"[replacement_trigger]: {_show(trigger_before)} => {_show(trigger_now)}"]
        if not diff.changes:
            if not self.preview:
                self.state.put({**record, "id": old["id"]}, checked, olds_out)
            return old["id"], olds_out
        step.changed = diff.diffs or _changed_keys(olds_out, olds_in, checked)
        step.details += describe_changes(sorted((set(diff.replaces) | set(step.changed)) - {"[replacement_trigger]"}),
                                         {**olds_in, **olds_out}, checked, declared=True)
        if urn in self.drift and not step.details:
            # The inputs did not change; the update puts back what a refresh found changed remotely.
            keys, before, after = self.drift[urn]
            step.changed = step.changed or keys
            step.details = [f"{line} (restores)" for line in describe_changes(keys, after, before, declared=False)]
        if diff.replaces:
            step.op, step.changed = "replace", sorted(set(diff.replaces) | set(step.changed))
            if self.preview:
                return "", {k: v for k, v in checked.items() if k != PROVIDER_KEY}
            if diff.delete_before_replace or dbr_option:
                self.host.delete(urn, old["id"], olds_out)
                self.state.drop(urn)
                id_, outs = self.host.create(urn, checked)
                self.state.put({**record, "id": id_}, checked, outs)
                return id_, outs
            id_, outs = self.host.create(urn, checked)
            with self.state.lock:
                self.state.pending_deletes.append({**old, "urn": urn})
            self.state.put({**record, "id": id_}, checked, outs)
            return id_, outs
        step.op = "update"
        if self.preview:
            # As the engine previews a provider without preview support: outputs = the new inputs, so every
            # other output (ids, revisions) is unknown to the program until the update has run.
            return old["id"], {k: v for k, v in checked.items() if k != PROVIDER_KEY}
        outs = self.host.update(urn, old["id"], olds_out, checked)
        self.state.put({**record, "id": old["id"]}, checked, outs)
        return old["id"], outs

    # deletes ---------------------------------------------------------------
    def delete_order(self, urns: list[str]) -> list[str]:
        """Reverse dependency order: dependents (and children) before what they depend on."""
        wanted = set(urns)
        deps = {
            u: {d for d in (self.state.resources[u].get("dependencies") or []) if d in wanted}
            | ({self.state.resources[u]["parent"]} & wanted if self.state.resources[u].get("parent") else set())
            for u in urns
        }
        order: list[str] = []
        seen: set[str] = set()

        def visit(u: str) -> None:
            if u in seen:
                return
            seen.add(u)
            for d in sorted(deps[u]):
                visit(d)
            order.append(u)

        for u in sorted(urns):
            visit(u)
        return list(reversed(order))

    def delete_resources(self, urns: list[str]) -> None:
        for urn in self.delete_order(urns):
            rec = self.state.resources[urn]
            if not rec.get("custom") or not rec.get("id"):
                if not self.preview:
                    self.state.drop(urn)
                continue
            step = Step("delete", urn, rec["type"], rec["name"])
            started = time.monotonic()
            if not self.preview:
                assert self.host is not None
                try:
                    self.host.delete(urn, rec["id"], self.state.with_provider(rec, "outputs"))
                except Exception as exc:
                    step.op, step.error = "failed", _message(exc)
                    self.errors.append(f"{rec['name']}: delete: {step.error}")
                    step.duration = time.monotonic() - started
                    self.add_step(step)
                    return
                self.state.drop(urn)
            step.duration = time.monotonic() - started
            self.add_step(step)

    def delete_replaced(self) -> None:
        while self.state.pending_deletes and not self.preview:
            rec = self.state.pending_deletes[0]
            assert self.host is not None
            props = self.state.with_provider(rec, "outputs")
            self.host.delete(rec["urn"], rec["id"], props)
            with self.state.lock:
                self.state.pending_deletes.pop(0)
                self.state.save()

    def refresh(self, persist: bool) -> None:
        assert self.host is not None
        for urn, rec in list(self.state.resources.items()):
            if not rec.get("custom") or not rec.get("id"):
                continue
            started = time.monotonic()
            olds_out = self.state.with_provider(rec, "outputs")
            olds_in = self.state.with_provider(rec, "inputs")
            new_id, outs, new_inputs = self.host.read(urn, rec["id"], olds_out, olds_in)
            step = Step("read", urn, rec["type"], rec["name"], duration=time.monotonic() - started)
            if not new_id:
                step.op = "refresh-delete"
                self.state.resources.pop(urn)
            else:
                changed = sorted(
                    k
                    for k in set(outs) | set(olds_out)
                    if not k.startswith("__") and _plain(outs.get(k)) != _plain(olds_out.get(k))
                )
                if changed:
                    step.op, step.changed = "refresh-update", changed
                    step.details = describe_changes(changed, olds_out, outs, declared=False)
                    self.drift[urn] = (changed, olds_out, outs)
                self.state.resources[urn] = rec
                self.state.put(rec, new_inputs if new_inputs else olds_in, outs)
            self.add_step(step)
        if persist:
            self.state.save()


def _show(value: Any) -> str:
    from pulumi.output import Unknown

    if isinstance(value, Secret):
        return "[secret]"
    if isinstance(value, Unknown) or value == UNKNOWN:
        return "[unknown]"
    text = json.dumps(_strip_unknowns(mask(value)), sort_keys=True, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


def _diff_lines(path: str, old: Any, new: Any, out: list[str]) -> None:
    if isinstance(old, Secret) or isinstance(new, Secret):
        if _plain(old) != _plain(new):
            out.append(f"{path}: [secret] => [secret]")
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if _plain(old.get(key)) != _plain(new.get(key)):
                _diff_lines(f"{path}.{key}", old.get(key, None), new.get(key, None), out)
        return
    out.append(f"{path}: {_show(old)} => {_show(new)}")


def describe_changes(keys: list[str], olds: dict[str, Any], news: dict[str, Any], declared: bool) -> list[str]:
    """One `key: old => new` line per changed property (nested objects down to the changed leaves).

    For an update (`declared`), a changed property that is an output only (a drifted `disabled`, a
    `depths` map) has no declared value to show: the line says the update restores what is declared.
    """
    lines: list[str] = []
    for key in keys:
        if key.startswith("__"):
            continue
        if declared and key not in news:
            lines.append(f"{key}: {_show(olds.get(key))} => (restored to the declared state)")
            continue
        _diff_lines(key, olds.get(key), news.get(key), lines)
    return lines


def _changed_keys(olds_out: dict[str, Any], olds_in: dict[str, Any], news: dict[str, Any]) -> list[str]:
    changed = []
    for key, value in news.items():
        if key.startswith("__"):
            continue
        before = olds_out.get(key, olds_in.get(key))
        if _plain(before) != _plain(value):
            changed.append(key)
    for key in olds_in:
        if not key.startswith("__") and key not in news:
            changed.append(key)
    return sorted(set(changed))


def _message(exc: BaseException) -> str:
    if isinstance(exc, ProviderError):
        return exc.message
    return str(exc) or type(exc).__name__


class _ProgramDirs:
    """The process-wide context a Pulumi program expects (cwd = project dir, project on sys.path), shared
    by rehearsals running in threads of one process: reference-counted, and rehearsals of a different
    project directory wait until the current one is done instead of pulling the cwd from under it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.current: Path | None = None
        self.users = 0
        self.saved_cwd = ""
        self.path_refs: dict[str, int] = {}

    def enter(self, project_dir: Path, paths: list[str]) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.users == 0 or self.current == project_dir)
            if self.users == 0:
                self.saved_cwd = os.getcwd()
                os.chdir(project_dir)
                self.current = project_dir
            self.users += 1
            for entry in paths:
                if entry not in self.path_refs:
                    self.path_refs[entry] = 0 if entry in sys.path else 1
                    if self.path_refs[entry]:
                        sys.path.insert(0, entry)
                elif self.path_refs[entry]:
                    self.path_refs[entry] += 1

    def leave(self, paths: list[str]) -> None:
        with self.cond:
            for entry in paths:
                refs = self.path_refs.get(entry, 0)
                if refs > 1:
                    self.path_refs[entry] = refs - 1
                elif entry in self.path_refs:
                    del self.path_refs[entry]
                    if refs == 1 and entry in sys.path:
                        sys.path.remove(entry)
            self.users -= 1
            if self.users == 0:
                os.chdir(self.saved_cwd)
                self.current = None
                self.cond.notify_all()


_PROGRAM_DIRS = _ProgramDirs()


def _make_monitor(engine: _Engine) -> Any:
    from pulumi.runtime import mocks
    from pulumi.runtime.proto import resource_pb2

    class RehearsalMocks(mocks.Mocks):
        def new_resource(self, args: Any) -> tuple[str | None, dict]:  # pragma: no cover - unused
            return None, {}

        def call(self, args: Any) -> tuple[dict, list | None]:
            raise RehearsalError(f"function {args.token} needs the Pulumi CLI (invokes are not rehearsed)")

    class RehearsalMonitor(mocks.MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            urn = engine.urn(request.parent, request.type, request.name)
            if request.type == STACK_TYPE:
                return resource_pb2.RegisterResourceResponse(urn=urn)
            mocks._ensure_event_loop()
            urn, id_, outs = engine.register(request)
            return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=to_struct(outs))

    return RehearsalMonitor(RehearsalMocks())


# ---------------------------------------------------------------- public API


class Rehearsal:
    """`Rehearsal(project_dir, stack, state_path).run("up")` → RunResult."""

    def __init__(
        self,
        project_dir: str | os.PathLike[str],
        stack: str = "dev",
        state_path: str | os.PathLike[str] | None = None,
        config_overrides: dict[str, Any] | None = None,
        *,
        key_path: str | os.PathLike[str] | None = None,
        host_env: dict[str, str] | None = None,
        on_step: Callable[[Step], None] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.stack = stack
        self.state_path = Path(state_path) if state_path else self.project_dir / ".rehearsal" / f"{stack}.json"
        self.key_path = Path(key_path) if key_path else self.project_dir / ".rehearsal.key"
        self.config_overrides = config_overrides or {}
        self.host_env = host_env
        self.on_step = on_step
        self.echo = echo
        self.project, self.config, self.secret_keys = load_stack_config(
            self.project_dir, stack, self.config_overrides
        )
        self.host: ProviderHost | None = None

    def state(self) -> StateFile:
        return StateFile(self.state_path, SecretBox(self.key_path))

    def _start_host(self) -> ProviderHost:
        host = ProviderHost(self.project_dir, project=self.project, stack=self.stack, env=self.host_env).start()
        try:
            host.configure({k: (Secret(v) if k in self.secret_keys else v) for k, v in self.config.items()})
        except BaseException:
            host.stop()
            raise
        self.host = host
        return host

    def _run_program(self, engine: _Engine) -> tuple[dict[str, Any], list[str]]:
        """Run __main__.py in a fresh thread (fresh contextvars, fresh event loop) under the mock runtime."""
        box: dict[str, Any] = {"outputs": {}, "errors": []}

        def target() -> None:
            import pulumi

            guard_provider_serialization()
            from pulumi.runtime import mocks, settings
            from pulumi.runtime.config import set_all_config
            from pulumi.runtime.stack import run_pulumi_func

            loop = asyncio.new_event_loop()
            loop.set_exception_handler(lambda _loop, _context: None)  # failures are reported as steps
            asyncio.set_event_loop(loop)
            settings.reset_options(project=self.project, stack=self.stack, preview=engine.preview or engine.scan)
            set_all_config(dict(self.config), list(self.secret_keys))
            monitor = _make_monitor(engine)
            mocks.set_mocks(
                monitor.mocks,
                project=self.project,
                stack=self.stack,
                preview=engine.preview or engine.scan,
                monitor=monitor,
            )
            main_py = self.project_dir / "__main__.py"
            extra = [str(self.project_dir)] + [
                p for p in (self.host_env or {}).get("PYTHONPATH", "").split(os.pathsep) if p
            ]
            executor = ThreadPoolExecutor(max_workers=PROGRAM_PARALLELISM, thread_name_prefix=f"register-{self.stack}")
            loop.set_default_executor(executor)
            _PROGRAM_DIRS.enter(self.project_dir, extra)
            try:

                def program() -> None:
                    runpy.run_path(str(main_py), run_name="__main__")

                try:
                    loop.run_until_complete(run_pulumi_func(program))
                except BaseException as exc:  # noqa: BLE001 - reported as a failed run
                    box["errors"].append(_message(exc))
                    engine.wait_idle()
                root = settings.get_root_resource()
                outputs: dict[str, Any] = {}
                for name, value in (getattr(root, "outputs", {}) or {}).items():
                    out = pulumi.Output.from_input(value)
                    try:
                        known = loop.run_until_complete(out.is_known())
                        val = loop.run_until_complete(out.future(with_unknowns=True))
                        secret = loop.run_until_complete(out.is_secret())
                    except BaseException as exc:  # noqa: BLE001
                        box["errors"].append(f"output {name}: {_message(exc)}")
                        continue
                    val = _strip_unknowns(val) if known else "[unknown]"
                    outputs[name] = Secret(val) if secret else _from_wire(val)
                box["outputs"] = outputs
            finally:
                _PROGRAM_DIRS.leave(extra)
                loop.close()
                executor.shutdown(wait=False)

        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported as a failed run
                box["errors"].append(f"program could not run: {_message(exc)}")

        thread = threading.Thread(target=guarded, name=f"rehearsal-{self.stack}")
        thread.start()
        thread.join()
        return box["outputs"], box["errors"]

    def run(self, verb: str, refresh: bool = False) -> RunResult:
        if verb not in VERBS:
            raise RehearsalError(f"unknown verb {verb!r}; expected one of {', '.join(VERBS)}")
        started = time.monotonic()
        state = self.state()
        state.readonly = verb == "preview"
        outputs: dict[str, Any] = {}
        errors: list[str] = []
        steps: list[Step] = []
        exit_code = 0
        # The provider host boots (a Python process importing pulumi and grpc) while the program is scanned.
        starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-start")
        host_future = starter.submit(self._start_host)
        starter.shutdown(wait=False)
        if verb == "up":
            scan = _Engine(self, "up", state, None, scan=True)
            _, scan_errors = self._run_program(scan)
            if scan.foreign or scan_errors:
                _stop_quietly(host_future)
            if scan.foreign:
                return self._finish(
                    verb, [], {}, [
                        "this program registers resources that are not dynamic resources: "
                        + ", ".join(scan.foreign)
                        + ". The rehearsal engine drives only pulumi-python dynamic resources; "
                        "deploy this program with the Pulumi CLI (`pulumi up`)."
                    ], started, 2,
                )
            if scan_errors:
                return self._finish(verb, [], {}, scan_errors, started, 2)
        host = host_future.result()
        try:
            engine = _Engine(self, verb, state, host, scan=False)
            try:
                if verb == "refresh" or refresh:
                    engine.refresh(persist=verb != "preview")
                if verb == "destroy":
                    engine.delete_resources(list(state.resources))
                    if not engine.errors:
                        state.outputs = {}
                        state.save()
                elif verb != "refresh":
                    outputs, prog_errors = self._run_program(engine)
                    if engine.foreign:
                        exit_code = 2
                        prog_errors = [
                            "this program registers resources that are not dynamic resources: "
                            + ", ".join(engine.foreign)
                            + ". The rehearsal engine drives only pulumi-python dynamic resources; "
                            "deploy this program with the Pulumi CLI (`pulumi up`)."
                        ]
                    errors.extend(engine.errors or prog_errors)
                    if not errors:
                        gone = [u for u in state.resources if u not in engine.declared]
                        engine.delete_resources(gone)
                        engine.delete_replaced()
                        if verb == "up":
                            state.outputs = state.box.seal(outputs)
                            state.save()
            except ProviderError as exc:
                engine.errors.append(exc.message)
            errors = errors or list(engine.errors)
            steps = engine.steps
        finally:
            host.stop()
            self.host = None
        return self._finish(verb, steps, outputs, errors, started, exit_code or (1 if errors else 0))

    def _finish(
        self, verb: str, steps: list[Step], outputs: dict[str, Any], errors: list[str], started: float, code: int
    ) -> RunResult:
        duration = time.monotonic() - started
        text = render(verb, self.stack, steps, outputs, errors, duration)
        if self.echo is not None:
            self.echo(text)
        return RunResult(verb, steps, outputs, not errors, text, duration, code)


def _stop_quietly(host_future: Any) -> None:
    try:
        host_future.result().stop()
    except Exception:  # noqa: BLE001 - the run is already being refused for a clearer reason
        pass


def _strip_unknowns(value: Any) -> Any:
    from pulumi.output import Unknown

    if isinstance(value, Unknown) or value == UNKNOWN:
        return "[unknown]"
    if isinstance(value, dict):
        return {k: _strip_unknowns(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_unknowns(v) for v in value]
    return value


def mask(value: Any) -> Any:
    if isinstance(value, Secret):
        return "[secret]"
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def render(
    verb: str, stack: str, steps: list[Step], outputs: dict[str, Any], errors: list[str], duration: float
) -> str:
    title = {
        "preview": "Previewing update",
        "up": "Updating",
        "refresh": "Refreshing",
        "destroy": "Destroying",
    }[verb]
    lines = [f"{title} ({stack}) [rehearsal: dynamic resources through the real provider host]", ""]
    lines += [s.line() for s in steps if s.op not in ("same", "read")]
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.op] = counts.get(s.op, 0) + 1
    lines.append("")
    lines.append("Resources:")
    future = verb == "preview"
    labels = {
        "create": "to create" if future else "created",
        "update": "to update" if future else "updated",
        "replace": "to replace" if future else "replaced",
        "delete": "to delete" if future else "deleted",
        "refresh-update": "changed remotely (drift)",
        "refresh-delete": "gone remotely",
        "failed": "failed",
    }
    symbols = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "refresh-update": "~",
               "refresh-delete": "-", "failed": "!"}
    for op, label in labels.items():
        if counts.get(op):
            lines.append(f"    {symbols[op]} {counts[op]} {label}")
    unchanged = counts.get("read", 0) if verb in ("refresh", "destroy") else counts.get("same", 0)
    lines.append(f"    {unchanged} unchanged")
    if outputs:
        lines.append("")
        lines.append("Outputs:")
        for name, value in outputs.items():
            lines.append(f"    {name}: {json.dumps(mask(value), sort_keys=True)}")
    if errors:
        lines.append("")
        lines.append("Diagnostics:")
        for err in errors:
            lines.append(f"    error: {err}")
    lines.append("")
    lines.append(f"Duration: {duration:.1f}s")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def _parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox rehearse",
        description="Rehearse a stack of dynamic resources without the Pulumi CLI (test and demo harness).",
    )
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument("--stack", "-s", default="dev")
    parser.add_argument("--cwd", default=".")
    parser.add_argument("--state", default=None, help="state file (default .rehearsal/<stack>.json)")
    parser.add_argument("--key-file", default=None, help="secret key file (default <cwd>/.rehearsal.key)")
    parser.add_argument("--refresh", action="store_true", help="read every resource first (preview/up)")
    parser.add_argument("--config-override", action="append", type=_parse_override, default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--secret-override", action="append", type=_parse_override, default=[], metavar="KEY=VALUE",
        help="like --config-override, but the value is a secret",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(args.config_override)
    overrides.update({k: Secret(v) for k, v in args.secret_override})
    try:
        reh = Rehearsal(args.cwd, args.stack, args.state, overrides, key_path=args.key_file, echo=print)
        result = reh.run(args.verb, refresh=args.refresh)
    except RehearsalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result.exit_code
