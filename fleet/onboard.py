"""`fleet add`: a customer's stack made the Pulumi way (`stack init`, `config set-all`, secrets with
`config set --secret`), one at a time or many from a CSV or YAML inventory.

Every row is checked first with the program's own configuration rules (components.settings), so a
bad row is refused with the setting it names and nothing is created for it; a stack whose creation
fails half-way is removed again. Rows whose stack already exists are left as they are (re-running an
inventory is safe); with any bad row nothing is created unless `--skip-invalid` says to go ahead.

CSV: a header row; `name` (or `stack`) and config keys as columns, dotted for object fields
(`solution.path`, `existingApplication.clientId`), `contactEmails` separated by `;`; empty cells are
unset. YAML: a list of mappings, or `{defaults: {...}, stacks: [...]}`, keys as in Pulumi.<stack>.yaml
without the `lead-destination:` prefix (objects nested or dotted). Keys of another namespace
(`azuread:tenantId`) pass through. Keys declared secret in Pulumi.yaml, and keys that look like a
credential, are stored as secrets.
"""

from __future__ import annotations

import copy
import csv
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from components.settings import NAMESPACE, ConfigError, parse_settings
from dynamics_provider.config_schema import SETTINGS
from fleet.report import CHANGED, FAILED, IN_SYNC, Change, StackResult
from fleet.workspace import STACK_NAME, FleetError, Workspace, first_error_line

# The keys the one declaration of settings marks secret: their values go in with `--secret`.
SECRET_KEYS = frozenset(s.key for s in SETTINGS if s.secret and s.key)
SECRET_PLACEHOLDER = "[secret]"  # noqa: S105 - what validation sees for a secret copied from another stack


@dataclass
class Row:
    """One customer: where it was read (for messages), its stack name and its settings (nested)."""

    where: str
    name: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    secret_keys: set[str] = field(default_factory=set)  # keys marked secret explicitly (--secret)


@dataclass
class Checked:
    row: Row
    problems: list[str]
    exists: bool = False
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # `config set-all --json` payload
    secrets: dict[str, str] = field(default_factory=dict)  # full key -> value, set through stdin


# --- reading ------------------------------------------------------------------------------------
def set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """`solution.path` = v → target["solution"]["path"] = v (a namespace `azuread:x` stays one key)."""
    namespace, _, rest = dotted.rpartition(":")
    parts = rest.split(".")
    parts[0] = f"{namespace}:{parts[0]}" if namespace else parts[0]
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _expand(mapping: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        set_path(out, str(key), _expand(value) if isinstance(value, Mapping) else value)
    return out


def read_inventory(path: Path) -> list[Row]:
    """The rows of a CSV or YAML inventory, `defaults` merged under each YAML row."""
    if not path.is_file():
        raise FleetError(f"inventory {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".yaml", ".yml"):
        return _read_yaml(path)
    raise FleetError(f"inventory {path}: use a .csv, .yaml or .yml file")


def _read_csv(path: Path) -> list[Row]:
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise FleetError(f"inventory {path}: no header row")
        for record in reader:
            where = f"{path.name} line {reader.line_num}"
            if None in record:
                rows.append(Row(where, None, {"<extra cells>": record.pop(None)}))
                continue
            if not any((v or "").strip() for v in record.values()):
                continue  # blank line
            name = (record.pop("name", None) or record.pop("stack", None) or "").strip() or None
            settings: dict[str, Any] = {}
            for key, value in record.items():
                if key is not None and value is not None and value.strip() != "":
                    set_path(settings, key.strip(), value.strip())
            rows.append(Row(where, name, settings))
    return rows


def _read_yaml(path: Path) -> list[Row]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise FleetError(f"inventory {path}: not valid YAML ({error})") from None
    defaults: dict[str, Any] = {}
    if isinstance(doc, dict):
        defaults = _expand(doc.get("defaults") or {})
        if "instanceUrl" in defaults or f"{NAMESPACE}:instanceUrl" in defaults:
            raise FleetError(f"inventory {path}: `defaults` cannot hold instanceUrl (each customer has its own)")
        doc = doc.get("stacks")
    if not isinstance(doc, list):
        raise FleetError(f"inventory {path}: expected a list of stacks, or a mapping with `stacks:` (and `defaults:`)")
    rows = []
    for index, item in enumerate(doc, start=1):
        where = f"{path.name} entry {index}"
        if not isinstance(item, dict):
            rows.append(Row(where, None, {"<entry>": item}))
            continue
        item = dict(item)
        name = item.pop("name", None) or item.pop("stack", None)
        settings = copy.deepcopy(defaults)
        _merge(settings, _expand(item))
        rows.append(Row(where, str(name) if name is not None else None, settings))
    return rows


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


# --- checking -------------------------------------------------------------------------------------
def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _engine_value(value: Any) -> str:
    """A config value as the engine hands it to the program: objects and lists as JSON."""
    return json.dumps(value) if isinstance(value, (dict, list)) else _scalar(value)


def template_settings(ws: Workspace, stack: str) -> tuple[dict[str, Any], set[str]]:
    """Settings of the stack `--copy-config-from` names (secrets as a placeholder) and its secret keys."""
    try:
        raw = ws.config(stack)
    except auto.errors.CommandError as error:
        raise FleetError(f"--copy-config-from {stack}: {first_error_line(str(error))}") from None
    prefix = ws.namespace + ":"
    settings: dict[str, Any] = {}
    secrets: set[str] = set()
    for key, entry in raw.items():
        short = key[len(prefix):] if key.startswith(prefix) else key
        if entry.get("secret"):
            secrets.add(short)
            settings[short] = SECRET_PLACEHOLDER
        else:
            settings[short] = entry.get("objectValue", entry.get("value"))
    return settings, secrets


def check_rows(ws: Workspace, rows: Sequence[Row], *, template: tuple[dict[str, Any], set[str]] | None = None
               ) -> list[Checked]:
    """Every problem of every row, before anything is created."""
    existing = set(ws.stacks())
    existing_short = {s.rsplit("/", 1)[-1] for s in existing}
    declared_secret = SECRET_KEYS | ws.declared_secret_keys()
    prefix = ws.namespace + ":"
    seen: dict[str, str] = {}
    urls: dict[str, str] = {}
    checked = []
    for row in rows:
        problems: list[str] = []
        name = row.name
        if not name:
            problems.append("no stack name (column `name`)")
        elif not STACK_NAME.match(name):
            problems.append(f"stack name {name!r}: use letters, digits, '-', '_' and '.' (optionally org/name)")
        elif name in seen:
            problems.append(f"stack {name!r} is also in {seen[name]}")
        if name:
            seen.setdefault(name, row.where)
        for odd in ("<extra cells>", "<entry>"):
            if odd in row.settings:
                problems.append("more cells than header columns" if odd == "<extra cells>" else "not a mapping")
        exists = bool(name) and (name in existing or name in existing_short)
        ours = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in row.settings.items()
                if not k.startswith("<")}
        # Its own organization: never one inherited from --copy-config-from, never another row's.
        url = str(ours.get("instanceUrl") or "").strip().rstrip("/").lower()
        if not url:
            problems.append("instanceUrl: each stack needs its own (the customer's organization URL)")
        elif url in urls:
            problems.append(f"instanceUrl {ours['instanceUrl']!r} is also the organization of {urls[url]}")
        else:
            urls[url] = row.where
        merged = copy.deepcopy(template[0]) if template else {}
        _merge(merged, {k: v for k, v in ours.items() if ":" not in k})
        secret_keys = {k for k in merged if k in declared_secret} | row.secret_keys
        secret_keys |= template[1] if template else set()
        if True:  # every problem at once, the name's included
            try:
                parse_settings({k: _engine_value(v) for k, v in merged.items() if ":" not in k},
                               project_dir=ws.dir, secret_keys=frozenset(secret_keys))
            except ConfigError as error:
                problems += [str(p).removeprefix(prefix) for p in error.problems]
        config: dict[str, dict[str, Any]] = {}
        secrets: dict[str, str] = {}
        for key, value in ours.items():
            full = key if ":" in key else prefix + key
            if key in secret_keys or key in declared_secret:
                if isinstance(value, (dict, list)):
                    problems.append(f"{key}: a secret must be a single value")
                    continue
                secrets[full] = _scalar(value)
                continue
            merged_value = merged.get(key, value) if ":" not in key else value
            entry: dict[str, Any] = {"value": _engine_value(merged_value), "secret": False}
            if isinstance(merged_value, (dict, list)):
                entry["objectValue"] = merged_value
            config[full] = entry
        checked.append(Checked(row, problems, exists, config, secrets))
    return checked


# --- creating ------------------------------------------------------------------------------------
def onboard(ws: Workspace, rows: Sequence[Row], *, skip_invalid: bool = False, secrets_provider: str | None = None,
            copy_config_from: str | None = None, single: bool = False, out: Any = None,
            parallel: int = 1) -> list[StackResult]:
    """Check every row, then create the stacks of the good ones (none if a row is bad, unless
    `skip_invalid`). A result per row: changed (created), in-sync (already there), failed (why)."""
    template = template_settings(ws, copy_config_from) if copy_config_from else None
    checked = check_rows(ws, rows, template=template)
    bad = [c for c in checked if c.problems]
    results: list[StackResult] = []
    say = (lambda text: print(text, file=out, flush=True)) if out is not None else (lambda text: None)
    for c in bad:
        label = f"{c.row.where}" + (f" ({c.row.name})" if c.row.name else "")
        say(f"{label}: " + "; ".join(c.problems))
    go_ahead = not bad or skip_invalid
    if bad and not skip_invalid:
        say(f"{len(bad)} bad row(s): nothing created (fix them, or pass --skip-invalid to create the others)")
    todo: list[tuple[int, Checked]] = []
    for c in checked:
        name = c.row.name or c.row.where
        if c.problems:
            results.append(StackResult(name, FAILED, error=f"{c.row.where}: " + "; ".join(c.problems)))
            continue
        if c.exists:
            if single:
                results.append(StackResult(name, FAILED, error=f"stack {name} already exists (change it with "
                                                               f"`pulumi config set --stack {name} …`)"))
                say(f"{name}: already exists")
            else:
                results.append(StackResult(name, IN_SYNC))
                say(f"{name}: already exists, left as it is")
            continue
        if not go_ahead:
            results.append(StackResult(name, FAILED, error="not created: another row of the inventory is bad"))
            continue
        results.append(StackResult(name, FAILED, error="not created"))  # replaced below
        todo.append((len(results) - 1, c))

    def create(c: Checked) -> StackResult:
        name = str(c.row.name)
        started = time.monotonic()
        try:
            ws.create_stack(name, c.config, c.secrets, secrets_provider=secrets_provider,
                            copy_config_from=copy_config_from)
        except auto.errors.CommandError as error:
            reason = f"not created: {first_error_line(str(error))}"
            say(f"{name}: {reason}")
            return StackResult(name, FAILED, error=reason, duration_s=time.monotonic() - started)
        keys = sorted(k.split(":", 1)[-1] for k in [*c.config, *c.secrets])
        say(f"{name}: created ({len(keys)} setting(s){', secrets encrypted' if c.secrets else ''})")
        return StackResult(name, CHANGED, [Change(name, "pulumi:pulumi:Stack", "create", keys)],
                           duration_s=time.monotonic() - started)

    # Stacks are created side by side: each is its own `pulumi` processes and files, nothing selected.
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for (index, _), result in zip(todo, pool.map(create, [c for _, c in todo]), strict=True):
            results[index] = result
    return results
