"""The program's resource graph under Pulumi's mock runtime, in each identity mode: types, parents,
inputs, options, dependency order, secret outputs, and credential rotation by period.

Also the harness the sandbox-backed program test reuses (`ProgramRun`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings

from components.entra import EntraServiceIdentity
from components.lead_destination import run
from components.rotation import EPOCH, rotation_period
from components.settings import (
    CRM_APP_ID,
    CUSTOMER_ENGAGEMENT_PLAN_SKU_ID,
    USER_IMPERSONATION_SCOPE_ID,
    Settings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parent.parent
TENANT = "11111111-2222-3333-4444-555555555555"
# deliberately not the well-known id: proves the program uses what the CRM service principal exposes
RESOLVED_SCOPE = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
APP_CLIENT_ID = "99999999-8888-7777-6666-555555555555"
EXISTING = {"clientId": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01", "tenantId": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"}


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    parent: str | None = None
    depends_on: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


class GraphMocks(pulumi.runtime.Mocks):
    """Answers like the providers would (fixed ids), recording every registration."""

    def __init__(self) -> None:
        self.resources: dict[str, Registered] = {}
        self.order: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = {k: v for k, v in args.inputs.items() if not k.startswith("__")}
        reg = self.resources.setdefault(args.name, Registered(args.typ, args.name, inputs))
        reg.typ, reg.inputs = args.typ, inputs
        self.order.append(args.name)
        outs = dict(inputs)
        typ = args.typ
        if typ == "azuread:index/servicePrincipal:ServicePrincipal":
            if inputs.get("clientId") == CRM_APP_ID:
                outs.update(oauth2PermissionScopeIds={"user_impersonation": RESOLVED_SCOPE}, objectId="crm-sp-object")
            else:
                outs.update(objectId="app-sp-object", applicationTenantId=TENANT)
        elif typ == "azuread:index/application:Application":
            outs.update(clientId=APP_CLIENT_ID, objectId="app-object")
            return "/applications/app-object", outs
        elif typ == "azuread:index/applicationPassword:ApplicationPassword":
            period = inputs["rotateWhenChanged"]["period"]
            outs.update(value=f"generated-secret-{period}", keyId=f"key-{period}")
        elif typ == "random:index/randomPassword:RandomPassword":
            outs.update(result=f"Generated-Pa55-{inputs['keepers']['rotation']}")
        elif typ == "azuread:index/user:User":
            outs.update(objectId="user-object")
        elif typ.startswith("pulumi-python:dynamic"):
            outs.update(systemuser_id="systemuser-1", business_unit_id="bu-1", version="1.0.0.0",
                        role_id="role-1", validated_at="2025-01-01T00:00:00Z", lead_id="lead-1",
                        revision=f"rev-{args.name}")  # fmt: skip
            if typ.endswith(":ApplicationUser"):  # its resource id is the systemuserid, as the provider returns
                return "systemuser-1", outs
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def record_options(self, args: pulumi.ResourceTransformationArgs):
        opts = args.opts
        reg = self.resources.setdefault(args.name, Registered(args.type_, args.name, {}))
        reg.parent = opts.parent._name if opts.parent is not None else None
        reg.depends_on = sorted(d._name for d in (opts.depends_on or []) if isinstance(d, pulumi.Resource))
        reg.options = {
            "retain_on_delete": opts.retain_on_delete,
            "additional_secret_outputs": list(opts.additional_secret_outputs or []),
            "protect": opts.protect,
        }
        return None

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources.values() if r.typ.endswith(suffix)]

    def one(self, suffix: str) -> Registered:
        found = self.of_type(suffix)
        assert len(found) == 1, (suffix, [r.name for r in found])
        return found[0]


async def _snapshot(outputs: dict[str, pulumi.Output]) -> dict[str, tuple[Any, bool]]:
    result = {}
    for key, output in outputs.items():
        result[key] = (await output.future(), await output.is_secret())
    return result


class ProgramRun:
    """Runs the program (components.lead_destination.run) once under the mock runtime."""

    def __init__(self, mocks: pulumi.runtime.Mocks, stack: str = "customer1") -> None:
        self.mocks = mocks
        self.stack = stack
        self.outputs: dict[str, tuple[Any, bool]] = {}

    def __call__(self, settings: Settings | None, today: dt.date) -> ProgramRun:
        """With settings None the program reads the stack config set with set_all_config."""
        runtime_settings.set_root_resource(None)
        pulumi.runtime.set_mocks(self.mocks, project="lead-destination", stack=self.stack, preview=False)
        if hasattr(self.mocks, "record_options"):
            pulumi.runtime.register_stack_transformation(self.mocks.record_options)
        captured = self.outputs

        @pulumi.runtime.test
        def program():
            destination = run(settings, today=today)
            outputs = {
                "partnerCenter": destination.partner_center,
                "secretExpiresOn": destination.secret_expires_on,
                "solutionVersion": destination.solution_version,
                "applicationUserId": destination.application_user_id,
                "validatedAt": destination.validated_at,
            }

            async def collect():
                captured.update(await _snapshot(outputs))

            return pulumi.Output.from_input(asyncio.ensure_future(collect()))

        program()
        return self


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    zip_path = tmp_path / "solution_managed.zip"
    zip_path.write_bytes(b"zip")
    raw = {"instanceUrl": "https://contoso.crm4.dynamics.com", "solution": json.dumps({"path": str(zip_path)}),
           "contactEmails": "leads@contoso.com;sales@contoso.com"}  # fmt: skip
    raw.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return parse_settings(raw, project_dir=ROOT, secret_keys=frozenset({"existingApplicationSecret"}))


TODAY = dt.date(2025, 3, 10)


# ----------------------------------------------------------------------------------------------
# rotation periods (pure)


def test_rotation_key_is_stable_inside_a_period_and_turns_exactly_at_its_end():
    period = rotation_period(TODAY, 180)
    assert period.start <= TODAY < period.end and (period.end - period.start).days == 180
    assert rotation_period(period.start, 180).key == period.key
    assert rotation_period(period.end - dt.timedelta(days=1), 180).key == period.key
    assert rotation_period(period.end, 180).key != period.key
    assert rotation_period(period.end, 180).start == period.end
    assert rotation_period(EPOCH, 90).key == "90d-0"


# ----------------------------------------------------------------------------------------------
# Entra identity alone (no Dynamics resources)


def _entra_only(settings: Settings, today: dt.date) -> tuple[GraphMocks, dict[str, tuple[Any, bool]]]:
    mocks = GraphMocks()
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="lead-destination", stack="entra", preview=False)
    pulumi.runtime.register_stack_transformation(mocks.record_options)
    captured: dict[str, tuple[Any, bool]] = {}

    @pulumi.runtime.test
    def program():
        identity = EntraServiceIdentity("leads-app", settings.application, today=today)
        outs = {"clientId": identity.client_id, "tenantId": identity.tenant_id,
                "clientSecret": identity.client_secret, "secretExpiresOn": identity.secret_expires_on}  # fmt: skip

        async def collect():
            captured.update(await _snapshot(outs))

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    program()
    return mocks, captured


def test_entra_identity_registers_a_multitenant_app_with_crm_user_impersonation(tmp_path):
    settings = settings_for(tmp_path, application={"redirectUris": ["https://contosoapp1/auth"],
                                                   "displayName": "Contoso leads", "adminConsent": True})
    mocks, outs = _entra_only(settings, TODAY)
    app = mocks.one(":Application")
    assert app.inputs["signInAudience"] == "AzureADMultipleOrgs"
    assert app.inputs["displayName"] == "Contoso leads"
    assert app.inputs["web"]["redirectUris"] == ["https://contosoapp1/auth"]
    assert app.inputs["requiredResourceAccesses"] == [
        {"resourceAppId": CRM_APP_ID, "resourceAccesses": [{"id": RESOLVED_SCOPE, "type": "Scope"}]}
    ]
    crm = mocks.resources["leads-app-dynamics-crm"]
    assert crm.inputs["clientId"] == CRM_APP_ID and crm.inputs["useExisting"] is True
    assert crm.options["retain_on_delete"] is True  # the tenant's CRM principal is never deleted
    sp = mocks.resources["leads-app-sp"]
    assert sp.inputs["clientId"] == APP_CLIENT_ID
    grant = mocks.one(":ServicePrincipalDelegatedPermissionGrant")
    assert grant.inputs["servicePrincipalObjectId"] == "app-sp-object"
    assert grant.inputs["resourceServicePrincipalObjectId"] == "crm-sp-object"
    assert grant.inputs["claimValues"] == ["user_impersonation"]
    password = mocks.one(":ApplicationPassword")
    assert password.inputs["applicationId"] == "/applications/app-object"
    assert "value" in password.options["additional_secret_outputs"]
    for reg in (app, crm, sp, grant, password):
        assert reg.parent == "leads-app"
    assert mocks.resources["leads-app"].typ == "lead-destination:components:EntraServiceIdentity"
    assert outs["clientSecret"] == (f"generated-secret-{rotation_period(TODAY, 180).key}", True)
    assert outs["clientId"] == (APP_CLIENT_ID, False) and outs["tenantId"] == (TENANT, False)


def test_password_end_date_is_explicit_and_follows_the_rotation_period(tmp_path):
    settings = settings_for(tmp_path, application={"secretLifetimeDays": 400, "rotationDays": 120})
    mocks, outs = _entra_only(settings, TODAY)
    period = rotation_period(TODAY, 120)
    password = mocks.one(":ApplicationPassword").inputs
    expected_end = (period.start + dt.timedelta(days=400)).isoformat() + "T00:00:00Z"
    assert password["endDate"] == expected_end and outs["secretExpiresOn"] == (expected_end, False)
    assert password["rotateWhenChanged"] == {"period": period.key}
    # always valid for at least lifetime - rotation days after the rotation date
    assert dt.date.fromisoformat(expected_end[:10]) - period.end == dt.timedelta(days=400 - 120)


def test_secret_rotates_exactly_when_the_period_turns(tmp_path):
    settings = settings_for(tmp_path)
    period = rotation_period(TODAY, 180)
    runs = {day: _entra_only(settings, day)[0].one(":ApplicationPassword").inputs
            for day in (period.start, period.end - dt.timedelta(days=1), period.end)}  # fmt: skip
    first, last_day, turned = runs.values()
    assert first == last_day  # no input change inside a period: no replacement
    assert turned["rotateWhenChanged"] != first["rotateWhenChanged"]  # replaced on the first run after
    assert turned["endDate"] > first["endDate"]


def test_scope_id_falls_back_to_the_well_known_id_only_when_configured(tmp_path):
    class NoScopeMocks(GraphMocks):
        def new_resource(self, args):
            rid, outs = super().new_resource(args)
            if args.inputs.get("clientId") == CRM_APP_ID:
                outs["oauth2PermissionScopeIds"] = {}
            return rid, outs

    def scope_with(fallback: bool) -> Any:
        mocks = NoScopeMocks()
        runtime_settings.set_root_resource(None)
        pulumi.runtime.set_mocks(mocks, project="lead-destination", stack="entra", preview=False)
        settings = settings_for(tmp_path, application={"scopeIdFallback": fallback})

        @pulumi.runtime.test
        def program():
            return EntraServiceIdentity("leads-app", settings.application, today=TODAY).client_id

        program()
        return mocks.one(":Application").inputs["requiredResourceAccesses"][0]["resourceAccesses"][0]["id"]

    assert scope_with(True) == USER_IMPERSONATION_SCOPE_ID
    with pytest.raises(Exception, match="scopeIdFallback"):
        scope_with(False)


# ----------------------------------------------------------------------------------------------
# the whole program, per identity mode


def unwrap_secret(value: Any) -> Any:
    """The plain value of a secret-wrapped input; fails if the input was not marked secret."""
    assert rpc.is_rpc_secret(value), "expected a secret input"
    return value["value"]


def _dynamics(mocks: GraphMocks, stack: str = "customer1") -> dict[str, Registered]:
    base = f"{stack}-dynamics"
    return {part: mocks.resources[f"{base}-{part}"] for part in ("solution", "role", "privileges")}


def test_azuread_mode_graph_wires_the_new_app_into_dynamics_in_order(tmp_path):
    mocks = GraphMocks()
    result = ProgramRun(mocks)(settings_for(tmp_path, businessUnit="Sales"), TODAY)
    assert mocks.resources["customer1"].typ == "lead-destination:components:LeadDestination"
    assert mocks.resources["customer1-app"].parent == "customer1"
    assert mocks.resources["customer1-dynamics"].parent == "customer1"
    assert mocks.resources["customer1-dynamics"].typ == "lead-destination:components:DynamicsLeadWriter"
    d = _dynamics(mocks)
    user = mocks.resources["customer1-dynamics-user"]
    check = mocks.resources["customer1-dynamics-check"]
    assert d["solution"].typ.endswith(":SolutionImport") and user.typ.endswith(":ApplicationUser")
    for reg in (*d.values(), user, check):
        assert reg.parent == "customer1-dynamics"
        assert reg.inputs["instance_url"] == "https://contoso.crm4.dynamics.com"
    assert d["solution"].inputs["source_path"].endswith("solution_managed.zip")
    assert user.inputs["application_id"] == APP_CLIENT_ID and user.inputs["business_unit"] == "Sales"
    assert user.depends_on == ["customer1-app-sp"]  # created alongside the solution import
    assert d["role"].inputs["user_id"] == "systemuser-1"
    assert d["role"].inputs["role_name"] == "Microsoft Marketplace Lead Writer"
    assert d["role"].depends_on == ["customer1-dynamics-solution", "customer1-dynamics-user"]
    assert d["privileges"].depends_on == ["customer1-dynamics-solution"]
    assert {p["name"]: p["depth"] for p in d["privileges"].inputs["privileges"]}["prvReadAsyncOperation"] == "Global"
    assert check.depends_on == ["customer1-dynamics-privileges", "customer1-dynamics-role", "customer1-dynamics-user"]
    period = rotation_period(TODAY, 180)
    assert check.inputs["client_id"] == APP_CLIENT_ID and check.inputs["tenant_id"] == TENANT
    assert unwrap_secret(check.inputs["client_secret"]) == f"generated-secret-{period.key}"
    revisions = {part: f"rev-customer1-dynamics-{part}" for part in ("solution", "user", "role", "privileges")}
    assert check.inputs["triggers"] == {"secretKeyId": f"key-{period.key}", "rotation": period.key,
                                        "revisions": revisions}
    order = mocks.order
    assert order.index("customer1-dynamics-solution") < order.index("customer1-dynamics-role")
    assert order.index("customer1-dynamics-user") < order.index("customer1-dynamics-role") < order.index(
        "customer1-dynamics-check")  # fmt: skip

    pc, pc_secret = result.outputs["partnerCenter"]
    assert pc_secret is True
    assert pc == {"instanceUrl": "https://contoso.crm4.dynamics.com", "authentication": "azureAD",
                  "applicationId": APP_CLIENT_ID, "directoryId": TENANT,
                  "clientSecret": f"generated-secret-{period.key}",
                  "contactEmail": "leads@contoso.com;sales@contoso.com"}  # fmt: skip
    assert result.outputs["solutionVersion"] == ("1.0.0.0", False)
    assert result.outputs["applicationUserId"] == ("systemuser-1", False)
    assert result.outputs["validatedAt"] == ("2025-01-01T00:00:00Z", False)
    expires = (period.start + dt.timedelta(days=365)).isoformat() + "T00:00:00Z"
    assert result.outputs["secretExpiresOn"] == (expires, False)


def test_existing_application_mode_registers_only_dynamic_resources(tmp_path):
    mocks = GraphMocks()
    settings = settings_for(tmp_path, existingApplication=EXISTING, existingApplicationSecret="brought-secret")
    result = ProgramRun(mocks)(settings, TODAY)
    custom = [r for r in mocks.resources.values() if not r.typ.startswith("lead-destination:components:")]
    assert custom and all(r.typ.startswith("pulumi-python:dynamic") for r in custom)
    assert not mocks.of_type(":Application")
    user = mocks.resources["customer1-dynamics-user"]
    assert user.inputs["application_id"] == EXISTING["clientId"]
    check = mocks.resources["customer1-dynamics-check"]
    assert unwrap_secret(check.inputs["client_secret"]) == "brought-secret" and check.inputs["tenant_id"] == EXISTING["tenantId"]
    pc, pc_secret = result.outputs["partnerCenter"]
    assert pc_secret is True
    assert (pc["applicationId"], pc["directoryId"], pc["clientSecret"]) == (
        EXISTING["clientId"], EXISTING["tenantId"], "brought-secret")  # fmt: skip
    assert result.outputs["secretExpiresOn"] == (None, False)


def test_validation_off_registers_no_lead_write_check(tmp_path):
    mocks = GraphMocks()
    ProgramRun(mocks)(settings_for(tmp_path, validate="false"), TODAY)
    assert "customer1-dynamics-check" not in mocks.resources
    assert not mocks.of_type(":LeadWriteCheck")


def test_office365_mode_graph_has_user_licence_and_synced_systemuser(tmp_path):
    mocks = GraphMocks()
    settings = settings_for(tmp_path, authentication="office365",
                            office365={"userPrincipalName": "leads@contoso.onmicrosoft.com", "usageLocation": "DE"})
    result = ProgramRun(mocks)(settings, TODAY)
    period = rotation_period(TODAY, 90)
    password = mocks.one(":RandomPassword")
    assert password.inputs["keepers"] == {"rotation": period.key} and password.parent == "customer1-o365"
    user = mocks.one("azuread:index/user:User")
    assert user.inputs["forcePasswordChange"] is False and user.inputs["usageLocation"] == "DE"
    assert user.inputs["userPrincipalName"] == "leads@contoso.onmicrosoft.com"
    assert unwrap_secret(user.inputs["password"]) == f"Generated-Pa55-{period.key}"
    licence = mocks.one(":UserLicense")
    assert licence.inputs == {"userObjectId": "user-object", "skuId": CUSTOMER_ENGAGEMENT_PLAN_SKU_ID}
    synced = mocks.resources["customer1-o365-systemuser"]
    assert synced.depends_on == ["customer1-o365-license"]
    assert synced.inputs["azure_object_id"] == "user-object"
    assert "customer1-dynamics-user" not in mocks.resources  # no application user in this mode
    role = mocks.resources["customer1-dynamics-role"]
    assert role.inputs["user_id"] == "systemuser-1" and "customer1-o365-systemuser" in role.depends_on
    check = mocks.resources["customer1-dynamics-check"]
    assert check.inputs["username"] == "leads@contoso.onmicrosoft.com"
    revisions = {part: f"rev-customer1-dynamics-{part}" for part in ("solution", "role", "privileges")}
    assert check.inputs["triggers"] == {"rotation": period.key,
                                        "revisions": {**revisions, "identity0": "rev-customer1-o365-systemuser"}}
    pc, pc_secret = result.outputs["partnerCenter"]
    assert pc_secret is True
    assert pc == {"instanceUrl": "https://contoso.crm4.dynamics.com", "authentication": "office365",
                  "username": "leads@contoso.onmicrosoft.com", "password": f"Generated-Pa55-{period.key}",
                  "contactEmail": "leads@contoso.com;sales@contoso.com"}  # fmt: skip
    assert result.outputs["secretExpiresOn"] == (period.end.isoformat() + "T00:00:00Z", False)


def test_office365_password_rotates_exactly_when_the_90_day_period_turns(tmp_path):
    settings = settings_for(tmp_path, authentication="office365",
                            office365={"userPrincipalName": "leads@contoso.onmicrosoft.com"})
    period = rotation_period(TODAY, 90)
    keepers = []
    for day in (period.start, period.end - dt.timedelta(days=1), period.end):
        mocks = GraphMocks()
        ProgramRun(mocks)(settings, day)
        keepers.append(mocks.one(":RandomPassword").inputs["keepers"])
    assert keepers[0] == keepers[1] != keepers[2]
