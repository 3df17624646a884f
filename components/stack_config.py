"""The running stack's `lead-destination:*` config (under the engine or Pulumi's mock runtime), through
Pulumi's public runtime config functions: the raw values and which keys the stack holds as secrets."""

from __future__ import annotations

from typing import Any

from dynamics_provider.config_schema import NAMESPACE


def raw_stack_config() -> dict[str, Any]:
    """The `lead-destination:*` keys of the running stack, namespace stripped, values as delivered."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = NAMESPACE + ":"
    return {key[len(prefix):]: runtime_config.get_config(key) for key in sorted(keys) if key.startswith(prefix)}


def stack_secret_keys(keys: set[str] | frozenset[str]) -> frozenset[str]:
    """Those of `keys` (namespace stripped) that the running stack holds as secrets (`--secret`)."""
    from pulumi.runtime.config import get_config_secret_keys_env, is_config_secret

    from_env = set(get_config_secret_keys_env())  # what the language host hands a program it starts
    return frozenset(key for key in keys if is_config_secret(f"{NAMESPACE}:{key}") or f"{NAMESPACE}:{key}" in from_env)
