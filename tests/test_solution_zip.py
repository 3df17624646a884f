"""The sandbox's solution zip builder and its hardened parser (defusedxml).

Round trips, stable role ids across versions, hostile zips refused, and the build-solution command.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from sandbox import solution_zip
from sandbox.solution_zip import build_solution_zip, parse_solution_zip


def _zip(**members: bytes | str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def test_built_zip_round_trips_manifest_and_lead_writer_role():
    data = build_solution_zip(version="1.2.3.4")
    assert set(_members(data)) == {"[Content_Types].xml", "solution.xml", "customizations.xml"}
    m = parse_solution_zip(data)
    assert (m.unique_name, m.version, m.managed) == ("MicrosoftMarketplacesLeadIntegrationSolution", "1.2.3.4", True)
    [role] = m.roles
    assert role["name"] == "Microsoft Marketplace Lead Writer"
    names = {p["name"]: p["level"] for p in role["privileges"]}
    assert {"prvCreateLead", "prvReadLead", "prvWriteLead", "prvAppendToLead", "prvReadSolution"} <= set(names)
    assert set(names.values()) <= {"Basic", "Local", "Deep", "Global"}


def test_role_id_is_stable_across_versions_so_upgrades_keep_it():
    one = parse_solution_zip(build_solution_zip(version="1.0.0.0")).roles[0]["id"]
    two = parse_solution_zip(build_solution_zip(version="2.0.0.0")).roles[0]["id"]
    other = parse_solution_zip(build_solution_zip(role_name="Another Role")).roles[0]["id"]
    assert one == two != other


def test_unmanaged_and_custom_privileges_are_written():
    data = build_solution_zip(managed=False, privileges=[{"name": "prvReadLead", "level": "Basic"}])
    m = parse_solution_zip(data)
    assert m.managed is False
    assert m.roles[0]["privileges"] == [{"name": "prvReadLead", "level": "Basic"}]


def test_description_says_it_is_a_stand_in_not_microsofts_file():
    text = _members(build_solution_zip())["solution.xml"].decode()
    assert "Representative stand-in" in text and "NOT Microsoft's" in text


@pytest.mark.parametrize("data, fragment", [
    (b"not a zip at all", "not a zip"),
    (_zip(**{"customizations.xml": "<ImportExportXml/>"}), "solution.xml is missing"),
    (_zip(**{"solution.xml": "<ImportExportXml><SolutionManifest><UniqueName>x</UniqueName>"
                             "<Version>one</Version><Managed>1</Managed></SolutionManifest></ImportExportXml>"}),
     "invalid solution version"),
    (_zip(**{"solution.xml": "<ImportExportXml><SolutionManifest>"}), "not well-formed"),
    (_zip(**{"solution.xml": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                             "<ImportExportXml>&b;</ImportExportXml>"}), "forbidden XML"),
    (_zip(**{"solution.xml": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                             "<ImportExportXml>&e;</ImportExportXml>"}), "forbidden XML"),
])
def test_parser_refuses_bad_or_hostile_zips_with_a_clear_message(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_solution_zip(data)


def test_builder_refuses_bad_version_and_depth():
    with pytest.raises(ValueError, match="version"):
        build_solution_zip(version="1.x")
    with pytest.raises(ValueError, match="level"):
        build_solution_zip(privileges=[("prvReadLead", "Organization")])


def test_build_solution_command_writes_default_path_and_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert solution_zip.main(["--version", "1.0.1.0"]) == 0
    default = tmp_path / ".sandbox/solutions/MicrosoftMarketplacesLeadIntegrationSolution_1_0_1_0_managed.zip"
    assert parse_solution_zip(default.read_bytes()).version == "1.0.1.0"
    out = tmp_path / "x" / "u.zip"
    assert solution_zip.main(["--unmanaged", "--out", str(out)]) == 0
    assert parse_solution_zip(out.read_bytes()).managed is False
    assert solution_zip.main(["--version", "bad"]) == 2
    assert "invalid solution version" in capsys.readouterr().err
