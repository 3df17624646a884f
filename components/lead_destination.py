"""LeadDestination: the top-level component of one customer stack, and the program built around it.

Chooses the identity mode (new Entra app, Office 365 user, or an existing app), wires it to the
DynamicsLeadWriter and exposes the values Partner Center asks for.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pulumi

from .lead_writer import DynamicsLeadWriter, LeadWriterIdentity
from .rotation import today_utc
from .settings import Settings, load_settings

if TYPE_CHECKING:  # imported where the mode needs them: pulumi_azuread alone costs ~0.16 s of CPU per run
    from .entra import EntraServiceIdentity
    from .office365 import Office365ServiceAccount


class LeadDestination(pulumi.ComponentResource):
    """Everything one Dynamics organization needs to receive marketplace leads."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        today: dt.date | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lead-destination:components:LeadDestination", name, None, opts)
        today = today or today_utc()
        child = pulumi.ResourceOptions(parent=self)
        self.settings = settings
        self.entra: EntraServiceIdentity | None = None
        self.office365: Office365ServiceAccount | None = None

        secret_expires_on: pulumi.Input[str | None] = None
        if settings.mode == "azureAD":
            from .entra import EntraServiceIdentity

            self.entra = EntraServiceIdentity(f"{name}-app", settings.application, today=today, opts=child)
            identity = LeadWriterIdentity(
                application_id=self.entra.client_id,
                tenant_id=self.entra.tenant_id,
                client_secret=self.entra.client_secret,
                triggers={"secretKeyId": self.entra.key_id, "rotation": self.entra.rotation_key},
                depends_on=[self.entra.service_principal],
            )
            secret_expires_on = self.entra.secret_expires_on
        elif settings.mode == "existingApplication":
            existing = settings.existing_application
            assert existing is not None
            identity = LeadWriterIdentity(
                application_id=existing.client_id,
                tenant_id=existing.tenant_id,
                client_secret=pulumi.Output.secret(existing.secret),
                triggers={"clientId": existing.client_id},
            )
        else:
            assert settings.office365 is not None
            from .office365 import Office365ServiceAccount

            self.office365 = Office365ServiceAccount(
                f"{name}-o365", settings.office365, instance_url=settings.instance_url, today=today, opts=child
            )
            identity = LeadWriterIdentity(
                systemuser_id=self.office365.systemuser_id,
                username=self.office365.username,
                password=self.office365.password,
                triggers={"rotation": self.office365.rotation_key},
                depends_on=[self.office365.synced_user],
            )
            secret_expires_on = self.office365.password_rotates_on

        self.writer = DynamicsLeadWriter(f"{name}-dynamics", settings, identity, opts=child)

        # Partner Center: with config `offer`, the identity's outputs go straight to the offer.
        self.offer = None
        if settings.offer:
            self.offer = offer_lead_destination(
                f"{name}-offer", settings, identity, opts=pulumi.ResourceOptions(parent=self, depends_on=[self.writer])
            )

        pc: dict[str, Any] = {"instanceUrl": settings.instance_url, "authentication": settings.authentication}
        if settings.authentication == "azureAD":
            pc.update(
                applicationId=identity.application_id,
                directoryId=identity.tenant_id,
                clientSecret=pulumi.Output.secret(identity.client_secret),
            )
        else:
            pc.update(username=identity.username, password=pulumi.Output.secret(identity.password))
        pc["contactEmail"] = settings.contact_email
        self.partner_center = pulumi.Output.all(**pc)  # secret because it holds the credential
        self.secret_expires_on = pulumi.Output.from_input(secret_expires_on)
        self.solution_version = self.writer.solution_version
        self.application_user_id = self.writer.user_id
        self.validated_at = self.writer.validated_at
        self.adopted = adopted_objects(self)
        #: the stack outputs (names as in docs/configuration.md), registered here and exported by `run`
        self.exports: dict[str, pulumi.Output[Any]] = {
            "partnerCenter": self.partner_center,
            "secretExpiresOn": self.secret_expires_on,
            "solutionVersion": self.solution_version,
            "applicationUserId": self.application_user_id,
            "validatedAt": self.validated_at,
            "adopted": self.adopted,
        }
        self.register_outputs(self.exports)


def adopted_objects(destination: LeadDestination) -> pulumi.Output[list[str]]:
    """The objects the stack found in place and adopted instead of making them: `pulumi destroy` leaves
    them as they are (a licence-synced Office 365 user is always one of them)."""
    writer = destination.writer
    flags: dict[str, Any] = {"solution": writer.solution.adopted, "role assignment": writer.role_assignment.adopted}
    if writer.application_user is not None:
        flags["application user"] = writer.application_user.adopted
    if destination.office365 is not None:
        flags["Office 365 user (licence sync)"] = True
    if destination.offer is not None:
        flags["offer lead destination"] = destination.offer.set_by_stack.apply(lambda own: not own)
    return pulumi.Output.all(**flags).apply(lambda seen: sorted(name for name, adopted in seen.items() if adopted))


def offer_lead_destination(
    name: str, settings: Settings, identity: LeadWriterIdentity, *, opts: pulumi.ResourceOptions
) -> Any:
    """OfferLeadDestination for config `offer` (the offer id, or {id, schemaVersion}); the secret stays secret."""
    from dynamics_provider.offer_destination import OfferLeadDestination

    offer = settings.offer
    assert offer is not None  # called only when the stack config sets `offer`
    offer_id = offer if isinstance(offer, str) else offer["id"]
    extra: dict[str, Any] = {}
    if isinstance(offer, dict) and offer.get("schemaVersion"):
        extra["schema_version"] = offer["schemaVersion"]
    if settings.authentication == "azureAD":
        extra.update(application_id=identity.application_id, directory_id=identity.tenant_id,
                     application_key=pulumi.Output.secret(identity.client_secret))
    else:
        extra.update(username=identity.username, password=pulumi.Output.secret(identity.password))
    return OfferLeadDestination(name, offer_id=str(offer_id).strip(), instance_url=settings.instance_url,
                                authentication=settings.authentication,
                                contact_emails=list(settings.contact_emails), opts=opts, **extra)


def run(settings: Settings | None = None, *, today: dt.date | None = None) -> LeadDestination:
    """The program: validate the stack config (nothing registers if it is wrong), build, export."""
    settings = settings or load_settings()
    destination = LeadDestination(pulumi.get_stack(), settings, today=today)
    for key, value in destination.exports.items():
        pulumi.export(key, value)
    return destination
