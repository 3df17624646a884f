"""How an identity signs in: Microsoft's azure-identity credential for each configured kind (client secret,
certificate PEM or PFX, client assertion / workload identity, Azure CLI, the Office 365 lead writer's
password), built over our transport and bounded retry policy, and Entra's answer turned into an
AuthenticationError that names the AADSTS code and what to do.

The authority host has been checked against the allow-list (`hosts.validate_authority_host`) before a
credential is built, so no secret is sent anywhere else; a loopback authority (the sandbox) gets
instance discovery disabled, as azure-identity documents for authorities it cannot validate.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.credentials import AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineRequest, PipelineResponse

from .auth import DeployerSettings
from .errors import AuthenticationError
from .hosts import ENTRA_LOGIN_HOSTS
from .pipeline import RETRY_STATUSES, BoundedRetryPolicy, RetryBounds, environ_proxies, http_transport

# Microsoft's Dataverse sample public client: Partner Center's Office 365 destination signs in with a password.
PUBLIC_CLIENT_ID = "51f81489-12ee-4a9e-aaae-a2591f45987d"

#: Token requests get the Dataverse requests' retry policy, with the read timeout of a token request.
TOKEN_RETRY = RetryBounds(timeout=30.0)

# azure-identity logs every failed token request at WARNING; with no logging configured Python would print
# it to the provider's stderr next to our own error, which carries the same facts and a hint.
logging.getLogger("azure.identity").addHandler(logging.NullHandler())
# The password grant is deprecated (it cannot do MFA), but Partner Center's Office 365 lead destination is a
# password sign-in by design, so the lead writer check must sign in the same way (filters set once: the
# catch_warnings context manager is not thread-safe).
warnings.filterwarnings("ignore", message="UsernamePasswordCredential is deprecated", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="This API has been deprecated for public client flows",
                        category=DeprecationWarning)


class TokenSource(Protocol):
    """What the token cache needs of a credential (every azure-identity credential has it)."""

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo: ...


@dataclass(frozen=True)
class Authority:
    """An Entra authority: an allow-listed (or opted-in loopback) host[:port] and a tenant."""

    host: str
    tenant: str

    @classmethod
    def parse(cls, url: str) -> Authority:
        parts = urlsplit(url)
        tenant = parts.path.strip("/")
        if parts.scheme != "https" or not parts.netloc or not tenant or "/" in tenant:
            raise AuthenticationError(f"not an authority URL: {url.split('?', 1)[0]!r}",
                                      hint="expected https://{login host}/{tenant id}")
        return cls(parts.netloc.lower(), tenant)

    @property
    def url(self) -> str:
        return f"https://{self.host}/{self.tenant}"

    @property
    def is_microsoft(self) -> bool:
        return self.host in ENTRA_LOGIN_HOSTS

    def restore_port(self, request: PipelineRequest[Any]) -> None:
        """msal builds the user-realm URL from the authority's host name without its port; an authority on
        a non-default port (the sandbox) would send it to :443. Put the port back (raw_request_hook)."""
        name = self.host.rsplit(":", 1)[0]
        url = request.http_request.url
        if ":" in self.host and url.startswith(f"https://{name}/"):
            request.http_request.url = f"https://{self.host}/" + url[len(f"https://{name}/"):]


class OAuthErrors:
    """What Entra answered to this thread's last token request, seen by the pipeline's raw_response_hook
    before azure-identity reduces it to a message: the error answers' count, the last one's status and its
    OAuth error body ({error, error_description, error_codes}) if it had one."""

    def __init__(self) -> None:
        self._local = threading.local()

    def clear(self) -> None:
        self._local.refusals, self._local.status, self._local.body = 0, None, None

    @property
    def refusals(self) -> int:
        return int(getattr(self._local, "refusals", 0))

    @property
    def status(self) -> int | None:
        return getattr(self._local, "status", None)

    @property
    def body(self) -> Mapping[str, Any] | None:
        return getattr(self._local, "body", None)

    def on_response(self, response: PipelineResponse[Any, Any]) -> None:
        status = response.http_response.status_code
        if status < 400:
            return
        self._local.refusals, self._local.status = self.refusals + 1, status
        try:
            body = response.http_response.json()
        except ValueError:
            body = None
        self._local.body = body if isinstance(body, dict) and isinstance(body.get("error"), str) else None


class Identity:
    """One identity's way to sign in. `credential()` builds the azure-identity credential (again after a
    refused token, so the next token is new and not msal's cached copy); `fetch()` asks it for a token and
    turns any failure into an AuthenticationError without secrets."""

    def __init__(self, description: str, build: Callable[[dict[str, Any]], TokenSource], *,
                 authority: Authority | None, ca_bundle: str | None, secrets: tuple[str | None, ...] = ()) -> None:
        self.description = description
        self.authority = authority
        self._build = build
        self._ca_bundle = ca_bundle
        self._secrets = secrets
        self._errors = OAuthErrors()

    def __repr__(self) -> str:
        return f"<Identity {self.description}>"

    def credential(self) -> TokenSource:
        options: dict[str, Any] = {}
        if self.authority is not None:
            options = {
                "authority": self.authority.host,
                "transport": http_transport(self._ca_bundle, read_timeout=TOKEN_RETRY.timeout,
                                            connect_timeout=TOKEN_RETRY.connect_timeout, pool_maxsize=4),
                "proxies": environ_proxies(self.authority.url),
                "retry_policy_class": functools.partial(BoundedRetryPolicy, TOKEN_RETRY),
                "raw_response_hook": self._errors.on_response,
                "raw_request_hook": self.authority.restore_port,
            }
            if not self.authority.is_microsoft:
                options["disable_instance_discovery"] = True
        try:
            return self._build(options)
        except AuthenticationError:
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise self._unusable(exc) from None

    def fetch(self, credential: TokenSource, scope: str, options: TokenRequestOptions | None = None
              ) -> AccessTokenInfo:
        self._errors.clear()
        try:
            return credential.get_token_info(scope, options=options)
        except AuthenticationError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one typed, secret-free error
            raise self._refused(exc, scope) from None

    # -- errors ------------------------------------------------------------------------------------

    def _unusable(self, exc: BaseException) -> AuthenticationError:
        text = redact(str(exc), self._secrets)[:300]
        if isinstance(exc, OSError):
            return AuthenticationError(f"{self.description}: cannot read {exc.filename}: {exc.strerror}",
                                       hint="Check the path in the configuration")
        if "certificate" in self.description:
            return AuthenticationError(
                f"{self.description}: cannot load the certificate: wrong or missing certificate password, "
                f"or not a PEM/PFX file with the private key ({text})",
                hint="Set deployerCertificatePassword (ARM_CLIENT_CERTIFICATE_PASSWORD) if the key is encrypted")
        return AuthenticationError(f"{self.description}: {text}",
                                   hint="Check the tenant id, the cloud / authority host and the client id")

    def _refused(self, exc: BaseException, scope: str) -> AuthenticationError:
        where = self.authority.url if self.authority else "the Azure CLI"
        what = f"{self.description} for scope {scope}"
        status = self._errors.status
        if status in RETRY_STATUSES:  # retried within the bounds, refused every time
            what += f" (HTTP {status} on each of {self._errors.refusals} attempt(s) to {where})"
        if self._errors.body is not None:
            return oauth_error(self._errors.body, what, self._secrets)
        if status in RETRY_STATUSES:
            return AuthenticationError(f"{what}: Entra ID did not issue a token",
                                       hint="Entra ID is unavailable or throttling this identity: retry later")
        network = _cause(exc, (ServiceRequestError, ServiceResponseError))
        if network is not None:
            detail = redact(str(network), self._secrets)[:300]
            tls = "CERTIFICATE_VERIFY_FAILED" in detail or "SSLError" in detail
            return AuthenticationError(
                f"{self.description}: token request to {where} failed: {type(network).__name__}: {detail}",
                hint="The authority's TLS certificate is not trusted: set the CA bundle (lead-destination:caBundle)"
                if tls else "Check network access to the authority host and the CA bundle")
        text = redact(getattr(exc, "message", None) or str(exc), self._secrets)
        match = AADSTS_RE.search(text)
        code = match.group(0) if match else None
        cli = self.authority is None
        hint = AADSTS_HINTS.get(code or "") or (
            "Run `az login` (with --tenant if needed) and retry" if cli else "Check the credential and the tenant")
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return AuthenticationError(f"{self.description}: {first[:400]}", code=code, hint=hint)


def _cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, types):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# ------------------------------------------------------------------------------------------------
# the identities


def deployer_identity(settings: DeployerSettings) -> Identity:
    """The deploying identity from its settings (precedence: certificate, client secret, federated token,
    Azure CLI). The authority host is validated here, before anything is sent."""
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
            "or ARM_USE_CLI=true after `az login`",
        )
    if kind == "azure_cli":
        tenant = settings.tenant_id
        return Identity("Azure CLI signed-in account", lambda _: AzureCliCredential(tenant_id=tenant or ""),
                        authority=None, ca_bundle=None)
    if not settings.client_id or not settings.tenant_id:
        raise AuthenticationError(
            f"{kind.replace('_', ' ')} credential needs both a client id and a tenant id",
            hint="Set lead-destination:deployerClientId and deployerTenantId (or ARM_CLIENT_ID and ARM_TENANT_ID)",
        )
    authority = Authority(settings.resolved_authority_host(), settings.tenant_id)
    tenant, client_id = settings.tenant_id, settings.client_id
    if kind == "client_secret":
        secret = settings.client_secret or ""
        return Identity(f"client secret of app {client_id}",
                        lambda o: ClientSecretCredential(tenant, client_id, secret, **o),
                        authority=authority, ca_bundle=settings.ca_bundle, secrets=(secret,))
    if kind == "certificate":
        path, password = settings.certificate_path, settings.certificate_password
        return Identity(f"client certificate of app {client_id}",
                        lambda o: CertificateCredential(tenant, client_id, path, password=password or None, **o),
                        authority=authority, ca_bundle=settings.ca_bundle, secrets=(password,))
    assertion = _federated_assertion(settings)
    return Identity(f"federated token of app {client_id}",
                    lambda o: ClientAssertionCredential(tenant, client_id, assertion, **o),
                    authority=authority, ca_bundle=settings.ca_bundle, secrets=(settings.federated_token,))


def _federated_assertion(settings: DeployerSettings) -> Callable[[], str]:
    """The client assertion: the federated token file, read on every token request (workload identity and CI
    runners rotate it; azure-identity's WorkloadIdentityCredential would keep a read for five minutes), or
    the fixed ARM_OIDC_TOKEN."""
    path, fixed = settings.federated_token_file, settings.federated_token

    def read() -> str:
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError as exc:
                raise AuthenticationError(f"cannot read the federated token file {path}: {exc.strerror}",
                                          hint="Check deployerFederatedTokenFile / AZURE_FEDERATED_TOKEN_FILE") from None
        return (fixed or "").strip()

    return read


def client_secret_identity(authority: str, client_id: str, client_secret: str, *,
                           ca_bundle: str | None = None) -> Identity:
    """An app with a secret (the lead writer's app), at `authority` (from DeployerSettings.authority())."""
    from azure.identity import ClientSecretCredential

    where = Authority.parse(authority)
    return Identity(f"client secret of app {client_id}",
                    lambda o: ClientSecretCredential(where.tenant, client_id, client_secret, **o),
                    authority=where, ca_bundle=ca_bundle, secrets=(client_secret,))


def password_identity(authority: str, username: str, password: str, *, client_id: str = PUBLIC_CLIENT_ID,
                      ca_bundle: str | None = None) -> Identity:
    """A user's password (resource owner password credentials): the Office 365 lead writer."""
    from azure.identity import UsernamePasswordCredential

    where = Authority.parse(authority)
    return Identity(f"password of user {username}",
                    lambda o: UsernamePasswordCredential(client_id, username, password, tenant_id=where.tenant, **o),
                    authority=where, ca_bundle=ca_bundle, secrets=(password,))


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
    "AADSTS70043": "The Azure CLI sign-in has expired: run `az login` again",
}

AADSTS_RE = re.compile(r"AADSTS\d+")


def redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    # bearer tokens / JWTs never belong in a message
    return re.sub(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*", "***", text)


def oauth_error(result: Mapping[str, Any], what: str, secrets: tuple[str | None, ...] = ()) -> AuthenticationError:
    """An AuthenticationError from Entra's OAuth error answer (never carrying a secret)."""
    error = str(result.get("error") or "unknown_error")
    description = str(result.get("error_description") or "")
    match = AADSTS_RE.search(description)
    code = match.group(0) if match else None
    codes = result.get("error_codes")
    if code is None and isinstance(codes, list) and codes:
        code = f"AADSTS{codes[0]}"
    first_line = description.strip().splitlines()[0] if description.strip() else error
    first_line = redact(first_line, secrets)[:400]
    hint = AADSTS_HINTS.get(code or "")
    if hint is None and error == "invalid_client":
        hint = "Check the client id, the credential and the tenant"
    return AuthenticationError(f"{what}: {error}: {first_line}", code=code, error=error, hint=hint)
