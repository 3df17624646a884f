"""Waiting for Dataverse or Partner Center to finish something: capped exponential backoff, bounded overall."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    first_delay: float = 0.5,
    max_delay: float = 5.0,
    factor: float = 1.6,
    probe_at_once: bool = True,
    on_wait: Callable[[float], None] | None = None,
) -> T:
    """Call `probe` until it returns something truthy: capped exponential backoff, bounded overall.

    `probe_at_once=False` waits `first_delay` before the first probe (for work that cannot be done yet,
    such as an import just started). Raises TimeoutError naming `what` when `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    delay = first_delay
    if not probe_at_once:
        time.sleep(min(delay, timeout))
        delay = min(delay * factor, max_delay)
    while True:
        result = probe()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        if on_wait is not None:
            on_wait(timeout - remaining)
        time.sleep(min(delay, remaining))
        delay = min(delay * factor, max_delay)
