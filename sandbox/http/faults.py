"""Fault rules (`POST /_control/faults`): the next `count` requests matching a method, a path regex and
an organization get a status (with Retry-After), extra latency or a dropped connection, before or after
the request is processed. The body of an injected status is the matched service's own error shape
(Entra's OAuth error, Dataverse's envelope, …), rendered by the caller.

A `respond` rule replays a recorded answer instead: `{"status": N, "headers": {…}, "body": <JSON value or
text>}` is sent exactly as given (a JSON body gets `Content-Type: application/json` unless `headers` names
one; a text body gets no Content-Type unless named). On the bearer-protected services it applies only to an
authenticated request (an unauthenticated one gets the service's own 401 and leaves the rule in place);
with `after` the request is processed first (its writes land) and its answer replaced."""

from __future__ import annotations

import email.utils
import json
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
               "org", "code", "message", "error", "respond")
RESPOND_FIELDS = {"status", "headers", "body"}

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


def _check_respond(respond: Any) -> dict[str, Any]:
    """A `respond` rule's answer, validated when the rule is added (a ValueError answers the control call 400)."""
    if not isinstance(respond, dict) or not set(respond) <= RESPOND_FIELDS:
        raise ValueError(f"respond must be an object with keys from {sorted(RESPOND_FIELDS)}")
    status = respond.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError("respond.status must be an HTTP status code (100-599)")
    headers = respond.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in headers.items()):
        raise ValueError("respond.headers must be an object of header name to string value")
    return {"status": status, "headers": headers, "body": respond.get("body")}


def recorded_answer(respond: dict[str, Any]) -> Response:
    """The exact answer of a `respond` rule: its status, its headers, its body (JSON value or text; null = empty)."""
    headers = dict(respond["headers"])
    body = respond["body"]
    named_type = next((k for k in headers if k.lower() == "content-type"), None)
    if body is None:
        data = b""
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body).encode("utf-8")
        if named_type is None:
            headers["Content-Type"] = "application/json; charset=utf-8"
            named_type = "Content-Type"
    response = Response(data, status=respond["status"])
    if named_type is None:
        del response.headers["Content-Type"]  # werkzeug's default text/plain would not be "exactly that"
    for key, value in headers.items():
        if key.lower() == "content-length":
            continue  # werkzeug sets the true length of the body sent
        response.headers[key] = value
    return response


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
        if rule["respond"] is not None:
            rule["respond"] = _check_respond(rule["respond"])
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

    def _take(self, request: Request, org: str | None, authenticated: bool) -> dict[str, Any] | None:
        with self._lock:
            for rule in self._rules:
                if rule.get("respond") and not authenticated:
                    continue
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

    def apply(self, request: Request, entry: dict[str, Any], render: Render,
              authenticated: bool = True) -> Response | None:
        """The fault's answer for this request, or None to carry on (no rule, latency only, or `after`).
        `authenticated` False (a bearer-protected service refused the token) leaves `respond` rules unused."""
        rule = self._take(request, entry["org"], authenticated) or self._random_rule(entry)
        if rule is None:
            return None
        entry["fault"] = rule["id"]
        if rule.get("after"):
            # the request is processed, then its answer is held, lost or replaced: see answer_after
            entry["fault_after"] = {k: rule.get(k) for k in ("latency_ms", "reset", "respond")}
            return None
        if rule.get("latency_ms"):
            time.sleep(int(rule["latency_ms"]) / 1000)
        if rule.get("reset"):
            raise ResetConnection()
        if rule.get("respond"):
            entry["fault_respond"] = True
            return recorded_answer(rule["respond"])
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
        if after.get("respond"):
            entry["fault_respond"] = True
            return recorded_answer(after["respond"])
        return response
