"""The API clients: `ApiClient` sends through the azure-core pipeline (`pipeline.py`) and turns what comes
back into typed errors; `DataverseClient` adds the Dataverse Web API's OData helpers.
"""

from __future__ import annotations

import json as jsonlib
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urljoin

from azure.core.exceptions import AzureError
from azure.core.pipeline import Pipeline
from azure.core.pipeline.policies import HeadersPolicy, HTTPPolicy, ProxyPolicy, SansIOHTTPPolicy
from azure.core.rest import HttpRequest, HttpResponse

from .auth import DeployerSettings
from .errors import (
    DataverseError,
    DuplicateRecord,
    ServiceError,
    error_class,
    strip_query,
)
from .formats import GUID_RE
from .hosts import validate_instance_url
from .pipeline import (
    ALL_METHODS,
    RETRY_STATUSES,
    AmbiguousWritePolicy,
    BearerChallengePolicy,
    BoundedRetryPolicy,
    Exchange,
    RetryBounds,
    UnansweredWrite,
    environ_proxies,
    error_details,
    http_logging_policy,
    http_transport,
    parse_retry_after,
)
from .tokens import TokenProvider, deployer_tokens

API_PATH = "/api/data/v9.2/"
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")
T = TypeVar("T")

#: The bounds were called RetryPolicy before the pipeline moved to azure-core (whose retry policy has that name).
RetryPolicy = RetryBounds
__all__ = ["ApiClient", "DataverseClient", "RetryBounds", "RetryPolicy", "UnansweredWrite", "odata_guid", "odata_path",
           "odata_string", "parse_retry_after"]


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


class ApiClient:
    """One API (a base URL and a token audience) through the azure-core pipeline: headers, proxies, bounded
    retries honouring Retry-After, the ambiguous-write policy, bearer token with one refresh on a challenge,
    redacted logging; answers become typed errors. Thread-safe; meant to be shared.

    `error_for(status, code)` is the error class of the API behind it (Dataverse's by default), so each
    client raises its own service's errors.
    """

    error_for: Callable[[int | None, str | None], type[ServiceError]] = staticmethod(error_class)

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        scope: str,
        *,
        ca_bundle: str | None = None,
        retry: RetryBounds = RetryBounds(),  # noqa: B008 - frozen dataclass, immutable default
        user_agent: str = "lead-destination",
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.tokens = tokens
        self.scope = scope
        self.ca_bundle = ca_bundle
        self.retry = retry
        self.user_agent = user_agent
        headers = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0",
                   "User-Agent": user_agent}
        retry_policy = BoundedRetryPolicy(retry)
        policies: list[HTTPPolicy[Any, Any] | SansIOHTTPPolicy[Any, Any]] = [
            HeadersPolicy(headers),
            ProxyPolicy(environ_proxies(self.base_url)),
            retry_policy,  # once per call: the loop of sends
            AmbiguousWritePolicy(),  # from here on, once per send
            BearerChallengePolicy(tokens, scope),
            http_logging_policy(),
            retry_policy.gate(),  # the Retry-After window checked again right before the transport
        ]
        self._pipeline: Pipeline[HttpRequest, HttpResponse] = Pipeline(
            transport=http_transport(ca_bundle, read_timeout=retry.timeout, connect_timeout=retry.connect_timeout),
            policies=policies)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    def url_for(self, path: str) -> str:
        """The absolute URL of `path` (relative, or a link the API handed out); the token goes only under
        `base_url`, so a link to another host or scheme (`http://…`, `HTTPS://other`) is refused."""
        url = urljoin(self.base_url, path.lstrip("/"))
        if not url.startswith(self.base_url):
            raise ValueError(f"refusing to send a token to {url.split('?', 1)[0]!r}: not under {self.base_url}")
        return url

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
    ) -> HttpResponse:
        """Send through the pipeline; return the 2xx/3xx response or raise a typed error.

        `idempotent` (default: by method) says whether the request may be sent again after an attempt that
        may have been applied; a POST that creates is not, and fails with AmbiguousWriteError instead."""
        method = method.upper()
        url = self.url_for(path)
        if params:
            url += ("&" if "?" in url else "?") + urlencode({k: str(v) for k, v in params.items()})
        send_headers = dict(headers or {})
        if json is not None:
            send_headers.setdefault("Content-Type", "application/json; charset=utf-8")
            data = jsonlib.dumps(json)
        content = data.encode() if isinstance(data, str) else data
        exchange = Exchange(method, strip_query(url[len(self.base_url):]),
                            method in _IDEMPOTENT_METHODS if idempotent is None else idempotent)
        try:
            answer = self._pipeline.run(HttpRequest(method, url, headers=send_headers, content=content),
                                        retry_on_methods=ALL_METHODS, **{AmbiguousWritePolicy.OPTION: exchange})
        except AzureError as exc:  # the connection failed on every attempt (never an answered request)
            raise self.error_for(None, None)(
                None, None, f"no answer after {exchange.attempts} attempt(s) in {exchange.elapsed():.1f}s "
                f"({type(exc).__name__})", method=method, path=exchange.path) from None
        response = answer.http_response
        status = response.status_code
        if exchange.already_done:
            return response
        if status in RETRY_STATUSES:
            code, message = error_details(response)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise self.error_for(status, code)(status, code, f"{message} (gave up after {exchange.attempts} attempt(s) in "
                      f"{exchange.elapsed():.1f}s" + (f"; server asked to wait {retry_after:.0f}s"
                                                     if retry_after is not None else "") + ")",
                      method=method, path=exchange.path)
        if status >= 400:
            code, message = error_details(response)
            raise self.error_for(status, code)(status, code, message, method=method, path=exchange.path)
        return response


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
        retry: RetryBounds = RetryBounds(),  # noqa: B008
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
                       retry=RetryBounds(timeout=settings.request_timeout_seconds))

        if tokens is not None:
            return build(tokens)
        with _CLIENTS_LOCK:
            client = _CLIENTS.get((url, settings))
            if client is None:
                client = _CLIENTS[(url, settings)] = build(deployer_tokens(settings))
            return client

    # -- reads ------------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
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
    ) -> list[dict[str, Any]]:
        params: dict[str, str] = {"$select": ",".join(select)}
        if filter:
            params["$filter"] = filter
        if top is not None:
            params["$top"] = str(int(top))
        if expand:
            params["$expand"] = expand
        rows: list[dict[str, Any]] = []
        page = self.get(entity_set, params)
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


def _entity_id(response: HttpResponse) -> str | None:
    """The created record's id from the OData-EntityId header, or None."""
    match = _ENTITY_ID.search(response.headers.get("OData-EntityId", ""))
    return match.group(1).lower() if match else None


def _no_record_id(response: HttpResponse, entity_set: str) -> DataverseError:
    return DataverseError(response.status_code, None, "created, but the answer carried no record id",
                          method="POST", path=entity_set, hint="Look the record up by its natural key")


def _parse_batch_response(response: HttpResponse) -> list[tuple[int, str]]:
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
