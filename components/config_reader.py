"""Reading one raw stack config against the declaration (dynamics_provider.config_schema): typed values
with their declared defaults and bounds, unknown keys and plain-text secrets refused, and every problem
collected (never raised one by one) with its value shown only through the one masking function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamics_provider.config_schema import (
    BY_KEY,
    NAMESPACE,
    TOP_LEVEL,
    Setting,
    SettingValueError,
    expected,
    fields_of,
    parse_scalar,
    unknown_key_message,
)
from dynamics_provider.formats import EMAIL_RE
from dynamics_provider.masking import quote

UNSET: Any = object()  # a key that is not in the config at all
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Problem:
    """One configuration problem: the user-facing key and what is wrong with it (value already masked)."""

    key: str
    detail: str  # " = 'value': expected …" or ": unknown key, …"

    def __str__(self) -> str:
        return f"{NAMESPACE}:{self.key}{self.detail}"


class ConfigError(ValueError):
    """Every configuration problem of the stack, in one message."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"invalid stack configuration ({len(self.problems)} problem(s)); fix them with `pulumi config set` "
            f"(docs/configuration.md lists every key):\n{lines}"
        )


def _declared(key: str) -> Setting | None:
    return BY_KEY.get(re.sub(r"\[\d+\]", "", key))


class Reader:
    """Reads and checks one raw config map, collecting problems instead of raising."""

    def __init__(self, raw: Mapping[str, Any], project_dir: Path, secret_keys: frozenset[str]):
        self.raw = raw
        self.project_dir = project_dir
        self.secret_keys = secret_keys  # top-level keys the stack holds as secrets
        self.problems: list[Problem] = []
        self.objects: dict[str, dict[str, Any] | None] = {}

    # --- messages ---------------------------------------------------------------------------------
    def show(self, key: str, value: Any) -> str:
        setting = _declared(key)
        top = re.split(r"[.\[]", key)[0]
        secret = (setting is not None and setting.secret) or top in self.secret_keys
        return quote(None if value is UNSET else value, secret=secret,
                     url=setting is not None and setting.url_valued)

    def fail(self, key: str, value: Any, wanted: str) -> None:
        self.problems.append(Problem(key, f" = {self.show(key, value)}: expected {wanted}"))

    def refuse(self, key: str, detail: str) -> None:
        self.problems.append(Problem(key, f": {detail}"))

    # --- the whole map ----------------------------------------------------------------------------
    def check_keys(self) -> None:
        """Unknown keys (never echoed) and secrets stored in plain text."""
        for key in sorted(set(self.raw) - set(TOP_LEVEL)):
            self.refuse(key, unknown_key_message(key, TOP_LEVEL))
        for key in TOP_LEVEL:
            setting = BY_KEY[key]
            value = self.raw.get(key)
            if setting.secret and value not in (None, "") and key not in self.secret_keys:
                self.refuse(key, f"stored in plain text, but it is a secret (its value is not shown): set it "
                                 f"with `{setting.how_to_set()}` (then no plain value is left in Pulumi.<stack>.yaml)")

    # --- values -----------------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        """The raw value of a declared key (`a.b` looks into object `a`), UNSET when absent."""
        if "." not in key:
            return self.raw.get(key, UNSET)
        parent, name = key.split(".", 1)
        obj = self.object(parent)
        return UNSET if obj is None else obj.get(name, UNSET)

    def object(self, key: str) -> dict[str, Any] | None:
        """An object setting as a dict (YAML mapping or JSON text); None when unset or empty. Its unknown
        fields are reported once (their values never shown)."""
        if key in self.objects:
            return self.objects[key]
        value = self.raw.get(key, UNSET)
        result: dict[str, Any] | None = None
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                self.fail(key, "{…}", "an object (YAML mapping), set with `pulumi config set --path`")
                value = UNSET
        if isinstance(value, dict):
            result = value or None
            known = fields_of(key)
            for name in sorted(set(value) - set(known)):
                self.refuse(f"{key}.{name}", unknown_key_message(name, known, f"{key}."))
        elif value not in (UNSET, None, ""):
            self.fail(key, value, "an object (YAML mapping), set with `pulumi config set --path`")
        self.objects[key] = result
        return result

    def value(self, key: str, raw: Any = UNSET, *, default: Any = UNSET) -> Any:
        """A declared scalar, read and checked; its declared default when unset or bad."""
        setting = BY_KEY[key]
        fallback = setting.default if default is UNSET else default
        value = self.get(key) if raw is UNSET else raw
        if value is UNSET:
            return fallback
        try:
            parsed = parse_scalar(setting, value)
        except SettingValueError:
            self.fail(key, value, expected(setting))
            return fallback
        if parsed is None:
            return fallback
        if setting.format == "email" and not EMAIL_RE.match(parsed):
            self.fail(key, value, "an email address such as leads@contoso.com")
            return fallback
        if setting.format == "sha256" and not _SHA256.match(parsed):
            self.fail(key, value, "the 64-hex-digit SHA-256 of the zip")
            return fallback
        if setting.format == "country" and not re.fullmatch(r"[A-Z]{2}", parsed):
            self.fail(key, value, "a two-letter ISO country code in capitals, e.g. US")
            return fallback
        if setting.format == "path":
            return self.existing_file(key, parsed)
        return parsed

    def required(self, key: str, wanted: str) -> Any:
        value = self.value(key)
        if value is None and not any(p.key == key for p in self.problems):
            self.fail(key, UNSET, wanted)
        return value

    def existing_file(self, key: str, text: str) -> str | None:
        path = self.resolve(text)
        if not path.is_file():
            self.fail(key, text, f"the path of an existing file (looked at {path})")
            return None
        return str(path)

    def resolve(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.project_dir / path
