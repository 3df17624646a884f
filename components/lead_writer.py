"""DynamicsLeadWriter: the Dynamics side of the procedure (docs/architecture.md), in dependency order.

SolutionImport ∥ ApplicationUser (or the synced Office 365 user) -> SecurityRoleAssignment, and
SolutionImport -> RolePrivileges (the YAML spec); both -> LeadWriteCheck (when validation is on),
which runs again whenever a link of the chain wrote something (the links' `revision` outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from .settings import Settings


@dataclass
class LeadWriterIdentity:
    """Who writes the leads: an Entra app (client credentials) or an Office 365 user (password)."""

    application_id: pulumi.Input[str] | None = None  # app mode: becomes an ApplicationUser
    tenant_id: pulumi.Input[str] | None = None
    client_secret: pulumi.Input[str] | None = None
    systemuser_id: pulumi.Input[str] | None = None  # Office 365 mode: the synced systemuser
    username: pulumi.Input[str] | None = None
    password: pulumi.Input[str] | None = None
    triggers: dict[str, Any] | None = None  # rotation markers: a new credential re-runs the check
    depends_on: list[pulumi.Resource] | None = None  # what must exist before the Dynamics user


def chain_triggers(triggers: dict[str, Any] | None, links: dict[str, pulumi.Resource | None]) -> dict[str, Any]:
    """The check's triggers: the identity's rotation markers plus the `revision` of every link that has one.

    A link's revision changes only when its create/update wrote to Dataverse (a repaired drift, an
    upgrade), so the next `up` writes a fresh validation lead exactly then. Links without a `revision`
    output are left out.
    """
    result = dict(triggers or {})
    revisions = {}
    for key, link in links.items():
        revision = getattr(link, "revision", None) if link is not None else None
        if isinstance(revision, pulumi.Output):
            revisions[key] = revision
    if revisions:
        result["revisions"] = revisions
    return result


class DynamicsLeadWriter(pulumi.ComponentResource):
    """Installs the solution, gives the lead writer its role and privileges, proves it can write a lead."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        identity: LeadWriterIdentity,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("lead-destination:components:DynamicsLeadWriter", name, None, opts)
        import dynamics_provider as dp

        url = settings.instance_url

        def after(*resources: pulumi.Resource | None, extra: list[pulumi.Resource] | None = None):
            deps = [r for r in resources if r is not None] + list(extra or [])
            return pulumi.ResourceOptions(parent=self, depends_on=deps)

        sol = settings.solution
        solution_args: dict[str, Any] = {"source_path": sol.path} if sol.path else {
            "source_url": sol.url, "sha256": sol.sha256}  # fmt: skip
        self.solution = dp.SolutionImport(
            f"{name}-solution",
            instance_url=url,
            allow_unmanaged=sol.allow_unmanaged,
            import_timeout_seconds=sol.import_timeout_seconds,
            opts=after(),
            **solution_args,
        )

        self.application_user = None
        if identity.application_id is not None:
            self.application_user = dp.ApplicationUser(
                f"{name}-user",
                instance_url=url,
                application_id=identity.application_id,
                business_unit=settings.business_unit,
                first_name=settings.application_user.first_name,
                last_name=settings.application_user.last_name,
                email=settings.application_user.email,
                # A user needs no solution: it is created alongside the import, as the engine would.
                opts=after(extra=identity.depends_on),
            )
            # The resource id (= systemuserid) stays known while an update of the user is previewed; its
            # outputs do not, and an unknown `user_id` would preview the role assignment as a replacement
            # that `up` never makes.
            self.user_id = self.application_user.id
        else:
            self.user_id = pulumi.Output.from_input(identity.systemuser_id)

        user_deps = [self.application_user] if self.application_user else list(identity.depends_on or [])
        role_opts = after(self.solution, extra=user_deps)
        if self.application_user is not None:
            # Dataverse drops a user's roles when it moves to another business unit: assign again when the
            # configured business unit changes. The trigger is the setting (known in preview), not the user's
            # business_unit_id output (unknown while the user's update is previewed). A move made by hand
            # needs no trigger: refresh finds the association gone and `up` creates it again.
            role_opts.replacement_trigger = settings.business_unit or ""
        self.role_assignment = dp.SecurityRoleAssignment(
            f"{name}-role",
            instance_url=url,
            user_id=self.user_id,
            role_name=settings.role_name,
            opts=role_opts,
        )
        self.role_privileges = dp.RolePrivileges(
            f"{name}-privileges",
            instance_url=url,
            role_name=settings.role_name,
            privileges=[{"name": n, "depth": d} for n, d in settings.privileges],
            opts=after(self.solution),
        )

        self.lead_check = None
        if settings.validate:
            credentials: dict[str, Any]
            if identity.application_id is not None:
                credentials = {"tenant_id": identity.tenant_id, "client_id": identity.application_id,
                               "client_secret": pulumi.Output.secret(identity.client_secret)}  # fmt: skip
            else:
                credentials = {"username": identity.username, "password": pulumi.Output.secret(identity.password)}
            links = {"solution": self.solution, "user": self.application_user, "role": self.role_assignment,
                     "privileges": self.role_privileges}
            links.update({f"identity{i}": r for i, r in enumerate(identity.depends_on or [])})  # the synced user
            self.lead_check = dp.LeadWriteCheck(
                f"{name}-check",
                instance_url=url,
                keep_lead=False,
                triggers=chain_triggers(identity.triggers, links),
                opts=after(self.role_assignment, self.role_privileges, self.application_user),
                **credentials,
            )

        self.solution_version = self.solution.version
        self.validated_at = self.lead_check.validated_at if self.lead_check else pulumi.Output.from_input(None)
        self.register_outputs(
            {
                "solutionVersion": self.solution_version,
                "userId": self.user_id,
                "roleId": self.role_assignment.role_id,
                "validatedAt": self.validated_at,
            }
        )
