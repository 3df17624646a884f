"""The shape of a JSON value, for comparing the emulator's answers with Microsoft's published examples."""

from __future__ import annotations

from typing import Any


def skeleton(value: Any) -> Any:
    """Objects by key, a list by its first item, scalars by type name."""
    if isinstance(value, dict):
        return {key: skeleton(item) for key, item in value.items()}
    if isinstance(value, list):
        return [skeleton(value[0])] if value else []
    return "null" if value is None else type(value).__name__
