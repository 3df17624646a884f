"""What every Web API operation of the Dataverse emulator shares: the result of an operation, the
error envelope with Dataverse's error codes, and the small checks on method and body.

Where each code and message comes from is listed in docs/sandbox.md ("Dataverse error codes");
codes and wording the sandbox had to infer are marked there and here.
"""

from __future__ import annotations

import json
from typing import Any

# (status, headers, body) of one Web API operation; the organization turns it into an HTTP response.
Result = tuple[int, dict[str, str], bytes]

E_BAD = "0x0"  # a malformed request (OData parse errors, bad bodies)
E_NOT_FOUND = "0x80040217"  # ObjectDoesNotExist: "{entity} With Id = {id} Does Not Exist"
E_UNKNOWN_SEGMENT = "0x8006088a"  # "Resource not found for the segment '{segment}'."
E_DUPLICATE = "0x80040237"  # DuplicateRecord: "A record with matching key values already exists."
E_PRIVILEGE = "0x80040220"  # PrivilegeDenied: "Principal user (Id=…) is missing prv… privilege"
E_NOT_MEMBER = "0x80072560"  # UserNotMemberOfOrg (403)
E_DISABLED = "0x80040225"  # a disabled caller (400)
E_WRONG_BUSINESS = "0x80041409"  # UserInWrongBusiness (status 400 inferred)
E_INVALID_DEPTH = "0x8004140b"  # InvalidPrivilegeDepth (status 400 inferred)
E_INVALID_ARGUMENT = "0x80040203"  # InvalidArgument: inferred for editing an inherited role copy
E_HAS_USERSETTINGS = "0x80048610"  # a systemuser cannot be deleted (it owns its usersettings)
E_ETAG = "0x80060882"  # If-Match does not match the row version
E_GENERIC = "0x80040216"  # the generic "An unexpected error occurred."
E_PAYLOAD = "0x80048d19"  # "Error identified in Payload provided by the user for Entity :'…'" (an OData payload error)
# Solution import failures
E_IMPORT_SOLUTION = "0x80048033"  # ImportSolutionError
E_BAD_ZIP = "0x80048060"  # ImportCustomizationsBadZipFileError
E_IMPORT_GENERIC = "0x8004801E"  # ImportGenericError
E_MISSING_DEPENDENCIES = "0x8004801D"  # ImportMissingDependenciesError
E_INVALID_PRIVILEGE = "0x80048058"  # ImportInvalidPrivilegeError
E_MANAGED_OVER_UNMANAGED = "0x80048040"  # ImportSolutionManagedToUnmanagedMismatch
E_UNMANAGED_OVER_MANAGED = "0x80048041"  # ImportSolutionUnmanagedToManagedMismatch
E_VERSION_NOT_HIGHER = "0x80048541"  # "The import solution must have a higher version than the existing solution"
# Service protection (429)
E_THROTTLED_REQUESTS = "0x80072322"  # number of requests
E_THROTTLED_EXECUTION = "0x80072321"  # combined execution time
E_THROTTLED_CONCURRENCY = "0x80072326"  # concurrent requests


class ODataError(Exception):
    """A request the Web API refuses; status, Dataverse code and message for the error envelope."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def envelope(self) -> bytes:
        """Dataverse's error body: {"error": {"code": "0x…", "message": "…"}}."""
        return json.dumps({"error": {"code": self.code, "message": self.message}}).encode()


def bad_request(message: str) -> ODataError:
    return ODataError(400, E_BAD, message)


def not_found(logical: str, record_id: str) -> ODataError:
    return ODataError(404, E_NOT_FOUND, f"{logical} With Id = {record_id} Does Not Exist")


def unknown_segment(path: str) -> ODataError:
    segment = path.split("/")[0].split("(")[0]
    return ODataError(404, E_UNKNOWN_SEGMENT, f"Resource not found for the segment '{segment}'.")


def duplicate(detail: str = "") -> ODataError:
    return ODataError(412, E_DUPLICATE, "A record with matching key values already exists" + (f": {detail}" if detail else "."))


def not_allowed(method: str) -> ODataError:
    return ODataError(405, E_BAD, f"The requested resource does not support http method '{method}'.")


def require_method(method: str, allowed: str) -> None:
    if method != allowed:
        raise not_allowed(method)


def parse_body(body: bytes) -> dict:
    """A JSON object request body ({} when empty)."""
    if not body:
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise bad_request("Error parsing the request body: it is not valid JSON.") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    return data


def json_result(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Result:
    return status, dict(headers or {}), json.dumps(obj).encode()

