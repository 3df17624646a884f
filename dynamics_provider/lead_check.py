"""LeadWriteCheck: Partner Center's "Validate" button as a resource (procedure step 5, docs/architecture.md).

With the lead-writer identity it writes a test lead shaped like Partner Center's, reads it back and
deletes it as the deploying identity; on failure it names the broken link of the chain.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.auth import TokenProvider
from dynamics_provider.base import (
    DataverseResourceProvider,
    ResourceOperationError,
    clean,
)
from dynamics_provider.checks import (
    need_bool,
    need_guid,
    need_https_url,
    need_text,
)
from dynamics_provider.client import DataverseClient
from dynamics_provider.config_schema import hint_for_input
from dynamics_provider.dataverse import leads, roles, users
from dynamics_provider.errors import AccessDenied, AuthenticationError, DataverseError, Unauthorized

INPUTS = ("instance_url", "tenant_id", "client_id", "client_secret", "username", "password", "keep_lead", "triggers")
SECRET_INPUTS = ("client_secret", "password")
_PRIVILEGE = re.compile(r"\b(prv[A-Za-z0-9_]+)")
# 0x80040220's text names the privilege ("… is missing prvCreateLead privilege …") or, in the SecLib form,
# only the access right ("SecLib::AccessCheckEx failed … AccessRights: CreateAccess"): both are read (inferred:
# Microsoft documents the code, not the wording).
_ACCESS_RIGHT = re.compile(r"AccessRights:\s*(Create|Read|Write|Delete|AppendTo|Append|Assign|Share)Access", re.I)
# Dataverse's unManagedidsusernotenabled: the Web API answers a disabled caller 400 with this code (not 401/403)
USER_NOT_ENABLED = "0x80040225"
_LEAD_NAMESPACE = uuid.UUID("4c0e7f0a-6a52-4d8e-9a53-0d5b3c1f2a77")


def validation_lead_id(inputs: dict[str, Any]) -> str:
    """The test lead's id, derived from the check's non-secret inputs: a create the engine retries after
    a crash (same inputs) meets the lead its killed attempt wrote, and removes it, instead of leaving it."""
    key = {k: inputs.get(k) for k in INPUTS if k not in SECRET_INPUTS}
    return str(uuid.uuid5(_LEAD_NAMESPACE, json.dumps(key, sort_keys=True, default=str)))


class LeadWriteCheckProvider(DataverseResourceProvider):
    resource_type = "LeadWriteCheck"
    replace_keys = INPUTS
    secret_keys = SECRET_INPUTS

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = self.given(news, INPUTS)
        inputs.setdefault("keep_lead", False)
        checks: dict[str, str | None] = {
            "instance_url": need_https_url(inputs.get("instance_url")),
            "keep_lead": need_bool(inputs["keep_lead"]),
        }
        app = any(k in inputs for k in ("client_id", "client_secret", "tenant_id"))
        user = any(k in inputs for k in ("username", "password"))
        if app and user:
            checks["username"] = "give either client_id + client_secret (+ tenant_id) or username + password, not both"
        elif app:
            checks["client_id"] = need_guid(inputs.get("client_id"), "the lead-writer application (client) id")
            checks["client_secret"] = need_text(inputs.get("client_secret"), "the lead-writer client secret", 1024)
            if "tenant_id" in inputs:
                checks["tenant_id"] = need_guid(inputs["tenant_id"], "the directory (tenant) id")
        elif user:
            checks["username"] = need_text(inputs.get("username"), "the lead-writer user name (UPN)", 320)
            checks["password"] = need_text(inputs.get("password"), "the lead-writer password", 1024)
        else:
            checks["client_id"] = "give the lead-writer credentials: client_id + client_secret, or username + password"
        # a failure message never quotes a secret's value
        for key in self.secret_keys:
            if checks.get(key):
                checks[key] = f"expected {key.replace('_', ' ')} as a non-empty string"
        return self.checked(inputs, checks)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        return self.diff_result(self.diff_inputs(olds, news, INPUTS, expected={"keep_lead": bool(news.get("keep_lead"))}))

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        identity = inputs.get("client_id") or inputs.get("username")
        subject = f"lead writer {identity}"
        with self.operation("create", subject):
            admin = self.client(inputs["instance_url"])
            writer = self.client(inputs["instance_url"], tokens=self._writer_tokens(inputs))
            fields = leads.validation_lead(leads.dotnet_ticks())
            lead_id = self._write(inputs, admin, writer, validation_lead_id(inputs), fields, subject)
            try:
                self._read_back(admin, lead_id, fields, subject)
            except ResourceOperationError:
                # an altered test lead is deleted even with keep_lead: the failed create records no lead_id,
                # so nothing would ever remove it (and it holds only MSFT_TEST_ markers: nothing is lost)
                leads.delete_lead(admin, lead_id)
                raise
            if not inputs.get("keep_lead"):
                leads.delete_lead(admin, lead_id)
        outs = self.outputs(
            {k: inputs.get(k) for k in INPUTS},
            lead_id=lead_id if inputs.get("keep_lead") else None,
            validated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            identity=identity,
        )
        return CreateResult(f"leadcheck-{uuid.uuid4()}", outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # A validation is an event, not a remote object: its record stays as it was.
        return ReadResult(id_, self.outputs(props))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        state = clean(olds)
        return UpdateResult(
            self.outputs({k: clean(news).get(k) for k in INPUTS},
                         **{k: state.get(k) for k in ("lead_id", "validated_at", "identity")})
        )

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        if not state.get("lead_id"):
            return
        with self.operation("delete", f"test lead {state['lead_id']}"):
            leads.delete_lead(self.client(state["instance_url"]), state["lead_id"])

    # -- steps ---------------------------------------------------------------------------------

    def _writer_tokens(self, inputs: dict[str, Any]) -> TokenProvider:
        from dynamics_provider.auth import client_secret_tokens, password_tokens

        settings = self.settings
        authority = settings.authority(inputs.get("tenant_id"))
        if inputs.get("client_id"):
            return client_secret_tokens(authority, inputs["client_id"], inputs["client_secret"],
                                        ca_bundle=settings.ca_bundle)
        return password_tokens(authority, inputs["username"], inputs["password"], ca_bundle=settings.ca_bundle)

    def _write(self, inputs: dict[str, Any], admin: DataverseClient, writer: DataverseClient, lead_id: str,
               fields: dict[str, str], subject: str) -> str:
        """Create the lead as the lead writer; on failure, diagnose which link of the chain broke."""
        try:
            writer.tokens.get_token(writer.instance_url + "/.default")
        except AuthenticationError as exc:
            if inputs.get("client_id"):
                hint = (f"the lead writer's client secret was refused (wrong, expired or rotated?): for an app you "
                        f"gave the stack, set its current secret, {hint_for_input('LeadWriteCheck', 'client_secret')}, "
                        "and check existingApplication.tenantId; a secret the stack created itself is renewed by "
                        "`pulumi up` (application.rotationDays)")
            else:
                hint = ("the lead writer's password sign-in was refused: check that the user of "
                        "office365.userPrincipalName is enabled and needs no multi-factor sign-in, then run `pulumi up`")
            raise ResourceOperationError(
                f"LeadWriteCheck failed for {subject}: credentials rejected by Entra ID "
                f"({exc.code or exc.error or 'no code'})",
                hint=hint,
            ) from exc
        try:
            return leads.write_lead(writer, admin, lead_id, fields)
        except DataverseError as exc:
            raise self._diagnose(inputs, admin, exc, subject) from exc

    @staticmethod
    def _read_back(admin: DataverseClient, lead_id: str, fields: dict[str, str], subject: str) -> None:
        """The deploying identity reads the lead back: it landed, with the fields the marketplace wrote."""
        stored = leads.read_lead(admin, lead_id)
        altered = sorted(k for k in fields if stored.get(k) != fields[k])
        if altered:
            raise ResourceOperationError(
                f"LeadWriteCheck failed for {subject}: the test lead {lead_id} landed with "
                f"{', '.join(altered)} changed",
                hint="a plug-in or business rule in the organization rewrites incoming leads; "
                "marketplace leads would arrive altered too",
            )

    def _diagnose(self, inputs: dict[str, Any], admin: DataverseClient, exc: DataverseError,
                  subject: str) -> Exception:
        def fail(link: str, hint: str) -> ResourceOperationError:
            detail = f"Dataverse answered {exc.status or '-'}" + (f" {exc.code}" if exc.code else "")
            return ResourceOperationError(f"LeadWriteCheck failed for {subject}: {link} ({detail}: {exc.message})",
                                          hint=hint)

        if not isinstance(exc, AccessDenied | Unauthorized) and (exc.code or "").lower() != USER_NOT_ENABLED:
            return fail("the test lead could not be written", exc.hint or "retry later")
        user: users.SystemUser | None = None
        try:
            user = (users.find_application_user(admin, inputs["client_id"]) if inputs.get("client_id")
                    else users.find_user_by_name(admin, inputs["username"]))
            looked_up = True
        except DataverseError:
            looked_up = False
        if looked_up and user is None:
            return fail("the lead writer is not a user of this organization",
                        "create its application user (ApplicationUser) or wait for licence sync (SyncedUser)")
        if user is not None and user.disabled:
            return fail("the lead writer's user is disabled",
                        "enable it (run `pulumi up`: ApplicationUser/SyncedUser re-enable it)")
        if isinstance(exc, Unauthorized):
            return fail("the organization refused the lead writer's token",
                        "check that the identity is an enabled user of this organization")
        if user is not None:
            try:
                role_ids: list[str] | None = roles.role_ids_of(admin, user.id)
            except DataverseError:
                role_ids = None
            if role_ids == []:
                return fail("the lead writer has no security role",
                            "assign the Microsoft Marketplace Lead Writer role (SecurityRoleAssignment)")
        if (exc.code or "").lower() == USER_NOT_ENABLED:
            # the organization says the user is not enabled, yet it is not disabled: a licence or access mode
            # the organization does not accept (the text of 0x80040225 varies; only its code is relied on)
            return fail("the organization reports the lead writer's user as not enabled",
                        "check the user's access mode and licence in the organization (Settings → Users), "
                        "then run `pulumi up`")
        privilege = _missing_privilege(exc.message or "")
        return fail(f"the lead writer's role is missing {privilege}",
                    f"grant {privilege} to the lead writer's role (RolePrivileges) and run `pulumi up`")


def _missing_privilege(message: str) -> str:
    """The privilege a 0x80040220 text names, the lead privilege its access right stands for, or "a privilege"."""
    if match := _PRIVILEGE.search(message):
        return match.group(1)
    if match := _ACCESS_RIGHT.search(message):
        right = match.group(1).lower()
        return "prv" + {"appendto": "AppendTo"}.get(right, right.capitalize()) + "Lead"
    return "a privilege"


class LeadWriteCheck(Resource, module="dynamics", name="LeadWriteCheck"):
    """Proves the lead writer can write a lead (Partner Center's "Validate"); re-runs when triggers change."""

    instance_url: pulumi.Output[str]
    keep_lead: pulumi.Output[bool]
    triggers: pulumi.Output[Any]
    lead_id: pulumi.Output[str | None]
    validated_at: pulumi.Output[str]
    identity: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        instance_url: pulumi.Input[str],
        tenant_id: pulumi.Input[str] | None = None,
        client_id: pulumi.Input[str] | None = None,
        client_secret: pulumi.Input[str] | None = None,
        username: pulumi.Input[str] | None = None,
        password: pulumi.Input[str] | None = None,
        keep_lead: pulumi.Input[bool] = False,
        triggers: pulumi.Input[Any] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "instance_url": instance_url,
            "tenant_id": tenant_id,
            "client_id": client_id,
            "client_secret": pulumi.Output.secret(client_secret) if client_secret is not None else None,
            "username": username,
            "password": pulumi.Output.secret(password) if password is not None else None,
            "keep_lead": keep_lead,
            "triggers": triggers,
            "lead_id": None,
            "validated_at": None,
            "identity": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["client_secret", "password"])
        )
        super().__init__(LeadWriteCheckProvider(), resource_name, props, opts)
