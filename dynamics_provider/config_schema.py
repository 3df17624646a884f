"""The one declaration of every setting of a lead-destination stack: key, type, default, bounds, secret,
sources (stack config, `azuread:*` config, environment) and the provider inputs it feeds.

The program validates the stack config from it (components/settings), the providers read the deploying
identity's settings from it (`read_deployer`), and Pulumi.yaml's `config:` block and the key tables of
docs/configuration.md are generated from it (`python -m tools.config_reference --write`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import LeadDestinationError
from .formats import GUID_RE
from .masking import quote

NAMESPACE = "lead-destination"

ENTRA_MAX_SECRET_LIFETIME_DAYS = 730
CUSTOMER_ENGAGEMENT_PLAN_SKU_ID = "ea126fc5-a19e-42e2-a731-da9d437bffcf"  # DYN365_ENTERPRISE_PLAN1
DEFAULT_ROLE_NAME = "Microsoft Marketplace Lead Writer"
DEFAULT_PRIVILEGES_PATH = "components/privileges.yaml"
CLOUDS = ("public", "usgovernment", "dod", "china")

GROUPS = {
    "organization": "The organization and what goes into it",
    "identity": "The lead-writer identity (what Partner Center signs in as)",
    "deployer": "The deploying identity (who runs `pulumi up`)",
}


@dataclass(frozen=True)
class Setting:
    """One setting. `key` is its path under the namespace (`solution.url`); None for a source that has
    no stack key of ours (read from `azuread:*` config or the environment only)."""

    key: str | None
    type: str  # string | integer | boolean | list | object | text-or-list | text-or-object
    description: str
    default: Any = None  # what the program uses when the setting is unset (None: nothing)
    default_doc: str | None = None  # the default as the docs state it, when it is computed
    required: str | None = None  # "always", or the condition under which it is required
    bounds: tuple[int, int] | None = None  # inclusive, for integers
    choices: tuple[str, ...] = ()
    format: str | None = None  # guid | url | host | email | path | sha256 | country | privilege-spec
    secret: bool = False
    azuread: tuple[str, ...] = ()  # `azuread:*` config keys read when the stack key is unset
    env: tuple[str, ...] = ()  # environment variables read after that
    field: str | None = None  # the DeployerSettings field it fills (read by the providers)
    group: str = "organization"
    feeds: tuple[str, ...] = ()  # provider inputs it becomes, "SolutionImport.allow_unmanaged"

    @property
    def full_key(self) -> str:
        return f"{NAMESPACE}:{self.key}"

    @property
    def url_valued(self) -> bool:
        """Its values are URLs or hosts: their user info and query are never shown."""
        return self.format in ("url", "host")

    @property
    def parent(self) -> str | None:
        return self.key.split(".", 1)[0] if self.key and "." in self.key else None

    def show(self, value: Any) -> str:
        """`value` of this setting as a message may quote it."""
        return quote(value, secret=self.secret, url=self.url_valued)

    def how_to_set(self, example: str | None = None) -> str:
        """The command that sets it, e.g. `pulumi config set --path solution.allowUnmanaged true`."""
        if self.secret:
            return f"pulumi config set --secret {self.key}"
        path = " --path" if self.parent else ""
        return f"pulumi config set{path} {self.key} {example or '<value>'}".rstrip()


_S = Setting
SETTINGS: tuple[Setting, ...] = (
    # --- the organization and what goes into it -----------------------------------------------------
    _S("instanceUrl", "string", "The Dynamics 365 organization, `https://<org>.crm[N].dynamics.com` (or the "
       "sovereign host of `cloud`): https, a Dynamics host of the configured cloud, no path.",
       required="always", format="url",
       feeds=("SolutionImport.instance_url", "ApplicationUser.instance_url", "SecurityRoleAssignment.instance_url",
              "RolePrivileges.instance_url", "LeadWriteCheck.instance_url", "OfferLeadDestination.instance_url")),
    _S("solution", "object", "The lead-writer solution to import: exactly one of `solution.path` or `solution.url`.",
       required="always"),
    _S("solution.path", "string", "Local managed solution zip (relative to the project).", format="path",
       feeds=("SolutionImport.source_path",)),
    _S("solution.url", "string", "https download of the zip, with `solution.sha256`. A plain URL only: it is kept "
       "in plain text in the state, so no signed (SAS) URL: download such a zip and use `solution.path`.",
       format="url", feeds=("SolutionImport.source_url",)),
    _S("solution.sha256", "string", "The 64-hex-digit SHA-256 of the zip at `solution.url`.", format="sha256",
       required="with solution.url", feeds=("SolutionImport.sha256",)),
    _S("solution.allowUnmanaged", "boolean", "Accept an unmanaged solution zip.", default=False,
       feeds=("SolutionImport.allow_unmanaged",)),
    _S("solution.importTimeoutSeconds", "integer", "Bound on the asynchronous import.", default=1200,
       bounds=(30, 7200), feeds=("SolutionImport.import_timeout_seconds",)),
    _S("roleName", "string", "The security role the lead writer gets (created by the lead-writer solution).",
       default=DEFAULT_ROLE_NAME, feeds=("SecurityRoleAssignment.role_name", "RolePrivileges.role_name")),
    _S("privileges", "string", "YAML spec of the privileges granted to that role, `privileges: [{name, depth}]`, "
       "depth `Basic`/`Local`/`Deep`/`Global` (relative to the project). The default holds the procedure's grants: "
       "Create/Read/Write `UserEntityUISettings` at Basic, Read/Write/AppendTo `AsyncOperation` at Global.",
       default=DEFAULT_PRIVILEGES_PATH, format="privilege-spec", feeds=("RolePrivileges.privileges",)),
    _S("businessUnit", "string", "Business unit (name or id) of the application user.", default_doc="root BU",
       feeds=("ApplicationUser.business_unit",)),
    _S("applicationUser", "object", "The Dynamics application user of the lead writer."),
    _S("applicationUser.firstName", "string", "First name of the Dynamics application user.", default="Marketplace",
       feeds=("ApplicationUser.first_name",)),
    _S("applicationUser.lastName", "string", "Last name of the Dynamics application user.", default="Lead Writer",
       feeds=("ApplicationUser.last_name",)),
    _S("applicationUser.email", "string", "Dynamics requires an email for application users: this one or "
       "`contactEmails` must be set (not needed in `office365` mode).", default_doc="first `contactEmails`",
       format="email", feeds=("ApplicationUser.email",)),
    _S("contactEmails", "text-or-list", "Notification addresses Partner Center shows, a list or one `;`-separated "
       "string; exported as `partnerCenter.contactEmail` (`a@x.com;b@x.com`).", default_doc="none", format="email",
       feeds=("OfferLeadDestination.contact_emails",)),
    _S("validate", "boolean", "After each credential change, sign in as the lead writer and write (then delete) a "
       "test lead (`LeadWriteCheck`).", default=True),
    _S("offer", "text-or-object", "Marketplace offer whose lead destination the stack sets through the Product "
       "Ingestion API (`OfferLeadDestination`): its id, or `{id, schemaVersion}`. Without it, copy the "
       "`partnerCenter` output into Partner Center.", default_doc="none", feeds=("OfferLeadDestination.offer_id",)),
    _S("offer.id", "string", "The offer id (the product's external id in Partner Center).",
       required="in the object form of offer", feeds=("OfferLeadDestination.offer_id",)),
    _S("offer.schemaVersion", "string", "The `customer-leads` schema version.", default_doc="the provider's default",
       feeds=("OfferLeadDestination.schema_version",)),
    # --- the lead-writer identity ----------------------------------------------------------------------
    _S("authentication", "string", "How Partner Center signs in to write leads: `azureAD` (an Entra app; "
       "recommended) or `office365` (a licensed user).", default="azureAD", choices=("azureAD", "office365"),
       group="identity", feeds=("OfferLeadDestination.authentication",)),
    _S("application", "object", "A new Entra app registration (`azureAD` mode).", group="identity"),
    _S("application.displayName", "string", "The new app registration's name.", default="Marketplace Lead Writer",
       group="identity"),
    _S("application.redirectUris", "list", "Web redirect URIs (https; http only for localhost).",
       default=("https://localhost/auth",), format="url", group="identity"),
    _S("application.secretLifetimeDays", "integer", "Client secret lifetime; at most `maxSecretLifetimeDays`.",
       default=365, bounds=(1, ENTRA_MAX_SECRET_LIFETIME_DAYS), group="identity"),
    _S("application.maxSecretLifetimeDays", "integer", "Entra's limit is 730 days; lower it to your tenant's "
       "policy.", default=ENTRA_MAX_SECRET_LIFETIME_DAYS, bounds=(1, ENTRA_MAX_SECRET_LIFETIME_DAYS),
       group="identity"),
    _S("application.rotationDays", "integer", "A new secret on the first `pulumi up` after each period; fewer "
       "than `secretLifetimeDays`.", default=180, bounds=(1, ENTRA_MAX_SECRET_LIFETIME_DAYS), group="identity"),
    _S("application.adminConsent", "boolean", "Grant tenant-wide consent to Dynamics CRM `user_impersonation`.",
       default=False, group="identity"),
    _S("application.scopeIdFallback", "boolean", "If the tenant's Dynamics CRM service principal does not expose "
       "`user_impersonation`, use its well-known id `78ce3f0f-a1ce-49c2-8cde-64b5c0896db4` instead of failing.",
       default=False, group="identity"),
    _S("existingApplication", "object", "An app registration you already have, instead of creating one (no Entra "
       "resources are created).", group="identity"),
    _S("existingApplication.clientId", "string", "Its application (client) id.", format="guid",
       required="with existingApplication", group="identity",
       feeds=("ApplicationUser.application_id", "LeadWriteCheck.client_id", "OfferLeadDestination.application_id")),
    _S("existingApplication.tenantId", "string", "Its directory (tenant) id.", format="guid",
       required="with existingApplication", group="identity",
       feeds=("LeadWriteCheck.tenant_id", "OfferLeadDestination.directory_id")),
    _S("existingApplicationSecret", "string", "Client secret of the app in `existingApplication`. You rotate it; "
       "setting a new value re-runs the validation.", required="with existingApplication", secret=True,
       group="identity", feeds=("LeadWriteCheck.client_secret", "OfferLeadDestination.application_key")),
    _S("office365", "object", "A licensed Office 365 user as the lead writer (`office365` mode).", group="identity"),
    _S("office365.userPrincipalName", "string", "The lead-writer user, e.g. leads@contoso.onmicrosoft.com.",
       format="email", required="in office365 mode", group="identity"),
    _S("office365.displayName", "string", "The user's display name.", default="Marketplace Lead Writer",
       group="identity"),
    _S("office365.usageLocation", "string", "Two-letter country in capitals; needed for licence assignment.",
       default="US", format="country", group="identity"),
    _S("office365.licenseSkuId", "string", "`DYN365_ENTERPRISE_PLAN1`, Dynamics 365 Customer Engagement Plan. Use "
       "your tenant's sku if different (`Get-MgSubscribedSku`).", default=CUSTOMER_ENGAGEMENT_PLAN_SKU_ID,
       format="guid", group="identity"),
    _S("office365.rotationDays", "integer", "The procedure requires a new password every 90 days.", default=90,
       bounds=(1, 90), group="identity"),
    _S("office365.passwordLength", "integer", "Length of the generated password.", default=32, bounds=(16, 256),
       group="identity"),
    _S("office365.syncTimeoutSeconds", "integer", "How long to wait for licence sync to create the user in Dynamics.",
       default=1800, bounds=(1, 86400), group="identity", feeds=("SyncedUser.timeout_seconds",)),
    # --- the deploying identity: read by the providers through configure(), validated by the program ---
    _S("deployerTenantId", "string", "Tenant id of the deploying identity.", format="guid", group="deployer",
       azuread=("azuread:tenantId",), env=("ARM_TENANT_ID", "AZURE_TENANT_ID"), field="tenant_id"),
    _S("deployerClientId", "string", "Client id of the deploying identity.", format="guid", group="deployer",
       azuread=("azuread:clientId",), env=("ARM_CLIENT_ID", "AZURE_CLIENT_ID"), field="client_id"),
    _S("deployerClientSecret", "string", "Client secret of the deploying identity.", secret=True, group="deployer",
       azuread=("azuread:clientSecret",), env=("ARM_CLIENT_SECRET", "AZURE_CLIENT_SECRET"), field="client_secret"),
    _S("deployerCertificatePath", "string", "PEM file with the private key and the certificate of the deploying "
       "identity, or a PFX (PKCS#12) file; wins over a client secret.", format="path", group="deployer",
       azuread=("azuread:clientCertificatePath",),
       env=("ARM_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PATH"), field="certificate_path"),
    _S("deployerCertificatePassword", "string", "Password of that certificate's key or PFX, if it has one.",
       secret=True, group="deployer", azuread=("azuread:clientCertificatePassword",),
       env=("ARM_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_CERTIFICATE_PASSWORD"), field="certificate_password"),
    _S("deployerFederatedTokenFile", "string", "File holding a federated (OIDC) token of the deploying identity, "
       "e.g. in CI.", format="path", group="deployer", azuread=("azuread:oidcTokenFilePath",),
       env=("ARM_OIDC_TOKEN_FILE_PATH", "AZURE_FEDERATED_TOKEN_FILE"), field="federated_token_file"),
    _S(None, "string", "A federated token's value (no stack key: it is short-lived).", secret=True, group="deployer",
       azuread=("azuread:oidcToken",), env=("ARM_OIDC_TOKEN",), field="federated_token"),
    _S("deployerUseAzureCli", "boolean", "Use the Azure CLI's signed-in account as the deploying identity (people "
       "at a terminal).", default=False, group="deployer", azuread=("azuread:useCli",), env=("ARM_USE_CLI",),
       field="use_azure_cli"),
    _S("cloud", "string", "Cloud of the organization (GCC is `public`).", default="public", choices=CLOUDS,
       group="deployer", azuread=("azuread:environment",), env=("ARM_ENVIRONMENT",), field="cloud"),
    _S("authorityHost", "string", "Override of the Entra login host, such as `login.microsoftonline.us`, or a "
       "loopback host with `allowLoopback` (the sandbox); anything else is refused before a credential is sent.",
       default_doc="the cloud's", format="host", group="deployer", env=("LEAD_DESTINATION_AUTHORITY_HOST",),
       field="authority_host"),
    _S("caBundle", "string", "Extra CA bundle (PEM) for TLS verification; the sandbox's is .sandbox/ca.pem. "
       "Verification is always on.", format="path", group="deployer", env=("LEAD_DESTINATION_CA_BUNDLE",),
       field="ca_bundle"),
    _S("allowLoopback", "boolean", "Sandbox only: accept loopback instance URLs (https://127.0.0.1:PORT/orgs/NAME) "
       "and authority hosts.", default=False, group="deployer", env=("LEAD_DESTINATION_ALLOW_LOOPBACK",),
       field="allow_loopback"),
    _S("partnerCenterEndpoint", "string", "Override of the Partner Center Product Ingestion API base URL (the "
       "sandbox's emulator).", default_doc="Microsoft Graph's", format="url", group="deployer",
       env=("LEAD_DESTINATION_PARTNER_CENTER_ENDPOINT",), field="partner_center_endpoint"),
    _S("requestTimeoutSeconds", "integer", "Seconds the Dynamics providers wait for one Web API answer; a write "
       "with no answer in time is looked up, never replayed blindly.", default=60, bounds=(1, 3600),
       group="deployer", env=("LEAD_DESTINATION_REQUEST_TIMEOUT_SECONDS",), field="request_timeout_seconds"),
)  # fmt: skip

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS if s.key}
TOP_LEVEL: tuple[str, ...] = tuple(k for k in BY_KEY if "." not in k)
DEPLOYER: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.field)


def fields_of(parent: str) -> tuple[str, ...]:
    """The field names of an object setting (`solution` -> path, url, …)."""
    return tuple(k.split(".", 1)[1] for k in BY_KEY if k.startswith(parent + "."))


def closest(key: str, known: tuple[str, ...] | list[str]) -> str | None:
    """The known key a mistyped `key` most likely meant (case, typos, snake case, a prefix or suffix
    too many or too few), or None when nothing is close."""
    lowered = {k.lower(): k for k in known}
    typed = key.lower().replace("_", "").replace("-", "")
    if typed in lowered:
        return lowered[typed]
    match = difflib.get_close_matches(typed, list(lowered), n=1, cutoff=0.6)
    if match:
        return lowered[match[0]]

    def shared(a: str, b: str) -> int:
        prefix = len(os.path.commonprefix([a, b]))
        suffix = len(os.path.commonprefix([a[::-1], b[::-1]]))
        whole = len(b) if a.startswith(b) or a.endswith(b) else 0  # `offerId` holds the field `id`
        return max(prefix, suffix, whole * 3)

    score, best = max(((shared(typed, k), k) for k in lowered), default=(0, ""))
    return lowered[best] if score >= 6 else None


def unknown_key_message(key: str, known: tuple[str, ...] | list[str], prefix: str = "") -> str:
    """What to say about a key the program does not know. Its value is never shown: it could be anything."""
    guess = closest(key.rsplit(".", 1)[-1], known)
    hint = f"did you mean {prefix}{guess}?" if guess else "see docs/configuration.md for the keys"
    return f"unknown key, its value is not shown; {hint}"


def setting_for_input(resource: str, name: str) -> Setting | None:
    """The setting a user types that feeds input `name` of `resource` (for hints), or None."""
    wanted = f"{resource}.{name}"
    return next((s for s in SETTINGS if wanted in s.feeds and s.key), None)


def hint_for_input(resource: str, name: str, example: str | None = None) -> str:
    """`solution.allowUnmanaged (pulumi config set --path solution.allowUnmanaged true)`, or the input name."""
    setting = setting_for_input(resource, name)
    if setting is None:
        return f"the {name} input"
    return f"{setting.key} (`{setting.how_to_set(example)}`)"


# ---------------------------------------------------------------------------------------------
# values: one reading of a raw value per type, shared by the program and the providers

TRUE = frozenset({"true", "1", "t"})
FALSE = frozenset({"false", "0", "f"})


class SettingValueError(LeadDestinationError, ValueError):
    """A value a setting cannot take; the message names the setting (and the source it came from) and
    what it expects, and quotes the value through `quote` (so a secret or URL credentials never show)."""


def expected(setting: Setting) -> str:
    """What a value of `setting` must be, for messages."""
    if setting.choices:
        return "one of " + ", ".join(setting.choices)
    if setting.type == "boolean":
        return "true or false"
    if setting.type == "integer" and setting.bounds:
        return f"a whole number from {setting.bounds[0]} to {setting.bounds[1]}"
    if setting.format == "guid":
        return "a GUID such as 00000000-0000-0000-0000-000000000000"
    return "a string" if setting.type == "string" else setting.type


def parse_scalar(setting: Setting, value: Any, *, check_format: bool = True) -> Any:
    """`value` (as the engine delivers it: mostly text) read as `setting`'s type; SettingValueError if it
    cannot be. Empty text counts as unset (None). `check_format=False` reads the type only (a GUID
    setting then also takes what else Entra accepts in its place, such as a tenant's domain name)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    fail = SettingValueError(f"{setting.key or setting.field} = {setting.show(value)}: expected {expected(setting)}")
    if setting.type == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE or text in FALSE:
            return text in TRUE
        raise fail
    if setting.type == "integer":
        if isinstance(value, bool):
            raise fail
        try:
            number = float(str(value).strip())
        except ValueError:
            raise fail from None
        if not number.is_integer():
            raise fail
        low, high = setting.bounds or (-(2**63), 2**63)
        if not low <= number <= high:
            raise fail
        return int(number)
    if not isinstance(value, str):
        raise fail
    text = value if setting.secret else value.strip()
    if setting.choices:
        match = next((c for c in setting.choices if c.lower() == text.lower()), None)
        if match is None:
            raise fail
        return match
    if setting.format == "guid" and check_format:
        if not GUID_RE.match(text):
            raise fail
        return text.lower()
    return text


def read_deployer(config: Callable[[str], Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The DeployerSettings fields from their sources, first hit wins: our stack key, then the `azuread:*`
    keys, then the environment variables, as each setting declares. Raises SettingValueError (naming the
    source, never showing a secret) for a value that cannot be read. Formats are the program's to check
    (before anything registers); here only types are read, so `azuread:*` and `ARM_*` values that
    pulumi-azuread accepts are accepted too."""
    values: dict[str, Any] = {}
    for setting in DEPLOYER:
        sources = ([setting.full_key] if setting.key else []) + list(setting.azuread)
        found: tuple[str, Any] | None = None
        for key in sources:
            value = config(key)
            if value is not None and str(value).strip() != "":
                found = (key, value)
                break
        if found is None:
            for name in setting.env:
                value = environ.get(name)
                if value is not None and value.strip() != "":
                    found = (name, value)
                    break
        if found is None:
            continue
        source, value = found
        if setting.field == "cloud":
            value = _cloud_alias(value, source)
        try:
            parsed = parse_scalar(setting, value, check_format=False)
        except SettingValueError as exc:
            raise SettingValueError(f"{source}: {exc}") from None
        if parsed is not None:
            values[setting.field or ""] = parsed
    return values


def _cloud_alias(value: Any, source: str) -> str:
    from .hosts import normalize_cloud

    try:
        return normalize_cloud(str(value))
    except ValueError:
        raise SettingValueError(f"{source} = {quote(value)}: expected one of {', '.join(CLOUDS)} (GCC is public)") \
            from None


def stack_config(get: Callable[[str], Any]) -> dict[str, str]:
    """The stack config the providers read (our deploying-identity keys and their `azuread:*` fallbacks),
    through Pulumi's public `Config.get`, as text keyed by full key."""
    config: dict[str, str] = {}
    for setting in DEPLOYER:
        for key in ([setting.full_key] if setting.key else []) + list(setting.azuread):
            value = get(key)
            if isinstance(value, bool):
                value = "true" if value else "false"
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                config[key] = str(value)
    return config
