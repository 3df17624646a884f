"""The configuration reference stays true: every key the program and the providers read is declared
or described in Pulumi.yaml and documented in docs/configuration.md, and nothing documented is unread."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import yaml

from components import settings as settings_module
from components.settings import KNOWN_KEYS, NAMESPACE, NESTED_KEYS, SECRET_KEYS
from dynamics_provider import auth

ROOT = Path(__file__).resolve().parent.parent
NESTED = {f"{key}.{field}" for key, fields in NESTED_KEYS.items() for field in fields}


def documented_keys(markdown: str) -> set[str]:
    """Keys named in the first column of the tables under `## Keys` (`a.b` / `.c` means a.b and a.c)."""
    section = markdown.split("\n## Keys", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1].split("(")[0]
        prefix = ""
        for token in re.findall(r"`([^`]+)`", cell):
            key = prefix + token if token.startswith(".") else token
            prefix = key.split(".")[0]
            keys.add(key)
    return keys


def pulumi_yaml_keys(text: str) -> set[str]:
    """Keys declared in Pulumi.yaml's `config:` plus the structured keys described in its comments."""
    declared = set(yaml.safe_load(text)["config"])
    described = set(re.findall(r"^  # (\w+) \(", text, flags=re.MULTILINE))
    return declared | described


def provider_keys() -> set[str]:
    prefix = NAMESPACE + ":"
    return {key[len(prefix):] for stack_keys, _, _ in auth._SOURCES.values() for key in stack_keys}


def test_docs_document_exactly_the_keys_and_fields_the_program_accepts():
    keys = documented_keys((ROOT / "docs" / "configuration.md").read_text())
    assert {k for k in keys if "." not in k} | {k.split(".")[0] for k in keys} == set(KNOWN_KEYS)
    assert {k for k in keys if "." in k} == NESTED


def test_pulumi_yaml_declares_or_describes_every_key_the_program_accepts():
    text = (ROOT / "Pulumi.yaml").read_text()
    assert pulumi_yaml_keys(text) == set(KNOWN_KEYS)
    for fields in NESTED_KEYS.values():  # the comment block names every field of the structured keys
        for field in fields:
            assert re.search(rf"\b{field}\b", text), field


def test_every_accepted_key_is_read_by_the_program_or_by_the_providers():
    program_source = inspect.getsource(settings_module.parse_settings)
    read_by_program = {k for k in KNOWN_KEYS if re.search(rf'(get|obj)\("{k}"', program_source)}
    # the providers read the deploying identity's keys through configure(); the program validates them
    assert provider_keys() <= set(KNOWN_KEYS)
    assert read_by_program | provider_keys() == set(KNOWN_KEYS)
    assert not (read_by_program - provider_keys()) & {k for k in KNOWN_KEYS if k.startswith("deployer")}


def test_secret_keys_are_documented_as_secrets_to_set_with_the_secret_flag():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    text = (ROOT / "Pulumi.yaml").read_text()
    project = yaml.safe_load(text)["config"]
    for key in SECRET_KEYS:
        assert "secret" not in project[key] or project[key].get("secret") is not True  # decision: plain for dev
        assert project[key]["description"].startswith("SECRET (set with --secret)"), key
        assert f"--secret {key}" in docs or f"`{key}` (**secret**)" in docs, key
    assert "not declared `secret: true`" in text.lower() and "**not** declared `secret: true`" in docs


def test_the_documenting_parsers_see_what_a_reader_sees():
    table = "intro\n## Keys\n| key |\n|---|\n| `a.b` / `.c` | x |\n| `d` (`not`, `keys`) | y |\n## Next\n| `e` |\n"
    assert documented_keys(table) == {"a.b", "a.c", "d"}
    assert pulumi_yaml_keys("config:\n  x:\n    type: string\n  # y (object): z\n  #   w (string)\n") == {"x", "y"}
