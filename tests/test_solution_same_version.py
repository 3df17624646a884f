"""A solution zip whose bytes changed at the same version (against the sandbox, provider level): diff
plans an update and says why, update imports it again in place (ImportSolutionAsync: Dataverse's update
of an installed version) and says so, and the revision moves so the lead check runs again; a zip with the
same bytes plans nothing and says nothing. What reaches the user under the real CLI is proven in
test_cli_adoption."""

from __future__ import annotations

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config


def configured(sandbox, org, owner=""):
    p = SolutionImportProvider(owner=owner)
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


@pytest.fixture
def provider(sandbox, org):
    return configured(sandbox, org)


def imports(sandbox, org):
    name = org.rstrip("/").rsplit("/", 1)[-1]
    return [e for e in sandbox.control.log() if e.get("org") == name and e["method"] == "POST"
            and e["path"].endswith(("/ImportSolutionAsync", "/StageAndUpgradeAsync"))]


def test_changed_bytes_at_the_same_version_are_announced_in_diff_and_imported_again_by_update(
        sandbox, org, tmp_path, provider, capsys):
    path = tmp_path / "solution.zip"
    path.write_bytes(build_solution_zip("1.0.0.0"))
    created = provider.create(provider.check({}, {"instance_url": org, "source_path": str(path)}).inputs)
    assert len(imports(sandbox, org)) == 1
    same_bytes = provider.check({}, {"instance_url": org, "source_path": str(path)}).inputs
    capsys.readouterr()
    assert provider.diff(created.id, created.outs, same_bytes).changes is False
    assert "same version" not in capsys.readouterr().err

    rebuilt = build_solution_zip("1.0.0.0", privileges=[("prvReadLead", "Global")])  # other contents, same version
    path.write_bytes(rebuilt)
    news = provider.check({}, {"instance_url": org, "source_path": str(path)}).inputs
    assert news["sha256"] != created.outs["sha256"]
    diff = provider.diff(created.id, created.outs, news)
    said = capsys.readouterr().err
    assert diff.changes is True and diff.replaces == []
    assert "differs from the one installed at the same version 1.0.0.0" in said and "raise the version" in said

    updated = provider.update(created.id, created.outs, news).outs
    said = capsys.readouterr().err
    assert len(imports(sandbox, org)) == 2 and imports(sandbox, org)[-1]["path"].endswith("/ImportSolutionAsync")
    assert "imported again at the same version 1.0.0.0" in said
    assert updated["sha256"] == news["sha256"] and updated["version"] == "1.0.0.0"
    assert updated["revision"] != created.outs["revision"]  # the lead check runs again
    assert provider.diff(created.id, updated, news).changes is False  # converged: nothing planned any more


def test_a_solution_installed_before_the_stack_is_adopted_and_left_installed_with_a_line_each(
        sandbox, org, tmp_path, provider, capsys):
    path = tmp_path / "solution.zip"
    path.write_bytes(build_solution_zip("1.0.0.0"))
    inputs = provider.check({}, {"instance_url": org, "source_path": str(path)}).inputs
    configured(sandbox, org, owner="p/other").create(inputs)  # another stack's install
    capsys.readouterr()
    adopted = provider.create(inputs)
    assert adopted.outs["adopted"] is True
    assert "was installed before this stack: adopted, not imported" in capsys.readouterr().err
    provider.delete(adopted.id, adopted.outs)
    assert "left installed" in capsys.readouterr().err
    assert any(s["solutionid"] == adopted.id for s in sandbox.control.state(org)["solutions"])
