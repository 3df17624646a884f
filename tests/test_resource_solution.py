"""SolutionImport against the sandbox: import, adopt, upgrade, refuse downgrade/unmanaged, drift, destroy.

Also the source_url path (sha256 pin, one download, cache) against the sandbox's file hosting.
"""

from __future__ import annotations

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.base import (
    ResourceOperationError,
)
from dynamics_provider.solution import SolutionImportProvider, read_manifest
from sandbox.solution_zip import DEFAULT_UNIQUE_NAME, build_solution_zip
from sandbox.testing import stack_config


def provider(sandbox, org) -> SolutionImportProvider:
    p = SolutionImportProvider()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def zip_file(tmp_path, version="1.0.0.0", managed=True) -> str:
    path = tmp_path / f"solution_{version}_{int(managed)}.zip"
    path.write_bytes(build_solution_zip(version=version, managed=managed))
    return str(path)


def installed(sandbox, org):
    return {s["uniquename"]: s for s in sandbox.control.state(org)["solutions"]}.get(DEFAULT_UNIQUE_NAME)


def test_manifest_is_read_from_the_zip_not_the_path():
    m = read_manifest(build_solution_zip(version="2.1.0.3"))
    assert (m.unique_name, m.version, m.managed) == (DEFAULT_UNIQUE_NAME, "2.1.0.3", True)


def test_check_rejects_missing_or_unmanaged_zip_and_bad_pins_offline(tmp_path):
    p = SolutionImportProvider()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    cases = {
        "missing": {"source_path": str(tmp_path / "absent.zip")},
        "junk": {"source_path": str(tmp_path / "junk.zip")},
        "unmanaged": {"source_path": zip_file(tmp_path, managed=False)},
    }
    for label, source in cases.items():
        failures = p.check({}, {"instance_url": "https://x.crm.dynamics.com", **source}).failures
        assert [f.property for f in failures] == ["source_path"], label
    failures = p.check({}, {"instance_url": "https://x.crm.dynamics.com", "source_url": "http://x/s.zip",
                            "sha256": "abc"}).failures
    assert {f.property for f in failures} == {"source_url", "sha256"}
    ok = p.check({}, {"instance_url": "https://x.crm.dynamics.com", "source_path": zip_file(tmp_path),
                      "import_timeout_seconds": 60.0})
    assert ok.failures == [] and ok.inputs["import_timeout_seconds"] == 60 and len(ok.inputs["sha256"]) == 64


def test_import_then_noop_diff_then_adopt_and_delete_semantics(sandbox, org, tmp_path):
    p = provider(sandbox, org)
    news = p.check({}, {"instance_url": org, "source_path": zip_file(tmp_path)}).inputs
    created = p.create(news)
    assert created.outs["adopted"] is False and created.outs["version"] == "1.0.0.0"
    assert created.outs["managed"] is True and created.id == installed(sandbox, org)["solutionid"]
    roles = [r for r in sandbox.control.state(org)["roles"] if r["name"] == "Microsoft Marketplace Lead Writer"]
    assert roles, "the import brings the Lead Writer role"
    assert p.diff(created.id, created.outs, news).changes is False
    # crash recovery: the create runs again and finds what its own import installed (no second import)
    again = p.create(news)
    assert again.outs["adopted"] is False and again.id == created.id
    assert len(sandbox.control.state(org)["importjobs"]) == 1
    p.delete(again.id, again.outs)
    assert installed(sandbox, org) is None


def test_a_solution_installed_by_someone_else_is_adopted_and_released(sandbox, org, tmp_path):
    import base64
    import time
    import uuid

    from dynamics_provider.client import DataverseClient

    p = provider(sandbox, org)
    path = zip_file(tmp_path)
    DataverseClient.for_instance(org, p.settings).action("ImportSolutionAsync", {
        "OverwriteUnmanagedCustomizations": False, "PublishWorkflows": True, "ImportJobId": str(uuid.uuid4()),
        "CustomizationFile": base64.b64encode(open(path, "rb").read()).decode()})  # a person's import
    deadline = time.monotonic() + 30
    while installed(sandbox, org) is None:
        assert time.monotonic() < deadline, "the import by hand never finished"
        time.sleep(0.1)
    adopted = p.create(p.check({}, {"instance_url": org, "source_path": path}).inputs)
    assert adopted.outs["adopted"] is True and adopted.id == installed(sandbox, org)["solutionid"]
    assert len(sandbox.control.state(org)["importjobs"]) == 1, "the same version is adopted, not imported"
    p.delete(adopted.id, adopted.outs)
    assert installed(sandbox, org) is not None


def test_higher_zip_upgrades_and_lower_zip_is_refused(sandbox, org, tmp_path):
    p = provider(sandbox, org)
    v1 = p.check({}, {"instance_url": org, "source_path": zip_file(tmp_path, "1.0.0.0")}).inputs
    created = p.create(v1)
    v2 = p.check({}, {"instance_url": org, "source_path": zip_file(tmp_path, "1.1.0.0")}).inputs
    diff = p.diff(created.id, created.outs, v2)
    assert diff.changes is True and diff.replaces == []
    upgraded = p.update(created.id, created.outs, v2).outs
    assert upgraded["version"] == "1.1.0.0" and installed(sandbox, org)["version"] == "1.1.0.0"
    assert upgraded["adopted"] is False
    with pytest.raises(ResourceOperationError, match="cannot downgrade"):
        p.update(created.id, upgraded, v1)


def test_uninstalled_by_hand_reads_as_gone_and_version_drift_shows(sandbox, org, tmp_path):
    p = provider(sandbox, org)
    news = p.check({}, {"instance_url": org, "source_path": zip_file(tmp_path)}).inputs
    created = p.create(news)
    assert p.read(created.id, created.outs).outs["version"] == "1.0.0.0"
    sandbox.control.drift(org, "uninstall_solution", uniquename=DEFAULT_UNIQUE_NAME)
    assert p.read(created.id, created.outs).id == ""


def test_failed_import_reports_the_import_jobs_error_text(sandbox, org, tmp_path):
    p = provider(sandbox, org)
    sandbox.control.drift(org, "fail_next_import", errortext="Missing dependency: FooBar 2.0")
    with pytest.raises(ResourceOperationError, match="Missing dependency: FooBar 2.0"):
        p.create(p.check({}, {"instance_url": org, "source_path": zip_file(tmp_path)}).inputs)


def test_import_timeout_is_reported_with_what_to_do(sandbox, org, tmp_path):
    p = provider(sandbox, org)
    news = p.check({}, {"instance_url": org, "source_path": zip_file(tmp_path), "import_timeout_seconds": 1}).inputs
    # the sandbox's imports take import_seconds (1.5 s by default), longer than the 1 s allowed
    with pytest.raises(ResourceOperationError, match="timed out"):
        p.create(news)


def test_source_url_is_downloaded_once_verified_and_cached(sandbox, org, tmp_path, monkeypatch):
    import hashlib
    import uuid

    monkeypatch.setenv("LEAD_DESTINATION_CACHE_DIR", str(tmp_path / "cache"))
    data = build_solution_zip(version="1.0.0.0")
    name = f"sol-{uuid.uuid4().hex[:8]}.zip"
    url = sandbox.control.host_file(name, data)
    org_name = org.rstrip("/").rsplit("/", 1)[-1]
    mark = max((e["seq"] for e in sandbox.control.log()), default=0)
    p = provider(sandbox, org)

    # a wrong pin: refused after the download, before any Dataverse request, and nothing is cached
    wrong = p.check({}, {"instance_url": org, "source_url": url, "sha256": "0" * 64}).inputs
    with pytest.raises(ResourceOperationError, match="sha256") as refused:
        p.create(wrong)
    assert "0" * 64 in str(refused.value) and hashlib.sha256(data).hexdigest() in str(refused.value)
    sent = sandbox.control.log(since=mark)
    assert [e for e in sent if e["kind"] == "dataverse" and e.get("org") == org_name] == []
    assert len([e for e in sent if e["kind"] == "files" and e["path"].endswith(name)]) == 1
    assert not list((tmp_path / "cache").rglob("*.zip"))

    # the right pin: downloaded once, imported; the same pin again (adopt, diff) uses the cache
    news = p.check({}, {"instance_url": org, "source_url": url, "sha256": hashlib.sha256(data).hexdigest()}).inputs
    created = p.create(news)
    assert created.outs["version"] == "1.0.0.0" and created.outs["sha256"] == hashlib.sha256(data).hexdigest()
    again = p.create(news)  # a create retried after a crash: its own install, no second import
    assert again.outs["adopted"] is False and p.diff(created.id, created.outs, news).changes is False
    downloads = [e for e in sandbox.control.log(since=mark) if e["kind"] == "files" and e["path"].endswith(name)]
    assert len(downloads) == 2  # the refused one, then exactly one for every later use
    sandbox.control.remove_file(name)
