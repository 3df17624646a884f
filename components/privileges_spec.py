"""The privileges spec (`lead-destination:privileges`): a YAML file `privileges: [{name, depth}]` read into
(name, depth) grants, every problem reported against the entry that has it."""

from __future__ import annotations

from typing import Any

import yaml

from dynamics_provider.role_privileges import DEPTHS, PRIVILEGE_NAME_RE

from .config_reader import Reader


def read_privileges(r: Reader, path_text: str) -> tuple[tuple[str, str], ...]:
    path = r.resolve(path_text)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        r.fail("privileges", path_text, f"the path of a privileges YAML spec (no file at {path})")
        return ()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        r.fail("privileges", path_text, f"valid YAML (a syntax error{where} in {path})")
        return ()
    items = doc.get("privileges") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        r.fail("privileges", path_text, "a YAML spec with a non-empty `privileges:` list of {name, depth}")
        return ()
    grants: dict[str, str] = {}
    for i, item in enumerate(items):
        name: Any = item.get("name") if isinstance(item, dict) else None
        depth: Any = item.get("depth") if isinstance(item, dict) else None
        if not isinstance(name, str) or not PRIVILEGE_NAME_RE.match(name):
            r.fail(f"privileges[{i}].name", name, "a privilege name such as prvReadAsyncOperation")
            continue
        if depth not in DEPTHS:
            r.fail(f"privileges[{i}].depth", depth, f"one of {', '.join(DEPTHS)}")
            continue
        if name in grants and grants[name] != depth:
            r.fail(f"privileges[{i}].name", name, "each privilege listed once")
        grants[name] = depth
    return tuple(sorted(grants.items()))
