"""The deploying identity's credentials (secret, certificate PEM/PFX, federated token, Azure CLI) and the
lead writer's (secret, password) through azure-identity against the sandbox's Entra over HTTPS, the
bounded retry of token requests, settings resolution and the process-wide token cache."""

from __future__ import annotations

import json
import os
import pickle
import stat
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from dynamics_provider.auth import (
    PUBLIC_CLIENT_ID,
    DeployerSettings,
    client_secret_tokens,
    deployer_tokens,
    password_tokens,
)
from dynamics_provider.credentials import TOKEN_RETRY
from dynamics_provider.errors import AuthenticationError

TOKEN_PATH = ".*/oauth2/v2.0/token$"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def token_requests(sandbox, caller: str, since: int = 0) -> list[dict]:
    return [e for e in sandbox.control.log(since=since)
            if e["kind"] == "entra" and e["path"].endswith("/oauth2/v2.0/token") and e["caller"] == caller]


def new_app(sandbox, **extra) -> tuple[str, str]:
    client_id = str(uuid.uuid4())
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    sandbox.control.register_app(client_id=client_id, client_secret=secret, display_name="test app", **extra)
    return client_id, secret


def settings_for(sandbox, **kw) -> DeployerSettings:
    info = sandbox.info
    base = dict(tenant_id=info["tenant_id"], authority_host=info["authority_host"], ca_bundle=info["ca_bundle"],
                allow_loopback=True)
    base.update(kw)
    return DeployerSettings(**base)


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)


@pytest.fixture
def short_tokens(sandbox):
    sandbox.control.settings(token_lifetime_seconds=2)
    try:
        yield 2
    finally:
        sandbox.control.settings(token_lifetime_seconds=3600)


# ---------------------------------------------------------------------------------- credentials


def test_client_secret_gets_a_token_for_the_organization(sandbox, org, deployer):
    token = deployer_tokens(deployer).get_token(f"{org}/.default")
    got = claims(token)
    assert got["aud"] == org
    assert got["appid"] == sandbox.info["admin_client_id"]
    assert got["tid"] == sandbox.info["tenant_id"]


def test_wrong_client_secret_is_an_authentication_error_with_code_and_hint_but_no_secret(sandbox, org):
    client_id, _ = new_app(sandbox)
    wrong = f"wrong-{uuid.uuid4().hex}"
    provider = deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=wrong))
    with pytest.raises(AuthenticationError) as caught:
        provider.get_token(f"{org}/.default")
    err = caught.value
    assert err.code == "AADSTS7000215"
    assert err.error == "invalid_client"
    assert "client secret is wrong" in str(err)
    assert_no_secret(err, wrong)


def test_unknown_application_and_unknown_tenant_say_which(sandbox, org):
    unknown = str(uuid.uuid4())
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(settings_for(sandbox, client_id=unknown, client_secret="whatever-1")).get_token(f"{org}/.default")
    assert caught.value.code == "AADSTS700016"
    assert "client id" in caught.value.hint

    client_id, secret = new_app(sandbox)
    other_tenant = str(uuid.uuid4())
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(settings_for(sandbox, tenant_id=other_tenant, client_id=client_id,
                                     client_secret=secret)).get_token(f"{org}/.default")
    assert "tenant" in str(caught.value).lower()
    assert_no_secret(caught.value, secret)


def _key_and_certificate() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lead-destination test deployer")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2)).sign(key, hashes.SHA256()))
    return key, cert


def _certificate(tmp_path: Path, password: str | None) -> tuple[Path, str]:
    """A PEM file with the (optionally encrypted) key and the certificate; the certificate's PEM."""
    key, cert = _key_and_certificate()
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "deployer.pem"
    path.write_bytes(key_pem + cert_pem)
    return path, cert_pem.decode()


def test_client_certificate_with_an_encrypted_key_gets_a_token(sandbox, org, tmp_path):
    password = f"pw-{uuid.uuid4().hex}"
    path, cert_pem = _certificate(tmp_path, password)
    client_id = str(uuid.uuid4())
    sandbox.control.register_app(client_id=client_id, certificate_pem=cert_pem, display_name="cert app")
    settings = settings_for(sandbox, client_id=client_id, certificate_path=str(path), certificate_password=password,
                            client_secret="ignored-because-certificate-wins")
    assert settings.credential_kind == "certificate"
    token = deployer_tokens(settings).get_token(f"{org}/.default")
    assert claims(token)["appid"] == client_id


def test_certificate_with_a_wrong_password_or_not_registered_is_refused_without_the_password(sandbox, org, tmp_path):
    password = f"pw-{uuid.uuid4().hex}"
    path, _ = _certificate(tmp_path, password)
    client_id, _ = new_app(sandbox)
    wrong = f"bad-{uuid.uuid4().hex}"
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(settings_for(sandbox, client_id=client_id, certificate_path=str(path),
                                     certificate_password=wrong)).get_token(f"{org}/.default")
    assert "certificate password" in str(caught.value)
    assert_no_secret(caught.value, wrong, password)

    with pytest.raises(AuthenticationError) as caught:  # right password, certificate not on the app
        deployer_tokens(settings_for(sandbox, client_id=client_id, certificate_path=str(path),
                                     certificate_password=password)).get_token(f"{org}/.default")
    assert caught.value.code == "AADSTS700027"
    assert_no_secret(caught.value, password)


def test_client_certificate_as_a_password_protected_pfx_gets_a_token(sandbox, org, tmp_path):
    key, cert = _key_and_certificate()
    password = f"pfx-{uuid.uuid4().hex}"
    path = tmp_path / "deployer.pfx"
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"deployer", key, cert, None, serialization.BestAvailableEncryption(password.encode())))
    client_id = str(uuid.uuid4())
    sandbox.control.register_app(client_id=client_id, display_name="pfx app",
                                 certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode())
    token = deployer_tokens(settings_for(sandbox, client_id=client_id, certificate_path=str(path),
                                         certificate_password=password)).get_token(f"{org}/.default")
    assert claims(token)["appid"] == client_id

    wrong = f"bad-{uuid.uuid4().hex}"
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(settings_for(sandbox, client_id=client_id, certificate_path=str(path),
                                     certificate_password=wrong)).get_token(f"{org}/.default")
    assert "certificate password" in str(caught.value)
    assert_no_secret(caught.value, wrong, password)


def test_federated_token_file_is_read_again_on_every_token_request(sandbox, org, tmp_path):
    subject = f"repo:contoso/leads:ref:refs/heads/{uuid.uuid4().hex[:8]}"
    client_id = str(uuid.uuid4())
    sandbox.control.register_app(client_id=client_id, federated_subject=subject, display_name="ci app")
    token_file = tmp_path / "azure-identity-token"
    stale = sandbox.control.federated_token(subject="repo:someone/else:ref:refs/heads/main")
    token_file.write_text(stale)
    settings = settings_for(sandbox, client_id=client_id, federated_token_file=str(token_file))
    provider = deployer_tokens(settings)
    with pytest.raises(AuthenticationError) as caught:
        provider.get_token(f"{org}/.default")
    assert caught.value.code == "AADSTS70021"
    assert_no_secret(caught.value, stale)

    token_file.write_text(sandbox.control.federated_token(subject=subject))  # the CI runner rotates the file
    assert claims(provider.get_token(f"{org}/.default"))["appid"] == client_id


def test_federated_token_from_the_environment_variable(sandbox, org):
    subject = f"system:serviceaccount:leads:{uuid.uuid4().hex[:8]}"
    client_id = str(uuid.uuid4())
    sandbox.control.register_app(client_id=client_id, federated_subject=subject, display_name="oidc app")
    assertion = sandbox.control.federated_token(subject=subject)
    info = sandbox.info
    settings = DeployerSettings.from_sources(
        {"lead-destination:authorityHost": info["authority_host"], "lead-destination:caBundle": info["ca_bundle"],
         "lead-destination:allowLoopback": "true"},
        environ={"ARM_TENANT_ID": info["tenant_id"], "ARM_CLIENT_ID": client_id, "ARM_OIDC_TOKEN": assertion},
    )
    assert settings.credential_kind == "federated_token"
    assert assertion not in repr(settings) and assertion not in settings.describe()
    assert claims(deployer_tokens(settings).get_token(f"{org}/.default"))["appid"] == client_id


FAKE_AZ = """#!{python}
import json, os, sys
import requests
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_RECORD"], "a") as record:
    record.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_AZ_FAIL"):
    sys.stderr.write("ERROR: AADSTS70043: The refresh token has expired. Please run 'az login' to setup account.\\n")
    sys.exit(1)
resource = args[args.index("--resource") + 1]
response = requests.post(os.environ["FAKE_AZ_CONTROL"] + "/issue-token", verify=os.environ["FAKE_AZ_CA"],
                       json={{"audience": resource, "client_id": os.environ["FAKE_AZ_CLIENT"]}})
if response.status_code != 200:
    sys.stderr.write("ERROR: " + response.text + "\\n")
    sys.exit(1)
answer = response.json()
print(json.dumps({{"accessToken": answer["access_token"], "expires_on": answer["expires_on"],
                  "subscription": "00000000-0000-0000-0000-000000000000", "tenant": answer["tenant"],
                  "tokenType": "Bearer"}}))
"""


@pytest.fixture
def fake_az(sandbox, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "az"
    script.write_text(FAKE_AZ.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "az-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_AZ_RECORD", str(record))
    monkeypatch.setenv("FAKE_AZ_CONTROL", sandbox.info["control_url"])
    monkeypatch.setenv("FAKE_AZ_CA", sandbox.info["ca_bundle"])
    monkeypatch.setenv("FAKE_AZ_CLIENT", sandbox.info["admin_client_id"])
    return record


def test_azure_cli_credential_asks_az_for_the_organization_resource_once(sandbox, org, fake_az):
    settings = DeployerSettings.from_sources({}, environ={"ARM_USE_CLI": "true",
                                                          "ARM_TENANT_ID": sandbox.info["tenant_id"]})
    assert settings.credential_kind == "azure_cli"
    provider = deployer_tokens(settings)
    first = provider.get_token(f"{org}/.default")
    same = provider.get_token(f"{org}/.default") == first  # cached until near expiry
    assert same
    assert claims(first)["aud"] == org
    calls = [json.loads(line) for line in fake_az.read_text().splitlines()]
    assert len(calls) == 1
    assert calls[0][:2] == ["account", "get-access-token"]
    assert calls[0][calls[0].index("--resource") + 1] == org
    assert calls[0][calls[0].index("--tenant") + 1] == sandbox.info["tenant_id"]


def test_azure_cli_failure_says_to_log_in(org, fake_az, monkeypatch):
    monkeypatch.setenv("FAKE_AZ_FAIL", "1")
    settings = DeployerSettings(use_azure_cli=True, tenant_id=str(uuid.uuid4()))
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(settings).get_token(f"{org}/.default")
    assert caught.value.code == "AADSTS70043"
    assert "az login" in str(caught.value)


def test_lead_writer_secret_and_office365_password_get_tokens(sandbox, org):
    info = sandbox.info
    writer = client_secret_tokens(info["authority"], info["leadwriter_client_id"], info["leadwriter_client_secret"],
                                  ca_bundle=info["ca_bundle"])
    assert claims(writer.get_token(f"{org}/.default"))["appid"] == info["leadwriter_client_id"]

    upn = f"leads-{uuid.uuid4().hex[:6]}@contoso.example"
    password = f"Pw-{uuid.uuid4().hex}"
    sandbox.control.create_user(user_principal_name=upn, password=password)
    user = password_tokens(info["authority"], upn, password, ca_bundle=info["ca_bundle"])
    got = claims(user.get_token(f"{org}/.default"))
    assert got["upn"] == upn and got["appid"] == PUBLIC_CLIENT_ID

    wrong = f"Wrong-{uuid.uuid4().hex}"
    with pytest.raises(AuthenticationError) as caught:
        password_tokens(info["authority"], upn, wrong, ca_bundle=info["ca_bundle"]).get_token(f"{org}/.default")
    assert caught.value.code == "AADSTS50126"
    assert caught.value.error == "invalid_grant"
    assert_no_secret(caught.value, wrong, password)


def test_untrusted_sandbox_certificate_is_refused_without_the_ca_bundle(sandbox, org):
    client_id, secret = new_app(sandbox)
    settings = settings_for(sandbox, client_id=client_id, client_secret=secret, ca_bundle=None)
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(settings).get_token(f"{org}/.default")
    assert "CA bundle" in str(caught.value)
    assert_no_secret(caught.value, secret)


# ------------------------------------------------------------- token requests: the bounded retry


@pytest.mark.parametrize("fault", [{"status": 503}, {"reset": True}, {"status": 429, "retry_after": 1}],
                         ids=["503", "connection-reset", "429-retry-after"])
def test_one_refusal_or_lost_answer_of_the_token_endpoint_is_retried_and_the_run_goes_on(sandbox, org, fault):
    client_id, secret = new_app(sandbox)
    mark = max((e["seq"] for e in sandbox.control.log()), default=0)
    sandbox.control.add_fault(path=TOKEN_PATH, **fault)
    token = deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=secret)).get_token(f"{org}/.default")
    assert claims(token)["appid"] == client_id
    sent = token_requests(sandbox, client_id, since=mark)
    assert [e["status"] for e in sent] == [fault.get("status", 0), 200]  # status 0: the connection was reset
    assert not any(e["inside_retry_after"] for e in sent)
    if "retry_after" in fault:
        assert sent[1]["time"] - sent[0]["time"] >= fault["retry_after"]


def test_a_token_endpoint_that_keeps_throttling_is_given_up_after_the_bounded_attempts(sandbox, org):
    client_id, secret = new_app(sandbox)
    mark = max((e["seq"] for e in sandbox.control.log()), default=0)
    sandbox.control.add_fault(path=TOKEN_PATH, status=429, retry_after=1, count=50)
    try:
        with pytest.raises(AuthenticationError) as caught:
            deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=secret)).get_token(f"{org}/.default")
    finally:
        sandbox.control.clear_faults()
    sent = token_requests(sandbox, client_id, since=mark)
    assert len(sent) == TOKEN_RETRY.max_attempts
    assert not any(e["inside_retry_after"] for e in sent)  # each wait honoured
    assert f"HTTP 429 on each of {len(sent)} attempt(s)" in str(caught.value)
    assert "retry later" in str(caught.value)
    assert_no_secret(caught.value, secret)


# ----------------------------------------------------------------------------------- the cache


def test_one_token_request_for_many_callers_on_eight_threads(sandbox, org):
    client_id, secret = new_app(sandbox)
    provider = deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=secret))
    barrier = threading.Barrier(8)

    def work() -> list[str]:
        barrier.wait()
        return [provider.get_token(f"{org}/.default") for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        seen = [token for future in [pool.submit(work) for _ in range(8)] for token in future.result()]
    assert len(seen) == 80
    assert len(set(seen)) == 1
    assert len(token_requests(sandbox, client_id)) == 1


def test_equal_settings_share_one_provider_and_cache(sandbox, org):
    client_id, secret = new_app(sandbox)
    a = deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=secret))
    b = deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=secret))
    assert a is b
    a.get_token(f"{org}/.default")
    b.get_token(f"{org}/.default")
    assert len(token_requests(sandbox, client_id)) == 1


def test_token_is_refreshed_when_it_nears_expiry_and_after_invalidate(sandbox, org, short_tokens):
    client_id, secret = new_app(sandbox)
    provider = deployer_tokens(settings_for(sandbox, client_id=client_id, client_secret=secret))
    first = claims(provider.get_token(f"{org}/.default"))
    assert claims(provider.get_token(f"{org}/.default")) == first
    assert len(token_requests(sandbox, client_id)) == 1
    time.sleep(short_tokens + 0.2)
    second = claims(provider.get_token(f"{org}/.default"))
    assert second["exp"] > time.time() > first["exp"]
    assert len(token_requests(sandbox, client_id)) == 2

    provider.invalidate(f"{org}/.default")  # what the client does on a 401
    provider.get_token(f"{org}/.default")
    assert len(token_requests(sandbox, client_id)) == 3


# ------------------------------------------------------------------------------------ settings


def test_settings_come_from_stack_config_then_azuread_config_then_environment():
    config = {
        "lead-destination:deployerClientId": "stack-client",
        "azuread:clientId": "azuread-client",
        "azuread:tenantId": "azuread-tenant",
        "azuread:clientSecret": "azuread-secret-value",
        "azuread:environment": "usgovernment",
        "lead-destination:allowLoopback": "true",
        "lead-destination:caBundle": "/etc/ca.pem",
    }
    environ = {"ARM_TENANT_ID": "env-tenant", "ARM_CLIENT_SECRET": "env-secret-value", "ARM_USE_CLI": "false",
               "LEAD_DESTINATION_PARTNER_CENTER_ENDPOINT": "https://pc.example"}
    s = DeployerSettings.from_sources(config, environ)
    assert (s.client_id, s.tenant_id, s.client_secret) == ("stack-client", "azuread-tenant", "azuread-secret-value")
    assert s.cloud == "usgovernment" and s.allow_loopback is True and s.use_azure_cli is False
    assert s.ca_bundle == "/etc/ca.pem" and s.partner_center_endpoint == "https://pc.example"
    assert s.authority() == "https://login.microsoftonline.us/azuread-tenant"
    assert s.authority("other") == "https://login.microsoftonline.us/other"
    env_only = DeployerSettings.from_sources({}, {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c",
                                                  "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token"})
    assert env_only.credential_kind == "federated_token" and env_only.federated_token_file == "/var/run/token"
    with pytest.raises(ValueError):
        DeployerSettings.from_sources({"lead-destination:allowLoopback": "maybe"}, {})


def test_credential_precedence_is_certificate_secret_federated_cli():
    assert DeployerSettings(certificate_path="/c.pem", client_secret="x1", use_azure_cli=True).credential_kind == "certificate"
    assert DeployerSettings(client_secret="x1", federated_token="t", use_azure_cli=True).credential_kind == "client_secret"
    assert DeployerSettings(federated_token_file="/f", use_azure_cli=True).credential_kind == "federated_token"
    assert DeployerSettings(use_azure_cli=True).credential_kind == "azure_cli"
    assert DeployerSettings().credential_kind is None


def test_settings_are_plain_picklable_data_that_never_show_secrets():
    s = DeployerSettings(tenant_id="t", client_id="c", client_secret="topsecret-value",
                         certificate_password="certpass-value", federated_token="oidc-token-value")
    again = pickle.loads(pickle.dumps(s))
    assert again == s and hash(again) == hash(s)
    for text in (repr(s), str(s), s.describe()):
        for secret in ("topsecret-value", "certpass-value", "oidc-token-value"):
            assert secret not in text


def test_no_credential_configured_names_the_settings_to_set():
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(DeployerSettings(tenant_id="t"))
    assert "deployerClientSecret" in str(caught.value) and "ARM_USE_CLI" in str(caught.value)
    with pytest.raises(AuthenticationError) as caught:
        deployer_tokens(DeployerSettings(client_secret="only-a-secret"))
    assert "client id and a tenant id" in str(caught.value)
    assert_no_secret(caught.value, "only-a-secret")


def test_request_timeout_comes_from_stack_config_then_environment_and_is_validated():
    assert DeployerSettings.from_sources({}, {}).request_timeout_seconds == 60.0
    assert DeployerSettings.from_sources({"lead-destination:requestTimeoutSeconds": "25"},
                                         {"LEAD_DESTINATION_REQUEST_TIMEOUT_SECONDS": "9"}).request_timeout_seconds == 25
    assert DeployerSettings.from_sources({}, {"LEAD_DESTINATION_REQUEST_TIMEOUT_SECONDS": "9"}).request_timeout_seconds == 9
    for bad in ("0", "-1", "soon", "7200", "2.5"):
        with pytest.raises(ValueError, match="requestTimeoutSeconds"):
            DeployerSettings.from_sources({"lead-destination:requestTimeoutSeconds": bad}, {})
