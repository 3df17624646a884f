"""Stack configuration validation: every bad value is reported, all at once, with secrets, unknown
keys' values and URL credentials never shown, and an invalid stack registers no resource at all
(Pulumi's mock runtime). The same cases under the real CLI: tests/test_program_config_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml

from components.settings import (
    CUSTOMER_ENGAGEMENT_PLAN_SKU_ID,
    DEFAULT_ROLE_NAME,
    ConfigError,
    parse_settings,
)
from dynamics_provider.config_schema import TOP_LEVEL

ROOT = Path(__file__).resolve().parent.parent
GOOD_URL = "https://contoso.crm4.dynamics.com"


@pytest.fixture
def zip_path(tmp_path: Path) -> str:
    path = tmp_path / "solution_managed.zip"
    path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return str(path)


def base(zip_path: str, **extra: object) -> dict[str, object]:
    raw: dict[str, object] = {"instanceUrl": GOOD_URL, "solution": json.dumps({"path": zip_path}),
                              "contactEmails": "leads@contoso.com"}
    for key, value in extra.items():
        raw[key] = value if isinstance(value, str) else json.dumps(value)
    return raw


SECRETS = frozenset({"existingApplicationSecret", "deployerClientSecret", "deployerCertificatePassword"})


def problems_of(raw: dict[str, object], project_dir: Path = ROOT) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, project_dir=project_dir, secret_keys=SECRETS)
    return [str(p) for p in caught.value.problems]


def test_minimal_config_gets_the_documented_defaults(zip_path):
    s = parse_settings(base(zip_path))
    assert s.mode == "azureAD" and s.authentication == "azureAD"
    assert (s.application.secret_lifetime_days, s.application.rotation_days) == (365, 180)
    assert s.application.max_secret_lifetime_days == 730
    assert s.role_name == DEFAULT_ROLE_NAME and s.validate is True
    assert dict(s.privileges) == {
        "prvCreateUserEntityUISettings": "Basic", "prvReadUserEntityUISettings": "Basic",
        "prvWriteUserEntityUISettings": "Basic", "prvReadAsyncOperation": "Global",
        "prvWriteAsyncOperation": "Global", "prvAppendToAsyncOperation": "Global",
    }  # fmt: skip
    assert s.instance_url == GOOD_URL and s.contact_email == "leads@contoso.com"
    assert s.application_user.email == "leads@contoso.com"  # defaults to the first contact email


def test_request_timeout_accepts_seconds_up_to_an_hour(zip_path):
    for value in ("60", "1", "3600"):
        parse_settings(base(zip_path, requestTimeoutSeconds=value))


def test_contact_emails_accept_a_list_or_a_semicolon_string(zip_path):
    as_list = parse_settings(base(zip_path, contactEmails=["a@contoso.com", "b@contoso.com"]))
    as_text = parse_settings(base(zip_path, contactEmails="a@contoso.com; b@contoso.com"))
    assert as_list.contact_email == as_text.contact_email == "a@contoso.com;b@contoso.com"


def test_office365_mode_defaults_to_the_customer_engagement_plan_and_90_days(zip_path):
    s = parse_settings(base(zip_path, authentication="office365",
                            office365={"userPrincipalName": "leads@contoso.onmicrosoft.com"}))
    assert s.mode == "office365"
    assert s.office365.license_sku_id == CUSTOMER_ENGAGEMENT_PLAN_SKU_ID
    assert s.office365.rotation_days == 90 and s.office365.usage_location == "US"


def test_existing_application_mode_keeps_the_secret_out_of_the_repr(zip_path):
    s = parse_settings(base(zip_path, existingApplication={"clientId": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01",
                                                           "tenantId": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"},
                            existingApplicationSecret="very-secret-value"), secret_keys=SECRETS)
    assert s.mode == "existingApplication" and s.existing_application.secret == "very-secret-value"
    assert "very-secret-value" not in repr(s)


APP = {"clientId": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01", "tenantId": "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0001"}

# (overrides of the base config, expected "key = value: expected ..." fragment)
ERROR_CASES = {
    "missing instance url": ({"instanceUrl": None}, "lead-destination:instanceUrl = <unset>: expected the https URL"),
    "http instance url": ({"instanceUrl": "http://contoso.crm.dynamics.com"}, "only https is accepted"),
    "non dynamics host": ({"instanceUrl": "https://contoso.example.com"}, "not a Dynamics 365 host"),
    "loopback without opt-in": ({"instanceUrl": "https://127.0.0.1:48443/orgs/x"}, "allowLoopback"),
    "wrong cloud host": ({"instanceUrl": "https://x.crm.microsoftdynamics.us"}, "belongs to the 'usgovernment' cloud"),
    "unknown cloud": ({"cloud": "mars"}, "lead-destination:cloud = 'mars': expected one of public"),
    "unknown authentication": ({"authentication": "saml"}, "lead-destination:authentication = 'saml': expected one of azureAD, office365"),
    "unknown key": ({"instanceUrI": GOOD_URL}, "lead-destination:instanceUrI: unknown key, its value is not shown; did you mean instanceUrl?"),
    "secret lifetime above 730": ({"application": {"secretLifetimeDays": 900}}, "application.secretLifetimeDays = 900: expected a whole number from 1 to 730"),
    "secret lifetime above configured max": ({"application": {"secretLifetimeDays": 400, "maxSecretLifetimeDays": 365}}, "application.secretLifetimeDays = 400: expected a whole number from 1 to 365"),
    "rotation not before expiry": ({"application": {"secretLifetimeDays": 100, "rotationDays": 100}}, "application.rotationDays = 100: expected fewer days than secretLifetimeDays (100)"),
    "lifetime not a number": ({"application": {"secretLifetimeDays": "forever"}}, "application.secretLifetimeDays = 'forever': expected a whole number"),
    "http redirect uri": ({"application": {"redirectUris": ["http://contosoapp1/auth"]}}, "application.redirectUris = 'http://contosoapp1/auth': expected https URLs"),
    "admin consent not boolean": ({"application": {"adminConsent": "sometimes"}}, "application.adminConsent = 'sometimes': expected true or false"),
    "existing app without secret": ({"existingApplication": APP}, "existingApplicationSecret = <unset>: expected its client secret"),
    "existing app bad client id": ({"existingApplication": {**APP, "clientId": "not-a-guid"}, "existingApplicationSecret": "x"}, "existingApplication.clientId = 'not-a-guid': expected a GUID"),
    "existing app with office365": ({"existingApplication": APP, "existingApplicationSecret": "x", "authentication": "office365", "office365": {"userPrincipalName": "a@b.com"}}, "authentication = 'office365': expected azureAD when existingApplication is set"),
    "secret without existing app": ({"existingApplicationSecret": "x"}, "existingApplication = <unset>: expected {clientId, tenantId}"),
    "office365 without upn": ({"authentication": "office365"}, "office365.userPrincipalName = <unset>: expected the user principal name"),
    "office365 rotation over 90": ({"authentication": "office365", "office365": {"userPrincipalName": "a@b.com", "rotationDays": 120}}, "office365.rotationDays = 120: expected a whole number from 1 to 90"),
    "office365 bad sku": ({"authentication": "office365", "office365": {"userPrincipalName": "a@b.com", "licenseSkuId": "E5"}}, "office365.licenseSkuId = 'E5': expected a GUID"),
    "office365 bad usage location": ({"authentication": "office365", "office365": {"userPrincipalName": "a@b.com", "usageLocation": "usa"}}, "office365.usageLocation = 'usa': expected a two-letter ISO country code"),
    "office365 block in azureAD mode": ({"office365": {"userPrincipalName": "a@b.com"}}, "lead-destination:office365 = "),
    "no solution": ({"solution": None}, "lead-destination:solution = <unset>: expected exactly one of solution.path"),
    "solution path and url": ({"solution": {"path": "x.zip", "url": "https://x/y.zip", "sha256": "0" * 64}}, "expected exactly one of solution.path"),
    "solution path missing": ({"solution": {"path": "/nonexistent/solution.zip"}}, "solution.path = '/nonexistent/solution.zip': expected the path of an existing file"),
    "solution url without sha": ({"solution": {"url": "https://downloads.example/solution.zip"}}, "solution.sha256 = <unset>: expected the 64-hex-digit SHA-256"),
    "solution import timeout": ({"solution": {"path": "@ZIP", "importTimeoutSeconds": 5}}, "solution.importTimeoutSeconds = 5: expected a whole number from 30 to 7200"),
    "bad contact email": ({"contactEmails": "leads@contoso.com;not-an-email"}, "contactEmails = 'not-an-email': expected an email address"),
    "validate not boolean": ({"validate": "sometimes"}, "validate = 'sometimes': expected true or false"),
    "privileges spec missing": ({"privileges": "nope/privileges.yaml"}, "privileges = 'nope/privileges.yaml': expected the path of a privileges YAML spec"),
    "deployer tenant not guid": ({"deployerTenantId": "contoso.onmicrosoft.com"}, "deployerTenantId = 'contoso.onmicrosoft.com': expected a GUID"),
    "ca bundle missing": ({"caBundle": "/nonexistent/ca.pem"}, "caBundle = '/nonexistent/ca.pem': expected the path of an existing file"),
    "partner center endpoint http": ({"partnerCenterEndpoint": "http://127.0.0.1/rp"}, "partnerCenterEndpoint = 'http://127.0.0.1/rp': expected an https URL"),
    "no email for the application user": ({"contactEmails": None}, "applicationUser.email = <unset>: expected the email of the Dynamics application user"),
    "offer object without id": ({"offer": {"schemaVersion": "2022-03-01-preview3"}}, "offer.id = <unset>: expected the Partner Center offer id"),
    "application user email": ({"applicationUser": {"email": "nobody"}}, "applicationUser.email = 'nobody': expected an email address"),
    "request timeout zero": ({"requestTimeoutSeconds": "0"}, "requestTimeoutSeconds = '0': expected a whole number from 1 to 3600"),
    "request timeout text": ({"requestTimeoutSeconds": "a minute"}, "requestTimeoutSeconds = 'a minute': expected a whole number"),
    "offer unknown field": ({"offer": {"offerId": "contoso-lead-offer"}}, "offer.offerId: unknown key, its value is not shown; did you mean offer.id?"),
    "authority host not entra": ({"authorityHost": "login.evil.example"}, "authorityHost = 'login.evil.example': expected an Entra login host"),
    "loopback authority without opt-in": ({"authorityHost": "127.0.0.1:48443"}, "authorityHost = '127.0.0.1:48443': expected an Entra login host"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_each_config_error_is_reported_with_key_value_and_expectation(case, zip_path):
    overrides, fragment = ERROR_CASES[case]
    raw = base(zip_path)
    for key, value in overrides.items():
        if value is None:
            raw.pop(key, None)
            continue
        if isinstance(value, dict) and value.get("path") == "@ZIP":
            value = {**value, "path": zip_path}
        raw[key] = value if isinstance(value, str) else json.dumps(value)
    found = problems_of(raw)
    assert any(fragment in p for p in found), found


def test_all_problems_come_in_one_message_and_secrets_are_masked(zip_path):
    raw = base(zip_path, instanceUrl="http://x", authentication="bad", cloud="mars",
               existingApplicationSecret="hunter2-secret-value", deployerClientSecret="another-secret-value",
               deployerTenantId="nope", unknownKey="1", application={"secretLifetimeDays": 0})
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, project_dir=ROOT, secret_keys=SECRETS)
    message = str(caught.value)
    assert len(caught.value.problems) >= 6
    assert message.startswith(f"invalid stack configuration ({len(caught.value.problems)} problem(s))")
    for key in ("instanceUrl", "authentication", "cloud", "existingApplication", "deployerTenantId",
                "unknownKey", "application.secretLifetimeDays"):
        assert f"lead-destination:{key} =" in message or f"lead-destination:{key}: " in message
    assert "hunter2-secret-value" not in message and "another-secret-value" not in message


def test_an_empty_privileges_spec_and_bad_depths_are_refused(tmp_path, zip_path):
    spec = tmp_path / "privs.yaml"
    spec.write_text("privileges:\n  - {name: prvReadLead, depth: Organization}\n  - {name: readLead, depth: Basic}\n")
    found = problems_of(base(zip_path, privileges=str(spec)))
    assert any("privileges[0].depth = 'Organization': expected one of Basic, Local, Deep, Global" in p for p in found)
    assert any("privileges[1].name = 'readLead': expected a privilege name" in p for p in found)
    spec.write_text("privileges: []\n")
    assert any("non-empty `privileges:` list" in p for p in problems_of(base(zip_path, privileges=str(spec))))


def test_the_defaults_pulumi_yaml_hands_every_stack_parse_like_no_value_at_all(zip_path):
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    # as the CLI delivers them to the program (seen under it): text, booleans lower case, objects as JSON
    delivered = {k: json.dumps(d["default"]) if isinstance(d["default"], dict | bool) else str(d["default"])
                 for k, d in declared.items() if "default" in d}
    assert set(delivered) | {"instanceUrl", "solution"} == set(TOP_LEVEL)
    assert parse_settings({**delivered, **base(zip_path)}) == parse_settings(base(zip_path))


def test_dev_stack_targets_the_sandbox_in_existing_application_mode(tmp_path):
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v if isinstance(v, str) else json.dumps(v) for k, v in stack.items()}
    # the files it names are produced by the sandbox; give them a stand-in project directory
    (tmp_path / ".sandbox" / "solutions").mkdir(parents=True)
    (tmp_path / json.loads(raw["solution"])["path"]).write_bytes(b"zip")
    (tmp_path / raw["caBundle"]).write_text("pem")
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "privileges.yaml").write_text((ROOT / "components" / "privileges.yaml").read_text())
    s = parse_settings(raw, project_dir=tmp_path, secret_keys=SECRETS)
    assert s.mode == "existingApplication"
    assert s.instance_url == "https://127.0.0.1:48443/orgs/contoso" and s.allow_loopback
    assert s.existing_application.client_id == "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"


class _NothingMocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.registered: list[str] = []

    def new_resource(self, args):
        self.registered.append(args.typ)
        return args.name + "_id", args.inputs

    def call(self, args):
        return {}


def run_under_mocks(config: dict[str, str], secret_keys: list[str] | None = None) -> tuple[ConfigError, list[str]]:
    """The program under Pulumi's mock runtime with `config` (keys without namespace): its ConfigError."""
    from pulumi.runtime import settings as runtime_settings

    from components.lead_destination import run

    mocks = _NothingMocks()
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="lead-destination", stack="bad", preview=False)
    pulumi.runtime.set_all_config({f"lead-destination:{k}": v for k, v in config.items()},
                                  secret_keys=[f"lead-destination:{k}" for k in secret_keys or []])
    try:
        with pytest.raises(ConfigError) as caught:
            run()
    finally:
        pulumi.runtime.set_all_config({}, secret_keys=[])
    return caught.value, mocks.registered


def test_invalid_config_fails_before_any_resource_registers():
    error, registered = run_under_mocks({"instanceUrl": "http://nope", "validate": "maybe"})
    assert {p.key for p in error.problems} >= {"instanceUrl", "validate", "solution"}
    assert registered == []


def test_program_entry_point_logs_config_errors_once_and_exits_as_already_reported(caplog):
    import runpy
    import signal

    from pulumi.runtime import settings as runtime_settings

    mocks = _NothingMocks()
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="lead-destination", stack="bad", preview=False)
    pulumi.runtime.set_all_config({"lead-destination:existingApplicationSecret": "entry-point-secret",
                                   "lead-destination:authentication": "kerberos"},
                                  secret_keys=["lead-destination:existingApplicationSecret"])
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as caught:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
    finally:
        pulumi.runtime.set_all_config({}, secret_keys=[])
        signal.signal(signal.SIGINT, ctrl_c)  # the program's own SIGINT handler stays out of pytest
    # 32: Pulumi's language host code for "the program already showed the user an error": no extra
    # "an unhandled error occurred" line, no traceback
    assert caught.value.code == 32
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]  # the mock engine's log
    assert len(errors) == 1
    message = errors[0]
    assert "lead-destination:instanceUrl = <unset>" in message and "'kerberos'" in message
    assert "entry-point-secret" not in message and "Traceback" not in message and mocks.registered == []


# --- nothing that could be a secret is shown ---------------------------------------------------------

UNKNOWN_SPELLINGS = {  # key as typed -> the known key the message suggests
    "deployerClientSecert": "deployerClientSecret",  # a typo
    "DeployerClientSecret": "deployerClientSecret",  # wrong case
    "clientSecret": "deployerClientSecret",  # a field name at the top level
    "existingApplicationSecet": "existingApplicationSecret",
    "instance_url": "instanceUrl",  # snake case
    "azureClientSecret": "deployerClientSecret",  # another tool's name for it
    "colourScheme": None,  # nothing close
}


@pytest.mark.parametrize("typed", sorted(UNKNOWN_SPELLINGS))
def test_a_value_under_an_unknown_key_is_never_shown_and_the_closest_key_is_suggested(typed, zip_path):
    marker = f"UnknownMarker-{typed}-7Qx"
    found = problems_of(base(zip_path, **{typed: marker}))
    message = "\n".join(found)
    assert marker not in message
    line = next(p for p in found if p.startswith(f"lead-destination:{typed}:"))
    assert "unknown key" in line and "not shown" in line
    guess = UNKNOWN_SPELLINGS[typed]
    assert (f"did you mean {guess}?" in line) if guess else ("docs/configuration.md" in line)


@pytest.mark.parametrize("parent, field, guess", [("existingApplication", "clientSecret", "clientId"),
                                                  ("office365", "password", None),
                                                  ("solution", "sasToken", None), ("solution", "URL", "url"),
                                                  ("applicationUser", "e-mail", "email")])
def test_a_value_under_an_unknown_field_of_an_object_is_never_shown(parent, field, guess, zip_path):
    marker = f"NestedMarker-{field}-9Zk"
    extra: dict[str, object] = {"solution": {"path": zip_path, field: marker}} if parent == "solution" else \
        {parent: {field: marker}}
    if parent == "office365":
        extra.update(authentication="office365", office365={"userPrincipalName": "a@b.com", field: marker})
    found = problems_of(base(zip_path, **extra))
    assert marker not in "\n".join(found)
    line = next(p for p in found if p.startswith(f"lead-destination:{parent}.{field}:"))
    assert (f"did you mean {parent}.{guess}?" in line) if guess else "unknown key" in line


# every URL-valued setting, with credentials in its user info and a token in its query
URL_CASES = {
    "instanceUrl": lambda u: {"instanceUrl": u},
    "solution.url": lambda u: {"solution": {"url": u, "sha256": "0" * 64}},
    "partnerCenterEndpoint": lambda u: {"partnerCenterEndpoint": u},
    "application.redirectUris": lambda u: {"application": {"redirectUris": [u]}},
    "authorityHost": lambda u: {"authorityHost": u.split("://", 1)[1]},
}


@pytest.mark.parametrize("key", sorted(URL_CASES))
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_the_user_info_and_query_of_a_url_setting_are_never_shown(key, scheme, zip_path):
    url = f"{scheme}://leak-user:UserInfoMarker-{key}@contoso.crm4.dynamics.com/x?sig=QueryMarker-{key}#FragMarker"
    found = problems_of(base(zip_path, **URL_CASES[key](url)))
    message = "\n".join(found)
    line = next(p for p in found if p.startswith(f"lead-destination:{key} ="))
    assert "***@" in line or "?…" in line, line
    for marker in (f"UserInfoMarker-{key}", f"QueryMarker-{key}", "FragMarker", "leak-user"):
        assert marker not in message


def test_the_providers_host_validator_never_shows_user_info_or_query():
    from dynamics_provider.hosts import validate_authority_host, validate_instance_url

    for url in ("https://leak-user:UserInfoMarker@contoso.crm4.dynamics.com/?sig=QueryMarker",
                "https://contoso.crm4.dynamics.com/?sig=QueryMarker", "http://u:UserInfoMarker@x.example/?q=QueryMarker",
                "https://leak-user:UserInfoMarker@127.0.0.1:1/orgs/x?sig=QueryMarker"):
        with pytest.raises(ValueError) as caught:
            validate_instance_url(url, allow_loopback=False)
        assert "UserInfoMarker" not in str(caught.value) and "QueryMarker" not in str(caught.value), str(caught.value)
    for host in ("leak-user:UserInfoMarker@login.microsoftonline.com", "login.evil.example/?t=QueryMarker",
                 "https://u:UserInfoMarker@login.evil.example"):
        with pytest.raises(ValueError) as caught:
            validate_authority_host(host)
        assert "UserInfoMarker" not in str(caught.value) and "QueryMarker" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("key", sorted(SECRETS))
def test_a_secret_key_stored_in_plain_text_is_refused_without_showing_it(key, zip_path):
    marker = f"PlainSecretMarker-{key}"
    extra: dict[str, object] = {key: marker}
    if key == "existingApplicationSecret":
        extra["existingApplication"] = APP
    raw = base(zip_path, **extra)
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, project_dir=ROOT, secret_keys=SECRETS - {key})
    message = str(caught.value)
    assert marker not in message
    assert f"lead-destination:{key}: stored in plain text, but it is a secret" in message
    assert f"`pulumi config set --secret {key}`" in message
    parse_settings(raw, project_dir=ROOT, secret_keys=SECRETS)  # stored as a secret: accepted


def test_a_plain_text_secret_is_refused_under_the_mock_runtime_before_anything_registers():
    error, registered = run_under_mocks({"deployerClientSecret": "MockPlainMarker"})
    assert "deployerClientSecret" in {p.key for p in error.problems}
    assert "MockPlainMarker" not in str(error) and registered == []
    error, _ = run_under_mocks({"deployerClientSecret": "MockPlainMarker"}, secret_keys=["deployerClientSecret"])
    assert "deployerClientSecret" not in {p.key for p in error.problems}


def test_a_value_the_stack_holds_as_secret_is_masked_whatever_its_key():
    error, _ = run_under_mocks({"instanceUrl": "https://contoso.crm4.dynamics.com",
                                "contactEmails": "private-address-no-at-sign", "businessUnit": "Sales"},
                               secret_keys=["contactEmails"])
    assert "lead-destination:contactEmails = [secret]: expected an email address" in str(error)
    assert "private-address-no-at-sign" not in str(error)


def test_an_object_is_shown_by_its_field_names_only(zip_path):
    found = problems_of(base(zip_path, office365={"userPrincipalName": "ObjectMarker@b.com"}))
    line = next(p for p in found if p.startswith("lead-destination:office365 ="))
    assert "an object with userPrincipalName" in line and "ObjectMarker" not in line
