"""The Pulumi programs the suite and `make demo` run go through `.venv`, the interpreter `make` chose.

The real CLI starts the program with the language host (PULUMI_PYTHON_CMD from tools/offline_env.py,
the virtualenv Pulumi.yaml names) and dynamic providers with the provider shim (PULUMI_RUNTIME_VIRTUALENV
from the engine). A probe program made the way tools/stacks.py makes the program's throwaway copies (the
project's own `runtime` section, `.venv` linked to the repository's) reports the interpreter of both
processes; `.ci/run` runs the suite once per supported Python, so each run proves its own version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tools.offline_env import PULUMI, REPO, pulumi_env

PROBE = '''
import sys

import pulumi
from pulumi.dynamic import CreateResult, Resource, ResourceProvider


def interpreter():
    return {"version": ".".join(map(str, sys.version_info[:3])), "prefix": sys.prefix}


class Probe(ResourceProvider):
    def create(self, props):
        return CreateResult("probe", {"interpreter": interpreter()})


class Interpreter(Resource):
    interpreter: pulumi.Output[dict]

    def __init__(self, name):
        super().__init__(Probe(), name, {"interpreter": None})


pulumi.export("program", interpreter())
pulumi.export("provider", Interpreter("provider").interpreter)
'''


def test_the_program_and_its_dynamic_providers_run_under_the_interpreter_of_the_suite(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    runtime = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["runtime"]
    (project / "Pulumi.yaml").write_text(yaml.safe_dump({"name": "interpreter-probe", "runtime": runtime}))
    (project / "__main__.py").write_text(PROBE)
    (project / ".venv").symlink_to(REPO / ".venv")
    env = pulumi_env(project, home=tmp_path / "home", backend=tmp_path / "state")

    def pulumi(*args: str) -> str:
        done = subprocess.run([str(PULUMI), *args, "--non-interactive"], cwd=project, env=env, text=True,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, f"pulumi {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    pulumi("stack", "init", "probe")
    pulumi("up", "--yes", "--skip-preview")
    outputs = json.loads(pulumi("stack", "output", "--json"))

    suite = {"version": ".".join(map(str, sys.version_info[:3])), "prefix": str(Path(sys.prefix).resolve())}
    print(f"suite, program and provider: Python {suite['version']} in {suite['prefix']}")
    reported = {name: {"version": outputs[name]["version"], "prefix": str(Path(outputs[name]["prefix"]).resolve())}
                for name in ("program", "provider")}
    assert reported == {"program": suite, "provider": suite}
    pulumi("destroy", "--yes", "--skip-preview")
