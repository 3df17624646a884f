"""Office365ServiceAccount: the Office 365 user alternative to the Entra app (procedure step 2b, docs/architecture.md).

User without forced password change, RandomPassword rotated by a period key (90 days default),
the Customer Engagement licence, then the Dynamics systemuser that licence sync creates.
"""

from __future__ import annotations

import datetime as dt

import pulumi
import pulumi_azuread as azuread
import pulumi_random as random

from .rotation import rfc3339, rotation_period
from .settings import Office365Settings

# Characters Entra accepts in passwords and that survive copy/paste into Partner Center.
SPECIAL_CHARACTERS = "!#%*()-_=+[]{}:?.~"


class Office365ServiceAccount(pulumi.ComponentResource):
    """azuread.User + RandomPassword (rotating keepers) + UserLicense + SyncedUser."""

    def __init__(
        self,
        name: str,
        settings: Office365Settings,
        *,
        instance_url: pulumi.Input[str],
        today: dt.date,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lead-destination:components:Office365ServiceAccount", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        period = rotation_period(today, settings.rotation_days)
        self.rotation_key = period.key
        self.password_rotates_on = rfc3339(period.end)
        self.random_password = random.RandomPassword(
            f"{name}-password",
            length=settings.password_length,
            special=True,
            override_special=SPECIAL_CHARACTERS,
            min_lower=1,
            min_upper=1,
            min_numeric=1,
            min_special=1,
            keepers={"rotation": period.key},
            opts=child,
        )
        self.password: pulumi.Output[str] = pulumi.Output.secret(self.random_password.result)
        self.user = azuread.User(
            f"{name}-user",
            user_principal_name=settings.user_principal_name,
            display_name=settings.display_name,
            password=self.password,
            force_password_change=False,
            disable_password_expiration=True,
            usage_location=settings.usage_location,
            opts=child,
        )
        self.license = azuread.UserLicense(
            f"{name}-license",
            user_object_id=self.user.object_id,
            sku_id=settings.license_sku_id,
            opts=child,
        )
        from dynamics_provider import SyncedUser

        # The systemuser exists only after licence sync: wait for it (bounded, logged by the provider).
        self.synced_user = SyncedUser(
            f"{name}-systemuser",
            instance_url=instance_url,
            user_principal_name=self.user.user_principal_name,
            azure_object_id=self.user.object_id,
            wait_timeout_seconds=settings.sync_timeout_seconds,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.license]),
        )
        self.username = self.user.user_principal_name
        self.systemuser_id = self.synced_user.systemuser_id
        self.register_outputs(
            {
                "username": self.username,
                "password": self.password,
                "objectId": self.user.object_id,
                "systemuserId": self.systemuser_id,
                "rotationKey": period.key,
                "passwordRotatesOn": self.password_rotates_on,
            }
        )
