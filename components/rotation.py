"""Deterministic rotation periods: the period key that turns over every N days from a fixed epoch.

Credentials are rotated by feeding the key to `rotate_when_changed` / `keepers`, so the first
`pulumi up` after a period turns replaces the secret, and every other run leaves it alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# All periods count from this date, so the key depends only on the date and the period length.
EPOCH = dt.date(2024, 1, 1)


@dataclass(frozen=True)
class RotationPeriod:
    key: str  # e.g. "180d-3": stable for the whole period
    start: dt.date  # first day of the period
    end: dt.date  # first day of the next period (the rotation date)


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def rotation_period(today: dt.date, days: int) -> RotationPeriod:
    """The period of `days` days that contains `today` (days >= 1)."""
    if days < 1:
        raise ValueError("rotation period must be at least one day")
    index = (today.toordinal() - EPOCH.toordinal()) // days
    start = EPOCH + dt.timedelta(days=index * days)
    return RotationPeriod(key=f"{days}d-{index}", start=start, end=start + dt.timedelta(days=days))


def rfc3339(day: dt.date) -> str:
    """Midnight UTC of `day` in the form azuread expects for end dates."""
    return f"{day.isoformat()}T00:00:00Z"
