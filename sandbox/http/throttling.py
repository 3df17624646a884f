"""Service protection (`POST /_control/settings {"throttle": …}`): Dataverse's 429 limits per caller and
organization — requests in a sliding window, combined execution time in the window, concurrent requests
— each with its documented error code and a Retry-After (docs/sandbox.md, "Service protection")."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from werkzeug.wrappers import Response

from sandbox.common import SandboxSettings, dataverse_error
from sandbox.dataverse.protocol import E_THROTTLED_CONCURRENCY, E_THROTTLED_EXECUTION, E_THROTTLED_REQUESTS

Key = tuple[str, str]  # (organization, caller)


def _seconds(window: float) -> int | float:
    return int(window) if float(window).is_integer() else window


class ServiceProtection:
    """Admits or refuses each protected request; counts what admitted requests spend."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._windows: dict[Key, deque[float]] = {}
        self._inflight: dict[Key, int] = {}
        self._throttled_until: dict[Key, float] = {}
        self._execution: dict[Key, deque[tuple[float, float]]] = {}  # (finished, ms) per caller+org

    def reset(self) -> None:
        """Forget every window (on reset, and when the throttle settings change)."""
        with self._lock:
            self._windows.clear()
            self._throttled_until.clear()
            self._execution.clear()

    def admit(self, key: Key) -> Response | None:
        """A 429 answer, or None after counting one in-flight request (pair with `release`)."""
        with self._lock:
            throttle = self.settings.throttle or {}
            now = time.time()
            retry_setting = throttle.get("retry_after")
            until = self._throttled_until.get(key, 0.0)
            window = float(throttle.get("window_seconds", 300))
            max_requests = throttle.get("max_requests")
            if throttle and now < until:
                wait = int(retry_setting) if retry_setting else max(1, math.ceil(until - now))
                self._throttled_until[key] = now + wait  # sending while throttled extends the wait
                return self._too_many_requests(max_requests, window, wait)
            if max_requests is not None:
                stamps = self._windows.setdefault(key, deque())
                while stamps and stamps[0] <= now - window:
                    stamps.popleft()
                if len(stamps) >= int(max_requests):
                    wait = int(retry_setting) if retry_setting else max(1, math.ceil(stamps[0] + window - now))
                    self._throttled_until[key] = now + wait
                    return self._too_many_requests(max_requests, window, wait)
            max_execution = throttle.get("max_execution_ms")
            if max_execution is not None:
                spent = self._execution.setdefault(key, deque())
                while spent and spent[0][0] <= now - window:
                    spent.popleft()
                if sum(ms for _, ms in spent) >= float(max_execution):
                    wait = int(retry_setting) if retry_setting else max(1, math.ceil(spent[0][0] + window - now))
                    return dataverse_error(429, E_THROTTLED_EXECUTION, f"Combined execution time of incoming "
                                           f"requests exceeded limit of {int(max_execution):,} milliseconds over time "
                                           f"window of {_seconds(window)} seconds. Decrease number of concurrent "
                                           "requests or reduce the duration of requests and try again later.",
                                           {"Retry-After": str(wait)})
            max_concurrent = throttle.get("max_concurrent")
            if max_concurrent is not None and self._inflight.get(key, 0) >= int(max_concurrent):
                wait = int(retry_setting) if retry_setting else 1
                return dataverse_error(429, E_THROTTLED_CONCURRENCY, f"Number of concurrent requests exceeded the "
                                       f"limit of {max_concurrent}.", {"Retry-After": str(wait)})
            if max_requests is not None:
                self._windows[key].append(now)
            self._inflight[key] = self._inflight.get(key, 0) + 1
            return None

    def release(self, key: Key, started: float) -> None:
        """An admitted request has finished (`started` is its time.monotonic() at admission)."""
        with self._lock:
            self._inflight[key] -= 1
            if (self.settings.throttle or {}).get("max_execution_ms") is not None:
                self._execution.setdefault(key, deque()).append((time.time(), (time.monotonic() - started) * 1000))

    @staticmethod
    def _too_many_requests(max_requests: object, window: float, wait: int) -> Response:
        return dataverse_error(429, E_THROTTLED_REQUESTS, f"Number of requests exceeded the limit of {max_requests} "
                               f"over time window of {_seconds(window)} seconds.", {"Retry-After": str(wait)})
