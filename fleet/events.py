"""Pulumi engine events of one `preview --refresh` / `up --refresh`, turned into the resources that
changed and their properties (the Automation API streams them to `on_event`).

A refresh step's outputs event carries the outputs read back (`new`) beside the checkpoint's (`old`):
their differing keys are the drift, and a refresh that reads no object (`new.id` empty) found it gone.
A planned or executed step names the properties behind it (`diffs`, the replace `keys`, the detailed
diff, else the inputs that differ). Dynamic providers report no diff keys for an update that repairs
drift: there the refresh's keys say what changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pulumi import automation as auto

from fleet.report import Change

GONE = "(deleted)"
# Engine ops that change something, as a user names them (the three steps of a replacement are one).
CHANGE_OPS = {"create": "create", "update": "update", "delete": "delete", "replace": "replace",
              "create-replacement": "replace", "delete-replaced": "replace", "discard-replaced": "replace",
              "import": "import", "import-replacement": "replace"}
_IGNORED_KEYS = {"__provider"}
_ACTIVITY = {"refresh": "refreshing", "create": "creating", "update": "updating", "delete": "deleting",
             "replace": "replacing", "create-replacement": "replacing", "delete-replaced": "replacing",
             "import": "importing", "read": "reading"}


def _op(meta: Any) -> str:
    return meta.op.value if hasattr(meta.op, "value") else str(meta.op)


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _without_nulls(value: Any) -> Any:
    """Pulumi drops null-valued properties on the wire (a provider's `{"x": None}` reads back as `{}`),
    so a null and an absent property are the same value."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _differing(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    old, new = _without_nulls(old or {}), _without_nulls(new or {})
    return sorted(k for k in set(old) | set(new) if k not in _IGNORED_KEYS and old.get(k) != new.get(k))


class EventCollector:
    """`on_event` callback of one run; events arrive on the Automation API's threads."""

    def __init__(self, on_activity: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._changes: dict[str, Change] = {}
        self.diagnostics: list[tuple[str | None, str]] = []
        self._on_activity = on_activity

    def __call__(self, event: auto.EngineEvent) -> None:
        if (pre := event.resource_pre_event) is not None:
            meta = pre.metadata
            op = _op(meta)
            if self._on_activity and op in _ACTIVITY and not meta.type.startswith("pulumi:"):
                self._on_activity(f"{_ACTIVITY[op]} {_name(meta.urn)}")
            if op in CHANGE_OPS and self._counted(meta, op):
                self._record(meta, CHANGE_OPS[op], self._planned(meta))
        if (out := event.res_outputs_event) is not None:
            meta = out.metadata
            if _op(meta) == "refresh" and self._custom(meta) and not meta.type.startswith("pulumi:providers:"):
                drift = self._drift(meta)
                if drift:
                    self._record(meta, "drift", drift)
        if (diag := event.diagnostic_event) is not None and diag.severity == "error":
            with self._lock:
                self.diagnostics.append((diag.urn or None, diag.message))

    def _counted(self, meta: Any, op: str) -> bool:
        """Custom resources; a provider only when its own settings change (its first create is no news)."""
        if meta.type == "pulumi:pulumi:Stack" or not self._custom(meta):
            return False
        return not meta.type.startswith("pulumi:providers:") or CHANGE_OPS[op] in ("update", "replace")

    @staticmethod
    def _custom(meta: Any) -> bool:
        state = meta.new or meta.old
        return bool(state is None or state.custom)

    @staticmethod
    def _planned(meta: Any) -> list[str]:
        if meta.diffs:
            return sorted(set(meta.diffs) - _IGNORED_KEYS)
        if meta.keys:
            return sorted(set(meta.keys) - _IGNORED_KEYS)
        if meta.detailed_diff:
            return sorted(set(meta.detailed_diff) - _IGNORED_KEYS)
        if meta.old is not None and meta.new is not None:
            return _differing(meta.old.inputs, meta.new.inputs)
        return []

    @staticmethod
    def _drift(meta: Any) -> list[str]:
        if meta.old is None or not meta.old.id:
            return []
        if meta.new is None or not meta.new.id:
            return [GONE]
        return _differing(meta.old.outputs, meta.new.outputs)

    def _record(self, meta: Any, op: str, properties: list[str]) -> None:
        with self._lock:
            change = self._changes.get(meta.urn)
            if change is None:
                self._changes[meta.urn] = Change(_name(meta.urn), meta.type, op, list(properties))
                return
            if op != "drift":
                change.op = op
            change.properties += [p for p in properties if p not in change.properties]

    def changes(self) -> list[Change]:
        with self._lock:
            return [Change(c.resource, c.type, c.op, list(c.properties)) for c in self._changes.values()]
