"""Tokens for the deploying identity (client secret, certificate, federated token, Azure CLI) and for
the lead-writer identities, all through msal, behind one thread-safe process-wide cache.
DeployerSettings holds plain, picklable data only; msal applications are built lazily.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess  # noqa: S404 - the Azure CLI credential shells out to `az`, as azure-identity does
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .errors import AuthenticationError
from .hosts import authority_host as cloud_authority_host
from .hosts import validate_authority_host

log = logging.getLogger(__name__)

PUBLIC_CLIENT_ID = "51f81489-12ee-4a9e-aaae-a2591f45987d"

# Microsoft authority hosts msal may run instance discovery against; any other host (the sandbox,
# ADFS-like overrides) gets instance_discovery=False.
_MICROSOFT_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoft.com", "login.windows.net",
    "login.microsoftonline.us", "login.usgovcloudapi.net", "login-us.microsoftonline.com",
    "login.chinacloudapi.cn", "login.partner.microsoftonline.cn",
})

# A cached token is used until this long before it expires (capped to a tenth of its lifetime).
_REFRESH_MARGIN_SECONDS = 300.0


# --------------------------------------------------------------------------------------------
# Settings


# Which settings exist, where each is read from and how it is parsed: dynamics_provider/config_schema.py.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class DeployerSettings:
    """How the dynamic providers authenticate the deploying identity. Plain data; secrets not in repr."""

    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    federated_token_file: str | None = None
    federated_token: str | None = field(default=None, repr=False)
    use_azure_cli: bool = False
    cloud: str = "public"
    authority_host: str | None = None
    ca_bundle: str | None = None
    allow_loopback: bool = False
    partner_center_endpoint: str | None = None
    #: per-request read timeout of the Dataverse client (a write with no answer in time is looked up)
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS

    @classmethod
    def from_sources(
        cls, config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> DeployerSettings:
        """Read stack config (`lead-destination:*`), then `azuread:*` config, then the environment, as
        dynamics_provider.config_schema declares; ValueError names the source of a value it cannot read."""
        from .config_schema import read_deployer

        values = read_deployer((config or {}).get, os.environ if environ is None else environ)
        if "request_timeout_seconds" in values:
            values["request_timeout_seconds"] = float(values["request_timeout_seconds"])
        return cls(**values)

    @property
    def credential_kind(self) -> str | None:
        """certificate, client_secret, federated_token, azure_cli, or None (precedence in that order)."""
        if self.certificate_path:
            return "certificate"
        if self.client_secret:
            return "client_secret"
        if self.federated_token_file or self.federated_token:
            return "federated_token"
        if self.use_azure_cli:
            return "azure_cli"
        return None

    def resolved_authority_host(self) -> str:
        """The cloud's Entra login host, or the override once it is proven to be one (or an opted-in
        loopback sandbox host): the deploying identity's credential never goes anywhere else."""
        if self.authority_host:
            return validate_authority_host(self.authority_host, allow_loopback=self.allow_loopback)
        return cloud_authority_host(self.cloud)

    def authority(self, tenant_id: str | None = None) -> str:
        tenant = tenant_id or self.tenant_id or "organizations"
        return f"https://{self.resolved_authority_host()}/{tenant}"

    def describe(self) -> str:
        kind = self.credential_kind
        try:
            login = self.resolved_authority_host()
        except ValueError:
            login = "a refused authorityHost"
        where = f"tenant {self.tenant_id or '(not set)'} via {login} (cloud {self.cloud})"
        if kind == "certificate":
            return f"client certificate {self.certificate_path} for app {self.client_id}, {where}"
        if kind == "client_secret":
            return f"client secret for app {self.client_id}, {where}"
        if kind == "federated_token":
            source = f"file {self.federated_token_file}" if self.federated_token_file else "ARM_OIDC_TOKEN"
            return f"federated token ({source}) for app {self.client_id}, {where}"
        if kind == "azure_cli":
            return f"Azure CLI signed-in account, {where}"
        return "no deploying identity configured"


# --------------------------------------------------------------------------------------------
# Token providers


class TokenProvider(Protocol):
    def get_token(self, scope: str) -> str: ...

    def invalidate(self, scope: str) -> None: ...


_AADSTS_HINTS: dict[str, str] = {
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
}

_AADSTS_RE = re.compile(r"AADSTS\d+")


def _redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    # bearer tokens / JWTs never belong in a message
    return re.sub(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*", "***", text)


def authentication_error(result: Mapping[str, Any], what: str, secrets: tuple[str | None, ...] = ()) -> AuthenticationError:
    """An AuthenticationError from an msal error result (never carrying a secret)."""
    error = str(result.get("error") or "unknown_error")
    description = str(result.get("error_description") or "")
    match = _AADSTS_RE.search(description)
    code = match.group(0) if match else None
    if code is None and result.get("error_codes"):
        code = f"AADSTS{result['error_codes'][0]}"
    first_line = description.strip().splitlines()[0] if description.strip() else error
    first_line = _redact(first_line, secrets)[:400]
    hint = _AADSTS_HINTS.get(code or "")
    if hint is None and error == "invalid_client":
        hint = "Check the client id, the credential and the tenant"
    return AuthenticationError(f"{what}: {error}: {first_line}", code=code, error=error, hint=hint)


@dataclass
class _Cached:
    token: str
    expires_at: float  # time.time() based


class _CachingTokenProvider:
    """Per-scope cache with one lock per scope, so concurrent callers cause a single token request."""

    description = "token provider"

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._cache: dict[str, _Cached] = {}
        self.requests_made = 0  # how many times a token was fetched from the identity provider

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(scope, threading.Lock())

    def get_token(self, scope: str) -> str:
        with self._scope_lock(scope):
            cached = self._cache.get(scope)
            now = time.time()
            if cached is not None and now < cached.expires_at:
                return cached.token
            token, expires_on, lifetime = self._fetch(scope)
            self.requests_made += 1
            # renew a tenth of the lifetime (at most 5 min) before expiry, plus a second for the
            # whole-second `exp` claim and clock skew; never cache for less than half the lifetime
            lifetime = max(lifetime, 0.0)
            margin = min(lifetime / 2.0, min(_REFRESH_MARGIN_SECONDS, lifetime / 10.0) + 1.0)
            self._cache[scope] = _Cached(token, expires_on - margin)
            return token

    def invalidate(self, scope: str) -> None:
        with self._scope_lock(scope):
            cached = self._cache.pop(scope, None)
            if cached is not None:
                self._forget(scope, cached.token)

    def _fetch(self, scope: str) -> tuple[str, float, float]:
        """(token, expires_on epoch seconds, lifetime seconds)."""
        raise NotImplementedError

    def _forget(self, scope: str, token: str) -> None:
        """Drop `token` from any lower-level cache."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def _instance_discovery(authority: str) -> bool | None:
    host = authority.split("://", 1)[-1].split("/", 1)[0].lower()
    return None if host in _MICROSOFT_AUTHORITY_HOSTS else False


class _MsalTokenProvider(_CachingTokenProvider):
    """Tokens from an msal application (confidential client or ROPC public client)."""

    def __init__(
        self,
        authority: str,
        client_id: str,
        make_app: Callable[[], Any],
        acquire: Callable[[Any, list[str]], Mapping[str, Any]],
        *,
        what: str,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        super().__init__()
        self.authority = authority
        self.client_id = client_id
        self.description = what
        self._make_app = make_app
        self._acquire = acquire
        self._secrets = secrets
        self._app: Any = None
        self._app_lock = threading.Lock()

    def _application(self) -> Any:
        with self._app_lock:
            if self._app is None:
                try:
                    self._app = self._make_app()
                except AuthenticationError:
                    raise
                except Exception as exc:  # msal validates the authority eagerly
                    raise AuthenticationError(
                        f"{self.description}: cannot use authority {self.authority}: "
                        f"{_redact(str(exc), self._secrets)[:300]}",
                        hint="Check the tenant id, the cloud / authority host and (for a sandbox) the CA bundle",
                    ) from None
            return self._app

    def _fetch(self, scope: str) -> tuple[str, float, float]:
        app = self._application()
        asked_at = time.time()  # expiry counts from before the request: conservative
        try:
            result = self._acquire(app, [scope])
        except AuthenticationError:
            raise
        except Exception as exc:
            raise AuthenticationError(
                f"{self.description}: token request to {self.authority} failed: "
                f"{type(exc).__name__}: {_redact(str(exc), self._secrets)[:300]}",
                hint="Check network access to the authority host and the CA bundle",
            ) from None
        if not result or "access_token" not in result:
            raise authentication_error(result or {}, f"{self.description} for scope {scope}", self._secrets)
        lifetime = float(result.get("expires_in") or 0)
        return result["access_token"], asked_at + lifetime, lifetime

    def _forget(self, scope: str, token: str) -> None:
        app = self._app
        if app is None:
            return
        cache = app.token_cache
        try:
            for entry in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
                if entry.get("secret") == token:
                    cache.remove_at(entry)
        except Exception:  # noqa: BLE001 - best effort; our own cache entry is gone anyway
            log.debug("could not drop a refused token from the msal cache", exc_info=False)


def tls_verify(ca_bundle: str | None) -> str | bool:
    """What to verify TLS with: the configured CA bundle, else the one named by the environment, else certifi."""
    return ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def http_session(ca_bundle: str | None, url: str, *, retries: Any = 0, pool_maxsize: int = 10) -> Any:
    """A requests.Session that verifies TLS with `ca_bundle` whatever the environment says.

    trust_env is off (an environment CA bundle would silently replace ours, and a ~/.netrc entry
    would replace our Authorization header); proxies from the environment are applied explicitly.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    session.verify = tls_verify(ca_bundle)
    session.proxies = dict(requests.utils.get_environ_proxies(url))
    adapter = requests.adapters.HTTPAdapter(max_retries=retries, pool_connections=4, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _msal_http_client(authority: str, ca_bundle: str | None) -> Any:
    session = http_session(ca_bundle, authority, retries=1)
    send = functools.partial(session.request, timeout=30)
    netloc = authority.split("://", 1)[-1].split("/", 1)[0]
    host = netloc.rsplit(":", 1)[0] if ":" in netloc and not netloc.endswith("]") else netloc
    if host != netloc:
        # msal builds the user-realm URL from the authority's host without its port; an authority on a
        # non-default port (the sandbox) would send it to :443. Put the authority's port back.
        bare = f"https://{host}/"

        def send_with_port(method: str, url: str, **kwargs: Any) -> Any:
            if url.startswith(bare):
                url = f"https://{netloc}/" + url[len(bare):]
            return send(method, url, **kwargs)

        session.request = send_with_port  # type: ignore[method-assign]
    else:
        session.request = send  # type: ignore[method-assign]
    return session


def _confidential_app(authority: str, client_id: str, credential: Any, ca_bundle: str | None) -> Any:
    import msal  # local import: keeps provider modules free of import-time work

    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=authority,
        http_client=_msal_http_client(authority, ca_bundle),
        instance_discovery=_instance_discovery(authority),
    )


def _acquire_for_client(app: Any, scopes: list[str]) -> Mapping[str, Any]:
    return app.acquire_token_for_client(scopes)


def client_secret_tokens(
    authority: str, client_id: str, client_secret: str, *, ca_bundle: str | None = None
) -> TokenProvider:
    """Client-credentials tokens for an app with a secret (e.g. the lead-writer app)."""
    return _MsalTokenProvider(
        authority,
        client_id,
        lambda: _confidential_app(authority, client_id, client_secret, ca_bundle),
        _acquire_for_client,
        what=f"client secret of app {client_id}",
        secrets=(client_secret,),
    )


def password_tokens(
    authority: str,
    username: str,
    password: str,
    *,
    client_id: str = PUBLIC_CLIENT_ID,
    ca_bundle: str | None = None,
) -> TokenProvider:
    """Resource-owner password tokens for a user (the Office 365 lead writer path)."""

    def make_app() -> Any:
        import msal

        return msal.PublicClientApplication(
            client_id,
            authority=authority,
            http_client=_msal_http_client(authority, ca_bundle),
            instance_discovery=_instance_discovery(authority),
        )

    def acquire(app: Any, scopes: list[str]) -> Mapping[str, Any]:
        with warnings.catch_warnings():
            # Partner Center's Office 365 lead destination is a password sign-in by design.
            warnings.simplefilter("ignore", DeprecationWarning)
            return app.acquire_token_by_username_password(username, password, scopes)

    return _MsalTokenProvider(
        authority, client_id, make_app, acquire, what=f"password of user {username}", secrets=(password,)
    )


def _certificate_credential(path: str, password: str | None) -> dict[str, str]:
    """msal client_credential for a PEM file holding the private key and the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise AuthenticationError(
            f"cannot read the certificate file {path}: {exc.strerror}",
            hint="deployerCertificatePath must name a PEM file with the private key and the certificate",
        ) from None
    blocks = re.findall(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", data, re.S)
    key_match = re.search(rb"-----BEGIN ((?:ENCRYPTED |RSA |EC )?PRIVATE KEY)-----.*?-----END \1-----", data, re.S)
    cert_match = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", data, re.S)
    if key_match is None or cert_match is None:
        raise AuthenticationError(
            f"the certificate file {path} must contain a PEM private key and a PEM certificate "
            f"(found: {', '.join(b.decode() for b in blocks) or 'nothing in PEM form'})",
            hint="Concatenate the key and the certificate into one PEM file (PFX is not read)",
        )
    try:
        key = serialization.load_pem_private_key(
            key_match.group(0), password.encode() if password else None
        )
    except (TypeError, ValueError):
        raise AuthenticationError(
            f"cannot load the private key in {path}: wrong or missing certificate password, or not a key",
            hint="Set deployerCertificatePassword (ARM_CLIENT_CERTIFICATE_PASSWORD) if the key is encrypted",
        ) from None
    cert = x509.load_pem_x509_certificate(cert_match.group(0))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "private_key": key_pem,
        "thumbprint": cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - x5t is SHA-1 by definition
    }


class _AzureCliTokenProvider(_CachingTokenProvider):
    """Tokens from the Azure CLI's signed-in account (`az account get-access-token`)."""

    def __init__(self, tenant_id: str | None) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.description = "Azure CLI"

    def _fetch(self, scope: str) -> tuple[str, float, float]:
        az = shutil.which("az")
        if az is None:
            raise AuthenticationError(
                "the Azure CLI credential is configured but `az` is not on PATH",
                hint="Install the Azure CLI and run `az login`, or configure a client secret or certificate",
            )
        resource = scope.removesuffix("/.default")
        command = [az, "account", "get-access-token", "--resource", resource]
        if self.tenant_id:
            command += ["--tenant", self.tenant_id]
        command += ["-o", "json"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AuthenticationError(f"running the Azure CLI failed: {type(exc).__name__}",
                                      hint="Run `az login` in this terminal and retry") from None
        if done.returncode != 0:
            detail = _redact(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", ())[:300]
            match = _AADSTS_RE.search(done.stderr or "")
            code = match.group(0) if match else None
            raise AuthenticationError(
                f"`az account get-access-token` failed (exit {done.returncode}): {detail}",
                code=code,
                hint=_AADSTS_HINTS.get(code or "", "Run `az login` (with --tenant if needed) and retry"),
            )
        try:
            payload = json.loads(done.stdout)
            token = payload["accessToken"]
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError("the Azure CLI returned no access token",
                                      hint="Update the Azure CLI and run `az login`") from None
        now = time.time()
        if payload.get("expires_on") is not None:
            expires_on = float(payload["expires_on"])
        elif payload.get("expiresOn"):
            expires_on = datetime.fromisoformat(str(payload["expiresOn"])).timestamp()  # local time, as az prints
        else:
            expires_on = now + 300
        return token, expires_on, max(expires_on - now, 0.0)


_DEPLOYER_CACHE: dict[DeployerSettings, TokenProvider] = {}
_DEPLOYER_LOCK = threading.Lock()


def _federated_assertion(settings: DeployerSettings) -> Callable[[], str]:
    path = settings.federated_token_file
    fixed = settings.federated_token

    def read() -> str:  # read on every token request: workload identity rotates the file
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError as exc:
                raise AuthenticationError(f"cannot read the federated token file {path}: {exc.strerror}",
                                          hint="Check deployerFederatedTokenFile / AZURE_FEDERATED_TOKEN_FILE") from None
        return (fixed or "").strip()

    return read


def _build_deployer_tokens(settings: DeployerSettings) -> TokenProvider:
    kind = settings.credential_kind
    if kind is None:
        raise AuthenticationError(
            "no credential for the deploying identity is configured",
            hint="Set lead-destination:deployerClientId with deployerClientSecret or deployerCertificatePath "
            "(or ARM_CLIENT_ID + ARM_CLIENT_SECRET / ARM_CLIENT_CERTIFICATE_PATH / ARM_OIDC_TOKEN_FILE_PATH), "
            "or ARM_USE_CLI=true after `az login`",
        )
    if kind == "azure_cli":
        return _AzureCliTokenProvider(settings.tenant_id)
    if not settings.client_id or not settings.tenant_id:
        raise AuthenticationError(
            f"{kind.replace('_', ' ')} credential needs both a client id and a tenant id",
            hint="Set lead-destination:deployerClientId and deployerTenantId (or ARM_CLIENT_ID and ARM_TENANT_ID)",
        )
    authority = settings.authority()
    ca_bundle = settings.ca_bundle
    if kind == "client_secret":
        return client_secret_tokens(authority, settings.client_id, settings.client_secret or "", ca_bundle=ca_bundle)
    if kind == "certificate":
        path, password = settings.certificate_path or "", settings.certificate_password
        return _MsalTokenProvider(
            authority,
            settings.client_id,
            lambda: _confidential_app(authority, settings.client_id or "", _certificate_credential(path, password),
                                      ca_bundle),
            _acquire_for_client,
            what=f"client certificate of app {settings.client_id}",
            secrets=(password,),
        )
    assertion = _federated_assertion(settings)
    return _MsalTokenProvider(
        authority,
        settings.client_id,
        lambda: _confidential_app(authority, settings.client_id or "", {"client_assertion": assertion}, ca_bundle),
        _acquire_for_client,
        what=f"federated token of app {settings.client_id}",
        secrets=(settings.federated_token,),
    )


def deployer_tokens(settings: DeployerSettings) -> TokenProvider:
    """The process-wide token provider of the deploying identity (same object for equal settings)."""
    with _DEPLOYER_LOCK:
        provider = _DEPLOYER_CACHE.get(settings)
        if provider is None:
            provider = _build_deployer_tokens(settings)
            _DEPLOYER_CACHE[settings] = provider
        return provider
