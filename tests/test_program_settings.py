"""Stack configuration validation: every bad value is reported, all at once, with secrets masked,
and an invalid stack registers no resource at all (Pulumi's mock runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml

from components.settings import (
    CUSTOMER_ENGAGEMENT_PLAN_SKU_ID,
    DEFAULT_ROLE_NAME,
    KNOWN_KEYS,
    ConfigError,
    parse_settings,
)

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


def problems_of(raw: dict[str, object], project_dir: Path = ROOT) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, project_dir=project_dir)
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
    for value in ("60", "12.5", "3600"):
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
                            existingApplicationSecret="very-secret-value"))
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
    "unknown authentication": ({"authentication": "saml"}, "lead-destination:authentication = 'saml': expected azureAD or office365"),
    "unknown key": ({"instanceUrI": GOOD_URL}, "lead-destination:instanceUrI = 'https://contoso.crm4.dynamics.com': expected no such key"),
    "secret lifetime above 730": ({"application": {"secretLifetimeDays": 900}}, "application.secretLifetimeDays = 900: expected a whole number from 1 to 730"),
    "secret lifetime above configured max": ({"application": {"secretLifetimeDays": 400, "maxSecretLifetimeDays": 365}}, "application.secretLifetimeDays = 400: expected a whole number from 1 to 365"),
    "rotation not before expiry": ({"application": {"secretLifetimeDays": 100, "rotationDays": 100}}, "application.rotationDays = 100: expected fewer days than secretLifetimeDays (100)"),
    "lifetime not a number": ({"application": {"secretLifetimeDays": "forever"}}, "application.secretLifetimeDays = 'forever': expected a whole number"),
    "http redirect uri": ({"application": {"redirectUris": ["http://contosoapp1/auth"]}}, "application.redirectUris = 'http://contosoapp1/auth': expected https URLs"),
    "admin consent not boolean": ({"application": {"adminConsent": "yes"}}, "application.adminConsent = 'yes': expected true or false"),
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
    "bad contact email": ({"contactEmails": "leads@contoso.com;not-an-email"}, "contactEmails = 'not-an-email': expected email addresses"),
    "validate not boolean": ({"validate": "sometimes"}, "validate = 'sometimes': expected true or false"),
    "privileges spec missing": ({"privileges": "nope/privileges.yaml"}, "privileges = 'nope/privileges.yaml': expected the path of a privileges YAML spec"),
    "deployer tenant not guid": ({"deployerTenantId": "contoso.onmicrosoft.com"}, "deployerTenantId = 'contoso.onmicrosoft.com': expected a GUID"),
    "ca bundle missing": ({"caBundle": "/nonexistent/ca.pem"}, "caBundle = '/nonexistent/ca.pem': expected the path of an existing file"),
    "partner center endpoint http": ({"partnerCenterEndpoint": "http://127.0.0.1/rp"}, "partnerCenterEndpoint = 'http://127.0.0.1/rp': expected an https URL"),
    "no email for the application user": ({"contactEmails": None}, "applicationUser.email = <unset>: expected the email of the Dynamics application user"),
    "offer object without id": ({"offer": {"schemaVersion": "2022-03-01-preview3"}}, "offer.id = <unset>: expected the Partner Center offer id"),
    "application user email": ({"applicationUser": {"email": "nobody"}}, "applicationUser.email = 'nobody': expected an email address"),
    "request timeout zero": ({"requestTimeoutSeconds": "0"}, "requestTimeoutSeconds = '0': expected a number of seconds, more than 0 and at most 3600"),
    "request timeout text": ({"requestTimeoutSeconds": "a minute"}, "requestTimeoutSeconds = 'a minute': expected a number of seconds"),
    "offer unknown field": ({"offer": {"offerId": "contoso-lead-offer"}}, "offer.offerId = 'contoso-lead-offer': expected no such key"),
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
        parse_settings(raw, project_dir=ROOT)
    message = str(caught.value)
    assert len(caught.value.problems) >= 6
    assert message.startswith(f"invalid stack configuration ({len(caught.value.problems)} problem(s))")
    for key in ("instanceUrl", "authentication", "cloud", "existingApplication", "deployerTenantId",
                "unknownKey", "application.secretLifetimeDays"):
        assert f"lead-destination:{key} =" in message
    assert "hunter2-secret-value" not in message and "another-secret-value" not in message


def test_an_empty_privileges_spec_and_bad_depths_are_refused(tmp_path, zip_path):
    spec = tmp_path / "privs.yaml"
    spec.write_text("privileges:\n  - {name: prvReadLead, depth: Organization}\n  - {name: readLead, depth: Basic}\n")
    found = problems_of(base(zip_path, privileges=str(spec)))
    assert any("privileges[0].depth = 'Organization': expected one of Basic, Local, Deep, Global" in p for p in found)
    assert any("privileges[1].name = 'readLead': expected a privilege name" in p for p in found)
    spec.write_text("privileges: []\n")
    assert any("non-empty `privileges:` list" in p for p in problems_of(base(zip_path, privileges=str(spec))))


def test_pulumi_yaml_documents_every_key_and_its_defaults_match_the_program(zip_path):
    text = (ROOT / "Pulumi.yaml").read_text()
    project = yaml.safe_load(text)
    assert project["name"] == "lead-destination" and project["runtime"]["name"] == "python"
    for key in KNOWN_KEYS:
        assert key in text, key
    declared = project["config"]
    allowed = {"type", "items", "description", "secret", "default"}
    for key, decl in declared.items():
        assert set(decl) <= allowed and decl["type"] in ("string", "integer", "boolean", "array"), key
        assert decl.get("description"), key
    # a stack built only from the declared defaults parses to the same settings as no value at all
    defaults = {k: str(d["default"]).lower() if isinstance(d["default"], bool) else str(d["default"])
                for k, d in declared.items() if "default" in d}
    assert parse_settings({**base(zip_path), **defaults}) == parse_settings(base(zip_path))


def test_dev_stack_targets_the_sandbox_in_existing_application_mode(tmp_path):
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw = {k.split(":", 1)[1]: v if isinstance(v, str) else json.dumps(v) for k, v in stack.items()}
    # the files it names are produced by the sandbox; give them a stand-in project directory
    (tmp_path / ".sandbox" / "solutions").mkdir(parents=True)
    (tmp_path / json.loads(raw["solution"])["path"]).write_bytes(b"zip")
    (tmp_path / raw["caBundle"]).write_text("pem")
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "privileges.yaml").write_text((ROOT / "components" / "privileges.yaml").read_text())
    s = parse_settings(raw, project_dir=tmp_path)
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


def test_invalid_config_fails_before_any_resource_registers():
    from pulumi.runtime import settings as runtime_settings

    from components.lead_destination import run

    mocks = _NothingMocks()
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="lead-destination", stack="bad", preview=False)
    pulumi.runtime.set_all_config({"lead-destination:instanceUrl": "http://nope", "lead-destination:validate": "maybe"})
    try:
        with pytest.raises(ConfigError) as caught:
            run()
    finally:
        pulumi.runtime.set_all_config({})
    assert {p.key for p in caught.value.problems} >= {"instanceUrl", "validate", "solution"}
    assert mocks.registered == []


def test_program_entry_point_reports_config_errors_as_one_run_error_without_secrets():
    import runpy

    from pulumi.runtime import settings as runtime_settings

    mocks = _NothingMocks()
    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project="lead-destination", stack="bad", preview=False)
    pulumi.runtime.set_all_config({"lead-destination:existingApplicationSecret": "entry-point-secret",
                                   "lead-destination:authentication": "kerberos"})
    try:
        with pytest.raises(pulumi.RunError) as caught:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
    finally:
        pulumi.runtime.set_all_config({})
    message = str(caught.value)
    assert "lead-destination:instanceUrl = <unset>" in message and "'kerberos'" in message
    assert "entry-point-secret" not in message and mocks.registered == []


def test_a_secret_under_a_misplaced_or_mistyped_key_is_never_echoed(zip_path):
    raw = base(zip_path, existingApplication={**APP, "clientSecret": "misplaced-secret-1"},
               existingApplicationSecret="x", deployerClientSecert="typo-secret-2",
               office365={"userPrincipalName": "a@b.com", "password": "nested-secret-3"})
    found = problems_of(raw)
    message = "\n".join(found)
    assert "lead-destination:existingApplication.clientSecret = [secret]: expected no such key" in message
    assert "lead-destination:deployerClientSecert = [secret]: expected no such key" in message
    assert any(p.startswith("lead-destination:office365 = ") and '"password": "[secret]"' in p for p in found), found
    for value in ("misplaced-secret-1", "typo-secret-2", "nested-secret-3"):
        assert value not in message
    # names that only mention a secret are shown: they hold no credential
    assert any("application.secretLifetimeDays = 0:" in p for p in problems_of(base(zip_path, application={"secretLifetimeDays": 0})))


def test_a_signed_url_is_shown_without_its_query(zip_path):
    found = problems_of(base(zip_path, solution={"url": "http://store.example/s.zip?sv=1&sig=SasSignature123"}))
    assert any("solution.url = 'http://store.example/s.zip?[query hidden]': expected an https URL" in p for p in found)
    assert "SasSignature123" not in "\n".join(found)
    found = problems_of(base(zip_path, solution={"url": "https://store.example/s.zip?sig=SasSignature123",
                                                 "sha256": "0" * 64}))
    assert any("solution.url = 'https://store.example/s.zip?[query hidden]': expected a plain https URL without query"
               in p for p in found), found
    assert "SasSignature123" not in "\n".join(found)


def test_a_value_the_stack_holds_as_secret_is_masked_whatever_its_key():
    from pulumi.runtime import settings as runtime_settings

    from components.lead_destination import run

    runtime_settings.set_root_resource(None)
    pulumi.runtime.set_mocks(_NothingMocks(), project="lead-destination", stack="bad", preview=False)
    pulumi.runtime.set_all_config({"lead-destination:instanceUrl": "https://contoso.crm4.dynamics.com",
                                   "lead-destination:contactEmails": "private-address-no-at-sign",
                                   "lead-destination:businessUnit": "Sales"},
                                  secret_keys=["lead-destination:contactEmails"])
    try:
        with pytest.raises(ConfigError) as caught:
            run()
    finally:
        pulumi.runtime.set_all_config({})
    assert "lead-destination:contactEmails = [secret]: expected email addresses" in str(caught.value)
    assert "private-address-no-at-sign" not in str(caught.value)
