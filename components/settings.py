"""Stack configuration of the program: the `lead-destination:*` keys, their defaults and validation.

`parse_settings` turns raw config strings into a `Settings` value or raises one `ConfigError`
that lists every problem (key, value with secrets masked, expected); nothing registers before.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from dynamics_provider.base import EMAIL_RE as _EMAIL
from dynamics_provider.base import GUID_RE as _GUID
from dynamics_provider.hosts import validate_authority_host
from dynamics_provider.role_privileges import DEPTHS
from dynamics_provider.role_privileges import PRIVILEGE_NAME_RE as _PRIVILEGE

NAMESPACE = "lead-destination"
PROJECT_DIR = Path(__file__).resolve().parent.parent

CRM_APP_ID = "00000007-0000-0000-c000-000000000000"
# Well-known id of Dynamics CRM's `user_impersonation` scope; used only when configured as fallback.
USER_IMPERSONATION_SCOPE_ID = "78ce3f0f-a1ce-49c2-8cde-64b5c0896db4"
# DYN365_ENTERPRISE_PLAN1: "Dynamics 365 Customer Engagement Plan" (Microsoft's licensing service plan reference).
CUSTOMER_ENGAGEMENT_PLAN_SKU_ID = "ea126fc5-a19e-42e2-a731-da9d437bffcf"
DEFAULT_ROLE_NAME = "Microsoft Marketplace Lead Writer"
DEFAULT_PRIVILEGES_PATH = "components/privileges.yaml"
ENTRA_MAX_SECRET_LIFETIME_DAYS = 730

# Keys whose values are secrets: masked in every message.
SECRET_KEYS = frozenset({"existingApplicationSecret", "deployerClientSecret", "deployerCertificatePassword"})
# Any key (or nested field) whose name looks like a credential is masked too, so a secret set under a
# mistyped or misplaced key (`existingApplication.clientSecret`, `deployerClientSecert`) is never echoed.
_SECRET_NAME = re.compile(r"secret|secert|password|passwd|pwd|token|credential|key$", re.IGNORECASE)
_NOT_SECRET_NAMES = frozenset({"secretLifetimeDays", "maxSecretLifetimeDays", "deployerFederatedTokenFile"})

KNOWN_KEYS = frozenset(
    {
        "instanceUrl", "authentication", "application", "existingApplication", "existingApplicationSecret",
        "office365", "solution", "roleName", "privileges", "businessUnit", "contactEmails", "validate",
        "applicationUser", "offer",
        "deployerTenantId", "deployerClientId", "deployerClientSecret", "deployerCertificatePath",
        "deployerCertificatePassword", "deployerFederatedTokenFile", "deployerUseAzureCli", "cloud",
        "authorityHost", "caBundle", "allowLoopback", "partnerCenterEndpoint", "requestTimeoutSeconds",
    }
)  # fmt: skip

# The fields of the structured (object) keys.
NESTED_KEYS: dict[str, frozenset[str]] = {
    "application": frozenset({"displayName", "redirectUris", "secretLifetimeDays", "maxSecretLifetimeDays",
                              "rotationDays", "adminConsent", "scopeIdFallback"}),
    "existingApplication": frozenset({"clientId", "tenantId"}),
    "office365": frozenset({"userPrincipalName", "displayName", "usageLocation", "licenseSkuId", "rotationDays",
                            "passwordLength", "syncTimeoutSeconds"}),
    "solution": frozenset({"path", "url", "sha256", "allowUnmanaged", "importTimeoutSeconds"}),
    "applicationUser": frozenset({"firstName", "lastName", "email"}),
    "offer": frozenset({"id", "schemaVersion"}),
}  # fmt: skip

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
_UNSET = object()


@dataclass(frozen=True)
class Problem:
    key: str
    value: str
    expected: str

    def __str__(self) -> str:
        return f"{NAMESPACE}:{self.key} = {self.value}: expected {self.expected}"


class ConfigError(ValueError):
    """Every configuration problem of the stack, in one message."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid stack configuration ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class ApplicationSettings:
    display_name: str
    redirect_uris: tuple[str, ...]
    secret_lifetime_days: int
    max_secret_lifetime_days: int
    rotation_days: int
    admin_consent: bool
    scope_id_fallback: bool


@dataclass(frozen=True)
class ExistingApplication:
    client_id: str
    tenant_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Office365Settings:
    user_principal_name: str
    display_name: str
    usage_location: str
    license_sku_id: str
    rotation_days: int
    password_length: int
    sync_timeout_seconds: int


@dataclass(frozen=True)
class SolutionSettings:
    path: str | None
    url: str | None
    sha256: str | None
    allow_unmanaged: bool
    import_timeout_seconds: int


@dataclass(frozen=True)
class ApplicationUserSettings:
    first_name: str
    last_name: str
    email: str | None


@dataclass(frozen=True)
class Settings:
    instance_url: str
    authentication: str  # "azureAD" | "office365" (what Partner Center is told)
    mode: str  # "azureAD" (new app) | "existingApplication" | "office365"
    application: ApplicationSettings
    existing_application: ExistingApplication | None
    office365: Office365Settings | None
    solution: SolutionSettings
    role_name: str
    privileges_path: str
    privileges: tuple[tuple[str, str], ...]  # (name, depth)
    business_unit: str | None
    contact_emails: tuple[str, ...]
    validate: bool
    application_user: ApplicationUserSettings
    offer: Any
    cloud: str
    allow_loopback: bool

    @property
    def contact_email(self) -> str:
        """Contact emails the way Partner Center takes them: one `;`-separated string."""
        return ";".join(self.contact_emails)


class _Reader:
    """Reads and checks one raw config map, collecting problems instead of raising."""

    def __init__(self, raw: Mapping[str, Any], project_dir: Path, secret_keys: frozenset[str] = frozenset()):
        self.raw = raw
        self.project_dir = project_dir
        self.secret_keys = SECRET_KEYS | secret_keys
        self.problems: list[Problem] = []

    def show(self, key: str, value: Any) -> str:
        if value is _UNSET or value is None:
            return "<unset>"
        top = re.split(r"[.\[]", key)[0]
        if top in self.secret_keys or is_secret_name(key):
            return "[secret]"
        value = _mask_nested(value)
        if isinstance(value, str) and "?" in value and urlparse(value).scheme in ("http", "https"):
            value = value.split("?", 1)[0] + "?[query hidden]"  # a SAS or signed URL carries its token there
        text = value if isinstance(value, str) else json.dumps(value)
        text = text if len(text) <= 120 else text[:117] + "..."
        return repr(text) if isinstance(value, str) else text

    def fail(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(Problem(key, self.show(key, value), expected))

    # --- typed accessors: return the default (and record a problem) when the value is bad ---
    def obj(self, key: str) -> dict[str, Any] | None:
        value = self.raw.get(key, _UNSET)
        if value is _UNSET or value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                self.fail(key, value, "an object (YAML mapping / JSON object)")
                return None
        if not isinstance(value, dict):
            self.fail(key, value, "an object (YAML mapping / JSON object)")
            return None
        return value

    def string(self, key: str, value: Any, default: str | None = None, *, required: str | None = None) -> str | None:
        if value is _UNSET or value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.fail(key, _UNSET, required)
            return default
        if not isinstance(value, str):
            self.fail(key, value, required or "a string")
            return default
        return value.strip()

    def boolean(self, key: str, value: Any, default: bool) -> bool:
        if value is _UNSET or value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        self.fail(key, value, "true or false")
        return default

    def integer(self, key: str, value: Any, default: int, low: int, high: int) -> int:
        if value is _UNSET or value is None or value == "":
            return default
        try:
            if isinstance(value, bool):
                raise ValueError
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
            if number is None:
                raise ValueError
        except (TypeError, ValueError):
            self.fail(key, value, f"a whole number from {low} to {high}")
            return default
        if not low <= number <= high:
            self.fail(key, value, f"a whole number from {low} to {high}")
            return default
        return number

    def guid(self, key: str, value: Any, *, required: str | None = None) -> str | None:
        text = self.string(key, value, required=required)
        if text is not None and not _GUID.match(text):
            self.fail(key, value, "a GUID such as 00000000-0000-0000-0000-000000000000")
            return None
        return text.lower() if text else None

    def existing_file(self, key: str, value: Any) -> str | None:
        text = self.string(key, value)
        if text is None:
            return None
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.project_dir / path
        if not path.is_file():
            self.fail(key, value, f"the path of an existing file (looked at {path})")
            return None
        return str(path)


def is_secret_name(key: str) -> bool:
    """True for a config key or field name that looks like a credential (its value is never shown)."""
    return any(_SECRET_NAME.search(part) and part not in _NOT_SECRET_NAMES
               for part in re.split(r"[.\[\]]", key) if part)


def _mask_nested(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "[secret]" if is_secret_name(str(k)) else _mask_nested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_nested(v) for v in value]
    return value


def parse_settings(
    raw: Mapping[str, Any], *, project_dir: Path = PROJECT_DIR, secret_keys: frozenset[str] = frozenset()
) -> Settings:
    """Validate `raw` (keys without the namespace, values as the engine delivers them: strings).

    `secret_keys` names the keys the stack holds as secrets (`--secret`): their values are never shown.
    """
    r = _Reader(raw, project_dir, secret_keys)
    get = raw.get

    for key in sorted(set(raw) - KNOWN_KEYS):
        r.fail(key, get(key), f"no such key (known keys: {', '.join(sorted(KNOWN_KEYS))})")

    # --- deploying identity (read by the providers through configure(); checked here) ---
    cloud = _cloud(r, r.string("cloud", get("cloud", _UNSET), "public"))
    allow_loopback = r.boolean("allowLoopback", get("allowLoopback", _UNSET), False)
    for key in ("deployerTenantId", "deployerClientId"):
        r.guid(key, get(key, _UNSET))
    r.string("deployerClientSecret", get("deployerClientSecret", _UNSET))
    r.existing_file("deployerCertificatePath", get("deployerCertificatePath", _UNSET))
    r.existing_file("deployerFederatedTokenFile", get("deployerFederatedTokenFile", _UNSET))
    r.existing_file("caBundle", get("caBundle", _UNSET))
    r.boolean("deployerUseAzureCli", get("deployerUseAzureCli", _UNSET), False)
    authority_host = r.string("authorityHost", get("authorityHost", _UNSET))
    if authority_host is not None and not _HOST_PORT.match(authority_host):
        r.fail("authorityHost", authority_host, "a host name with an optional port, e.g. login.microsoftonline.com")
    elif authority_host is not None:
        try:
            validate_authority_host(authority_host, allow_loopback=bool(allow_loopback))
        except ValueError:
            r.fail("authorityHost", authority_host, "an Entra login host (e.g. login.microsoftonline.us), or a "
                   "loopback host with allowLoopback true (sandbox); unset, the cloud's login host is used")
    timeout = get("requestTimeoutSeconds", _UNSET)
    if timeout not in (_UNSET, None, ""):
        try:
            seconds = float(str(timeout).strip())
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 3600:
            r.fail("requestTimeoutSeconds", timeout, "a number of seconds, more than 0 and at most 3600 (default 60)")
    endpoint = r.string("partnerCenterEndpoint", get("partnerCenterEndpoint", _UNSET))
    if endpoint is not None and urlparse(endpoint).scheme != "https":
        r.fail("partnerCenterEndpoint", endpoint, "an https URL")

    # --- the Dynamics organization ---
    instance_url = r.string(
        "instanceUrl", get("instanceUrl", _UNSET),
        required="the https URL of the Dynamics 365 organization, e.g. https://contoso.crm4.dynamics.com",
    )  # fmt: skip
    if instance_url is not None:
        instance_url = _check_instance_url(r, instance_url, cloud, allow_loopback)

    # --- identity mode ---
    authentication = r.string("authentication", get("authentication", _UNSET), "azureAD")
    if authentication not in ("azureAD", "office365"):
        r.fail("authentication", authentication, "azureAD or office365")
        authentication = "azureAD"

    app_raw = r.obj("application") or {}
    _unknown(r, "application", app_raw)
    application = _application(r, app_raw)

    existing = None
    existing_raw = r.obj("existingApplication")
    secret_value = get("existingApplicationSecret", _UNSET)
    if existing_raw is not None:
        _unknown(r, "existingApplication", existing_raw)
        client_id = r.guid("existingApplication.clientId", existing_raw.get("clientId", _UNSET),
                           required="the application (client) id of the existing app registration")
        tenant_id = r.guid("existingApplication.tenantId", existing_raw.get("tenantId", _UNSET),
                           required="the directory (tenant) id of the existing app registration")
        secret = r.string("existingApplicationSecret", secret_value,
                          required="its client secret, set with `pulumi config set --secret existingApplicationSecret`")
        if authentication != "azureAD":
            r.fail("authentication", authentication, "azureAD when existingApplication is set")
        if app_raw:
            r.fail("application", app_raw, "unset when existingApplication is set (one identity per stack)")
        if client_id and tenant_id and secret:
            existing = ExistingApplication(client_id=client_id, tenant_id=tenant_id, secret=secret)
    elif secret_value is not _UNSET and secret_value not in (None, ""):
        r.fail("existingApplication", _UNSET, "{clientId, tenantId} when existingApplicationSecret is set")

    office365 = None
    o365_raw = r.obj("office365")
    if authentication == "office365":
        office365 = _office365(r, o365_raw or {})
        if app_raw:
            r.fail("application", app_raw, "unset when authentication is office365")
    elif o365_raw is not None:
        r.fail("office365", o365_raw, "unset unless authentication is office365")

    mode = "office365" if authentication == "office365" else ("existingApplication" if existing_raw else "azureAD")

    # --- Dynamics side ---
    solution = _solution(r, r.obj("solution"))
    role_name = r.string("roleName", get("roleName", _UNSET), DEFAULT_ROLE_NAME)
    privileges_path = r.string("privileges", get("privileges", _UNSET), DEFAULT_PRIVILEGES_PATH)
    privileges = _privileges(r, privileges_path)
    business_unit = r.string("businessUnit", get("businessUnit", _UNSET))
    contact_emails = _contact_emails(r, get("contactEmails", _UNSET))
    validate = r.boolean("validate", get("validate", _UNSET), True)

    user_raw = r.obj("applicationUser") or {}
    _unknown(r, "applicationUser", user_raw)
    user_email = r.string("applicationUser.email", user_raw.get("email", _UNSET))
    if user_email is not None and not _EMAIL.match(user_email):
        r.fail("applicationUser.email", user_email, "an email address")
    if user_email is None and contact_emails:
        user_email = contact_emails[0]
    if user_email is None and mode != "office365":
        r.fail("applicationUser.email", _UNSET,
               "the email of the Dynamics application user (Dynamics requires one), or set contactEmails")
    application_user = ApplicationUserSettings(
        first_name=r.string("applicationUser.firstName", user_raw.get("firstName", _UNSET), "Marketplace"),
        last_name=r.string("applicationUser.lastName", user_raw.get("lastName", _UNSET), "Lead Writer"),
        email=user_email,
    )

    offer = get("offer")
    if isinstance(offer, str) and offer.strip().startswith("{"):
        offer = r.obj("offer")
    if isinstance(offer, dict):
        _unknown(r, "offer", offer)
        if not isinstance(offer.get("id"), str) or not offer["id"].strip():
            r.fail("offer.id", offer.get("id", _UNSET), "the Partner Center offer id (product external id)")
    elif offer is not None and not (isinstance(offer, str) and offer.strip()):
        r.fail("offer", offer, "an offer id, or {id, schemaVersion}")
    elif isinstance(offer, str):
        offer = offer.strip() or None

    if r.problems:
        raise ConfigError(r.problems)
    return Settings(
        instance_url=instance_url, authentication=authentication, mode=mode, application=application,
        existing_application=existing, office365=office365, solution=solution, role_name=role_name,
        privileges_path=privileges_path, privileges=privileges, business_unit=business_unit,
        contact_emails=contact_emails, validate=validate, application_user=application_user, offer=offer,
        cloud=cloud, allow_loopback=allow_loopback,
    )  # fmt: skip


def _unknown(r: _Reader, prefix: str, value: dict[str, Any]) -> None:
    known = NESTED_KEYS[prefix]
    for key in sorted(set(value) - known):
        r.fail(f"{prefix}.{key}", value[key], f"no such key (known: {', '.join(sorted(known))})")


def _cloud(r: _Reader, value: str) -> str:
    from dynamics_provider.hosts import CLOUDS, normalize_cloud

    try:
        return normalize_cloud(value)
    except ValueError:
        r.fail("cloud", value, f"one of {', '.join(CLOUDS)} (GCC is public)")
        return "public"


def _check_instance_url(r: _Reader, url: str, cloud: str, allow_loopback: bool) -> str:
    from dynamics_provider.hosts import validate_instance_url

    try:
        checked = validate_instance_url(url, cloud=cloud, allow_loopback=allow_loopback)
    except ValueError as exc:
        r.fail("instanceUrl", url, f"a Dynamics 365 organization URL of the {cloud} cloud ({exc})")
        return url
    return checked if isinstance(checked, str) else url.rstrip("/")


def _application(r: _Reader, raw: dict[str, Any]) -> ApplicationSettings:
    p = "application."
    max_days = r.integer(p + "maxSecretLifetimeDays", raw.get("maxSecretLifetimeDays", _UNSET),
                         ENTRA_MAX_SECRET_LIFETIME_DAYS, 1, ENTRA_MAX_SECRET_LIFETIME_DAYS)
    lifetime = r.integer(p + "secretLifetimeDays", raw.get("secretLifetimeDays", _UNSET), min(365, max_days), 1, max_days)
    rotation = r.integer(p + "rotationDays", raw.get("rotationDays", _UNSET), min(180, max(1, lifetime - 1)), 1,
                         ENTRA_MAX_SECRET_LIFETIME_DAYS)
    if "rotationDays" in raw and rotation >= lifetime:
        r.fail(p + "rotationDays", raw["rotationDays"],
               f"fewer days than secretLifetimeDays ({lifetime}), so a new secret exists before the old one expires")
    uris_raw = raw.get("redirectUris", ["https://localhost/auth"])
    if isinstance(uris_raw, str):
        uris_raw = [uris_raw]
    uris: list[str] = []
    if not isinstance(uris_raw, list) or not uris_raw:
        r.fail(p + "redirectUris", uris_raw, "a non-empty list of https URLs (Web platform)")
    else:
        for uri in uris_raw:
            parsed = urlparse(uri) if isinstance(uri, str) else None
            web_ok = parsed is not None and parsed.netloc and (
                parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname == "localhost"))
            if not web_ok:
                r.fail(p + "redirectUris", uri, "https URLs (http only for localhost), e.g. https://contosoapp1/auth")
            else:
                uris.append(uri)
    return ApplicationSettings(
        display_name=r.string(p + "displayName", raw.get("displayName", _UNSET), "Marketplace Lead Writer"),
        redirect_uris=tuple(uris),
        secret_lifetime_days=lifetime,
        max_secret_lifetime_days=max_days,
        rotation_days=rotation,
        admin_consent=r.boolean(p + "adminConsent", raw.get("adminConsent", _UNSET), False),
        scope_id_fallback=r.boolean(p + "scopeIdFallback", raw.get("scopeIdFallback", _UNSET), False),
    )


def _office365(r: _Reader, raw: dict[str, Any]) -> Office365Settings:
    p = "office365."
    _unknown(r, "office365", raw)
    upn = r.string(p + "userPrincipalName", raw.get("userPrincipalName", _UNSET),
                   required="the user principal name of the lead-writer user, e.g. leadwriter@contoso.onmicrosoft.com")
    if upn is not None and not _EMAIL.match(upn):
        r.fail(p + "userPrincipalName", upn, "a user principal name such as leadwriter@contoso.onmicrosoft.com")
    location = r.string(p + "usageLocation", raw.get("usageLocation", _UNSET), "US")
    if not re.fullmatch(r"[A-Z]{2}", location or ""):
        r.fail(p + "usageLocation", location, "a two-letter ISO country code in capitals, e.g. US")
    sku = r.guid(p + "licenseSkuId", raw.get("licenseSkuId", _UNSET)) or CUSTOMER_ENGAGEMENT_PLAN_SKU_ID
    return Office365Settings(
        user_principal_name=upn or "",
        display_name=r.string(p + "displayName", raw.get("displayName", _UNSET), "Marketplace Lead Writer"),
        usage_location=location or "US",
        license_sku_id=sku,
        rotation_days=r.integer(p + "rotationDays", raw.get("rotationDays", _UNSET), 90, 1, 90),
        password_length=r.integer(p + "passwordLength", raw.get("passwordLength", _UNSET), 32, 16, 256),
        sync_timeout_seconds=r.integer(p + "syncTimeoutSeconds", raw.get("syncTimeoutSeconds", _UNSET), 1800, 1, 86400),
    )


def _solution(r: _Reader, raw: dict[str, Any] | None) -> SolutionSettings:
    p = "solution."
    raw = raw or {}
    _unknown(r, "solution", raw)
    path = raw.get("path")
    url = r.string(p + "url", raw.get("url", _UNSET))
    sha = r.string(p + "sha256", raw.get("sha256", _UNSET))
    if (path is None) == (url is None):
        r.fail("solution", raw or _UNSET, "exactly one of solution.path (a local zip) or solution.url (with solution.sha256)")
    if path is not None:
        path = r.existing_file(p + "path", path)
    if url is not None:
        parts = urlparse(url)
        if parts.scheme != "https":
            r.fail(p + "url", url, "an https URL of the solution zip")
        elif parts.query or parts.fragment or parts.username or parts.password:
            # a URL is stored in plain text in the stack state: no signed (SAS) URL, no credentials
            r.fail(p + "url", url, "a plain https URL without query or credentials (download signed URLs to "
                                   "solution.path instead; the URL is kept in plain text in the state)")
        if sha is None or not _SHA256.match(sha):
            r.fail(p + "sha256", sha, "the 64-hex-digit SHA-256 of the zip at solution.url")
    return SolutionSettings(
        path=path, url=url, sha256=sha.lower() if sha else None,
        allow_unmanaged=r.boolean(p + "allowUnmanaged", raw.get("allowUnmanaged", _UNSET), False),
        import_timeout_seconds=r.integer(p + "importTimeoutSeconds", raw.get("importTimeoutSeconds", _UNSET),
                                         1200, 30, 7200),
    )  # fmt: skip


def _privileges(r: _Reader, path_text: str) -> tuple[tuple[str, str], ...]:
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = r.project_dir / path
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        r.fail("privileges", path_text, f"the path of a privileges YAML spec (no file at {path})")
        return ()
    except yaml.YAMLError as exc:
        r.fail("privileges", path_text, f"valid YAML ({type(exc).__name__} in {path})")
        return ()
    items = doc.get("privileges") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        r.fail("privileges", path_text, "a YAML spec with a non-empty `privileges:` list of {name, depth}")
        return ()
    grants: dict[str, str] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        depth = item.get("depth") if isinstance(item, dict) else None
        if not isinstance(name, str) or not _PRIVILEGE.match(name):
            r.fail(f"privileges[{i}].name", name, "a privilege name such as prvReadAsyncOperation")
            continue
        if depth not in DEPTHS:
            r.fail(f"privileges[{i}].depth", depth, f"one of {', '.join(DEPTHS)}")
            continue
        if name in grants and grants[name] != depth:
            r.fail(f"privileges[{i}].name", name, "each privilege listed once")
        grants[name] = depth
    return tuple(sorted(grants.items()))


def _contact_emails(r: _Reader, value: Any) -> tuple[str, ...]:
    if value is _UNSET or value is None or value == "":
        return ()
    items: Any = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                items = None
        else:
            items = [part for part in re.split(r"[;,]", text)]
    if not isinstance(items, list):
        r.fail("contactEmails", value, "a list of email addresses, or one string separated by `;`")
        return ()
    emails = []
    for item in items:
        email = item.strip() if isinstance(item, str) else item
        if email == "":
            continue
        if not isinstance(email, str) or not _EMAIL.match(email):
            r.fail("contactEmails", email, "email addresses such as leads@contoso.com")
        else:
            emails.append(email)
    return tuple(emails)


def raw_stack_config() -> dict[str, Any]:
    """The `lead-destination:*` keys of the running stack (engine or mocks), namespace stripped."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = NAMESPACE + ":"
    return {
        key[len(prefix):]: runtime_config.get_config(key)
        for key in sorted(keys)
        if key.startswith(prefix)
    }  # fmt: skip


def stack_secret_keys() -> frozenset[str]:
    """The `lead-destination:*` keys the running stack holds as secrets, namespace stripped."""
    from pulumi.runtime import config as runtime_config

    prefix = NAMESPACE + ":"
    keys = set(runtime_config._SECRET_KEYS.get() or ()) | set(runtime_config.get_config_secret_keys_env())
    return frozenset(k[len(prefix):] for k in keys if k.startswith(prefix))


def load_settings(project_dir: Path | None = None) -> Settings:
    """Settings of the running stack; relative paths resolve against the project directory."""
    return parse_settings(raw_stack_config(), project_dir=project_dir or Path(os.getcwd()),
                          secret_keys=stack_secret_keys())
