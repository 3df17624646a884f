"""Entra's error answer, in the shape its token and discovery endpoints use (docs/sandbox.md, "Entra
errors"): an OAuth 2.0 error object with the AADSTS number first in `error_description`, followed by
Trace ID, Correlation ID and Timestamp lines, and `error_codes`, `timestamp`, `trace_id`,
`correlation_id` (the client's `client-request-id` when it sent one) and, for errors the lookup page
explains, `error_uri`.

`fault_error` gives the answer an injected fault on an Entra path gets (503 temporarily_unavailable,
429 with Retry-After, …) so clients are tested against the real shape, not Dataverse's envelope.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from werkzeug.wrappers import Request, Response

from sandbox.common import json_response

ERROR_LOOKUP = "https://login.microsoftonline.com/error"  # Entra's public error lookup page (error_uri)


class EntraError(Exception):
    """An Entra-style OAuth error: HTTP status, OAuth `error`, AADSTS number, description."""

    def __init__(self, status: int, error: str, code: int, description: str, *, transient: bool = False) -> None:
        super().__init__(f"{error} AADSTS{code}")
        self.status, self.error, self.code, self.description = status, error, code, description
        self.transient = transient  # a service-side failure: no error_uri (the lookup page explains nothing)


# OAuth error, AADSTS number and description an injected fault answers with, per HTTP status. The numbers
# and texts are Entra's (docs/sandbox.md lists where each was seen); which one a given status carries is
# the sandbox's choice where Microsoft documents no body for it (429, 500).
_FAULTS: dict[int, tuple[str, int, str]] = {
    400: ("invalid_request", 9002313, "Request is malformed or invalid."),
    401: ("invalid_client", 7000215, "Invalid client secret provided."),
    429: ("temporarily_unavailable", 90055, "There are too many incoming requests."),
    500: ("server_error", 50000, "There was an error issuing a token or an issue with our sign-in service."),
    503: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
}


def fault_error(status: int, code: int | str | None = None, message: str | None = None,
                error: str | None = None) -> EntraError:
    """The error an injected fault of `status` answers with; a rule's code/message/error override it."""
    if status in _FAULTS:
        default = _FAULTS[status]
    elif status >= 500:
        default = _FAULTS[503]
    else:
        default = _FAULTS[400]
    number = int(str(code).upper().removeprefix("AADSTS")) if code not in (None, "") else default[1]
    return EntraError(status, error or default[0], number, message or default[2], transient=status >= 429)


def correlation_id(request: Request | None) -> str:
    """The correlation id Entra reports: the client's client-request-id (msal sends one), else a new one."""
    sent = request.headers.get("client-request-id", "") if request is not None else ""
    try:
        return str(uuid.UUID(sent))
    except ValueError:
        return str(uuid.uuid4())


def error_body(err: EntraError, correlation: str) -> dict:
    trace_id = str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    description = (f"AADSTS{err.code}: {err.description}\r\nTrace ID: {trace_id}\r\n"
                   f"Correlation ID: {correlation}\r\nTimestamp: {stamp}")
    body = {"error": err.error, "error_description": description, "error_codes": [err.code],
            "timestamp": stamp, "trace_id": trace_id, "correlation_id": correlation}
    if not err.transient:
        body["error_uri"] = f"{ERROR_LOOKUP}?code={err.code}"
    return body


def error_response(err: EntraError, request: Request | None = None, headers: dict[str, str] | None = None) -> Response:
    return json_response(error_body(err, correlation_id(request)), err.status,
                         {"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})})
