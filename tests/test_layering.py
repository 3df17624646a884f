"""Layering: the shipped code and the tools never import the test suite.

`tests/` may use everything (the program, `sandbox/`, `tools/`); nothing outside it may import `tests`
(what both need, like the throwaway stack projects of `tools/stacks.py`, lives outside `tests/`).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tools.offline_env import REPO

SKIPPED_DIRS = {"tests", "node_modules", "__pycache__"}


def modules_outside_tests(root: Path) -> list[Path]:
    """Every .py file under `root` except the suite's and those of hidden dirs (.venv, .tools, .git, …)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.startswith("venv") for p in parts):
            continue
        found.append(path)
    return found


def _is_tests(name: str) -> bool:
    return name == "tests" or name.startswith("tests.")


def imports_of_tests(source: str, filename: str = "<source>") -> list[str]:
    """`line: statement` for each import of the `tests` package in `source`, static or by name
    (`importlib.import_module("tests…")`, `__import__("tests…")`)."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            hits += [f"{node.lineno}: import {a.name}" for a in node.names if _is_tests(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_tests(node.module or ""):
            hits.append(f"{node.lineno}: from {node.module} import …")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _is_tests(node.args[0].value)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
            hits.append(f"{node.lineno}: {ast.unparse(node.func)}({node.args[0].value!r})")
    return sorted(hits, key=lambda hit: int(hit.partition(":")[0]))


def test_no_module_outside_tests_imports_the_tests_package() -> None:
    modules = modules_outside_tests(REPO)
    assert any(p.parts[-2:] == ("tools", "bench.py") for p in modules)  # the walk reaches the tools
    offenders = {str(p.relative_to(REPO)): hits for p in modules
                 if (hits := imports_of_tests(p.read_text(encoding="utf-8"), str(p)))}
    assert offenders == {}, (
        "modules outside tests/ import the test suite (move what they need out of tests/, e.g. to tools/): "
        f"{offenders}")


def test_the_layering_check_finds_every_form_of_importing_tests() -> None:
    source = (
        "import os, tests.harness\n"
        "from tests.harness.stacks import Project\n"
        "from tests import conftest\n"
        "import importlib\n"
        "importlib.import_module('tests.harness.faults')\n"
        "__import__('tests')\n"
        "import testsuite\n"            # another package whose name starts with "tests"
        "from tools.stacks import Project\n"
        "from . import tests\n"         # a relative import of a module named tests is not the suite
    )
    assert imports_of_tests(source) == [
        "1: import tests.harness",
        "2: from tests.harness.stacks import …",
        "3: from tests import …",
        "5: importlib.import_module('tests.harness.faults')",
        "6: __import__('tests')",
    ]
