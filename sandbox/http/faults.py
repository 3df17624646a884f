"""Fault rules (`POST /_control/faults`): the next `count` requests matching a method, a path regex and
an organization get a status (with Retry-After), extra latency or a dropped connection, before or after
the request is processed. The body of an injected status is the matched service's own error shape
(Entra's OAuth error, Dataverse's envelope, …), rendered by the caller."""

from __future__ import annotations

import email.utils
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request, Response

RULE_FIELDS = ("method", "path", "status", "retry_after", "retry_after_http_date", "latency_ms", "reset", "after",
               "org", "code", "message", "error")

# Settings `random_faults`: the fault kinds a request may meet at random, as fault rules (429 and 503 in the
# service's own error shape, a connection reset, an answer lost after the request was processed).
RANDOM_FAULTS = {"429": {"status": 429}, "503": {"status": 503}, "reset": {"reset": True},
                 "lost": {"after": True, "reset": True}}
RANDOM_FAULT_TARGETS = ("dataverse", "partnercenter")
# `random_faults.target_kinds` narrows the kinds per target, e.g. {"entra": ["429", "503", "reset"]}: Entra's
# token endpoint throttles, fails and drops connections; a lost token answer only costs a second token.

# (status, rule, headers) -> the service's error answer for an injected status
Render = Callable[[int, dict[str, Any], dict[str, str]], Response]


class ResetConnection(Exception):
    """Raised inside dispatch to drop the connection without an answer."""


class FaultRules:
    """Thread-safe list of rules; the first matching rule applies and is used up after `count` matches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[dict[str, Any]] = []
        self._random_config: dict[str, Any] | None = None
        self._random = random.Random()

    def set_random(self, config: dict[str, Any] | None) -> None:
        """Settings `random_faults` {rate, kinds, targets, target_kinds, retry_after, seed}: with no rule matching,
        a request of a target kind meets one of `kinds` (default all of RANDOM_FAULTS; per target
        `target_kinds[target]` when given) with probability `rate`."""
        if config is not None:
            if not isinstance(config, dict) or not 0 <= float(config.get("rate", -1)) <= 1:
                raise ValueError("random_faults must be null or an object with a rate from 0 to 1")
            if not set(config.get("kinds") or ()) <= set(RANDOM_FAULTS):
                raise ValueError(f"random_faults.kinds: a list of {sorted(RANDOM_FAULTS)}")
            if not set(config.get("targets") or ()) <= {"dataverse", "partnercenter", "entra", "files"}:
                raise ValueError("random_faults.targets: a list of dataverse, partnercenter, entra, files")
            by_target = config.get("target_kinds") or {}
            if not isinstance(by_target, dict) or not all(
                    t in {"dataverse", "partnercenter", "entra", "files"} and isinstance(k, list) and k
                    and set(k) <= set(RANDOM_FAULTS) for t, k in by_target.items()):
                raise ValueError(f"random_faults.target_kinds: {{target: non-empty list of {sorted(RANDOM_FAULTS)}}}")
        with self._lock:
            self._random_config = config
            self._random = random.Random(config.get("seed") if config else None)

    def _random_rule(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            config = self._random_config
            if not config or entry["kind"] not in (config.get("targets") or RANDOM_FAULT_TARGETS):
                return None
            if self._random.random() >= float(config["rate"]):
                return None
            kinds = (config.get("target_kinds") or {}).get(entry["kind"]) or config.get("kinds") or RANDOM_FAULTS
            kind = self._random.choice(sorted(kinds))
        return {"id": f"random:{kind}", "retry_after": config.get("retry_after", 1) if kind == "429" else None,
                **RANDOM_FAULTS[kind]}

    def add(self, body: dict[str, Any]) -> str:
        rule = {k: body.get(k) for k in RULE_FIELDS}
        if rule["path"]:
            re.compile(rule["path"])  # re.error is a ValueError → 400
        count = int(body.get("count") or 1)
        rule.update(id=str(uuid.uuid4()), count=count, remaining=count)
        with self._lock:
            self._rules.append(rule)
        return rule["id"]

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._rules]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._random_config = None

    def _take(self, request: Request, org: str | None) -> dict[str, Any] | None:
        with self._lock:
            for rule in self._rules:
                if (rule.get("method") or "*").upper() not in ("*", request.method):
                    continue
                if rule.get("org") and rule["org"] != org:
                    continue
                if rule.get("path") and not re.search(rule["path"], request.path):
                    continue
                rule["remaining"] -= 1
                if rule["remaining"] <= 0:
                    self._rules.remove(rule)
                return rule
        return None

    def apply(self, request: Request, entry: dict[str, Any], render: Render) -> Response | None:
        """The fault's answer for this request, or None to carry on (no rule, latency only, or `after`)."""
        rule = self._take(request, entry["org"]) or self._random_rule(entry)
        if rule is None:
            return None
        entry["fault"] = rule["id"]
        if rule.get("after"):
            # the request is processed, then its answer is held or lost: see answer_after
            entry["fault_after"] = {k: rule.get(k) for k in ("latency_ms", "reset")}
            return None
        if rule.get("latency_ms"):
            time.sleep(int(rule["latency_ms"]) / 1000)
        if rule.get("reset"):
            raise ResetConnection()
        status = rule.get("status")
        if not status:
            return None  # latency-only rule: carry on normally
        headers = {}
        if rule.get("retry_after") is not None:
            if rule.get("retry_after_http_date"):  # RFC 7231 §7.1.3: an HTTP-date is as valid as delay-seconds
                when = math.ceil(time.time() + float(rule["retry_after"]))
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            else:
                headers["Retry-After"] = str(rule["retry_after"])
        return render(int(status), rule, headers)

    @staticmethod
    def answer_after(entry: dict[str, Any], response: Response) -> Response:
        """A rule with `after`: the request was processed; now hold its answer (latency) or drop the
        connection (reset) — the ambiguity that matters most: the write happened, the client cannot know."""
        after = entry.get("fault_after")
        if not after:
            return response
        entry["fault_after"] = True
        entry["applied_status"] = response.status_code
        if after.get("latency_ms"):
            time.sleep(int(after["latency_ms"]) / 1000)
        if after.get("reset"):
            raise ResetConnection()
        return response
