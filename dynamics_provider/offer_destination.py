"""OfferLeadDestination: a marketplace offer's lead destination (Dynamics 365) set through Partner
Center's Product Ingestion API (`partner_center`): the offer's product found by its id, drift read
from the draft resource tree, the masked secret tracked by a salted hash of our input.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    UpdateResult,
)

from dynamics_provider.auth import DeployerSettings
from dynamics_provider.base import (
    ProviderBase,
    ResourceOperationError,
    clean,
    ensure_stderr_logging,
    is_unknown,
    tell,
)
from dynamics_provider.errors import LeadDestinationError, PartnerCenterError
from dynamics_provider.formats import EMAIL_RE, GUID_RE
from dynamics_provider.partner_center import (
    AZURE_AD_FIELDS,
    COMPARED_FIELDS,
    OFFICE365_FIELDS,
    ProductIngestion,
    contact_list,
    customer_leads,
    field,
    no_lead_destination,
    observed_fields,
    partner_center_client,
    redact,
)

DEFAULT_SCHEMA_VERSION = "2022-03-01-preview2"
JOB_TIMEOUT_SECONDS = 600.0
HASH_ITERATIONS = 100_000

OFFER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
SCHEMA_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:-preview\d+)?$")
AUTHENTICATIONS = ("azureAD", "office365")
SECRET_INPUTS = ("application_key", "password")


def secret_hash(value: str, salt: str | None = None) -> str:
    """`pbkdf2-sha256$<iterations>$<salt>$<hex>`: proves a secret unchanged without storing it."""
    salt = salt or _secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", value.encode(), bytes.fromhex(salt), HASH_ITERATIONS).hex()
    return f"pbkdf2-sha256${HASH_ITERATIONS}${salt}${digest}"


def secret_matches(value: str | None, recorded: str | None) -> bool:
    if not value or not recorded:
        return not value and not recorded
    try:
        scheme, iterations, salt, digest = recorded.split("$")
        expected = hashlib.pbkdf2_hmac("sha256", value.encode(), bytes.fromhex(salt), int(iterations)).hex()
    except (ValueError, TypeError):
        return False
    return scheme == "pbkdf2-sha256" and hmac.compare_digest(expected, digest)


def secret_of(props: Mapping[str, Any]) -> str | None:
    key = "application_key" if props.get("authentication") == "azureAD" else "password"
    return props.get(key) or None


# ---------------------------------------------------------------------------------------------
# the provider


class OfferLeadDestinationProvider(ProviderBase):
    resource_type = "OfferLeadDestination"
    replace_keys = ("offer_id",)
    secret_keys = SECRET_INPUTS

    def __init__(self, job_timeout_seconds: float = JOB_TIMEOUT_SECONDS) -> None:
        super().__init__()
        self.job_timeout_seconds = float(job_timeout_seconds)

    # -- helpers -------------------------------------------------------------------------------

    def _api(self, version: str) -> ProductIngestion:
        ensure_stderr_logging()
        return ProductIngestion(partner_center_client(self.settings), version)

    @contextmanager
    def _op(self, op: str, props: Mapping[str, Any]) -> Iterator[None]:
        """Partner Center wording for failures; the secret never reaches the message."""
        subject = f"offer {props.get('offer_id')!r}"
        secret_values = [props.get(k) for k in SECRET_INPUTS]
        try:
            with self.operation(op, subject):
                try:
                    yield
                except PartnerCenterError as exc:
                    raise LeadDestinationError(
                        redact(f"Partner Center answered {exc.status or '-'} {exc.code or ''}: {exc.message}",
                               secret_values),
                        hint="the deploying identity must be an app added to the Partner Center account with "
                             "the Manager role" if exc.status in (401, 403) else exc.hint,
                    ) from None
        except ResourceOperationError as exc:
            text = redact(Exception.__str__(exc), secret_values)
            raise ResourceOperationError(text, hint=exc.hint and redact(exc.hint, secret_values)) from None

    def _outputs(self, props: Mapping[str, Any], **observed: Any) -> dict[str, Any]:
        outs = {k: v for k, v in clean(props).items() if k not in SECRET_INPUTS}
        outs.update(observed)
        return outs

    def _apply(self, props: dict[str, Any], product_id: str) -> str:
        version = props["schema_version"]
        resource = customer_leads(product_id, props, version)
        return self._api(version).configure(resource, timeout=self._timeout(),
                                            secret_values=[props.get(k) for k in SECRET_INPUTS])

    @staticmethod
    def _product(api: ProductIngestion, offer_id: str) -> str:
        product_id = api.find_product(offer_id)
        if product_id is None:
            raise LeadDestinationError(
                f"no product with external id {offer_id!r} in this Partner Center account",
                hint="check offer_id (Partner Center → offer → Offer setup → Offer ID) and that the deploying "
                     "identity's app is in the right account")
        return product_id

    def _timeout(self) -> float:
        return float(getattr(self, "job_timeout_seconds", JOB_TIMEOUT_SECONDS))

    @staticmethod
    def _normalize(props: dict[str, Any]) -> dict[str, Any]:
        props.setdefault("schema_version", DEFAULT_SCHEMA_VERSION)
        props["schema_version"] = props["schema_version"] or DEFAULT_SCHEMA_VERSION
        props["contact_emails"] = contact_list(props.get("contact_emails"))
        return props

    # -- check ---------------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = {k: v for k, v in news.items() if not k.startswith("__")}
        failures: list[CheckFailure] = []
        plain = clean(news)

        def known(key: str) -> bool:
            return key in news and news[key] is not None and not is_unknown(news[key])

        def fail(key: str, reason: str) -> None:
            failures.append(CheckFailure(key, reason))

        if not known("offer_id") and not is_unknown(news.get("offer_id")):
            fail("offer_id", "expected the offer's id as shown in Partner Center (Offer ID), e.g. contoso-leads")
        elif known("offer_id") and not OFFER_ID_RE.match(str(plain["offer_id"])):
            fail("offer_id", f"expected lower-case letters, digits, '-' or '_' (at most 50), got {plain['offer_id']!r}")
        if known("instance_url"):
            from dynamics_provider.hosts import validate_instance_url

            settings = self._check_settings()
            try:
                inputs["instance_url"] = validate_instance_url(
                    plain["instance_url"], cloud=settings.cloud if settings else "public",
                    allow_loopback=bool(settings and settings.allow_loopback))
            except LeadDestinationError as exc:
                fail("instance_url", str(exc))
        elif not is_unknown(news.get("instance_url")):
            fail("instance_url", "expected the organization's https URL, e.g. https://contoso.crm4.dynamics.com")
        auth = plain.get("authentication") or "azureAD"
        if is_unknown(news.get("authentication")):
            auth = None
        elif auth not in AUTHENTICATIONS:
            fail("authentication", f"expected one of {', '.join(AUTHENTICATIONS)}, got {auth!r}")
            auth = None
        else:
            inputs["authentication"] = auth
        if auth is not None:
            required = AZURE_AD_FIELDS if auth == "azureAD" else OFFICE365_FIELDS
            forbidden = OFFICE365_FIELDS if auth == "azureAD" else AZURE_AD_FIELDS
            for key in required:
                if not known(key) and not is_unknown(news.get(key)):
                    fail(key, f"required when authentication is {auth}")
            for key in forbidden:
                if news.get(key) not in (None, ""):
                    fail(key, f"not allowed when authentication is {auth} (Partner Center rejects it)")
                inputs.pop(key, None)
        for key in ("application_id", "directory_id"):
            if known(key) and not GUID_RE.match(str(plain[key])):
                fail(key, f"expected a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), got {plain[key]!r}")
        limits = {"application_key": 2048, "username": 128, "password": 256}
        for key, high in limits.items():
            if known(key) and not (isinstance(plain[key], str) and 1 <= len(plain[key]) <= high):
                fail(key, f"expected 1 to {high} characters")  # never echo the value: it may be a secret
        if known("contact_emails"):
            emails = contact_list(plain["contact_emails"])
            bad = [e for e in emails if not EMAIL_RE.match(e)]
            if bad:
                fail("contact_emails", f"not e-mail addresses: {', '.join(repr(b) for b in bad)}")
            inputs["contact_emails"] = emails
        elif not is_unknown(news.get("contact_emails")):
            inputs["contact_emails"] = []
        if known("schema_version"):
            if not SCHEMA_VERSION_RE.match(str(plain["schema_version"])):
                fail("schema_version", f"expected a Product Ingestion API version such as {DEFAULT_SCHEMA_VERSION}")
        elif not is_unknown(news.get("schema_version")):
            inputs["schema_version"] = DEFAULT_SCHEMA_VERSION
        return self.check_result(inputs, failures)

    def _check_settings(self) -> DeployerSettings | None:
        try:
            return self.settings
        except Exception:  # noqa: BLE001 - check must not need credentials; fall back to strict defaults
            return None

    # -- diff ----------------------------------------------------------------------------------

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = self.diff_inputs(olds, news, ("offer_id", "schema_version", *COMPARED_FIELDS),
                                   expected={"contact_emails": news.get("contact_emails")
                                             if is_unknown(news.get("contact_emails"))
                                             else contact_list(clean(news).get("contact_emails")),
                                             "schema_version": news.get("schema_version") or DEFAULT_SCHEMA_VERSION,
                                             "authentication": news.get("authentication") or "azureAD"})
        plain = clean(news)
        auth = plain.get("authentication") or "azureAD"
        key = "application_key" if auth == "azureAD" else "password"
        if is_unknown(news.get(key)) or not secret_matches(plain.get(key), olds.get("secret_hash")):
            changed.append(key)
        return self.diff_result(changed)

    # -- create / update -----------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        plain = self._normalize(clean(props))
        with self._op("create", plain):
            api = self._api(plain["schema_version"])
            product_id = self._product(api, plain["offer_id"])
            _, before = api.draft_customer_leads(product_id)
            # leads already flowing to a destination someone else set are not switched off by our destroy
            set_by_stack = field(before, "leadDestination") in (None, "none")
            job_id = self._apply(plain, product_id)
        if not set_by_stack:
            tell(f"OfferLeadDestination {plain['offer_id']}: the offer already had a lead destination: adopted and "
                 "changed to this organization; `pulumi destroy` leaves the offer's lead destination as it is")
        resource_id = f"customer-leads/{product_id.removeprefix('product/')}"
        outs = self._outputs(plain, product_id=product_id, resource_id=resource_id,
                             secret_hash=secret_hash(secret_of(plain) or ""), set_by_stack=set_by_stack,
                             job_id=job_id)
        return CreateResult(resource_id, outs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        plain = self._normalize(clean(news))
        old = clean(olds)
        with self._op("update", plain):
            product_id = old.get("product_id") or self._product(self._api(plain["schema_version"]), plain["offer_id"])
            job_id = self._apply(plain, product_id)
        recorded = old.get("secret_hash")
        if not secret_matches(secret_of(plain), recorded):
            recorded = secret_hash(secret_of(plain) or "")
        outs = self._outputs(plain, product_id=product_id, resource_id=id_, secret_hash=recorded,
                             set_by_stack=bool(old.get("set_by_stack", True)), job_id=job_id)
        return UpdateResult(outs)

    # -- read ----------------------------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        plain = clean(props)
        version = plain.get("schema_version") or DEFAULT_SCHEMA_VERSION
        with self._op("read", plain):
            api = self._api(version)
            product_id = plain.get("product_id") or api.find_product(plain.get("offer_id", ""))
            if not product_id:
                return ReadResult("", {})
            exists, resource = api.draft_customer_leads(product_id)
        if not exists:
            return ReadResult("", {})
        seen = observed_fields(resource)
        outs = {k: v for k, v in plain.items() if k not in SECRET_INPUTS}
        outs.update({k: seen[k] for k in COMPARED_FIELDS})
        if not seen["secret_present"] or seen["authentication"] != plain.get("authentication"):
            outs["secret_hash"] = None  # the secret we set is not there any more
        outs.setdefault("product_id", product_id)
        return ReadResult(id_, outs)

    # -- delete --------------------------------------------------------------------------------

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        plain = clean(props)
        if not plain.get("set_by_stack"):
            tell(f"OfferLeadDestination {plain.get('offer_id')}: lead destination left as it is (it was set before "
                 "this stack)")
            return
        version = plain.get("schema_version") or DEFAULT_SCHEMA_VERSION
        with self._op("delete", plain):
            api = self._api(version)
            product_id = plain.get("product_id")
            exists, resource = api.draft_customer_leads(product_id) if product_id else (False, None)
            if not exists or not product_id:
                return
            seen = observed_fields(resource)
            if field(resource, "leadDestination") != "dynamics" or (
                (seen["instance_url"] or "").rstrip("/").lower() != (plain.get("instance_url") or "").lower()
            ):
                tell(f"OfferLeadDestination {plain.get('offer_id')}: lead destination left as it is (it points "
                     "elsewhere now)")
                return
            api.configure(no_lead_destination(product_id, version), timeout=self._timeout(), secret_values=[])


# ---------------------------------------------------------------------------------------------
# the resource


class OfferLeadDestination(Resource, module="dynamics", name="OfferLeadDestination"):
    """The lead destination of a marketplace offer, pointed at a Dynamics 365 organization.

    Partner Center credentials are the deploying identity's (an app with the Manager role in the
    Partner Center account), from stack config / environment — never inputs. The change lands in the
    offer's draft; publishing stays with the publisher.
    """

    offer_id: pulumi.Output[str]
    instance_url: pulumi.Output[str]
    authentication: pulumi.Output[str]
    application_id: pulumi.Output[str | None]
    directory_id: pulumi.Output[str | None]
    application_key: pulumi.Output[str | None]
    username: pulumi.Output[str | None]
    password: pulumi.Output[str | None]
    contact_emails: pulumi.Output[list[str]]
    schema_version: pulumi.Output[str]
    product_id: pulumi.Output[str]
    resource_id: pulumi.Output[str]
    secret_hash: pulumi.Output[str]
    set_by_stack: pulumi.Output[bool]
    job_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        offer_id: pulumi.Input[str],
        instance_url: pulumi.Input[str],
        authentication: pulumi.Input[str] = "azureAD",
        application_id: pulumi.Input[str] | None = None,
        directory_id: pulumi.Input[str] | None = None,
        application_key: pulumi.Input[str] | None = None,
        username: pulumi.Input[str] | None = None,
        password: pulumi.Input[str] | None = None,
        contact_emails: pulumi.Input[list[str]] | pulumi.Input[str] | None = None,
        schema_version: pulumi.Input[str] = DEFAULT_SCHEMA_VERSION,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "offer_id": offer_id,
            "instance_url": instance_url,
            "authentication": authentication,
            "application_id": application_id,
            "directory_id": directory_id,
            "application_key": pulumi.Output.secret(application_key) if application_key is not None else None,
            "username": username,
            "password": pulumi.Output.secret(password) if password is not None else None,
            "contact_emails": contact_emails,
            "schema_version": schema_version,
            "product_id": None,
            "resource_id": None,
            "secret_hash": None,
            "set_by_stack": None,
            "job_id": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_INPUTS))
        )
        super().__init__(OfferLeadDestinationProvider(), resource_name, props, opts)
