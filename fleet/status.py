"""`fleet status`: per stack, when its lead-writer credential expires and rotates next, when the chain
was last validated, whether the offer's lead destination is set; flags what needs action within N days.

Read without decrypting anything: the stack's config (`pulumi config --json`, secrets hidden) through
the program's own settings rules, and its checkpoint (`pulumi stack export`, secrets left encrypted)
for the stack outputs `secretExpiresOn` / `validatedAt` and the OfferLeadDestination resource.
Rotation dates come from the same period arithmetic the program uses (components.rotation).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from pulumi import automation as auto

from components.rotation import rotation_period
from components.settings import ConfigError, Settings, parse_settings
from fleet.report import DRIFTED, FAILED, IN_SYNC, StackResult
from fleet.workspace import Workspace

OFFER_TYPE = "pulumi-python:dynamic/dynamics:OfferLeadDestination"
PLACEHOLDER = "[secret]"


def _date(text: Any) -> dt.date | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def settings_of(ws: Workspace, stack: str) -> Settings:
    """The stack's settings as the program reads them (secret values replaced by a placeholder)."""
    prefix = ws.namespace + ":"
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    for key, entry in ws.config(stack).items():
        if not key.startswith(prefix):
            continue
        short = key[len(prefix):]
        if entry.get("secret"):
            secret.add(short)
            raw[short] = PLACEHOLDER
        elif "objectValue" in entry:
            raw[short] = json.dumps(entry["objectValue"])
        else:
            raw[short] = entry.get("value", "")
    return parse_settings(raw, project_dir=ws.dir, secret_keys=frozenset(secret))


def stack_status(ws: Workspace, name: str, *, days: int, today: dt.date | None = None) -> StackResult:
    started = time.monotonic()
    today = today or dt.datetime.now(dt.UTC).date()
    try:
        settings = settings_of(ws, name)
        state = ws.export(name)
    except ConfigError as error:
        problems = "; ".join(str(p) for p in error.problems)
        return StackResult(name, FAILED, error=f"invalid configuration: {problems}",
                           duration_s=time.monotonic() - started)
    except auto.errors.CommandError as error:
        return StackResult(name, FAILED, error=ws.cli_failure(str(error)),
                           duration_s=time.monotonic() - started)
    resources = (state.get("deployment") or {}).get("resources") or []
    outputs: dict[str, Any] = next((r.get("outputs") or {} for r in resources if r.get("type") == "pulumi:pulumi:Stack"), {})
    flags: list[str] = []
    details: dict[str, Any] = {}
    deployed = any(r.get("custom") and not str(r.get("type", "")).startswith("pulumi:providers:") for r in resources)
    if not deployed:
        flags.append("not deployed yet: run fleet up")

    # --- the lead writer's credential ---
    expires = _date(outputs.get("secretExpiresOn"))
    if settings.mode == "existingApplication":
        details["credential"] = "existing app (its secret is yours to rotate)"
    elif settings.mode == "azureAD":
        app = settings.application
        period = rotation_period(today, app.rotation_days)
        details["credential"] = f"Entra app client secret (rotates every {app.rotation_days} days)"
        details["rotates_on"] = period.end.isoformat()
        due = period.start + dt.timedelta(days=app.secret_lifetime_days)
        if deployed and expires is not None and expires < due:
            flags.append(f"rotation due since {period.start.isoformat()}: run fleet up")
    else:
        assert settings.office365 is not None
        period = rotation_period(today, settings.office365.rotation_days)
        details["credential"] = f"Office 365 password (rotates every {settings.office365.rotation_days} days)"
        details["rotates_on"] = period.end.isoformat()
        if deployed and expires is not None and expires <= today:
            flags.append(f"password rotation due since {expires.isoformat()}: run fleet up")
    if expires is not None:
        details["expires_on"] = expires.isoformat()
        left = (expires - today).days
        if left < 0:
            flags.append(f"credential expired on {expires.isoformat()}")
        elif left <= days:
            flags.append(f"credential expires on {expires.isoformat()} (in {left} days)")

    # --- the last validation lead ---
    validated = _date(outputs.get("validatedAt"))
    details["validated_at"] = outputs.get("validatedAt") or None
    if not settings.validate:
        details["validated_at"] = "validation off"
    elif deployed and validated is None:
        flags.append("never validated: run fleet up")
    elif validated is not None and (today - validated).days > days:
        flags.append(f"not validated for {(today - validated).days} days (last {validated.isoformat()})")

    # --- the offer's lead destination ---
    if settings.offer:
        offer_id = settings.offer if isinstance(settings.offer, str) else settings.offer.get("id")
        offer = [r for r in resources if r.get("type") == OFFER_TYPE and r.get("id") and not r.get("delete")]
        if offer:
            details["offer"] = f"{offer_id}: set"
        else:
            details["offer"] = f"{offer_id}: not set"
            flags.append(f"offer {offer_id}: lead destination not set: run fleet up")
    else:
        details["offer"] = "not managed (copy the partnerCenter output into Partner Center)"
    return StackResult(name, DRIFTED if flags else IN_SYNC, error=None, duration_s=time.monotonic() - started,
                       flags=flags, details=details)
