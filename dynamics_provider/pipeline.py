"""The request pipeline every client uses, built from azure-core's policies: Microsoft's retry policy
(bounded in attempts and in total time, holding every request of a client inside a Retry-After window),
its bearer-token policy (one fresh token and one resend on a challenge), its redacting HTTP logging, and
one policy of ours for writes whose answer was lost. TLS is always verified (the configured CA bundle).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from azure.core.exceptions import ServiceRequestError, ServiceResponseError, ServiceResponseTimeoutError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import (
    BearerTokenCredentialPolicy,
    HttpLoggingPolicy,
    HTTPPolicy,
    RetryPolicy,
    SansIOHTTPPolicy,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest, HttpResponse

from .errors import AmbiguousWriteError

if TYPE_CHECKING:
    from .tokens import TokenCache

log = logging.getLogger("dynamics_provider.http")
# Request/response traces (headers redacted) are off unless someone sets this logger to INFO; progress
# messages of the providers go through the parent logger at INFO and must not carry every request.
log.setLevel(logging.WARNING)

RETRY_STATUSES = frozenset({429, 503, 504})
ALL_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "POST", "TRACE"})


class UnansweredWrite(AmbiguousWriteError):
    """No answer within the read timeout: the server may still be working on the write, so a lookup
    right now can miss it (callers give it up to one read timeout to appear before sending again)."""


@dataclass(frozen=True)
class RetryBounds:
    """Bounds of one call: sends per call, total seconds, backoff between sends, read and connect timeouts."""

    max_attempts: int = 6
    max_total_seconds: float = 120.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 60.0
    connect_timeout: float = 10.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date, rounded up a second: its
    resolution, so no request lands inside the window); None when absent or invalid."""
    text = str(value or "").strip()
    try:
        return max(0.0, float(text)) if text else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.replace(tzinfo=when.tzinfo or UTC).timestamp() - (now or time.time()) + 1.0)


def tls_verify(ca_bundle: str | None) -> str | bool:
    """The configured CA bundle, else the environment's, else certifi's: never False (no setting turns it off)."""
    return ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def http_transport(ca_bundle: str | None, *, read_timeout: float, connect_timeout: float = 10.0,
                   pool_maxsize: int = 32) -> RequestsTransport:
    """azure-core's requests transport over a session that ignores the environment: with `trust_env` an
    environment CA bundle would replace the configured one (requests lets REQUESTS_CA_BUNDLE override a
    session's `verify`, though not a per-request one, which is what azure-core passes) and a ~/.netrc entry
    would replace the Authorization header. Proxies from the environment are applied by `environ_proxies`.
    Retries are the pipeline's alone: urllib3 never resends."""
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(
        max_retries=urllib3.Retry(total=False, redirect=False, raise_on_status=False),
        pool_connections=4, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=True, connection_verify=tls_verify(ca_bundle),
                             connection_timeout=connect_timeout, read_timeout=read_timeout)


def environ_proxies(url: str) -> dict[str, str]:
    """The proxies the environment names for `url` (honouring NO_PROXY), for azure-core's ProxyPolicy."""
    return dict(requests.utils.get_environ_proxies(url))


# ------------------------------------------------------------------------------------------------
# retry


class BoundedRetryPolicy(RetryPolicy[HttpRequest, HttpResponse]):
    """azure-core's RetryPolicy within `RetryBounds`: 429/503/504 and lost connections are retried, the
    sends of a call are bounded in number and in total time (it gives up when the next wait would pass the
    budget, rather than sleep into it), a Retry-After holds every request of the client (plus jitter), and
    a refused TLS certificate is not retried (it cannot change)."""

    def __init__(self, bounds: RetryBounds = RetryBounds(), **kwargs: Any) -> None:  # noqa: B008 - frozen
        retries = max(bounds.max_attempts - 1, 0)
        super().__init__(retry_total=retries, retry_connect=retries, retry_read=retries, retry_status=retries,
                         retry_backoff_factor=bounds.backoff_base, retry_backoff_max=bounds.backoff_max)
        self.bounds = bounds
        self._lock = threading.Lock()
        self._hold_until = 0.0  # monotonic: the client-wide Retry-After window

    def wait_window(self) -> None:
        """Sleep until this client's Retry-After window (if any) has passed."""
        while (remaining := self._hold_until - time.monotonic()) > 0:
            time.sleep(remaining)

    def gate(self) -> RetryAfterGate:
        """The policy to put last, right before the transport: the window checked again after whatever the
        policies between took (a bearer token being fetched can take seconds, a 429 may arrive meanwhile)."""
        return RetryAfterGate(self)

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        settings = super().configure_retries(options)
        settings["deadline"] = time.monotonic() + self.bounds.max_total_seconds
        return settings

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        self.wait_window()
        return super().send(request)

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        return response.http_response.status_code in RETRY_STATUSES

    def get_retry_after(self, response: PipelineResponse[Any, Any]) -> float | None:
        return parse_retry_after(response.http_response.headers.get("Retry-After"))

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        ceiling = super().get_backoff_time(settings)
        return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0  # noqa: S311 - jitter

    def increment(self, settings: dict[str, Any], response: Any = None, error: Exception | None = None) -> bool:
        retry_after = self.get_retry_after(response) if isinstance(response, PipelineResponse) else None
        if retry_after is not None:  # every request of this client waits, plus jitter against a stampede
            until = time.monotonic() + retry_after + random.uniform(0.05, 0.05 + min(1.0, retry_after / 10))  # noqa: S311
            with self._lock:
                self._hold_until = max(self._hold_until, until)
            log.debug("Retry-After %.1f s: every request of this client waits until it has passed", retry_after)
        if error is not None and _tls_refused(error):
            return False
        if not super().increment(settings, response=response, error=error):
            return False
        wait = retry_after if retry_after is not None else self.get_backoff_time(settings)
        deadline: float = settings["deadline"]
        return time.monotonic() + wait <= deadline

    def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
        if response is None or self.get_retry_after(response) is None:
            backoff = self.get_backoff_time(settings)
            if backoff > 0:
                transport.sleep(backoff)
        self.wait_window()


class RetryAfterGate(SansIOHTTPPolicy[HttpRequest, HttpResponse]):
    """Holds each send inside its client's Retry-After window at the last moment before the transport.

    The retry policy checks the window before the policies after it run; a request whose bearer token was
    still being fetched (behind Entra's own faults and retries) when another request of the client read a
    429 would otherwise leave inside the window it could have known (seen under load by `make bench`)."""

    def __init__(self, retry: BoundedRetryPolicy) -> None:
        self._retry = retry

    def on_request(self, request: PipelineRequest[HttpRequest]) -> None:
        self._retry.wait_window()


def _tls_refused(error: Exception) -> bool:
    """A certificate the CA bundle does not trust (or a hostname mismatch): retrying cannot help."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
        cause = getattr(cause, "inner_exception", None) or cause.__cause__ or cause.__context__
    return cause is not None


# ------------------------------------------------------------------------------------------------
# ambiguous writes


@dataclass
class Exchange:
    """One call through the pipeline, as the ambiguous-write policy saw it (read by the client after it)."""

    method: str
    path: str  # relative, as shown in messages
    idempotent: bool
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0
    maybe_applied: bool = False  # an attempt reached the server and may have done its work
    already_done: bool = False  # a DELETE answered 404 after such an attempt: what was asked for is true

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class AmbiguousWritePolicy(HTTPPolicy[HttpRequest, HttpResponse]):
    """Per send: a write that is not idempotent is never sent again once it may have been applied (the
    connection broke after sending, no answer in the read timeout, or 503 without Retry-After / 504): it
    fails with AmbiguousWriteError (UnansweredWrite for a timeout) for the caller to look it up. A 429, a
    503 with Retry-After and a connection that never opened are surely unprocessed and left to the retry
    policy. A DELETE that finds nothing after such an attempt counts as done."""

    OPTION = "lead_destination_exchange"

    def send(self, request: PipelineRequest[HttpRequest]) -> PipelineResponse[HttpRequest, HttpResponse]:
        context = request.context
        if self.OPTION in context.options:
            context[self.OPTION] = context.options.pop(self.OPTION)
        exchange: Exchange | None = context.get(self.OPTION)
        if exchange is None:
            return self.next.send(request)
        exchange.attempts += 1
        try:
            response = self.next.send(request)
        except ServiceResponseError as exc:
            exchange.maybe_applied = True
            what = "no answer in the read timeout" if isinstance(exc, ServiceResponseTimeoutError) else \
                "connection lost after the request was sent"
            log.debug("%s %s attempt %d: %s", exchange.method, exchange.path, exchange.attempts, what)
            if not exchange.idempotent:
                cls = UnansweredWrite if isinstance(exc, ServiceResponseTimeoutError) else AmbiguousWriteError
                raise cls(exchange.method, exchange.path, what) from None
            raise
        except ServiceRequestError:
            log.debug("%s %s attempt %d: not sent", exchange.method, exchange.path, exchange.attempts)
            raise
        status = response.http_response.status_code
        if status in (503, 504) and not (status == 503 and response.http_response.headers.get("Retry-After")):
            exchange.maybe_applied = True
            if not exchange.idempotent:
                code, message = error_details(response.http_response)
                raise AmbiguousWriteError(exchange.method, exchange.path, f"{status} {code or ''} {message}"[:300])
        exchange.already_done = status == 404 and exchange.method == "DELETE" and exchange.maybe_applied
        return response


def error_details(response: HttpResponse) -> tuple[str | None, str]:
    """(code, message) from Dataverse's / Graph's {"error": {"code", "message"}} envelope (or OAuth's)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            return (str(code) if code is not None else None), str(err.get("message") or "")[:1000]
        if isinstance(err, str):
            return err, str(body.get("error_description") or body.get("message") or "")[:1000]
        if "message" in body:
            return body.get("code"), str(body["message"])[:1000]
    return None, (response.content.decode("utf-8", "replace").strip()[:300] or response.reason or "no details")


# ------------------------------------------------------------------------------------------------
# bearer token and logging


class BearerChallengePolicy(BearerTokenCredentialPolicy[HttpRequest, HttpResponse]):
    """azure-core's bearer policy (the token kept per client and renewed before it expires, https only,
    claims challenges answered). A plain challenge — the token was refused before its expiry: revoked, or
    the service restarted its keys — gets one fresh token and one resend; a second refusal is the answer."""

    def __init__(self, tokens: TokenCache, scope: str) -> None:
        super().__init__(tokens, scope)
        self._tokens = tokens
        self._scope = scope

    _CHALLENGED = "lead_destination.challenged"

    def on_challenge(self, request: PipelineRequest[HttpRequest],
                     response: PipelineResponse[HttpRequest, HttpResponse]) -> bool:
        request.context[self._CHALLENGED] = True
        if super().on_challenge(request, response):
            return True
        self._tokens.invalidate(self._scope)
        self.authorize_request(request, self._scope)
        return True

    def send(self, request: PipelineRequest[HttpRequest]) -> PipelineResponse[HttpRequest, HttpResponse]:
        """A 401 without WWW-Authenticate (azure-core answers a challenge only when the header is there) gets
        the same one fresh token and one resend: Dataverse documents the bearer challenge, not that every 401
        carries it (inferred tolerance; tests/test_contract_dataverse_tolerance.py)."""
        request.context[self._CHALLENGED] = False
        response = super().send(request)
        if response.http_response.status_code == 401 and not request.context[self._CHALLENGED]:
            request.context[self._CHALLENGED] = True
            self._tokens.invalidate(self._scope)
            self.authorize_request(request, self._scope)
            response = self.next.send(request)
            self.on_response(request, response)
        return response


def http_logging_policy() -> HttpLoggingPolicy:
    """azure-core's request/response trace on `dynamics_provider.http` (INFO): the Authorization header and
    every header or query value not on the allow-list show as REDACTED; bodies are never logged."""
    shown = ("$select", "$top", "$expand", "$version")  # $filter and the rest can carry names and addresses
    policy = HttpLoggingPolicy(logger=log, additional_allowed_query_params=(
        *shown, *(name.replace("$", "%24") for name in shown)))  # as they appear encoded in the URL
    policy.allowed_header_names.update({"OData-EntityId", "OData-Version", "OData-MaxVersion", "Prefer",
                                        "Preference-Applied", "If-Match", "x-ms-service-request-id"})
    return policy

