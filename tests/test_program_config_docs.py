"""One declaration of every setting drives everything: Pulumi.yaml's `config:` block and the docs' key
tables are what the declaration generates, every declared key is read (the program's Settings or the
providers' DeployerSettings hold a distinctive value set under it), and nothing else is accepted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi.dynamic import Config, ConfigureRequest

from components.config_reader import ConfigError
from components.settings import parse_settings
from dynamics_provider.auth import DeployerSettings
from dynamics_provider.config_schema import BY_KEY, DEPLOYER, NAMESPACE, SETTINGS, TOP_LEVEL
from dynamics_provider.role_privileges import RolePrivilegesProvider
from tools import config_reference

ROOT = Path(__file__).resolve().parent.parent


def test_pulumi_yaml_and_the_docs_are_what_the_declaration_generates():
    stale = [str(path.relative_to(ROOT)) for path, _ in config_reference.outdated()]
    assert stale == [], f"{stale} out of date: run .venv/bin/python -m tools.config_reference --write"


def test_the_generated_check_fails_when_a_file_drifts(tmp_path, monkeypatch):
    copy = tmp_path / "Pulumi.yaml"
    copy.write_text((ROOT / "Pulumi.yaml").read_text().replace("default: 60", "default: 61"))
    monkeypatch.setattr(config_reference, "PULUMI_YAML", copy)
    monkeypatch.setattr(config_reference, "REPO", tmp_path)
    monkeypatch.setattr(config_reference, "DOCS", ROOT / "docs" / "configuration.md")
    assert config_reference.main(["--check"]) == 1
    assert config_reference.main(["--write"]) == 0 and "default: 60" in copy.read_text()


def test_pulumi_yaml_declares_every_top_level_key_with_the_declared_default_and_secrecy():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert list(project) == list(TOP_LEVEL)
    for key, entry in project.items():
        setting = BY_KEY[key]
        assert entry.get("secret", False) is setting.secret, key
        assert ("default" in entry) is (setting.required != "always"), key
        if setting.default is not None and not isinstance(setting.default, tuple):
            assert entry["default"] == setting.default, key


def test_the_docs_table_rows_are_exactly_the_declared_keys():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    table = docs.split(config_reference.BEGIN, 1)[1].split(config_reference.END, 1)[0]
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    declared = {s.key for s in SETTINGS if s.key and (s.type != "object" or s.required == "always")}
    assert rows == declared


# --- every declared key is read: a distinctive value set under it lands where the code reads it ------

GUID = "0b1f5a3c-5a4d-4e8b-9c6f-{:012x}"


def distinctive(key: str, tmp_path: Path) -> Any:
    """A valid value for `key` that no default and no other key has."""
    s = BY_KEY[key]
    n = sorted(BY_KEY).index(key) + 1
    if s.format == "guid":
        return GUID.format(n)
    if s.format == "path":
        path = tmp_path / f"file-{n}.pem"
        path.write_text("x")
        return str(path)
    if s.format == "privilege-spec":
        path = tmp_path / "privileges.yaml"
        path.write_text("privileges:\n  - {name: prvReadLead, depth: Local}\n")
        return str(path)
    if s.format == "email":
        return f"marker{n}@contoso.example"
    if s.format == "country":
        return "DE"
    if s.format == "sha256":
        return f"{n:064x}"
    if s.type == "boolean":
        return not s.default
    if s.type == "integer":
        return (s.bounds or (1, 10))[0] + 1 if s.default != (s.bounds or (1, 10))[0] + 1 else s.bounds[0] + 2
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    return {"instanceUrl": "https://marker.crm4.dynamics.com", "solution.url": "https://downloads.example/m.zip",
            "application.redirectUris": ["https://marker.example/auth"], "authorityHost": "login.microsoftonline.us",
            "partnerCenterEndpoint": "https://marker.example/rp"}.get(key, f"marker-{n}")


def context(key: str, tmp_path: Path) -> dict[str, Any]:
    """The smallest valid config in which `key` applies (nested values as the engine gives them: JSON)."""
    zip_path = tmp_path / "s.zip"
    zip_path.write_bytes(b"zip")
    (tmp_path / "components").mkdir(exist_ok=True)
    (tmp_path / "components" / "privileges.yaml").write_text((ROOT / "components" / "privileges.yaml").read_text())
    raw: dict[str, Any] = {"instanceUrl": "https://contoso.crm4.dynamics.com", "contactEmails": "a@contoso.example",
                           "solution": {"path": str(zip_path)}}
    top = key.split(".")[0]
    if top in ("existingApplication", "existingApplicationSecret"):
        raw.update(existingApplication={"clientId": GUID.format(900), "tenantId": GUID.format(901)},
                   existingApplicationSecret="s")
    if top == "office365" or key == "authentication":
        raw.update(authentication="office365", office365={"userPrincipalName": "u@contoso.example"})
    if key.startswith("solution.") and key != "solution.path":
        raw["solution"] = {"url": "https://downloads.example/s.zip", "sha256": "0" * 64}
    if key == "cloud":
        raw["instanceUrl"] = "https://contoso.crm.microsoftdynamics.us"
    if key == "offer.schemaVersion":
        raw["offer"] = {"id": "x"}
    return raw


def put(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    if "." in key:
        parent, name = key.split(".", 1)
        raw[parent] = {**raw.get(parent, {}), name: value}
    else:
        raw[key] = value
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def found(needle: Any, haystack: Any) -> bool:
    if dataclasses.is_dataclass(haystack) and not isinstance(haystack, type):
        return any(found(needle, getattr(haystack, f.name)) for f in dataclasses.fields(haystack))
    if isinstance(haystack, dict):
        return any(found(needle, v) for v in haystack.values())
    if isinstance(haystack, list | tuple) and not isinstance(needle, list):
        return any(found(needle, v) for v in haystack) or list(haystack) == needle
    if isinstance(needle, list):
        return isinstance(haystack, list | tuple) and list(haystack) == needle
    return haystack == needle or (isinstance(needle, str) and isinstance(haystack, str) and haystack.endswith(needle))


PROGRAM_KEYS = sorted(k for k, s in BY_KEY.items() if s.type != "object" and not s.field)


@pytest.mark.parametrize("key", PROGRAM_KEYS)
def test_every_program_key_is_read_into_the_settings(key, tmp_path):
    value = distinctive(key, tmp_path)
    raw = put(context(key, tmp_path), key, value)
    settings = parse_settings(raw, project_dir=tmp_path, secret_keys=frozenset({"existingApplicationSecret"}))
    if key == "privileges":
        assert settings.privileges == (("prvReadLead", "Local"),)
    else:
        assert found(value, settings), (key, value)


@pytest.mark.parametrize("setting", [s for s in DEPLOYER if s.key], ids=lambda s: s.key)
def test_every_deployer_key_is_accepted_by_the_program_and_read_by_the_providers_configure(setting, tmp_path):
    value = distinctive(setting.key, tmp_path)
    raw = put(context(setting.key, tmp_path), setting.key, value)
    parse_settings(raw, project_dir=tmp_path, secret_keys=frozenset({setting.key}))  # no problem
    provider = RolePrivilegesProvider()
    provider.configure(ConfigureRequest(Config({setting.full_key: raw[setting.key]}, NAMESPACE)))
    expected = value.lower() if setting.format == "guid" else value
    assert getattr(provider.settings, setting.field) == expected


@pytest.mark.parametrize("setting", DEPLOYER, ids=lambda s: s.field)
def test_the_azuread_and_environment_fallbacks_are_the_declared_ones(setting, tmp_path):
    value = "true" if setting.type == "boolean" else "7" if setting.type == "integer" else \
        "usgovernment" if setting.field == "cloud" else GUID.format(7) if setting.format == "guid" else "fallback"
    parsed = {"true": True, "7": 7.0}.get(value, value)
    for source in setting.azuread:
        assert getattr(DeployerSettings.from_sources({source: value}, {}), setting.field) == parsed, source
    for name in setting.env:
        assert getattr(DeployerSettings.from_sources({}, {name: value}), setting.field) == parsed, name


def test_a_key_nobody_declared_is_refused_by_the_program(tmp_path):
    raw = put(context("instanceUrl", tmp_path), "undeclaredKey", "v")
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, project_dir=tmp_path)
    assert [p.key for p in caught.value.problems] == ["undeclaredKey"]
