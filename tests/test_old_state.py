"""COMPATIBILITY GUARD: a stack state written by an older release still refreshes and destroys.

Every resource of a stack's checkpoint stores its dynamic provider pickled by reference
(`dynamics_provider.<module>.<Class>Provider`), and `pulumi refresh` / `pulumi destroy` unpickle THAT
reference and run today's class on the stored outputs. tests/fixtures/old_state/ holds the checkpoint of
a dev stack made by the code of an earlier commit (see its README). If these tests fail after a move or
rename in dynamics_provider/, every user's existing stack is broken the same way: leave a re-export at
the old path (and keep `read`/`delete` able to take the old output shapes), do not regenerate the fixture.

Regenerate ONLY to add a newer generation next to the old one: `.venv/bin/python -m tests.test_old_state DIR`.
"""

from __future__ import annotations

import base64
import json
import pickletools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi import automation as auto

from sandbox.solution_zip import build_solution_zip
from tools.stacks import NAMESPACE, Project, Stack, dev_config, dev_stack

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "old_state"
STACK = "oldstate"
CHECKPOINT = FIXTURE / f"{STACK}.checkpoint.json"
STACK_FILE = FIXTURE / f"Pulumi.{STACK}.yaml"
ZIP = "solutions/MicrosoftMarketplacesLeadIntegrationSolution_1_0_0_0_managed.zip"
DYNAMIC = "pulumi-python:dynamic/dynamics:"
BROKEN = "COMPATIBILITY with existing stacks broken (see tests/test_old_state.py)"
# What the fixture's pickles name (checked against the fixture itself below): the contract with stored state.
PROVIDER_CLASSES = {
    "dynamics_provider.application_user.ApplicationUserProvider",
    "dynamics_provider.lead_check.LeadWriteCheckProvider",
    "dynamics_provider.role_assignment.SecurityRoleAssignmentProvider",
    "dynamics_provider.role_privileges.RolePrivilegesProvider",
    "dynamics_provider.solution.SolutionImportProvider",
}


def imported_stack(root: Path, checkpoint: dict[str, Any]) -> Stack:
    """A fresh project and backend under `root` holding the fixture's stack file and `checkpoint`."""
    project = Project(root)
    shutil.copy(STACK_FILE, project.dir / STACK_FILE.name)  # its encryptionsalt and Pulumi-encrypted secrets
    stack = Stack(project, auto.Stack.create(STACK, project.workspace()))
    path = root / "checkpoint.json"
    path.write_text(json.dumps(checkpoint))
    stack.cli("stack", "import", "--file", str(path))
    return stack


def resources(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Class (ApplicationUser, ...) -> resource, for the checkpoint's dynamic resources (one of each)."""
    return {r["type"][len(DYNAMIC):]: r for r in deployment["deployment"]["resources"]
            if r["type"].startswith(DYNAMIC)}


def pickled_globals(provider: str) -> set[str]:
    """module.name of every global a serialized provider references (what unpickling must import)."""
    names, strings, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(base64.b64decode(provider)):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
            strings.append(memo[arg])
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


def fixture_checkpoint() -> dict[str, Any]:
    return json.loads(CHECKPOINT.read_text())


# --- the guard ------------------------------------------------------------------------------------

def test_old_checkpoints_providers_unpickle_to_todays_classes(tmp_path):
    """The pickled references in the old checkpoint resolve, the way the provider host resolves them."""
    import dill

    stack = imported_stack(tmp_path, fixture_checkpoint())
    named = set()
    for name, resource in resources(stack.export(show_secrets=True)).items():  # the pickles, decrypted
        provider = resource["inputs"]["__provider"]  # a secret: {<signature>, "plaintext": JSON text}
        provider = json.loads(provider["plaintext"]) if isinstance(provider, dict) else provider
        named |= {g for g in pickled_globals(provider) if g.startswith("dynamics_provider.")}
        try:
            loaded = dill.loads(base64.b64decode(provider))
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"{BROKEN}: the {name} of the old checkpoint does not unpickle: {exc}")
        assert f"{type(loaded).__module__}.{type(loaded).__qualname__}" in PROVIDER_CLASSES, name
    assert named == PROVIDER_CLASSES, "the fixture's pickles name exactly these classes: keep each importable"


def test_old_checkpoint_refreshes_and_destroys_against_a_seeded_organization(sandbox, org, tmp_path):
    """The old checkpoint pointed at a fresh organization holding the same objects: `pulumi refresh` reads
    every one back unchanged and `pulumi destroy` removes what that old stack created."""
    old = fixture_checkpoint()
    old_res = resources(old)
    old_user, old_solution = old_res["ApplicationUser"], old_res["SolutionImport"]
    # refresh and destroy do not run the program: the dynamic providers are configured from the default
    # provider's inputs IN THE CHECKPOINT (the stack config of the last `up`), not from Pulumi.<stack>.yaml
    old_config = next(r for r in old["deployment"]["resources"] if r["type"] == "pulumi:providers:pulumi-python")
    old_config = old_config["inputs"]

    # The objects the old stack created, made again the same way (today's program, a throwaway stack in a
    # backend of its own, never used again): the solution of the same version, the application user with its role, the
    # privileges. Ids a fresh organization generates differ: the checkpoint is pointed at them, and at this
    # sandbox (its address and CA). Everything else, the pickled providers first, stays as it was written.
    zip_path = tmp_path / "seed" / ZIP
    zip_path.parent.mkdir(parents=True)
    zip_path.write_bytes(build_solution_zip(old_solution["outputs"]["version"]))
    seed = dev_stack(tmp_path / "seed", sandbox.info, org, zip_path)
    seeded = seed.up()
    assert seeded.ok, seeded.text
    state = sandbox.control.state(org)
    new_user = seeded.outputs["applicationUserId"]
    new_solution = next(s["solutionid"] for s in state["solutions"]
                        if s["uniquename"] == old_solution["outputs"]["unique_name"])
    mapping = {  # longest first: the instance URL before the bare host
        old_user["outputs"]["instance_url"]: org.rstrip("/"),
        old_config[f"{NAMESPACE}:authorityHost"]: sandbox.info["authority_host"],
        old_config[f"{NAMESPACE}:caBundle"]: sandbox.info["ca_bundle"],
        old_user["id"]: new_user,
        old_solution["id"]: new_solution,
        old_user["outputs"]["business_unit_id"]: next(
            b["businessunitid"] for b in state["businessunits"] if not b.get("_parentbusinessunitid_value")),
    }
    text = json.dumps(old)
    for before, after in mapping.items():
        text = text.replace(before, after)
    checkpoint = json.loads(text)
    stack = imported_stack(tmp_path / "old", checkpoint)
    for key, value in (("deployerClientSecret", sandbox.info["admin_client_secret"]),
                       ("existingApplicationSecret", sandbox.info["leadwriter_client_secret"])):
        # the stack file's secrets open with the sandbox passphrase (compared in memory, never printed)
        assert stack.auto.get_config(f"{NAMESPACE}:{key}").value == value, key
    before = resources(stack.export(show_secrets=True))

    refresh = stack.refresh()
    assert refresh.ok, f"{BROKEN}: `pulumi refresh` of the old checkpoint failed\n{refresh.text}"
    assert {s.type[len(DYNAMIC):] for s in refresh.ops("refresh") if s.type.startswith(DYNAMIC)} == set(old_res)
    after = resources(stack.export(show_secrets=True))
    for name, resource in before.items():
        assert name in after, f"refresh found {name} gone"
        # every stored output read back as it was (a map of nulls, e.g. previous_depths, reads back empty)
        lost = {k: v for k, v in resource["outputs"].items() if v is not None and k != "__provider"
                and after[name]["outputs"].get(k) != v and not (isinstance(v, dict) and not any(v.values()))}
        assert not lost, f"refresh of the old {name} changed {sorted(lost)}"
    assert sandbox.control.state(org)["leads"] == []

    destroy = stack.destroy()
    assert destroy.ok, f"{BROKEN}: `pulumi destroy` of the old checkpoint failed\n{destroy.text}"
    assert {s.type[len(DYNAMIC):] for s in destroy.ops("delete") if s.type.startswith(DYNAMIC)} == set(old_res)
    state = sandbox.control.state(org)
    me = next(u for u in state["systemusers"] if u["systemuserid"] == new_user)
    assert me["isdisabled"] is True, "the old stack created the user: destroy disables it"
    assert not any(a["systemuserid"] == new_user for a in state["assignments"])
    assert not any(s["solutionid"] == new_solution for s in state["solutions"]), "the solution is uninstalled"
    assert stack.export()["deployment"].get("resources") in (None, [])


def test_fixture_holds_no_plaintext_secret(sandbox):
    text = CHECKPOINT.read_text() + STACK_FILE.read_text()
    for secret in (sandbox.info["admin_client_secret"], sandbox.info["leadwriter_client_secret"]):
        assert secret not in text
    assert all("secure" in v for k, v in yaml.safe_load(STACK_FILE.read_text())["config"].items()
               if k.split(":", 1)[1] in ("existingApplicationSecret", "deployerClientSecret"))


# --- how the fixture was made ---------------------------------------------------------------------

def generate(dest: Path) -> None:
    """`up` the dev stack (stack `oldstate`, organization `oldstate`) with the code of this checkout and
    write its checkpoint (`pulumi stack export`) and stack file into `dest`."""
    from sandbox.testing import start_sandbox

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with start_sandbox(state_dir=root / "sandbox", port=0) as sb:
            url = sb.control.add_org(STACK)
            project = Project(root / "gen")
            (project.dir / ZIP).parent.mkdir(parents=True)
            (project.dir / ZIP).write_bytes(build_solution_zip("1.0.0.0"))
            config, secrets = dev_config(sb.info, url, Path(ZIP))
            stack = project.stack(STACK, config, secrets)
            up = stack.up()
            if not up.ok:
                raise SystemExit(up.text)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / CHECKPOINT.name).write_text(json.dumps(stack.export(), indent=2) + "\n")
            doc = yaml.safe_load((project.dir / STACK_FILE.name).read_text())
            doc["config"] = {k: v for k, v in doc["config"].items() if k.startswith(NAMESPACE + ":")}
            (dest / STACK_FILE.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"wrote {dest} from commit {commit}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE)
