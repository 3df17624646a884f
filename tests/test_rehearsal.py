"""The rehearsal engine's step semantics, state and output, proven with the toy provider over the real host.

What `pulumi preview/up/refresh/destroy` would do, step by step, without the CLI.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox.provider_host import Secret
from sandbox.rehearsal import Rehearsal, main
from tests.support_toy_provider import load_store, save_store

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-token-value"

PROGRAM = """
import pulumi
from tests.support_toy_provider import ToyGroup, ToyRecord

cfg = pulumi.Config("toy")
a = ToyRecord("a", name="a", size=cfg.get_int("size"), token=cfg.get_secret("token"),
              fail_on=cfg.get("failOn"))
b = ToyRecord("b", name=a.name.apply(lambda n: n + "-b"), kind=cfg.get("kind") or "plain",
              opts=pulumi.ResourceOptions(depends_on=[a], delete_before_replace=cfg.get_bool("dbr")))
if cfg.get_bool("withExtra"):
    ToyRecord("extra", name="extra", opts=pulumi.ResourceOptions(depends_on=[b]))
ToyGroup("g", 2)
if cfg.get_bool("foreign"):
    import pulumi_random
    pulumi_random.RandomPassword("pw", length=20)
pulumi.export("a_id", a.id)
pulumi.export("b_name", b.name)
pulumi.export("token", cfg.get_secret("token"))
"""


@pytest.fixture
def project(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "Pulumi.yaml").write_text(
        "name: toy\nruntime: python\nconfig:\n  size:\n    type: integer\n    default: 1\n"
        "  token:\n    type: string\n    secret: true\n"
    )
    (proj / "Pulumi.test.yaml").write_text(f"config:\n  toy:storePath: {tmp_path / 'store.json'}\n")
    (proj / "__main__.py").write_text(PROGRAM)
    return proj


def rehearse(project, verb="up", refresh=False, **overrides):
    cfg = {"toy:token": Secret(SECRET), **{f"toy:{k}": v for k, v in overrides.items()}}
    reh = Rehearsal(
        project, "test", project.parent / "state" / "test.json", cfg,
        key_path=project.parent / "keys" / "rehearsal.key", host_env={"PYTHONPATH": str(REPO)},
    )
    return reh.run(verb, refresh=refresh)


def store(project):
    return load_store(str(project.parent / "store.json"))


def writes(project):
    return [c for c in store(project)["calls"] if c["op"] in ("create", "update", "delete")]


def test_preview_of_a_new_stack_plans_every_create_and_writes_nothing(project):
    result = rehearse(project, "preview")
    assert result.ok, result.text
    assert sorted(s.name for s in result.ops("create")) == ["a", "b", "g-0", "g-1"]
    assert writes(project) == []
    assert not (project.parent / "state" / "test.json").exists()
    assert "+ 4 to create" in result.text


def test_up_creates_then_second_up_changes_nothing(project):
    first = rehearse(project)
    assert first.ok, first.text
    assert len(first.ops("create")) == 4 and len(store(project)["records"]) == 4
    assert first.outputs["a_id"].startswith("toy-") and first.outputs["b_name"] == "a-b"
    second = rehearse(project)
    assert second.ok and second.changes() == [], second.text
    assert "4 unchanged" in second.text
    assert len(writes(project)) == 4


def test_config_change_updates_in_place_replaces_on_kind_and_creates_new_resources(project):
    rehearse(project)
    old_b = next(i for i, r in store(project)["records"].items() if r["name"] == "a-b")
    result = rehearse(project, size="4", kind="fancy", withExtra="true")
    assert result.ok, result.text
    assert [(s.name, s.changed) for s in result.ops("update")] == [("a", ["size"])]
    assert [s.name for s in result.ops("replace")] == ["b"]
    assert [s.name for s in result.ops("create")] == ["extra"]
    records = store(project)["records"]
    assert old_b not in records, "replaced resource must be deleted after its replacement exists"
    assert sorted(r["name"] for r in records.values()) == ["a", "a-b", "extra", "g-0", "g-1"]
    ops = [c["op"] for c in store(project)["calls"] if c["op"] in ("create", "delete")]
    assert ops[-2:] == ["create", "delete"] or ops.index("delete") > ops.index("create", 4)
    assert "[diff: ~size]" in result.text and "+- replace" in result.text


def test_delete_before_replace_deletes_the_old_object_first(project):
    rehearse(project, dbr="true")
    rehearse(project, dbr="true", kind="fancy")
    tail = [c["op"] for c in store(project)["calls"] if c["op"] in ("create", "delete")][-2:]
    assert tail == ["delete", "create"]


def test_resources_removed_from_the_program_are_deleted_dependents_first(project):
    rehearse(project, withExtra="true")
    result = rehearse(project)
    assert [s.name for s in result.ops("delete")] == ["extra"]
    destroy = rehearse(project, "destroy")
    assert destroy.ok, destroy.text
    names = [s.name for s in destroy.ops("delete")]
    assert names.index("b") < names.index("a")
    assert store(project)["records"] == {}


def test_refresh_shows_drift_preview_reports_it_and_up_repairs_it(project):
    rehearse(project)
    data = store(project)
    id_a = next(i for i, r in data["records"].items() if r["name"] == "a")
    data["records"][id_a]["size"] = 42
    save_store(str(project.parent / "store.json"), data)

    refreshed = rehearse(project, "refresh")
    assert [(s.name, s.changed) for s in refreshed.ops("refresh-update")] == [("a", ["size"])]
    preview = rehearse(project, "preview")
    assert [(s.name, s.changed) for s in preview.ops("update")] == [("a", ["size"])]
    assert store(project)["records"][id_a]["size"] == 42, "preview must not write"
    up = rehearse(project)
    assert [s.name for s in up.ops("update")] == ["a"]
    assert store(project)["records"][id_a]["size"] == 1
    assert rehearse(project, "preview", refresh=True).changes() == []


def test_preview_with_refresh_shows_drift_without_saving_it(project):
    rehearse(project)
    data = store(project)
    id_a = next(i for i, r in data["records"].items() if r["name"] == "a")
    data["records"][id_a]["size"] = 9
    save_store(str(project.parent / "store.json"), data)
    state_before = (project.parent / "state" / "test.json").read_text()
    result = rehearse(project, "preview", refresh=True)
    assert [s.name for s in result.ops("update")] == ["a"]
    assert [s.name for s in result.ops("refresh-update")] == ["a"]
    assert (project.parent / "state" / "test.json").read_text() == state_before


def test_object_deleted_remotely_is_dropped_by_refresh_and_recreated_by_up(project):
    rehearse(project)
    data = store(project)
    id_a = next(i for i, r in data["records"].items() if r["name"] == "a")
    del data["records"][id_a]
    save_store(str(project.parent / "store.json"), data)
    result = rehearse(project, "up", refresh=True)
    assert [s.name for s in result.ops("refresh-delete")] == ["a"]
    assert [s.name for s in result.ops("create")] == ["a"]


def test_state_file_never_contains_a_secret_and_outputs_are_masked(project):
    result = rehearse(project)
    state_text = (project.parent / "state" / "test.json").read_text()
    assert SECRET not in state_text
    assert "__rehearsal_secret" in state_text
    assert isinstance(result.outputs["token"], Secret) and result.outputs["token"].value == SECRET
    assert SECRET not in result.text and '"[secret]"' in result.text
    state = json.loads(state_text)
    assert {r["name"] for r in state["resources"]} >= {"a", "b", "g", "g-0", "g-1"}
    a = next(r for r in state["resources"] if r["name"] == "a")
    assert a["id"].startswith("toy-") and a["provider"] in state["providers"]
    assert next(r for r in state["resources"] if r["name"] == "g-0")["parent"].endswith("::g")
    assert any(d.endswith("::a") for d in next(r for r in state["resources"] if r["name"] == "b")["dependencies"])


def test_provider_failure_fails_the_run_and_skips_deletes(project):
    rehearse(project, withExtra="true")
    result = rehearse(project, size="3", failOn="update")
    assert not result.ok and result.exit_code == 1
    assert "toy update refused for a" in result.text
    assert "extra" in {r["name"] for r in store(project)["records"].values()}


def test_program_with_non_dynamic_resources_is_refused_before_any_write(project):
    result = rehearse(project, foreign="true")
    assert result.exit_code == 2 and not result.ok
    assert "random:index/randomPassword:RandomPassword 'pw'" in result.text
    assert "Pulumi CLI" in result.text
    assert writes(project) == []


def test_command_line_runs_up_and_preview_with_exit_codes(project, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    args = ["--cwd", str(project), "--stack", "test", "--state", str(project.parent / "cli.json"),
            "--key-file", str(project.parent / "cli.key"), "--secret-override", f"token={SECRET}"]
    assert main(["up", *args]) == 0
    assert main(["preview", *args]) == 0
    out = capsys.readouterr().out
    assert "+ 4 created" in out and "4 unchanged" in out and SECRET not in out
    assert main(["up", *args, "--config-override", "failOn=update", "--config-override", "size=9"]) == 1


PARALLEL_PROGRAM = """
import pulumi
from tests.support_toy_provider import ToyRecord

x = ToyRecord("x", name="x", slow=1)
y = ToyRecord("y", name="y", slow=1)
z = ToyRecord("z", name="z", opts=pulumi.ResourceOptions(depends_on=[x, y]))
"""


def test_independent_resources_are_created_at_once_and_dependents_after_them(project):
    (project / "__main__.py").write_text(PARALLEL_PROGRAM)
    result = rehearse(project)
    assert result.ok, result.text
    calls = store(project)["calls"]
    started = {c["name"]: c["at"] for c in calls if c["op"] == "create-start"}
    done = {c["name"]: c["at"] for c in calls if c["op"] == "create"}
    assert started["y"] < done["x"] and started["x"] < done["y"], "x and y were created one after the other"
    assert done["z"] > max(done["x"], done["y"])


def test_many_rehearsals_in_threads_of_one_process_all_converge(project, tmp_path):
    def up(i):
        reh = Rehearsal(
            project, "test", tmp_path / "fleet" / f"{i}.json",
            {"toy:token": Secret(SECRET), "toy:storePath": str(tmp_path / f"store{i}.json")},
            key_path=tmp_path / "keys" / "fleet.key", host_env={"PYTHONPATH": str(REPO)},
        )
        return reh.run("up")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(up, range(6)))
    assert [r.text for r in results if not r.ok] == []
    for i in range(6):
        assert len(load_store(str(tmp_path / f"store{i}.json"))["records"]) == 4
