"""How an identity signs in: Microsoft's azure-identity credential for each configured kind (client secret,
certificate PEM or PFX, client assertion / federated token, Azure CLI, the Office 365 lead writer's password)
over our transport and bounded retry policy, and Entra's refusal as an AuthenticationError with its AADSTS
code and what to do. The authority host is allow-listed before any credential is built; a loopback one (the
sandbox) gets instance discovery disabled, as azure-identity documents for authorities it cannot validate.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessTokenInfo, SupportsTokenInfo, TokenRequestOptions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineRequest, PipelineResponse

from .auth import DeployerSettings
from .errors import AuthenticationError
from .hosts import ENTRA_LOGIN_HOSTS
from .pipeline import RETRY_STATUSES, BoundedRetryPolicy, RetryBounds, environ_proxies, http_transport

PUBLIC_CLIENT_ID = "51f81489-12ee-4a9e-aaae-a2591f45987d"  # Microsoft's Dataverse sample public client
TOKEN_RETRY = RetryBounds(timeout=30.0)  # the Dataverse requests' policy, with a token request's read timeout

# azure-identity logs each failed token request at WARNING (Python would print it beside our own error, which
# says the same and what to do). The password grant is deprecated (no MFA), but Partner Center's Office 365
# lead destination signs in with a password, so its check must too (filters set once: catch_warnings is not
# thread-safe).
logging.getLogger("azure.identity").addHandler(logging.NullHandler())
warnings.filterwarnings("ignore", "UsernamePasswordCredential is deprecated", DeprecationWarning)
warnings.filterwarnings("ignore", "This API has been deprecated for public client flows", DeprecationWarning)


@dataclass(frozen=True)
class Authority:
    """An allow-listed (or opted-in loopback) Entra host[:port] and a tenant."""

    host: str
    tenant: str

    @classmethod
    def parse(cls, url: str) -> Authority:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc or not parts.path.strip("/"):
            raise AuthenticationError(f"not an authority URL: {url.split('?', 1)[0]!r}",
                                      hint="expected https://{login host}/{tenant id}")
        return cls(parts.netloc.lower(), parts.path.strip("/"))

    @property
    def url(self) -> str:
        return f"https://{self.host}/{self.tenant}"

    def restore_port(self, request: PipelineRequest[Any]) -> None:
        """raw_request_hook: msal builds the user-realm URL from the authority's host without its port, which
        sends it to :443 for an authority on another port (the sandbox). Put the port back."""
        bare = f"https://{self.host.rsplit(':', 1)[0]}/"
        if ":" in self.host and request.http_request.url.startswith(bare):
            request.http_request.url = f"https://{self.host}/" + request.http_request.url[len(bare):]


def _whole_seconds(value: Any) -> bool:
    """A lifetime msal and azure-identity both read: a number, or a string of digits (Entra's v1.0 endpoint
    writes lifetimes as strings, Microsoft Learn "Make your first API call" for the marketplace)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == value and value not in (float("inf"), float("-inf")) and value >= 0
    return isinstance(value, str) and value.strip().isdigit()


def _jwt_claims(token: Any) -> bool:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        return False
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        return isinstance(json.loads(payload), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def token_answer_problem(body: Any) -> str | None:
    """What in a 2xx answer of the token endpoint msal / azure-identity cannot use, described by field names and
    types only (the answer holds tokens), or None. Documented: `token_type`, `expires_in` (int), `access_token`,
    and for a user sign-in `scope`, `refresh_token`, `id_token` (entra-docs: client credentials and ROPC
    pages); `ext_expires_in` and `refresh_in` are read when present, as numbers or digit strings."""
    if not isinstance(body, Mapping):
        return "it is not a JSON object" if body is not None else "it is not JSON"
    fields = sorted(str(key) for key in body)[:12]
    missing = [name for name in ("access_token", "expires_in") if body.get(name) in (None, "")]
    if missing:
        return f"it has no {' and no '.join(missing)} (fields: {fields})"
    for name in ("expires_in", "ext_expires_in", "refresh_in"):
        if name in body and not _whole_seconds(body[name]):
            return f"its {name} is a {type(body[name]).__name__} that is not a number of seconds"
    if "id_token" in body and not _jwt_claims(body["id_token"]):
        return "its id_token is not a readable JWT"
    return None


class EntraAnswers(threading.local):
    """raw_response_hook: this thread's error answers from Entra since `clear()` (count, last status, last
    OAuth error body), which azure-identity reduces to a message, and what was wrong with the last successful
    token answer if msal / azure-identity cannot use it (`token_problem`, by shape, never by value)."""

    refusals: int = 0
    status: int | None = None
    body: Mapping[str, Any] | None = None
    token_problem: str | None = None

    def clear(self) -> None:
        self.refusals, self.status, self.body, self.token_problem = 0, None, None, None

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        answer = response.http_response
        request = response.http_request
        if answer.status_code < 400 and request.method == "POST" and urlsplit(request.url).path.endswith("/token"):
            try:
                parsed = json.loads(answer.text(encoding="utf-8") or "null")
            except ValueError:
                parsed = None
            self.token_problem = token_answer_problem(parsed)
        if answer.status_code >= 400:
            self.refusals, self.status = self.refusals + 1, answer.status_code
            try:
                body = answer.json()
            except ValueError:
                body = None
            self.body = body if isinstance(body, dict) and isinstance(body.get("error"), str) else None


class Identity:
    """One identity's way to sign in: `credential()` builds its azure-identity credential (again after a
    refused token, so the next token is new rather than msal's cached copy), `fetch()` asks it for a token;
    every failure becomes an AuthenticationError without secrets."""

    def __init__(self, description: str, build: Callable[..., SupportsTokenInfo], *, authority: Authority | None,
                 ca_bundle: str | None = None, secrets: tuple[str | None, ...] = ()) -> None:
        self.description, self.authority, self._build = description, authority, build
        self._ca_bundle, self._secrets, self._answers = ca_bundle, secrets, EntraAnswers()

    def __repr__(self) -> str:
        return f"<Identity {self.description}>"

    def credential(self) -> SupportsTokenInfo:
        options: dict[str, Any] = {}
        if self.authority is not None:
            options = {"authority": self.authority.host, "proxies": environ_proxies(self.authority.url),
                       "transport": http_transport(self._ca_bundle, read_timeout=TOKEN_RETRY.timeout, pool_maxsize=4),
                       "retry_policy_class": functools.partial(BoundedRetryPolicy, TOKEN_RETRY),
                       "raw_response_hook": self._answers, "raw_request_hook": self.authority.restore_port}
            if self.authority.host not in ENTRA_LOGIN_HOSTS:
                options["disable_instance_discovery"] = True
        try:
            return self._build(**options)
        except (OSError, ValueError, TypeError) as exc:  # unreadable file, certificate or password, tenant id
            detail = f"cannot read {exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else \
                redact(str(exc), self._secrets)[:300]
            hint = "Check the path in the configuration" if isinstance(exc, OSError) else \
                "Check the tenant id, the cloud / authority host and the client id"
            if "certificate" in self.description and not isinstance(exc, OSError):
                detail = f"cannot load the certificate: wrong or missing certificate password, or not a PEM/PFX " \
                         f"file with the private key ({detail})"
                hint = "Set deployerCertificatePassword (ARM_CLIENT_CERTIFICATE_PASSWORD) if the key is encrypted"
            raise AuthenticationError(f"{self.description}: {detail}", hint=hint) from None

    def fetch(self, credential: SupportsTokenInfo, scope: str, options: TokenRequestOptions | None = None
              ) -> AccessTokenInfo:
        self._answers.clear()
        try:
            return credential.get_token_info(scope, options=options)
        except AuthenticationError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one typed, secret-free error
            raise self._refused(exc, scope) from None

    def _refused(self, exc: BaseException, scope: str) -> AuthenticationError:
        where = self.authority.url if self.authority else "the Azure CLI"
        what, answers = f"{self.description} for scope {scope}", self._answers
        if answers.status in RETRY_STATUSES:  # retried within the bounds, refused every time
            what += f" (HTTP {answers.status} on each of {answers.refusals} attempt(s) to {where})"
        if answers.body is not None:
            return oauth_error(answers.body, what, self._secrets)
        if answers.token_problem is not None:
            return AuthenticationError(
                f"{what}: {where} answered with a token this program cannot read: {answers.token_problem}",
                hint="Check that the authority host is Entra ID's login host (lead-destination:authorityHost) and "
                     "retry; if it persists, report it with the field names above")
        if answers.status in RETRY_STATUSES:
            return AuthenticationError(f"{what}: Entra ID did not issue a token",
                                       hint="Entra ID is unavailable or throttling this identity: retry later")
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ServiceRequestError | ServiceResponseError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # no answer at all
            detail = redact(str(cause), self._secrets)[:300]
            tls = "CERTIFICATE_VERIFY_FAILED" in detail
            return AuthenticationError(
                f"{self.description}: token request to {where} failed: {type(cause).__name__}: {detail}",
                hint="The authority's TLS certificate is not trusted: set the CA bundle (lead-destination:caBundle)"
                if tls else "Check network access to the authority host and the CA bundle")
        text = redact(getattr(exc, "message", None) or str(exc), self._secrets).strip()
        code = match.group(0) if (match := AADSTS_RE.search(text)) else None
        hint = AADSTS_HINTS.get(code or "") or ("Run `az login` (with --tenant if needed) and retry"
                                                if self.authority is None else "Check the credential and the tenant")
        first = text.splitlines()[0][:400] if text else type(exc).__name__
        return AuthenticationError(f"{self.description}: {first}", code=code, hint=hint)


# ------------------------------------------------------------------------------------------------
# the identities


def deployer_identity(settings: DeployerSettings) -> Identity:
    """The deploying identity (precedence: certificate, client secret, federated token, Azure CLI). The
    authority host is validated here, before anything is sent."""
    from azure.identity import (
        AzureCliCredential,
        CertificateCredential,
        ClientAssertionCredential,
        ClientSecretCredential,
    )

    kind = settings.credential_kind
    if kind is None:
        raise AuthenticationError(
            "no credential for the deploying identity is configured",
            hint="Set lead-destination:deployerClientId with deployerClientSecret or deployerCertificatePath "
            "(or ARM_CLIENT_ID + ARM_CLIENT_SECRET / ARM_CLIENT_CERTIFICATE_PATH / ARM_OIDC_TOKEN_FILE_PATH), "
            "or ARM_USE_CLI=true after `az login`")
    if kind == "azure_cli":
        return Identity("Azure CLI signed-in account", functools.partial(  # az's first call can take a while
            AzureCliCredential, tenant_id=settings.tenant_id or "", process_timeout=60), authority=None)
    tenant, client_id = settings.tenant_id, settings.client_id
    if not client_id or not tenant:
        raise AuthenticationError(
            f"{kind.replace('_', ' ')} credential needs both a client id and a tenant id",
            hint="Set lead-destination:deployerClientId and deployerTenantId (or ARM_CLIENT_ID and ARM_TENANT_ID)")
    authority = Authority(settings.resolved_authority_host(), tenant)
    if kind == "client_secret":
        secret = settings.client_secret or ""
        return Identity(f"client secret of app {client_id}", functools.partial(
            ClientSecretCredential, tenant, client_id, secret), authority=authority, ca_bundle=settings.ca_bundle,
            secrets=(secret,))
    if kind == "certificate":
        password = settings.certificate_password or None
        return Identity(f"client certificate of app {client_id}", functools.partial(
            CertificateCredential, tenant, client_id, settings.certificate_path, password=password),
            authority=authority, ca_bundle=settings.ca_bundle, secrets=(password,))
    # The federated token file is read on every token request (workload identity and CI runners rotate it;
    # WorkloadIdentityCredential would keep a read for five minutes), else the fixed ARM_OIDC_TOKEN is used.
    path, fixed = settings.federated_token_file, settings.federated_token

    def assertion() -> str:
        if not path:
            return (fixed or "").strip()
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise AuthenticationError(f"cannot read the federated token file {path}: {exc.strerror}",
                                      hint="Check deployerFederatedTokenFile / AZURE_FEDERATED_TOKEN_FILE") from None

    return Identity(f"federated token of app {client_id}", functools.partial(
        ClientAssertionCredential, tenant, client_id, assertion), authority=authority,
        ca_bundle=settings.ca_bundle, secrets=(fixed,))


def client_secret_identity(authority: str, client_id: str, client_secret: str, *,
                           ca_bundle: str | None = None) -> Identity:
    """An app with a secret (the lead writer's app), at `authority` (from DeployerSettings.authority())."""
    from azure.identity import ClientSecretCredential

    where = Authority.parse(authority)
    return Identity(f"client secret of app {client_id}", functools.partial(
        ClientSecretCredential, where.tenant, client_id, client_secret), authority=where, ca_bundle=ca_bundle,
        secrets=(client_secret,))


def password_identity(authority: str, username: str, password: str, *, client_id: str = PUBLIC_CLIENT_ID,
                      ca_bundle: str | None = None) -> Identity:
    """A user's password (resource owner password credentials): the Office 365 lead writer."""
    from azure.identity import UsernamePasswordCredential

    where = Authority.parse(authority)
    return Identity(f"password of user {username}", functools.partial(
        UsernamePasswordCredential, client_id, username, password, tenant_id=where.tenant), authority=where,
        ca_bundle=ca_bundle, secrets=(password,))


# ------------------------------------------------------------------------------------------------
# Entra's errors


AADSTS_HINTS: dict[str, str] = {
    "AADSTS7000215": "The client secret is wrong: copy the secret's value (not its id) or create a new one",
    "AADSTS7000222": "The client secret has expired: create a new one and update the configuration",
    "AADSTS700016": "No application with this client id exists in the tenant: check the client id and "
                    "tenant id, or have an administrator consent to the multi-tenant app in this tenant",
    "AADSTS700027": "The client assertion signature was refused: register this certificate on the app",
    "AADSTS700024": "The client assertion is expired or not yet valid: refresh the federated token",
    "AADSTS700213": "No federated credential on the app matches this token's subject/issuer",
    "AADSTS70021": "No federated credential on the app matches this token",
    "AADSTS90002": "The tenant does not exist: check the tenant (directory) id and the cloud",
    "AADSTS900023": "The tenant id is malformed: give the directory id (a GUID) or a verified domain",
    "AADSTS90023": "The tenant id is malformed: give the directory id (a GUID) or a verified domain",
    "AADSTS65001": "Consent is missing: an administrator must grant consent to the application",
    "AADSTS50126": "Wrong user name or password",
    "AADSTS50034": "The user does not exist in this tenant",
    "AADSTS50055": "The password has expired: set a new one",
    "AADSTS50076": "Multi-factor authentication is required for this user; the password grant cannot satisfy it",
    "AADSTS50079": "Multi-factor authentication registration is required for this user",
    "AADSTS500011": "The resource (instance URL) is not known in this tenant: check the instance URL",
    "AADSTS7000218": "The request needs a client secret or assertion",
    "AADSTS90033": "Entra ID reported a transient error on every attempt: retry later",
    "AADSTS50196": "Entra ID is throttling this identity: retry later",
    "AADSTS90055": "Entra ID is throttling requests to this tenant: retry later",
    "AADSTS70043": "The Azure CLI sign-in has expired: run `az login` again",
}

AADSTS_RE = re.compile(r"AADSTS\d+")


def redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return re.sub(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*", "***", text)  # tokens, assertions


def oauth_error(result: Mapping[str, Any], what: str, secrets: tuple[str | None, ...] = ()) -> AuthenticationError:
    """An AuthenticationError from Entra's OAuth error answer (error, error_description, error_codes)."""
    error, description = str(result.get("error") or "unknown_error"), str(result.get("error_description") or "")
    codes = result.get("error_codes")
    code = match.group(0) if (match := AADSTS_RE.search(description)) else (
        f"AADSTS{codes[0]}" if isinstance(codes, list) and codes else None)
    first_line = redact(description.strip().splitlines()[0] if description.strip() else error, secrets)[:400]
    hint = AADSTS_HINTS.get(code or "") or ("Check the client id, the credential and the tenant"
                                            if error == "invalid_client" else None)
    return AuthenticationError(f"{what}: {error}: {first_line}", code=code, error=error, hint=hint)
