"""What the person running Pulumi sees, under the real CLI (.tools/bin/pulumi) against the sandbox: a
solution installed before the stack is adopted and said to be so (a diagnostic line and the `adopted`
stack output), a zip changed at the same version is announced by preview and imported again by up with
a line saying so, and destroy says it leaves the adopted solution installed (and does)."""

from __future__ import annotations

from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import DEFAULT_UNIQUE_NAME, build_solution_zip
from sandbox.testing import stack_config
from tools.stacks import dev_stack


def installed(sandbox, org):
    return [s for s in sandbox.control.state(org)["solutions"] if s.get("uniquename") == DEFAULT_UNIQUE_NAME]


def test_adoption_a_same_version_zip_and_what_destroy_leaves_are_said_under_the_real_cli(sandbox, org, tmp_path):
    zip_path = tmp_path / "solution.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    someone = SolutionImportProvider()  # a person installs the solution before the stack exists
    someone.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    someone.create(someone.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs)
    before = installed(sandbox, org)
    assert len(before) == 1

    stack = dev_stack(tmp_path / "cli", sandbox.info, org, zip_path)
    up = stack.up()
    assert up.ok, up.text
    assert "was installed before this stack: adopted, not imported" in up.text
    assert "solution" in up.outputs["adopted"]

    zip_path.write_bytes(build_solution_zip("1.0.0.0", privileges=[("prvReadLead", "Global")]))
    preview = stack.preview()
    assert preview.ok, preview.text
    assert "differs from the one installed at the same version 1.0.0.0" in preview.text
    assert preview.planned().get(next(s.name for s in preview.steps if s.type.endswith("SolutionImport"))) == "update"
    up = stack.up()
    assert up.ok, up.text
    assert "imported again at the same version 1.0.0.0" in up.text
    assert stack.preview(expect_no_changes=True).ok

    down = stack.destroy()
    assert down.ok, down.text
    assert "left installed (it was installed before this stack)" in down.text
    assert [s["solutionid"] for s in installed(sandbox, org)] == [s["solutionid"] for s in before]
