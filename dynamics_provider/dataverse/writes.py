"""The one policy for a write that is not idempotent (a create, an import) whose answer was lost, and the
small read helpers every domain module shares.

The pipeline never repeats such a write on its own (it raises AmbiguousWriteError). `send_once` settles
it: it looks for the write's effect, giving a write that went unanswered up to one read timeout to land,
and sends again only when there is no trace of it, at most MAX_SENDS times in all. A duplicate answered to
a resend means an earlier send landed after all: what the lookup finds is the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from dynamics_provider.client import DataverseClient, UnansweredWrite
from dynamics_provider.errors import AmbiguousWriteError, DataverseError, DuplicateRecord, NotFound

log = logging.getLogger("dynamics_provider")

T = TypeVar("T")
# The first send and up to two resends, each only after the lookup settled "it did not happen". Two sends
# were not enough under the bench's 5 % random faults: 3 of 50 stacks lost both sends of their test lead.
MAX_SENDS = 3


def settle(client: DataverseClient, find: Callable[[], T | None], exc: AmbiguousWriteError) -> T | None:
    """After an ambiguous write: what `find` finds. When the write went unanswered (it may still be in
    flight), look again for up to one read timeout before concluding it did not happen."""
    found = find()
    if found is not None or not isinstance(exc, UnansweredWrite):
        return found
    deadline = time.monotonic() + client.retry.timeout
    delay = 0.25
    while found is None and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)
        found = find()
    return found


def send_once(client: DataverseClient, send: Callable[[], T], find: Callable[[], T | None], *, what: str) -> T:
    """`send()`'s answer, or after a lost answer what `find()` finds; a DuplicateRecord answered to the
    first send is the caller's to interpret (someone else's record)."""
    for attempt in range(1, MAX_SENDS + 1):
        try:
            return send()
        except DuplicateRecord:
            found = find() if attempt > 1 else None
            if found is None:
                raise
            return found
        except AmbiguousWriteError as exc:
            found = settle(client, find, exc)
            if found is not None:
                return found
            if attempt == MAX_SENDS:
                raise
            log.info("%s: no trace of the unanswered request; sending it again", what)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def get_or_none(client: DataverseClient, path: str, select: Iterable[str] | None = None) -> dict[str, Any] | None:
    """GET one record; None when Dataverse says it does not exist (404)."""
    try:
        return client.get(path, {"$select": ",".join(select)} if select else None)
    except NotFound:
        return None


def batch(client: DataverseClient, paths: Sequence[str]) -> list[dict[str, Any]]:
    """GET `paths` in one `$batch`, raising the first typed error among the answers."""
    return checked(client.batch_get(paths))


def checked(results: Iterable[dict[str, Any] | DataverseError]) -> list[dict[str, Any]]:
    """The parts of a `$batch` answer, raising the first typed error among them."""
    parts: list[dict[str, Any]] = []
    for result in results:
        if isinstance(result, Exception):
            raise result
        parts.append(result)
    return parts


def first(page: dict[str, Any]) -> dict[str, Any] | None:
    """The first row of a collection answer, or None."""
    return next(iter(page.get("value") or []), None)
