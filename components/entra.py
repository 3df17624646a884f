"""EntraServiceIdentity: the multi-tenant Entra app registration Partner Center signs in as.

Application (Web redirect URIs, Dynamics CRM `user_impersonation` delegated), its service principal,
a client secret with an explicit end date rotated on a deterministic schedule, optional admin consent.
"""

from __future__ import annotations

import datetime as dt

import pulumi
import pulumi_azuread as azuread

from .rotation import rfc3339, rotation_period
from .settings import CRM_APP_ID, USER_IMPERSONATION_SCOPE_ID, ApplicationSettings


def _user_impersonation(fallback: bool):
    def pick(scope_ids: dict[str, str] | None) -> str:
        scope_id = (scope_ids or {}).get("user_impersonation")
        if scope_id:
            return scope_id
        if fallback:
            return USER_IMPERSONATION_SCOPE_ID
        raise ValueError(
            "the Dynamics CRM service principal exposes no `user_impersonation` scope; set "
            "lead-destination:application.scopeIdFallback true to use the well-known scope id"
        )

    return pick


class EntraServiceIdentity(pulumi.ComponentResource):
    """Application + ServicePrincipal + rotated ApplicationPassword (+ admin consent grant)."""

    def __init__(
        self,
        name: str,
        settings: ApplicationSettings,
        *,
        today: dt.date,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lead-destination:components:EntraServiceIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # The tenant's own Dynamics CRM service principal: looked up, never deleted by this stack.
        self.crm_service_principal = azuread.ServicePrincipal(
            f"{name}-dynamics-crm",
            client_id=CRM_APP_ID,
            use_existing=True,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        scope_id = self.crm_service_principal.oauth2_permission_scope_ids.apply(
            _user_impersonation(settings.scope_id_fallback)
        )
        self.application = azuread.Application(
            f"{name}-application",
            display_name=settings.display_name,
            sign_in_audience="AzureADMultipleOrgs",
            web=azuread.ApplicationWebArgs(redirect_uris=list(settings.redirect_uris)),
            required_resource_accesses=[
                azuread.ApplicationRequiredResourceAccessArgs(
                    resource_app_id=CRM_APP_ID,
                    resource_accesses=[
                        azuread.ApplicationRequiredResourceAccessResourceAccessArgs(id=scope_id, type="Scope")
                    ],
                )
            ],
            opts=child,
        )
        self.service_principal = azuread.ServicePrincipal(
            f"{name}-sp", client_id=self.application.client_id, opts=child
        )

        # Deterministic rotation: key and end date depend only on the date's rotation period, so
        # every run inside a period changes nothing and the first run after it turns replaces
        # the secret (pulumi creates the new one before deleting the old).
        period = rotation_period(today, settings.rotation_days)
        expires_on = rfc3339(period.start + dt.timedelta(days=settings.secret_lifetime_days))
        self.rotation_key = period.key
        self.password = azuread.ApplicationPassword(
            f"{name}-secret",
            application_id=self.application.id,
            display_name=f"lead-destination {period.key}",
            end_date=expires_on,
            rotate_when_changed={"period": period.key},
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["value"]),
        )

        self.consent = None
        if settings.admin_consent:
            self.consent = azuread.ServicePrincipalDelegatedPermissionGrant(
                f"{name}-consent",
                service_principal_object_id=self.service_principal.object_id,
                resource_service_principal_object_id=self.crm_service_principal.object_id,
                claim_values=["user_impersonation"],
                opts=child,
            )

        self.client_id = self.application.client_id
        self.tenant_id = self.service_principal.application_tenant_id
        self.client_secret: pulumi.Output[str] = pulumi.Output.secret(self.password.value)
        self.key_id = self.password.key_id
        self.secret_expires_on = pulumi.Output.from_input(expires_on)
        self.register_outputs(
            {
                "clientId": self.client_id,
                "tenantId": self.tenant_id,
                "clientSecret": self.client_secret,
                "keyId": self.key_id,
                "secretExpiresOn": self.secret_expires_on,
                "rotationKey": period.key,
            }
        )
