"""`fleet doctor`: a read-only preflight of each stack's organization, the safe first contact before
`pulumi up`. Per stack it reads the stack's own config (`pulumi config --show-secrets --json --stack NAME`
through the Automation API; the values stay in memory) and checks, without one write:

  configuration          the config passes the program's own rules
  deployer-sign-in       the deploying identity gets a token for the organization
  web-api                the organization answers RetrieveVersion with a version the client supports (9.2+)
  system-administrator   WhoAmI's user holds the System Administrator role (by role template id)
  solution               the Lead Writer solution: absent / installed version / managed, against the zip
  role                   the Lead Writer role in the lead writer's business unit
  privileges             every privilege of the privileges spec exists, each depth allowed
  lead-writer-sign-in    the existing app signs in (existing-app mode)
  offer                  Partner Center finds the product of `offer`

Each check ends ok, warn (`pulumi up` will change something, or something looks odd), fail (with what to
do) or skipped (and why). Requests: token requests, then GETs only (Dataverse, Partner Center).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pulumi import automation as auto

from components.config_reader import ConfigError
from components.settings import Settings, parse_settings
from dynamics_provider.auth import DeployerSettings
from dynamics_provider.client import DataverseClient
from dynamics_provider.config_schema import DEFAULT_ROLE_NAME
from dynamics_provider.dataverse import preflight
from dynamics_provider.dataverse import solutions as solution_api
from dynamics_provider.dataverse.privileges import RolePrivilegeState, RootRole
from dynamics_provider.dataverse.solutions import Solution, version_key
from dynamics_provider.dataverse.users import find_application_user
from dynamics_provider.errors import AuthenticationError, LeadDestinationError, ServiceError
from dynamics_provider.pipeline import RetryBounds
from dynamics_provider.solution_source import Manifest, cached, read_manifest
from dynamics_provider.tokens import client_secret_tokens, deployer_tokens
from fleet.progress import Progress
from fleet.report import DRIFTED, FAIL, FAILED, IN_SYNC, OK, SKIPPED, WARN, Check, StackResult, one_line
from fleet.runner import run_each
from fleet.workspace import Workspace

# The solution Microsoft ships for lead management ("MicrosoftMarketplacesLeadIntegrationSolution_<version>_
# target_CRM_6.1_managed.zip"): its unique name, used when the configured zip cannot be read offline.
LEAD_WRITER_SOLUTION = "MicrosoftMarketplacesLeadIntegrationSolution"
# A preflight answers fast: few resends (the Dataverse reads of `up` keep their own, longer bounds).
PREFLIGHT_ATTEMPTS = 3
PREFLIGHT_TOTAL_SECONDS = 30.0

ASSIGN_ADMIN = ("assign the System Administrator security role to the deploying identity's application user "
                "(Power Platform admin center → Environments → the environment → Settings → Users + permissions → "
                "Application users → Edit security roles); a role held only through a team is not counted here")
MAKE_APP_USER = ("add the deploying identity's app as an application user of this organization, with the System "
                 "Administrator role (Power Platform admin center → Environments → Settings → Users + permissions → "
                 "Application users → New app user)")


@dataclass
class _Run:
    """What one stack's checks found so far; later checks read the earlier ones' findings."""

    name: str
    on_activity: Callable[[str], None]
    checks: list[Check] = field(default_factory=list)
    settings: Settings | None = None
    deployer: DeployerSettings | None = None
    client: DataverseClient | None = None
    answered: bool = False  # the organization answered the first read
    solution: Solution | None = None
    solution_known: bool = False

    def add(self, name: str, status: str, detail: str, advice: str | None = None) -> None:
        self.checks.append(Check(name, status, one_line(detail) or detail, advice))

    def skip(self, names: Sequence[str], reason: str) -> None:
        for name in names:
            self.add(name, SKIPPED, reason)


def _result(name: str, checks: list[Check], seconds: float) -> StackResult:
    failed = [c for c in checks if c.status == FAIL]
    warned = [c for c in checks if c.status == WARN]
    status = FAILED if failed else DRIFTED if warned else IN_SYNC
    return StackResult(name, status, error=failed[0].describe() if failed else None, duration_s=seconds,
                       flags=[c.describe() for c in failed + warned], checks=checks)


# --- the checks ---------------------------------------------------------------------------------------
def read_stack(ws: Workspace, name: str) -> tuple[Settings, DeployerSettings]:
    """The stack's settings as the program reads them, and the deploying identity's as its providers do
    (stack keys, `azuread:*`, then ARM_* / AZURE_* variables). Secret values stay in these objects."""
    config = ws.stack(name).get_all_config()  # `pulumi config --show-secrets --json --stack NAME`
    prefix = ws.namespace + ":"
    raw = {key[len(prefix):]: value.value for key, value in config.items() if key.startswith(prefix)}
    secret = frozenset(key[len(prefix):] for key, value in config.items() if key.startswith(prefix) and value.secret)
    settings = parse_settings(raw, project_dir=ws.dir, secret_keys=secret)
    deployer = DeployerSettings.from_sources({key: value.value for key, value in config.items()})
    return settings, deployer


def _read_configuration(ws: Workspace, run: _Run) -> None:
    try:
        run.settings, run.deployer = read_stack(ws, run.name)
    except ConfigError as error:
        problems = "; ".join(str(p) for p in error.problems)
        run.add("configuration", FAIL, f"invalid configuration: {problems}",
                "fix each setting named with `pulumi config set --stack " + run.name + "` (docs/configuration.md)")
    except auto.errors.CommandError as error:
        stderr = str(error).partition("\n stderr: ")[2]  # never its stdout: `--show-secrets` values
        run.add("configuration", FAIL, f"cannot read the stack's config: {ws.cli_failure(stderr)}",
                "check that your Pulumi login and secrets provider (PULUMI_CONFIG_PASSPHRASE[_FILE]) open this stack")
    except ValueError as error:  # a deploying-identity value (stack, azuread:* or ARM_*) that cannot be read
        run.add("configuration", FAIL, f"invalid deploying identity setting: {error}",
                "fix the setting named (docs/configuration.md, \"The deploying identity\")")
    else:
        assert run.settings is not None
        run.add("configuration", OK, f"{run.settings.instance_url}, lead writer: {_mode(run.settings)}")
        return
    run.skip(CHECKS[1:], "the stack's configuration must be fixed first")


def _said(error: Exception) -> str:
    """An error's own message, without the hint LeadDestinationError appends (the check's advice says what
    to do instead)."""
    return Exception.__str__(error)


def _mode(settings: Settings) -> str:
    return {"azureAD": "a new Entra app", "existingApplication": "an existing Entra app",
            "office365": "an Office 365 user"}.get(settings.mode, settings.mode)


def _deployer_sign_in(run: _Run) -> None:
    settings, deployer = run.settings, run.deployer
    assert settings is not None and deployer is not None
    try:
        tokens = deployer_tokens(deployer)
        tokens.get_token(f"{settings.instance_url}/.default")
    except (AuthenticationError, ValueError) as error:
        hint = getattr(error, "hint", None)
        run.add("deployer-sign-in", FAIL, _said(error), hint or "check deployerClientId, deployerTenantId and the "
                "credential (deployerClientSecret / deployerCertificatePath / ARM_* variables)")
        run.skip(("web-api", "system-administrator", "solution", "role", "privileges"),
                 "needs the deploying identity's token for the organization")
        return
    run.add("deployer-sign-in", OK, deployer.describe())
    retry = RetryBounds(max_attempts=PREFLIGHT_ATTEMPTS, max_total_seconds=PREFLIGHT_TOTAL_SECONDS,
                        timeout=deployer.request_timeout_seconds)
    run.client = DataverseClient(settings.instance_url, tokens, ca_bundle=deployer.ca_bundle, retry=retry,
                                 user_agent="lead-destination fleet-doctor")


def _web_api(run: _Run) -> None:
    client = run.client
    assert client is not None
    try:
        version = preflight.server_version(client)
    except ServiceError as error:
        run.add("web-api", FAIL, f"the organization did not answer: {_said(error)}", _organization_advice(error))
        run.skip(("system-administrator", "solution", "role", "privileges"), "needs an answer from the organization")
        return
    run.answered = True
    if version.major == 9 and (version.minor or 0) >= 2:
        run.add("web-api", OK, f"Dataverse {version.text} (the client uses Web API v9.2)")
    elif version.major is None or version.major > 9:
        run.add("web-api", WARN, f"unexpected server version {version.text!r} (the client uses Web API v9.2)",
                "nothing to do if the organization is Dataverse online; otherwise check instanceUrl")
    else:
        run.add("web-api", FAIL, f"Dataverse {version.text}: the client sends every request to /api/data/v9.2/",
                "use a Dataverse organization at version 9.2 or later (Dynamics 365 online)")


def _organization_advice(error: ServiceError) -> str:
    if error.status is None or error.status >= 500:
        return ("check instanceUrl (the environment URL in the Power Platform admin center), network access to it, "
                "and caBundle when a proxy re-signs TLS; then run doctor again")
    if error.status == 401:
        return "the organization refused the token: deployerTenantId must be the tenant of this organization"
    if error.status == 403:
        return MAKE_APP_USER
    return error.hint or "see the message above"


def _system_administrator(run: _Run) -> None:
    client = run.client
    assert client is not None
    try:
        me = client.who_am_i()
        user_id = str(me.get("UserId") or "")
        if not user_id:
            run.add("system-administrator", FAIL, f"WhoAmI answered without a UserId (keys: {sorted(me)})",
                    "check instanceUrl: it must be a Dataverse organization")
            return
        held = preflight.roles_held(client, user_id)
    except ServiceError as error:
        denied = error.status == 403
        run.add("system-administrator", FAIL, f"cannot read the deploying identity's own roles: {_said(error)}",
                ASSIGN_ADMIN if denied else _organization_advice(error))
        return
    admin = [r for r in held if preflight.is_system_administrator(r)]
    if admin:
        how = "by its role template" if admin[0].template_id else "by name (the answer carried no role template)"
        run.add("system-administrator", OK, f"user {user_id} holds System Administrator ({how})")
        return
    names = ", ".join(sorted({r.name or r.id for r in held})) or "no role"
    impostor = [r for r in held if r.name == preflight.SYSTEM_ADMINISTRATOR_NAME]
    note = " (its role named System Administrator is not built from Microsoft's System Administrator template)" \
        if impostor else ""
    run.add("system-administrator", FAIL, f"user {user_id} holds {names}, not System Administrator{note}",
            ASSIGN_ADMIN)


def zip_manifest(settings: Settings) -> Manifest | None:
    """The configured zip's manifest: the local file, or a download already in the cache (doctor downloads
    nothing); None when the zip is not at hand."""
    solution = settings.solution
    if solution.path:
        return read_manifest(Path(solution.path).read_bytes())
    data = cached(solution.sha256) if solution.sha256 else None
    return read_manifest(data) if data is not None else None


def _solution(run: _Run) -> None:
    settings, client = run.settings, run.client
    assert settings is not None and client is not None
    try:
        manifest, zip_problem = zip_manifest(settings), None
    except (LeadDestinationError, OSError) as error:
        manifest, zip_problem = None, f"the configured zip cannot be read: {_said(error)}"
    unique_name = manifest.unique_name if manifest else LEAD_WRITER_SOLUTION
    try:
        installed = solution_api.installed_solution(client, unique_name)
    except ServiceError as error:
        run.add("solution", FAIL, zip_problem or f"cannot read the installed solutions: {_said(error)}",
                ASSIGN_ADMIN if error.status == 403 else _organization_advice(error))
        return
    run.solution, run.solution_known = installed, True  # what the role check needs, even with a bad zip
    if zip_problem:
        run.add("solution", FAIL, zip_problem,
                "point solution.path at Microsoft's Lead Writer solution zip (or solution.url + solution.sha256)")
        return
    run.add("solution", *_solution_verdict(settings, unique_name, installed, manifest))


def _solution_verdict(settings: Settings, unique_name: str, installed: Solution | None,
                      manifest: Manifest | None) -> tuple[str, str, str | None]:
    """(status, detail, advice) of the installed solution against the configured zip (None: not at hand)."""
    source = "solution.path" if settings.solution.path else "solution.url"
    if installed is None:
        what = f"version {manifest.version}" if manifest else "it"
        return WARN, f"{unique_name} is not installed", \
            f"pulumi up imports {what} from {source}; the role {settings.role_name!r} comes with it"
    found = f"{unique_name} {installed.version} ({'managed' if installed.managed else 'unmanaged'}) is installed"
    if not installed.managed and not settings.solution.allow_unmanaged:
        return FAIL, f"{found}: the stack imports managed solutions only", (
            "remove the unmanaged solution (Power Apps → Solutions → Delete; Dataverse does not import a managed "
            "solution over an unmanaged one), or set solution.allowUnmanaged true with an unmanaged zip")
    if manifest is None:
        return OK, f"{found}; the zip at solution.url is not downloaded yet, pulumi up compares versions", None
    if installed.managed != manifest.managed:
        return FAIL, f"{found}, the zip is {'managed' if manifest.managed else 'unmanaged'}", \
            "use a zip of the installed kind (Dataverse refuses to import one kind over the other)"
    have, want = version_key(installed.version), version_key(manifest.version)
    if have < want:
        return WARN, f"{found}; the zip is {manifest.version}", f"pulumi up upgrades it to {manifest.version}"
    if have > want:
        return FAIL, f"{found}, newer than the zip's {manifest.version}", \
            f"point {source} at version {installed.version} or later: the stack never downgrades a solution"
    return OK, found, None


def _role(run: _Run) -> None:
    settings, client = run.settings, run.client
    assert settings is not None and client is not None
    where = settings.business_unit or "the root business unit"
    try:
        unit = preflight.business_unit(client, settings.business_unit)
        if unit is None:
            run.add("role", FAIL, f"no business unit is named {settings.business_unit!r}",
                    "set businessUnit to a name shown under Settings → Business Management → Business Units, or "
                    "its id (unset: the root business unit)")
            return
        where = f"business unit {unit.get('name') or unit.get('businessunitid')}"
        copy = preflight.role_in_business_unit(client, settings.role_name, str(unit["businessunitid"]))
    except ServiceError as error:
        run.add("role", FAIL, f"cannot read the roles of {where}: {_said(error)}",
                ASSIGN_ADMIN if error.status == 403 else _organization_advice(error))
        return
    if copy is not None:
        run.add("role", OK, f"{settings.role_name!r} in {where}")
    elif run.solution_known and run.solution is None:
        run.add("role", SKIPPED, f"{settings.role_name!r} is not in {where} yet: it will come with the solution")
    else:
        installed = f" although {run.solution.unique_name} {run.solution.version} is installed" if run.solution else ""
        run.add("role", FAIL, f"no role named {settings.role_name!r} in {where}{installed}",
                "check roleName against Settings → Security → Security roles (the solution's role is "
                f"{DEFAULT_ROLE_NAME!r}), or reinstall the Lead Writer solution")


def _privileges(run: _Run) -> None:
    settings, client = run.settings, run.client
    assert settings is not None and client is not None
    wanted = dict(settings.privileges)
    try:
        rows = preflight.privilege_rows(client, wanted)
    except ServiceError as error:
        run.add("privileges", FAIL, f"cannot read the privilege catalogue: {_said(error)}",
                ASSIGN_ADMIN if error.status == 403 else _organization_advice(error))
        return
    problems = RolePrivilegeState(RootRole("", None), rows, {}).problems(wanted)
    spec = settings.privileges_path
    if problems:
        run.add("privileges", FAIL, "; ".join(problems),
                f"edit {spec}: each name must be a privilege of this organization, each depth one it allows "
                "(Basic, Local, Deep, Global as the privilege's canbe* columns say)")
    else:
        run.add("privileges", OK, f"all {len(wanted)} of {spec} exist with their depths allowed")


def _lead_writer_sign_in(run: _Run) -> None:
    settings, deployer = run.settings, run.deployer
    assert settings is not None and deployer is not None
    app = settings.existing_application
    if settings.mode == "azureAD":
        run.add("lead-writer-sign-in", SKIPPED, "the stack creates the lead writer's Entra app and its secret")
        return
    if app is None:
        run.add("lead-writer-sign-in", SKIPPED, "the stack sets the Office 365 lead writer's password")
        return
    try:
        tokens = client_secret_tokens(deployer.authority(app.tenant_id), app.client_id, app.secret,
                                      ca_bundle=deployer.ca_bundle)
        tokens.get_token(f"{settings.instance_url}/.default")
    except (AuthenticationError, ValueError) as error:
        run.add("lead-writer-sign-in", FAIL, _said(error), getattr(error, "hint", None) or
                "check existingApplication.clientId, existingApplication.tenantId and existingApplicationSecret")
        return
    detail = f"app {app.client_id} signs in to tenant {app.tenant_id}"
    if run.client is not None and run.answered:
        try:
            user = find_application_user(run.client, app.client_id)
        except ServiceError:
            user = None
        else:
            detail += "; its application user exists (pulumi up adopts it)" if user else \
                "; pulumi up creates its application user"
    run.add("lead-writer-sign-in", OK, detail)


def _offer(run: _Run) -> None:
    settings, deployer = run.settings, run.deployer
    assert settings is not None and deployer is not None
    if not settings.offer:
        run.add("offer", SKIPPED, "offer is not set: copy the partnerCenter stack output into Partner Center")
        return
    from dynamics_provider.offer_destination import DEFAULT_SCHEMA_VERSION
    from dynamics_provider.partner_center import ProductIngestion, partner_center_client

    offer = settings.offer
    offer_id = offer if isinstance(offer, str) else str(offer["id"])
    version = DEFAULT_SCHEMA_VERSION if isinstance(offer, str) else offer.get("schemaVersion") or DEFAULT_SCHEMA_VERSION
    manager = ("the deploying identity's app must be added to the Partner Center account with the Manager role "
               "(Partner Center → Account settings → User management → Azure AD applications)")
    try:
        product = ProductIngestion(partner_center_client(deployer), version).find_product(offer_id)
    except ServiceError as error:
        run.add("offer", FAIL, f"Partner Center: {_said(error)}", manager if error.status in (401, 403) else error.hint)
        return
    except LeadDestinationError as error:
        run.add("offer", FAIL, f"Partner Center: {_said(error)}", error.hint)
        return
    if product is None:
        run.add("offer", FAIL, f"no product with external id {offer_id!r} in this Partner Center account",
                "check offer (Partner Center → the offer → Offer setup → Offer ID); " + manager)
        return
    run.add("offer", OK, f"offer {offer_id!r} is {product}")


# --- many stacks ----------------------------------------------------------------------------------------
def run_doctor(ws: Workspace, names: Sequence[str], *, parallel: int, progress: Progress) -> list[StackResult]:
    """`diagnose_stack` of every stack, `parallel` at a time; results in `names` order. Ctrl-C: the checks
    running finish (each read is bounded), stacks not started are reported failed as not run (Interrupted)."""
    return run_each(names, lambda name, activity: diagnose_stack(ws, name, activity), parallel=parallel,
                    progress=progress)


def diagnose_stack(ws: Workspace, name: str, on_activity: Callable[[str], None] | None = None) -> StackResult:
    """One stack's checks, its configuration read from the workspace."""
    started = time.monotonic()
    run = _Run(name, on_activity or (lambda text: None))
    run.on_activity("reading the configuration")
    _read_configuration(ws, run)
    return _continue(run, started)


def _continue(run: _Run, started: float) -> StackResult:
    for check, step in _STEPS.items():
        if any(c.name == check for c in run.checks):
            continue  # skipped by an earlier check
        run.on_activity(f"checking {check}")
        try:
            step(run)
        except Exception as exc:  # noqa: BLE001 - a defect in one check is reported, the others still run
            run.add(check, FAIL, f"unexpected {type(exc).__name__}: {exc}",
                    "this is a defect of lead-destination's fleet doctor: report it with this line")
    return _result(run.name, run.checks, time.monotonic() - started)


# The checks after `configuration`, in the order they run (and are reported).
_STEPS: dict[str, Callable[[_Run], None]] = {
    "deployer-sign-in": _deployer_sign_in, "web-api": _web_api, "system-administrator": _system_administrator,
    "solution": _solution, "role": _role, "privileges": _privileges, "lead-writer-sign-in": _lead_writer_sign_in,
    "offer": _offer}
CHECKS = ("configuration", *_STEPS)


def printable(result: StackResult) -> list[str]:
    """The lines `fleet doctor` prints for one stack after the run: each check, and what to do."""
    marks = {OK: "✓", WARN: "!", FAIL: "✗", SKIPPED: "–"}
    lines = [result.name]
    for check in result.checks or []:
        lines.append(f"  {marks.get(check.status, '?')} {check.name:<21} {check.detail}")
        if check.advice and check.status in (FAIL, WARN):
            lines.append(f"  {'':<23} → {check.advice}")
    if not result.checks and result.error:
        lines.append(f"  ✗ {result.error}")
    return lines
