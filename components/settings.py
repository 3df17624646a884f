"""Stack configuration of the program: the typed `Settings` the components are built from.

`parse_settings` reads raw config against the declaration of every key (dynamics_provider.config_schema)
and returns `Settings` or raises one `ConfigError` that lists every problem (key, value masked, expected
or what to do); nothing registers before. The cross-key rules (identity mode, solution source, secret
rotation) live here; the per-key rules come from the declaration.
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

from dynamics_provider.config_schema import (
    BY_KEY,
    CUSTOMER_ENGAGEMENT_PLAN_SKU_ID,
    DEFAULT_PRIVILEGES_PATH,
    DEFAULT_ROLE_NAME,
    ENTRA_MAX_SECRET_LIFETIME_DAYS,
    NAMESPACE,
)
from dynamics_provider.hosts import normalize_cloud, validate_authority_host, validate_instance_url

from .config_reader import UNSET, ConfigError, Problem, Reader
from .privileges_spec import read_privileges
from .stack_config import raw_stack_config, stack_secret_keys

__all__ = [
    "CRM_APP_ID", "CUSTOMER_ENGAGEMENT_PLAN_SKU_ID", "DEFAULT_PRIVILEGES_PATH", "DEFAULT_ROLE_NAME",
    "ENTRA_MAX_SECRET_LIFETIME_DAYS", "NAMESPACE", "USER_IMPERSONATION_SCOPE_ID", "ConfigError", "Problem",
    "Settings", "load_settings", "parse_settings",
]  # fmt: skip

PROJECT_DIR = Path(__file__).resolve().parent.parent
CRM_APP_ID = "00000007-0000-0000-c000-000000000000"
# Well-known id of Dynamics CRM's `user_impersonation` scope; used only when configured as fallback.
USER_IMPERSONATION_SCOPE_ID = "78ce3f0f-a1ce-49c2-8cde-64b5c0896db4"


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
    offer: str | dict[str, Any] | None
    cloud: str
    allow_loopback: bool

    @property
    def contact_email(self) -> str:
        """Contact emails the way Partner Center takes them: one `;`-separated string."""
        return ";".join(self.contact_emails)


def parse_settings(
    raw: Mapping[str, Any], *, project_dir: Path = PROJECT_DIR, secret_keys: frozenset[str] = frozenset()
) -> Settings:
    """Validate `raw` (keys without the namespace, values as the engine delivers them: mostly text).

    `secret_keys` names the keys the stack holds as secrets (`--secret`): their values are never shown,
    and a key declared secret that is not among them is refused (stored in plain text).
    """
    r = Reader(raw, project_dir, secret_keys)
    r.check_keys()

    # --- the deploying identity (read by the providers through configure(); checked here) ---
    cloud = _cloud(r)
    allow_loopback = r.value("allowLoopback")
    for key in ("deployerTenantId", "deployerClientId", "deployerClientSecret", "deployerCertificatePath",
                "deployerCertificatePassword", "deployerFederatedTokenFile", "caBundle", "deployerUseAzureCli",
                "requestTimeoutSeconds"):
        r.value(key)
    _authority_host(r, allow_loopback)
    endpoint = r.value("partnerCenterEndpoint")
    if endpoint is not None:
        parts = urlparse(endpoint)
        if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment:
            r.fail("partnerCenterEndpoint", endpoint, "an https URL without user info, query or fragment")

    # --- the Dynamics organization ---
    instance_url = r.required("instanceUrl", "the https URL of the Dynamics 365 organization, e.g. "
                                             "https://contoso.crm4.dynamics.com")
    if instance_url is not None:
        try:
            instance_url = validate_instance_url(instance_url, cloud=cloud, allow_loopback=allow_loopback)
        except ValueError as exc:
            reason = str(exc).split(" refused: ", 1)[-1]
            r.fail("instanceUrl", instance_url, f"a Dynamics 365 organization URL of the {cloud} cloud ({reason})")

    # --- the lead-writer identity ---
    authentication = r.value("authentication")
    application = _application(r)
    existing = _existing_application(r, authentication)
    office365 = _office365(r, authentication)
    mode = "office365" if authentication == "office365" else (
        "existingApplication" if r.object("existingApplication") else "azureAD")

    # --- the Dynamics side ---
    solution = _solution(r)
    privileges_path = r.value("privileges")
    privileges = read_privileges(r, privileges_path)
    contact_emails = _contact_emails(r)
    application_user = _application_user(r, contact_emails, mode)
    offer = _offer(r)
    role_name, business_unit, validate = r.value("roleName"), r.value("businessUnit"), r.value("validate")

    if r.problems:
        raise ConfigError(r.problems)
    assert instance_url is not None
    return Settings(
        instance_url=instance_url, authentication=authentication, mode=mode, application=application,
        existing_application=existing, office365=office365, solution=solution, role_name=role_name,
        privileges_path=privileges_path, privileges=privileges, business_unit=business_unit,
        contact_emails=contact_emails, validate=validate, application_user=application_user,
        offer=offer, cloud=cloud, allow_loopback=allow_loopback,
    )  # fmt: skip


def _cloud(r: Reader) -> str:
    value = r.get("cloud")
    if value in (UNSET, None, ""):
        return "public"
    try:
        return normalize_cloud(str(value))
    except ValueError:
        r.fail("cloud", value, f"one of {', '.join(BY_KEY['cloud'].choices)} (GCC is public)")
        return "public"


def _authority_host(r: Reader, allow_loopback: bool) -> None:
    host = r.value("authorityHost")
    if host is None:
        return
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", host):
        r.fail("authorityHost", host, "a host name with an optional port, e.g. login.microsoftonline.com")
        return
    try:
        validate_authority_host(host, allow_loopback=allow_loopback)
    except ValueError:
        r.fail("authorityHost", host, "an Entra login host (e.g. login.microsoftonline.us), or a loopback host "
                                      "with allowLoopback true (sandbox); unset, the cloud's login host is used")


def _application(r: Reader) -> ApplicationSettings:
    max_days = r.value("application.maxSecretLifetimeDays")
    lifetime = r.value("application.secretLifetimeDays", default=min(365, max_days))
    if lifetime > max_days:
        r.fail("application.secretLifetimeDays", lifetime, f"a whole number from 1 to {max_days} "
                                                           "(application.maxSecretLifetimeDays)")
        lifetime = max_days
    rotation = r.value("application.rotationDays", default=min(180, max(1, lifetime - 1)))
    if r.get("application.rotationDays") is not UNSET and rotation >= lifetime:
        r.fail("application.rotationDays", rotation, f"fewer days than secretLifetimeDays ({lifetime}), so a new "
                                                     "secret exists before the old one expires")
    uris_raw = r.get("application.redirectUris")
    uris_raw = list(BY_KEY["application.redirectUris"].default) if uris_raw is UNSET else uris_raw
    uris_raw = [uris_raw] if isinstance(uris_raw, str) else uris_raw
    uris: list[str] = []
    if not isinstance(uris_raw, list) or not uris_raw:
        r.fail("application.redirectUris", uris_raw, "a non-empty list of https URLs (Web platform)")
    else:
        for uri in uris_raw:
            parsed = urlparse(uri) if isinstance(uri, str) else None
            if parsed is not None and parsed.netloc and "@" not in parsed.netloc and not parsed.fragment and (
                    parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname == "localhost")):
                uris.append(uri)
            else:
                r.fail("application.redirectUris", uri, "https URLs (http only for localhost) without user info "
                                                        "or fragment, e.g. https://contosoapp1/auth")
    if r.object("application") and (r.object("existingApplication") or r.value("authentication") == "office365"):
        r.fail("application", r.object("application"), "unset: the stack has one lead-writer identity, and "
                                                        "existingApplication or office365 is set")
    return ApplicationSettings(
        display_name=r.value("application.displayName"), redirect_uris=tuple(uris), secret_lifetime_days=lifetime,
        max_secret_lifetime_days=max_days, rotation_days=rotation, admin_consent=r.value("application.adminConsent"),
        scope_id_fallback=r.value("application.scopeIdFallback"),
    )  # fmt: skip


def _existing_application(r: Reader, authentication: str) -> ExistingApplication | None:
    if r.object("existingApplication") is None:
        if r.value("existingApplicationSecret"):
            r.fail("existingApplication", UNSET, "{clientId, tenantId} when existingApplicationSecret is set")
        return None
    client_id = r.required("existingApplication.clientId", "the application (client) id of the existing app")
    tenant_id = r.required("existingApplication.tenantId", "the directory (tenant) id of the existing app")
    secret = r.required("existingApplicationSecret",
                        "its client secret, set with `pulumi config set --secret existingApplicationSecret`")
    if authentication != "azureAD":
        r.fail("authentication", authentication, "azureAD when existingApplication is set")
    if client_id and tenant_id and secret:
        return ExistingApplication(client_id=client_id, tenant_id=tenant_id, secret=secret)
    return None


def _office365(r: Reader, authentication: str) -> Office365Settings | None:
    if authentication != "office365":
        if r.object("office365") is not None:
            r.fail("office365", r.object("office365"), "unset unless authentication is office365")
        return None
    p = "office365."
    upn = r.required(p + "userPrincipalName", "the user principal name of the lead-writer user, e.g. "
                                              "leadwriter@contoso.onmicrosoft.com")
    return Office365Settings(
        user_principal_name=upn or "", display_name=r.value(p + "displayName"),
        usage_location=r.value(p + "usageLocation"), license_sku_id=r.value(p + "licenseSkuId"),
        rotation_days=r.value(p + "rotationDays"), password_length=r.value(p + "passwordLength"),
        sync_timeout_seconds=r.value(p + "syncTimeoutSeconds"),
    )  # fmt: skip


def _solution(r: Reader) -> SolutionSettings:
    p = "solution."
    path_given, url = r.get(p + "path") not in (UNSET, None, ""), r.value(p + "url")
    if path_given == (url is not None):
        r.fail("solution", r.object("solution") or UNSET,
               "exactly one of solution.path (a local zip) or solution.url (with solution.sha256)")
    path = r.value(p + "path") if path_given else None
    sha = r.value(p + "sha256")
    if url is not None:
        parts = urlparse(url)
        if parts.scheme != "https":
            r.fail(p + "url", url, "an https URL of the solution zip")
        elif parts.query or parts.fragment or "@" in parts.netloc:
            # a URL is stored in plain text in the stack state: no signed (SAS) URL, no credentials
            r.fail(p + "url", url, "a plain https URL without query or credentials (download signed URLs to "
                                   "solution.path instead; the URL is kept in plain text in the state)")
        if sha is None and not any(pr.key == p + "sha256" for pr in r.problems):
            r.fail(p + "sha256", UNSET, "the 64-hex-digit SHA-256 of the zip at solution.url")
    return SolutionSettings(
        path=path, url=url, sha256=sha.lower() if sha else None, allow_unmanaged=r.value(p + "allowUnmanaged"),
        import_timeout_seconds=r.value(p + "importTimeoutSeconds"),
    )  # fmt: skip


def _contact_emails(r: Reader) -> tuple[str, ...]:
    value = r.get("contactEmails")
    if value in (UNSET, None, ""):
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
            items = re.split(r"[;,]", text)
    if not isinstance(items, list):
        r.fail("contactEmails", value, "a list of email addresses, or one string separated by `;`")
        return ()
    emails = []
    for item in items:
        email = item.strip() if isinstance(item, str) else item
        if email == "":
            continue
        checked = r.value("contactEmails", email, default=None) if isinstance(email, str) else None
        if checked is None and not isinstance(email, str):
            r.fail("contactEmails", email, "email addresses such as leads@contoso.com")
        elif checked is not None:
            emails.append(checked)
    return tuple(emails)


def _application_user(r: Reader, contact_emails: tuple[str, ...], mode: str) -> ApplicationUserSettings:
    p = "applicationUser."
    email = r.value(p + "email")
    if email is None and r.get(p + "email") in (UNSET, None, ""):
        email = contact_emails[0] if contact_emails else None
        if email is None and mode != "office365":
            r.fail(p + "email", UNSET,
                   "the email of the Dynamics application user (Dynamics requires one), or set contactEmails")
    return ApplicationUserSettings(first_name=r.value(p + "firstName"), last_name=r.value(p + "lastName"),
                                   email=email)


def _offer(r: Reader) -> str | dict[str, Any] | None:
    value = r.get("offer")
    if isinstance(value, dict) or (isinstance(value, str) and value.strip().startswith("{")):
        offer = r.object("offer")
        if offer is None:
            return None
        offer_id = r.required("offer.id", "the Partner Center offer id (product external id)")
        if offer_id is None:
            return None
        schema = r.value("offer.schemaVersion")
        return {"id": offer_id, **({"schemaVersion": schema} if schema else {})}
    if value in (UNSET, None) or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        r.fail("offer", value, "an offer id, or {id, schemaVersion}")
        return None
    return value.strip()


def load_settings(project_dir: Path | None = None) -> Settings:
    """Settings of the running stack; relative paths resolve against the project directory."""
    raw = raw_stack_config()
    return parse_settings(raw, project_dir=project_dir or Path(os.getcwd()), secret_keys=stack_secret_keys(set(raw)))
