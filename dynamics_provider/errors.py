"""Typed errors of the Dataverse, Partner Center and Entra clients: what failed, where, and what to do.

Every message is built from non-secret parts only (status, code, service message, method, path
without query); tokens, secrets, passwords and assertions never reach an exception's text.
"""

from __future__ import annotations


class LeadDestinationError(Exception):
    """Base of every error this package raises on purpose; `hint` says what to do."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        if self.hint and self.hint not in text:
            return f"{text}. {self.hint}" if not text.endswith(".") else f"{text} {self.hint}"
        return text


class InvalidInstanceUrl(LeadDestinationError, ValueError):
    """The instance URL is not a Dynamics 365 host of the configured cloud (refused before any token)."""


class UnknownCloud(LeadDestinationError, ValueError):
    """The configured cloud is not one this package knows (refused before any token)."""


class InvalidAuthorityHost(LeadDestinationError, ValueError):
    """The authority host override is not an Entra login host (refused before any credential is sent)."""


class AuthenticationError(LeadDestinationError):
    """Entra refused to issue a token (or no credential is configured).

    `code` is the AADSTS code (e.g. "AADSTS7000215"), `error` the OAuth error ("invalid_client").
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        error: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.code = code
        self.error = error
        super().__init__(message, hint=hint)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, error={self.error!r}, message={Exception.__str__(self)!r})"


class ServiceError(LeadDestinationError):
    """An HTTP API answered with an error status (or not at all).

    str() is "<METHOD> <path> -> <status> <code>: <message>. <hint>"; `service` names the API.
    """

    service = "the service"
    default_hint: str | None = None

    def __init__(
        self,
        status: int | None,
        code: str | None,
        message: str,
        *,
        method: str = "",
        path: str = "",
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.method = method.upper()
        self.path = strip_query(path)
        resolved_hint = hint if hint is not None else self.default_hint
        text = f"{self.method} {self.path} -> {status if status is not None else '-'}"
        if code:
            text += f" {code}"
        text += f": {message}"
        super().__init__(text, hint=resolved_hint)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, method={self.method!r}, "
            f"path={self.path!r}, message={self.message!r})"
        )


class DataverseError(ServiceError):
    """The Dataverse Web API answered with an error status (subclasses by status and error code)."""

    service = "Dataverse"


class NotFound(DataverseError):
    default_hint = "The record or entity set does not exist (any more) in this organization"


class AccessDenied(DataverseError):
    default_hint = (
        "The calling identity lacks the privilege named above in this organization: grant it through one "
        "of the user's security roles (the deploying identity needs the System Administrator role)"
    )


class Unauthorized(DataverseError):
    default_hint = (
        "The token was refused: check that the identity is an (enabled) application user of this "
        "organization and that the token's audience is the instance URL"
    )


class DuplicateRecord(DataverseError):
    default_hint = "A record with the same key already exists: look it up and adopt it instead of creating"


class BadRequest(DataverseError):
    default_hint = "Dataverse rejected the request payload; the message above names the offending part"


class Throttled(DataverseError):
    default_hint = (
        "Dataverse service protection limits were hit repeatedly: run fewer operations in parallel "
        "(e.g. `pulumi up --parallel 4`) or retry later"
    )


class ServiceUnavailable(DataverseError):
    default_hint = "The service is unavailable or unreachable: retry later; check the instance URL and network"


class UnexpectedAnswer(DataverseError):
    """Dataverse answered a success the client does not understand (a shape Microsoft documents nothing
    about and the client has no reading for); the message names the operation and what was unexpected,
    never the value itself."""

    default_hint = ("this organization answered in a shape the program does not know: nothing was changed on "
                    "the strength of it; report the operation and the sentence above")

    def __init__(self, operation: str, what: str, *, method: str = "GET", path: str = "") -> None:
        super().__init__(200, None, f"{operation}: {what}", method=method, path=path or operation)


class AmbiguousWriteError(LeadDestinationError):
    """A non-idempotent write may or may not have been applied: look it up before trying again."""

    def __init__(self, method: str, path: str, reason: str, *, hint: str | None = None) -> None:
        self.method = method.upper()
        self.path = strip_query(path)
        self.reason = reason
        super().__init__(
            f"{self.method} {self.path}: outcome unknown ({reason})",
            hint=hint
            or "The request was sent but no answer arrived; it was not repeated to avoid a duplicate. "
            "Look the object up by its natural key before creating it again",
        )

    def __repr__(self) -> str:
        return f"AmbiguousWriteError(method={self.method!r}, path={self.path!r}, reason={self.reason!r})"


class PartnerCenterError(ServiceError):
    """Partner Center's Product Ingestion API (behind Microsoft Graph) answered with an error status."""

    service = "Partner Center"


def strip_query(path: str) -> str:
    """Path without query string or fragment (a query could carry values we do not want in errors)."""
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path


_BY_STATUS: dict[int, type[DataverseError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: AccessDenied,
    404: NotFound,
    429: Throttled,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}

DUPLICATE_CODES = frozenset({"0x80040237", "0x80060892"})


def error_class(status: int | None, code: str | None) -> type[DataverseError]:
    """The DataverseError subclass for an HTTP status and Dataverse error code."""
    if code and code.lower() in DUPLICATE_CODES:
        return DuplicateRecord
    if status is None:
        return ServiceUnavailable
    return _BY_STATUS.get(status, DataverseError)


def partner_center_error_class(status: int | None, code: str | None) -> type[ServiceError]:
    """Partner Center's errors are one class; its status and code say the rest."""
    return PartnerCenterError
