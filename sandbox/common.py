"""Shapes shared by the sandbox's parts: who is calling, tunable behaviour, and error responses.

Also the documented sandbox constants (port, tenant, admin and lead-writer apps) of docs/architecture.md.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Response

# Fixed, documented, sandbox-only identities (see docs/architecture.md). Not secrets of anything real.
DEFAULT_PORT = 48443
TENANT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"
ADMIN_CLIENT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0a01"
ADMIN_CLIENT_SECRET = "sandbox-admin-secret"
LEADWRITER_CLIENT_ID = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
LEADWRITER_CLIENT_SECRET = "sandbox-leadwriter-secret"
PUBLIC_CLIENT_ID = "51f81489-12ee-4a9e-aaae-a2591f45987d"
DEFAULT_ORG = "contoso"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
GUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # a GUID, any case


@dataclass(frozen=True)
class Caller:
    """The principal a validated bearer token speaks for."""

    object_id: str
    tenant_id: str
    app_id: str | None = None  # set for application (client credentials) tokens
    upn: str | None = None  # set for user (password grant) tokens

    @property
    def label(self) -> str:
        return self.upn or self.app_id or self.object_id


@dataclass
class SandboxSettings:
    """Behaviour knobs, changed at run time through POST /_control/settings."""

    token_lifetime_seconds: int = 3600
    latency_ms: int = 0
    import_seconds: float = 1.5
    page_size: int = 5000  # rows per page of a collection without Prefer: odata.maxpagesize (Dataverse: 5000)
    throttle: dict[str, Any] | None = None  # {window_seconds, max_requests, max_concurrent, retry_after}
    # {rate, kinds?, targets?, retry_after?, seed?}: each request of a target kind meets a random fault
    random_faults: dict[str, Any] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def dataverse_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Dataverse's error envelope: {"error": {"code": "0x…", "message": "…"}}."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)


def segment_not_found(path: str) -> Response:
    """Dataverse's 404 for a path nobody serves: "Resource not found for the segment '…'."."""
    return dataverse_error(404, "0x8006088a", f"Resource not found for the segment '{path.rsplit('/', 1)[-1]}'.")
