"""The CI templates under ci-templates/ pass a real workflow linter (actionlint built from its pinned Go
module, shellcheck from its wheel for the run scripts), and every `python -m fleet` line in them is a
command line the fleet CLI accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((REPO / "ci-templates" / "github").glob("*.yml"))
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


@pytest.fixture(scope="module")
def actionlint() -> Path:
    subprocess.run([str(REPO / "tools" / "actionlint" / "build.sh")], check=True, capture_output=True, text=True)
    return REPO / ".tools" / "bin" / "actionlint"


def lint(actionlint: Path, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(actionlint), "-no-color", "-oneline", "-shellcheck", str(SHELLCHECK), *map(str, files)],
                          capture_output=True, text=True, cwd=REPO)


def test_the_three_templates_exist():
    assert {t.name for t in TEMPLATES} == {"fleet-drift-review.yml", "fleet-scheduled-up.yml",
                                           "fleet-pull-request-preview.yml"}


def test_actionlint_with_shellcheck_finds_nothing_in_the_templates(actionlint: Path):
    done = lint(actionlint, *TEMPLATES)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("old", "new", "reported"), [
    ("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    timeout: 5", 'unexpected key "timeout"'),
    ('&& mv "$token_file.new" "$token_file"', "&& mv $token_file.new $token_file", "SC2086"),
    ("${{ fromJSON(needs.plan.outputs.matrix) }}", "${{ fromJSON(needs.plan.output.matrix) }}", "property \"output\""),
], ids=["workflow syntax", "shell script", "expression"])
def test_actionlint_does_report_a_broken_copy(actionlint: Path, tmp_path: Path, old: str, new: str, reported: str):
    """The linter really checks: the workflow syntax, the run scripts (shellcheck), the expressions."""
    text = TEMPLATES[0].read_text()
    assert old in text
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace(old, new, 1))
    done = lint(actionlint, broken)
    assert done.returncode == 1
    assert reported in done.stdout


def _fleet_commands(template: Path) -> list[list[str]]:
    """Each `python -m fleet …` of the template's run scripts, its shell variables given sample values."""
    doc = yaml.safe_load(template.read_text())
    values = {**{k: str(v) for k, v in doc.get("env", {}).items()}, "STACKS": "contoso-* fabrikam",
              "SHARD": "1", "GITHUB_STEP_SUMMARY": "/tmp/summary.md"}
    commands = []
    for job in doc["jobs"].values():
        for step in job["steps"]:
            script = re.sub(r"\\\n\s*", " ", step.get("run", ""))
            for line in script.splitlines():
                if "-m fleet " in line:
                    text = line.split("-m fleet ", 1)[1].split("||")[0].split(")")[0]
                    text = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: values[m.group(1)], text)
                    commands.append(shlex.split(text))
    return commands


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.stem)
def test_every_fleet_command_in_a_template_is_one_the_cli_accepts(template: Path):
    commands = _fleet_commands(template)
    assert commands, "the template runs no fleet command"
    for words in commands:
        args = build_parser().parse_args(words)
        assert args.command in ("preview", "up", "status", "matrix")
