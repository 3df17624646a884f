"""Check-time validators of the dynamic resources' inputs (no network): each returns the reason an input is
refused, or None; `failures_for` turns them into Pulumi's CheckFailures, one per property."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pulumi.dynamic import CheckFailure

from dynamics_provider.formats import EMAIL_RE, GUID_RE
from dynamics_provider.masking import quote


def need_https_url(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "expected the organization's https URL, e.g. https://contoso.crm4.dynamics.com"
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        return f"expected an https URL (https://<org>.crm<N>.dynamics.com), got {quote(value, url=True)}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "expected a plain instance URL without query, fragment or credentials"
    return None


def need_guid(value: Any, what: str = "a GUID") -> str | None:
    if not isinstance(value, str) or not GUID_RE.match(value):
        return f"expected {what} in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, got {quote(value)}"
    return None


def need_text(value: Any, what: str, max_len: int = 256) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"expected {what} as a non-empty string"
    if len(value) > max_len:
        return f"expected {what} of at most {max_len} characters"
    return None


def need_email(value: Any) -> str | None:
    if not isinstance(value, str) or not EMAIL_RE.match(value):
        return f"expected an e-mail address such as leads@contoso.com, got {quote(value)}"
    return None


def need_role(inputs: Mapping[str, Any]) -> dict[str, str | None]:
    """Checks of a role given by name or by id (exactly one of them)."""
    if "role_name" in inputs and "role_id" in inputs:
        return {"role_id": "give either role_name or role_id, not both"}
    if "role_id" in inputs:
        return {"role_id": need_guid(inputs["role_id"], "the role id")}
    return {"role_name": need_text(inputs.get("role_name"), "the security role's name (or role_id)", 100)}


def need_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {quote(value)}"


def need_positive_int(value: Any, maximum: int = 86400) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        return f"expected a whole number of seconds, got {quote(value)}"
    if not 1 <= int(value) <= maximum:
        return f"expected between 1 and {maximum} seconds, got {int(value)}"
    return None




def failures_for(checks: Mapping[str, str | None]) -> list[CheckFailure]:
    return [CheckFailure(prop, reason) for prop, reason in checks.items() if reason]
