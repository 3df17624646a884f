"""The one HTTP pipeline every provider uses (bearer auth with a single refresh on 401, retry honouring
Retry-After, typed errors, redacted DEBUG logging) and the Dataverse OData helpers built on it.
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote, urljoin

import requests
import urllib3

from .auth import DeployerSettings, TokenProvider, deployer_tokens, http_session
from .errors import (
    AmbiguousWriteError,
    DataverseError,
    DuplicateRecord,
    ServiceError,
    error_class,
)
from .formats import GUID_RE
from .hosts import validate_instance_url

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2/"
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
_RETRY_STATUSES = frozenset({429, 503, 504})
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")


class UnansweredWrite(AmbiguousWriteError):
    """No answer within the read timeout: the server may still be working on the write, so a lookup
    right now can miss it (callers give it up to one read timeout to appear before sending again)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop: attempts (sends) per call, total seconds, backoff, per-send read timeout."""

    max_attempts: int = 6
    max_total_seconds: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 60.0
    connect_timeout: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff before send number attempt+1 (attempt counts from 1)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def odata_string(value: str) -> str:
    """An OData string literal: quotes doubled, e.g. O'Brien -> 'O''Brien'."""
    return "'" + str(value).replace("'", "''") + "'"


def odata_path(path: str, params: Mapping[str, str] | None = None) -> str:
    """A relative request path with its query string encoded, e.g. for `batch_get`."""
    if not params:
        return path
    safe = "$,()'=;"
    return path + "?" + "&".join(f"{key}={quote(str(value), safe=safe)}" for key, value in params.items())


def odata_guid(value: str) -> str:
    """A validated, unquoted OData GUID literal; ValueError for anything that is not a GUID."""
    text = str(value).strip().strip("{}")
    if not GUID_RE.match(text):
        raise ValueError(f"not a GUID: {value!r}")
    return text.lower()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None when absent/invalid."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    # HTTP dates have one-second resolution: round up so we never land inside the window
    return max(0.0, when.timestamp() - current + 1.0)


def _error_details(response: requests.Response) -> tuple[str | None, str]:
    """(code, message) from Dataverse's / Graph's {"error": {"code", "message"}} envelope."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            message = err.get("message") or ""
            return (str(code) if code is not None else None), str(message)[:1000]
        if isinstance(err, str):
            return err, str(body.get("error_description") or body.get("message") or "")[:1000]
        if "message" in body:
            return body.get("code"), str(body["message"])[:1000]
    text = (response.text or "").strip()
    return None, (text[:300] or response.reason or "no details")


def _sleep_until(deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(remaining)


class ApiClient:
    """One request pipeline: bearer auth (401 -> invalidate + one retry), retry policy, typed errors.

    `error_for(status, code)` is the error class of the API behind it (Dataverse's by default).
    """

    error_for: Callable[[int | None, str | None], type[ServiceError]] = staticmethod(error_class)

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        scope: str,
        *,
        ca_bundle: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, immutable default
        user_agent: str = "lead-destination",
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.tokens = tokens
        self.scope = scope
        self.ca_bundle = ca_bundle
        self.retry = retry
        self.user_agent = user_agent
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._gate_lock = threading.Lock()
        self._blocked_until = 0.0  # monotonic: no request of this client is sent before it (Retry-After)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        with self._session_lock:
            if self._session is None:
                # retries are ours (one loop below), so urllib3 must never resend on its own
                self._session = http_session(
                    self.ca_bundle, self.base_url, pool_maxsize=32,
                    retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0,
                                          raise_on_status=False, raise_on_redirect=False),
                )
            return self._session

    def url_for(self, path: str) -> str:
        """The absolute URL of `path` (relative, or a link the API handed out); the token goes only under
        `base_url`, so a link to another host or scheme (`http://…`, `HTTPS://other`) is refused."""
        url = urljoin(self.base_url, path.lstrip("/"))
        if not url.startswith(self.base_url):
            raise ValueError(f"refusing to send a token to {url.split('?', 1)[0]!r}: not under {self.base_url}")
        return url

    def _relative(self, url: str) -> str:
        return url[len(self.base_url):] if url.startswith(self.base_url) else url

    def _hold_for(self, seconds: float) -> None:
        with self._gate_lock:
            self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)

    def _wait_for_gate(self) -> None:
        while True:
            with self._gate_lock:
                until = self._blocked_until
            if time.monotonic() >= until:
                return
            _sleep_until(until)

    # -- the pipeline -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        data: bytes | str | None = None,
    ) -> requests.Response:
        """Send with auth and retries; return the 2xx/3xx response or raise a typed error."""
        method = method.upper()
        url = self.url_for(path)
        shown = self._relative(url)
        if idempotent is None:
            idempotent = method in _IDEMPOTENT_METHODS
        base_headers = {
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "User-Agent": self.user_agent,
        }
        if json is not None:
            base_headers["Content-Type"] = "application/json; charset=utf-8"
            data = jsonlib.dumps(json)
        base_headers.update(headers or {})

        policy = self.retry
        started = time.monotonic()
        deadline = started + policy.max_total_seconds
        attempt = 0
        refreshed = False
        maybe_applied = False  # an earlier attempt may have reached the server and been applied
        while True:
            self._wait_for_gate()
            attempt += 1
            token = self.tokens.get_token(self.scope)
            send_headers = dict(base_headers, Authorization=f"Bearer {token}")
            sent_at = time.monotonic()
            try:
                response = self.session.request(
                    method, url, params=params, data=data, headers=send_headers,
                    timeout=(policy.connect_timeout, policy.timeout), allow_redirects=False,
                )
            except requests.RequestException as exc:
                not_sent = _surely_not_sent(exc)
                maybe_applied = maybe_applied or not not_sent
                log.debug("%s %s attempt %d: %s (%s)", method, shown, attempt, type(exc).__name__,
                          "not sent" if not_sent else "sent, no answer")
                if not not_sent and not idempotent:
                    cls = UnansweredWrite if isinstance(exc, requests.exceptions.ReadTimeout) else AmbiguousWriteError
                    raise cls(method, shown, f"{type(exc).__name__} after the request was sent") from None
                wait = policy.backoff(attempt)
                if attempt >= policy.max_attempts or time.monotonic() + wait > deadline:
                    raise self.error_for(None, None)(
                        None, None,
                        f"no answer after {attempt} attempt(s) in {time.monotonic() - started:.1f}s "
                        f"({type(exc).__name__})",
                        method=method, path=shown,
                    ) from None
                time.sleep(wait)
                continue

            elapsed_ms = (time.monotonic() - sent_at) * 1000
            log.debug("%s %s -> %d in %.0f ms (attempt %d) headers=%s", method, shown, response.status_code,
                      elapsed_ms, attempt, _redacted_headers(send_headers))

            if response.status_code == 401 and not refreshed:
                # a token that expired early or was revoked: one fresh token, one more try
                refreshed = True
                self.tokens.invalidate(self.scope)
                attempt -= 1
                response.close()
                continue

            if response.status_code in _RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                surely_not_processed = response.status_code == 429 or (
                    response.status_code == 503 and retry_after is not None)
                maybe_applied = maybe_applied or not surely_not_processed
                if not idempotent and not surely_not_processed:
                    code, message = _error_details(response)
                    raise AmbiguousWriteError(
                        method, shown, f"{response.status_code} {code or ''} {message}".strip()[:300])
                if retry_after is not None:
                    # honour the window for every request of this client, plus a little jitter
                    wait = retry_after + random.uniform(0.05, 0.05 + min(1.0, retry_after * 0.1))  # noqa: S311
                    self._hold_for(wait)
                else:
                    wait = policy.backoff(attempt)
                if attempt >= policy.max_attempts or time.monotonic() + wait > deadline:
                    code, message = _error_details(response)
                    raise self.error_for(response.status_code, code)(
                        response.status_code, code,
                        f"{message} (gave up after {attempt} attempt(s) in {time.monotonic() - started:.1f}s"
                        + (f"; server asked to wait {retry_after:.0f}s" if retry_after is not None else "") + ")",
                        method=method, path=shown,
                    )
                response.close()
                if retry_after is not None:
                    self._wait_for_gate()
                else:
                    time.sleep(wait)
                continue

            if response.status_code == 404 and method == "DELETE" and maybe_applied:
                # the earlier, unanswered DELETE did its work: what we asked for is true
                log.debug("%s %s -> 404 after an unanswered attempt: already deleted", method, shown)
                return response
            if response.status_code >= 400:
                code, message = _error_details(response)
                raise self.error_for(response.status_code, code)(
                    response.status_code, code, message, method=method, path=shown)
            return response


def _surely_not_sent(exc: requests.RequestException) -> bool:
    """True when the request never reached the server (connect failure), so any method may be resent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.SSLError):
        return True  # handshake failed: nothing was sent
    if isinstance(exc, requests.exceptions.ConnectionError):
        cause: BaseException | None = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        reason = getattr(cause, "reason", None)
        for candidate in (cause, reason):
            if isinstance(candidate, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
                return True
            if isinstance(candidate, urllib3.exceptions.NameResolutionError):
                return True
    return False


def _redacted_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if k.lower() in ("authorization", "cookie", "x-ms-client-secret") else v)
            for k, v in headers.items()}


_CLIENTS: dict[tuple[str, DeployerSettings], DataverseClient] = {}
_CLIENTS_LOCK = threading.Lock()


class DataverseClient(ApiClient):
    """OData helpers over the pipeline for one organization's Web API (`{instance_url}/api/data/v9.2/`)."""

    def __init__(
        self,
        instance_url: str,
        tokens: TokenProvider,
        *,
        ca_bundle: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008
        user_agent: str = "lead-destination",
    ) -> None:
        self.instance_url = instance_url.rstrip("/")
        super().__init__(self.instance_url + API_PATH, tokens, self.instance_url + "/.default",
                         ca_bundle=ca_bundle, retry=retry, user_agent=user_agent)

    @classmethod
    def for_instance(
        cls, instance_url: str, settings: DeployerSettings, tokens: TokenProvider | None = None
    ) -> DataverseClient:
        """A client for a validated instance URL (refused URLs raise before any token is fetched).

        The deploying identity's client is process-wide (one per URL and settings); a client for the
        caller's own `tokens` (a lead writer's, built per check) is new and not kept.
        """
        url = validate_instance_url(instance_url, cloud=settings.cloud, allow_loopback=settings.allow_loopback)

        def build(provider: TokenProvider) -> DataverseClient:
            return cls(url, provider, ca_bundle=settings.ca_bundle,
                       retry=RetryPolicy(timeout=settings.request_timeout_seconds))

        if tokens is not None:
            return build(tokens)
        with _CLIENTS_LOCK:
            client = _CLIENTS.get((url, settings))
            if client is None:
                client = _CLIENTS[(url, settings)] = build(deployer_tokens(settings))
            return client

    # -- reads ------------------------------------------------------------------------------

    def get(self, path: str, params: dict | None = None) -> dict:
        response = self.request("GET", path, params=params)
        return response.json() if response.content else {}

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        filter: str | None = None,  # noqa: A002 - OData's own name
        top: int | None = None,
        expand: str | None = None,
    ) -> list[dict]:
        params: dict[str, str] = {"$select": ",".join(select)}
        if filter:
            params["$filter"] = filter
        if top is not None:
            params["$top"] = str(int(top))
        if expand:
            params["$expand"] = expand
        rows: list[dict] = []
        page: dict = self.get(entity_set, params)
        while True:
            rows.extend(page.get("value", []))
            next_link = page.get("@odata.nextLink")
            if not next_link or (top is not None and len(rows) >= top):
                break
            page = self.get(next_link)  # url_for refuses a link outside this organization
        return rows[:top] if top is not None else rows

    def batch_get(self, paths: Sequence[str]) -> list[dict | DataverseError]:
        """GET many paths in `$batch` requests (≤ 1000 each); per path its JSON body or its typed error."""
        results: list[dict | DataverseError] = []
        for start in range(0, len(paths), 1000):
            results.extend(self._batch_chunk(list(paths[start:start + 1000])))
        return results

    def _batch_chunk(self, paths: list[str]) -> list[dict | DataverseError]:
        if not paths:
            return []
        boundary = f"batch_{uuid.uuid4()}"
        lines: list[str] = []
        for path in paths:
            lines += [
                f"--{boundary}",
                "Content-Type: application/http",
                "Content-Transfer-Encoding: binary",
                "",
                f"GET {self.url_for(path)} HTTP/1.1",
                "Accept: application/json",
                "",
                "",
            ]
        lines.append(f"--{boundary}--")
        body = "\r\n".join(lines) + "\r\n"
        response = self.request(
            "POST", "$batch", data=body.encode(),
            # without continue-on-error Dataverse stops at the first failing part
            headers={"Content-Type": f"multipart/mixed; boundary={boundary}", "Prefer": "odata.continue-on-error"},
            idempotent=True,
        )
        parts = _parse_batch_response(response)
        if len(parts) > len(paths) or not parts:
            raise DataverseError(response.status_code, None,
                                 f"$batch answered {len(parts)} parts for {len(paths)} requests",
                                 method="POST", path="$batch")
        results: list[dict | DataverseError] = []
        parts += [(0, "")] * (len(paths) - len(parts))  # not executed after an earlier error
        for path, (status, body_text) in zip(paths, parts, strict=True):
            if status == 0:
                results.append(DataverseError(None, None, "not executed: an earlier part of the $batch failed",
                                              method="GET", path=path))
                continue
            parsed: Any = None
            if body_text.strip():
                try:
                    parsed = jsonlib.loads(body_text)
                except ValueError:
                    parsed = None
            if 200 <= status < 300:
                results.append(parsed if isinstance(parsed, dict) else {})
                continue
            code, message = None, body_text.strip()[:300]
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                code = parsed["error"].get("code")
                message = str(parsed["error"].get("message") or "")
            results.append(error_class(status, code)(status, code, message, method="GET", path=path))
        return results

    # -- writes -----------------------------------------------------------------------------

    def create(self, entity_set: str, body: dict) -> str:
        """POST a record; its id from OData-EntityId (or the body). AmbiguousWriteError if the outcome is unknown."""
        response = self.request("POST", entity_set, json=body, idempotent=False)
        entity_id = _entity_id(response)
        if entity_id:
            return entity_id
        if response.content:
            record = response.json()
            for key, value in record.items():
                if key.endswith("id") and isinstance(value, str) and GUID_RE.match(value):
                    return value.lower()
        raise _no_record_id(response, entity_set)

    def create_record(self, entity_set: str, body: dict, select: Sequence[str]) -> dict:
        """POST a record with `Prefer: return=representation`: the created row (selected columns) in
        the same round trip, so no follow-up GET. AmbiguousWriteError if the outcome is unknown."""
        response = self.request("POST", entity_set, params={"$select": ",".join(select)}, json=body,
                                headers={"Prefer": "return=representation"}, idempotent=False)
        if response.status_code == 201 and response.content:
            return response.json()
        # a server that ignored the preference answered 204: read the row it names
        entity_id = _entity_id(response)
        if not entity_id:
            raise _no_record_id(response, entity_set)
        return self.get(f"{entity_set}({entity_id})", {"$select": ",".join(select)})

    def update(self, entity_set: str, record_id: str, body: dict) -> None:
        self.request("PATCH", f"{entity_set}({odata_guid(record_id)})", json=body, headers={"If-Match": "*"})

    def delete(self, entity_set: str, record_id: str) -> None:
        self.request("DELETE", f"{entity_set}({odata_guid(record_id)})")

    def associate(self, entity_set: str, record_id: str, nav: str, target_set: str, target_id: str) -> None:
        """POST {set}({id})/{nav}/$ref; an existing association counts as success."""
        body = {"@odata.id": f"{self.base_url}{target_set}({odata_guid(target_id)})"}
        try:
            self.request("POST", f"{entity_set}({odata_guid(record_id)})/{nav}/$ref", json=body, idempotent=True)
        except DuplicateRecord:
            return

    def disassociate(self, entity_set: str, record_id: str, nav: str, target_id: str) -> None:
        self.request("DELETE", f"{entity_set}({odata_guid(record_id)})/{nav}({odata_guid(target_id)})/$ref")

    def action(
        self,
        name: str,
        body: dict | None = None,
        *,
        bound: tuple[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> dict | None:
        """Call an action; bound=("roles", rid) -> roles(rid)/Microsoft.Dynamics.CRM.{name}.

        Bound actions (the role privilege edits) are idempotent and retried; unbound ones
        (ImportSolutionAsync) are not replayed after an ambiguous failure unless idempotent=True.
        """
        if bound is not None:
            path = f"{bound[0]}({odata_guid(bound[1])})/Microsoft.Dynamics.CRM.{name}"
            retry_safe = True if idempotent is None else idempotent
        else:
            path = name
            retry_safe = bool(idempotent)
        response = self.request("POST", path, json=body if body is not None else {}, idempotent=retry_safe)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def function(self, name: str, **params: str) -> dict:
        """GET a function: GUID values inline, other values as quoted parameter aliases."""
        inline: list[str] = []
        aliases: dict[str, str] = {}
        for index, (key, value) in enumerate(params.items(), start=1):
            text = str(value)
            if GUID_RE.match(text.strip("{}")):
                inline.append(f"{key}={odata_guid(text)}")
            elif isinstance(value, bool):
                inline.append(f"{key}={'true' if value else 'false'}")
            elif isinstance(value, int | float):
                inline.append(f"{key}={value}")
            else:
                inline.append(f"{key}=@p{index}")
                aliases[f"@p{index}"] = odata_string(text)
        # Dataverse documents parameterless functions without parentheses (GET WhoAmI)
        path = f"{quote(name)}({','.join(inline)})" if inline else quote(name)
        return self.get(path, aliases or None)

    def who_am_i(self) -> dict:
        return self.function("WhoAmI")


def _entity_id(response: requests.Response) -> str | None:
    """The created record's id from the OData-EntityId header, or None."""
    match = _ENTITY_ID.search(response.headers.get("OData-EntityId", ""))
    return match.group(1).lower() if match else None


def _no_record_id(response: requests.Response, entity_set: str) -> DataverseError:
    return DataverseError(response.status_code, None, "created, but the answer carried no record id",
                          method="POST", path=entity_set, hint="Look the record up by its natural key")


def _parse_batch_response(response: requests.Response) -> list[tuple[int, str]]:
    """(status, body) of each inner response of a multipart/mixed $batch answer, in order."""
    content_type = response.headers.get("Content-Type", "")
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise DataverseError(response.status_code, None, f"$batch answer is not multipart ({content_type})",
                             method="POST", path="$batch")
    boundary = match.group(1)
    text = response.content.decode("utf-8", errors="replace")
    results: list[tuple[int, str]] = []
    for part in text.split(f"--{boundary}"):
        part = part.strip("\r\n")
        if not part or part.startswith("--"):
            continue
        # part headers, blank line, then the inner HTTP response
        _, _, inner = part.replace("\r\n", "\n").partition("\n\n")
        status_line, _, rest = inner.partition("\n")
        status_match = re.match(r"HTTP/\d(?:\.\d)?\s+(\d{3})", status_line.strip())
        if not status_match:
            continue
        _, _, body = rest.partition("\n\n")
        results.append((int(status_match.group(1)), body.strip()))
    return results
