"""The sandbox's request log (`GET /_control/log`): one entry per request, with the caller, the status
(0 = connection reset) and whether it was sent inside a Retry-After window an earlier answer gave the
same caller for the same service (and organization)."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request


def retry_after_until(value: str) -> float:
    """Epoch seconds a Retry-After header (delay-seconds or HTTP-date) asks the caller to wait until."""
    try:
        return time.time() + float(value)
    except ValueError:
        return email.utils.parsedate_to_datetime(value).timestamp()


class RequestLog:
    """Thread-safe; entries are numbered from 1 by `seq`; `wait` wakes up with each new entry."""

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._entries: list[dict[str, Any]] = []
        self._seq = 0
        self._retry_until: dict[tuple[str, str, str], float] = {}  # (kind, org, caller) -> end of Retry-After

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._retry_until.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @staticmethod
    def new_entry(request: Request) -> dict[str, Any]:
        return {"time": time.time(), "org": None, "kind": None, "method": request.method, "path": request.path,
                "query": request.query_string.decode("latin-1"), "status": None, "caller": None,
                "inside_retry_after": False}

    def note_caller(self, entry: dict[str, Any], label: str | None) -> None:
        """Who sent the request; flags it when it comes before that caller's Retry-After window ended."""
        entry["caller"] = label
        if label is None:
            return
        with self._lock:
            until = self._retry_until.get(self._window_key(entry, label))
        if until is not None and time.time() < until:
            entry["inside_retry_after"] = True

    def note_answer(self, entry: dict[str, Any], status: int, retry_after: str | None) -> None:
        entry["status"] = status
        if retry_after and entry["caller"] is not None:
            until = retry_after_until(retry_after)
            entry["throttled_until"] = until
            key = self._window_key(entry, entry["caller"])
            with self._lock:
                self._retry_until[key] = max(until, self._retry_until.get(key, 0.0))

    @staticmethod
    def _window_key(entry: dict[str, Any], caller: str) -> tuple[str, str, str]:
        """A Retry-After binds the caller for the service (and organization) that sent it: Entra's does not
        hold back Partner Center or Dataverse requests."""
        return entry["kind"] or "", entry["org"] or "", caller

    def record(self, entry: dict[str, Any], started: float) -> None:
        entry["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)
            self._lock.notify_all()

    def since(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries if e["seq"] > seq]

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> list[dict[str, Any]]:
        """The entries `match` accepts, as soon as there is one, or those there are after `timeout` seconds
        (none): for an in-process caller waiting on a request the log has not recorded yet."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [dict(e) for e in self._entries if match(e)]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._lock.wait(left)
