"""The Entra emulator driven by the real msal over the sandbox's HTTPS port: every credential kind,
Entra-style errors, the tokens' claims (verified against the published JWKS) and token expiry."""

from __future__ import annotations

import datetime
import json
import re
import time
import uuid

import jwt
import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from sandbox.common import PUBLIC_CLIENT_ID

PC_PRODUCTS = "/product?$version=2022-03-01-preview2"
# The password grant is what the Office 365 lead destination uses; msal flags it as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:This API has been deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _ca_bundle_not_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a session's `verify`, which msal uses.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
def restore_settings(sandbox):
    yield sandbox.control
    sandbox.control.settings(token_lifetime_seconds=3600, latency_ms=0, throttle=None)


def confidential(info, client_id, credential):
    return msal.ConfidentialClientApplication(client_id, client_credential=credential, authority=info["authority"],
                                              instance_discovery=False, verify=info["ca_bundle"])


class LoopbackRealmSession(requests.Session):
    """msal builds the userrealm URL from the authority's host without its port; put the port back."""

    def __init__(self, info):
        super().__init__()
        self.trust_env = False
        self.verify = info["ca_bundle"]
        self._portless, self._base = "https://127.0.0.1/", f"https://{info['authority_host']}/"

    def request(self, method, url, *args, **kwargs):
        if url.startswith(self._portless):
            url = self._base + url[len(self._portless):]
        return super().request(method, url, *args, **kwargs)


def public_client(info, client_id=PUBLIC_CLIENT_ID):
    return msal.PublicClientApplication(client_id, authority=info["authority"], instance_discovery=False,
                                        http_client=LoopbackRealmSession(info))


def verified_claims(info, token, audience):
    keys = requests.get(f"{info['authority']}/discovery/v2.0/keys", verify=info["ca_bundle"], timeout=10).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.PyJWK(k) for k in keys["keys"] if k["kid"] == kid)
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience)


def make_certificate(name: str = "deployer") -> tuple[str, str, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode(), cert


def test_openid_configuration_names_the_sandbox_token_endpoint(sandbox):
    info = sandbox.info
    doc = requests.get(f"{info['authority']}/v2.0/.well-known/openid-configuration", verify=info["ca_bundle"],
                       timeout=10).json()
    assert doc["token_endpoint"] == f"{info['authority']}/oauth2/v2.0/token"
    assert doc["jwks_uri"] == f"{info['authority']}/discovery/v2.0/keys"
    assert doc["authorization_endpoint"].startswith(info["authority"])


def test_client_secret_grant_issues_a_signed_token_for_the_organization(sandbox, org):
    info = sandbox.info
    result = confidential(info, info["admin_client_id"], info["admin_client_secret"]).acquire_token_for_client(
        [f"{org}/.default"])
    assert "access_token" in result, result.get("error_description")
    claims = verified_claims(info, result["access_token"], org)
    assert claims["aud"] == org
    assert claims["tid"] == info["tenant_id"]
    assert claims["appid"] == info["admin_client_id"]
    assert claims["iss"] == f"https://sts.windows.net/{info['tenant_id']}/"
    assert claims["exp"] - claims["iat"] == 3600
    app = sandbox.control.register_app(display_name="probe")  # object id is the service principal's, distinct
    assert claims["oid"] != app["object_id"]


def test_wrong_client_secret_is_invalid_client_aadsts7000215(sandbox):
    info = sandbox.info
    result = confidential(info, info["admin_client_id"], "not-the-secret").acquire_token_for_client(
        [f"{info['instance_url']}/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215:")
    for key in ("timestamp", "trace_id", "correlation_id"):
        assert result[key]
    assert "not-the-secret" not in json.dumps(result)


def test_unknown_application_is_unauthorized_client_aadsts700016(sandbox):
    info = sandbox.info
    result = confidential(info, str(uuid.uuid4()), "whatever").acquire_token_for_client(
        [f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("unauthorized_client", [700016])


def test_unknown_resource_is_invalid_resource_aadsts500011(sandbox):
    info = sandbox.info
    result = confidential(info, info["admin_client_id"], info["admin_client_secret"]).acquire_token_for_client(
        [f"{info['authority_host']}/orgs/doesnotexist/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_resource", [500011])


@pytest.mark.parametrize("style", ["sha256-public-certificate", "sha1-thumbprint"])
def test_certificate_assertion_from_a_registered_certificate_is_accepted(sandbox, org, style):
    info = sandbox.info
    key_pem, cert_pem, cert = make_certificate()
    app = sandbox.control.register_app(display_name="cert app", certificate_pem=cert_pem)
    credential = {"private_key": key_pem}
    if style == "sha1-thumbprint":
        credential["thumbprint"] = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - what msal sends as x5t
    else:
        credential["public_certificate"] = cert_pem
    result = confidential(info, app["client_id"], credential).acquire_token_for_client([f"{org}/.default"])
    assert "access_token" in result, result.get("error_description")
    claims = verified_claims(info, result["access_token"], org)
    assert (claims["appid"], claims["oid"]) == (app["client_id"], app["object_id"])


def test_certificate_not_registered_on_the_app_is_refused(sandbox):
    info = sandbox.info
    _, registered_pem, _ = make_certificate("registered")
    other_key, other_pem, _ = make_certificate("other")
    app = sandbox.control.register_app(display_name="cert app", certificate_pem=registered_pem)
    result = confidential(info, app["client_id"], {"private_key": other_key, "public_certificate": other_pem}
                          ).acquire_token_for_client([f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_client", [700027])


def test_federated_assertion_with_a_registered_subject_is_accepted(sandbox, org):
    info = sandbox.info
    subject = f"repo:contoso/leads:environment:{uuid.uuid4().hex[:6]}"
    app = sandbox.control.register_app(display_name="ci app", federated_subject=subject)
    assertion = sandbox.control.federated_token(subject=subject)
    result = confidential(info, app["client_id"], {"client_assertion": lambda: assertion}).acquire_token_for_client(
        [f"{org}/.default"])
    assert "access_token" in result, result.get("error_description")
    assert verified_claims(info, result["access_token"], org)["appid"] == app["client_id"]


def test_federated_assertion_for_another_subject_is_refused(sandbox):
    info = sandbox.info
    app = sandbox.control.register_app(display_name="ci app", federated_subject="repo:contoso/leads:ref:main")
    assertion = sandbox.control.federated_token(subject="repo:someone/else:ref:main")
    result = confidential(info, app["client_id"], {"client_assertion": lambda: assertion}).acquire_token_for_client(
        [f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_request", [70021])


def test_password_grant_for_a_user_through_the_public_client(sandbox, org):
    info = sandbox.info
    upn = f"leads-{uuid.uuid4().hex[:6]}@contoso.example"
    user = sandbox.control.create_user(user_principal_name=upn, password="Corr3ct-horse")
    app = public_client(info)
    result = app.acquire_token_by_username_password(upn, "Corr3ct-horse", scopes=[f"{org}/.default"])
    assert "access_token" in result, result.get("error_description")
    claims = verified_claims(info, result["access_token"], org)
    assert (claims["upn"], claims["oid"]) == (upn, user["object_id"])
    kinds = [e["path"] for e in sandbox.control.log() if e["kind"] == "entra"]
    assert f"/common/userrealm/{upn}" in kinds


def test_wrong_password_is_invalid_grant_aadsts50126(sandbox):
    info = sandbox.info
    upn = f"leads-{uuid.uuid4().hex[:6]}@contoso.example"
    sandbox.control.create_user(user_principal_name=upn, password="Corr3ct-horse")
    app = public_client(info)
    result = app.acquire_token_by_username_password(upn, "wrong", scopes=[f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_grant", [50126])


def test_password_grant_through_a_confidential_app_id_is_refused(sandbox):
    info = sandbox.info
    upn = f"leads-{uuid.uuid4().hex[:6]}@contoso.example"
    sandbox.control.create_user(user_principal_name=upn, password="Corr3ct-horse")
    app = public_client(info, info["leadwriter_client_id"])  # a confidential app that sends no credential
    result = app.acquire_token_by_username_password(upn, "Corr3ct-horse", scopes=[f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("invalid_client", [7000218])
    unknown = public_client(info, str(uuid.uuid4()))
    result = unknown.acquire_token_by_username_password(upn, "Corr3ct-horse", scopes=[f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("unauthorized_client", [700016])


def test_graph_token_is_accepted_by_partner_center_and_others_are_401(sandbox):
    info = sandbox.info
    graph = confidential(info, info["admin_client_id"], info["admin_client_secret"]).acquire_token_for_client(
        ["https://graph.microsoft.com/.default"])["access_token"]
    dataverse = sandbox.control.issue_token(audience=info["instance_url"], client_id=info["admin_client_id"])
    url = info["partner_center_url"] + PC_PRODUCTS
    ok = requests.get(url, headers={"Authorization": f"Bearer {graph}"}, verify=info["ca_bundle"], timeout=10)
    wrong_audience = requests.get(url, headers={"Authorization": f"Bearer {dataverse['access_token']}"},
                                  verify=info["ca_bundle"], timeout=10)
    assert ok.status_code == 200, ok.text
    assert wrong_audience.status_code == 401
    assert wrong_audience.headers["WWW-Authenticate"].endswith("resource_id=https://graph.microsoft.com/")
    assert wrong_audience.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_token_expires_after_the_configured_lifetime(sandbox, restore_settings):
    info = sandbox.info
    restore_settings.settings(token_lifetime_seconds=2)
    app = confidential(info, info["admin_client_id"], info["admin_client_secret"])
    result = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert result["expires_in"] == 2
    url = info["partner_center_url"] + PC_PRODUCTS
    headers = {"Authorization": f"Bearer {result['access_token']}"}
    assert requests.get(url, headers=headers, verify=info["ca_bundle"], timeout=10).status_code == 200
    time.sleep(3)
    expired = requests.get(url, headers=headers, verify=info["ca_bundle"], timeout=10)
    assert expired.status_code == 401
    assert expired.json()["error"]["message"].endswith("token expired.")


def test_issue_token_hands_out_what_an_azure_cli_login_would(sandbox, org):
    token = sandbox.control.issue_token(audience=org, client_id=sandbox.info["admin_client_id"])
    claims = verified_claims(sandbox.info, token["access_token"], org)
    assert claims["appid"] == sandbox.info["admin_client_id"]
    assert abs(token["expires_on"] - claims["exp"]) == 0


def test_token_requests_are_logged_as_entra_with_the_client_as_caller(sandbox):
    info = sandbox.info
    app = sandbox.control.register_app(display_name="counted", client_secret="counted-secret")
    since = sandbox.control.log()[-1]["seq"] if sandbox.control.log() else 0
    client = confidential(info, app["client_id"], "counted-secret")
    for _ in range(3):
        client.acquire_token_for_client(["https://graph.microsoft.com/.default"])  # msal caches: 1 request
    token_requests = [e for e in sandbox.control.log(since=since)
                      if e["kind"] == "entra" and e["path"].endswith("/oauth2/v2.0/token")]
    assert [e["caller"] for e in token_requests] == [app["client_id"]]
    assert "counted-secret" not in json.dumps(sandbox.control.log(since=since))


# ----- Entra's error shape (docs/sandbox.md, "Entra errors") ------------------------------------------

ERROR_KEYS = {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"}
DESCRIPTION = re.compile(r"AADSTS(\d+): (.+)\r\nTrace ID: ([0-9a-f-]{36})\r\nCorrelation ID: ([0-9a-f-]{36})"
                         r"\r\nTimestamp: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ)", re.DOTALL)


def entra_call(info, method, path, form=None, correlation=None):
    """A raw request to the sandbox's login host (what msal sends, without msal's handling of the answer)."""
    session = requests.Session()
    session.trust_env = False
    headers = {"client-request-id": correlation} if correlation else {}
    try:
        return session.request(method, f"https://{info['authority_host']}{path}", data=form, headers=headers,
                               verify=info["ca_bundle"], timeout=10)
    finally:
        session.close()


def client_credentials(info, **overrides):
    form = {"grant_type": "client_credentials", "client_id": info["admin_client_id"],
            "client_secret": info["admin_client_secret"], "scope": f"{info['instance_url']}/.default"}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def assert_entra_error(response, status, error, code, *, correlation=None, lookup=True):
    """The documented token-endpoint error: OAuth error, AADSTS number first in a CRLF-separated description
    that repeats trace id, correlation id and timestamp, and error_uri for errors the lookup page explains."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert ERROR_KEYS <= set(body) <= ERROR_KEYS | {"error_uri"}
    assert (body["error"], body["error_codes"]) == (error, [code])
    m = DESCRIPTION.fullmatch(body["error_description"])
    assert m, body["error_description"]
    assert (int(m.group(1)), m.group(3), m.group(4), m.group(5)) == (
        code, body["trace_id"], body["correlation_id"], body["timestamp"])
    if correlation is not None:
        assert body["correlation_id"] == correlation
    assert body.get("error_uri") == (f"https://login.microsoftonline.com/error?code={code}" if lookup else None)
    return body


@pytest.fixture
def faults(sandbox):
    yield sandbox.control
    sandbox.control.clear_faults()


@pytest.mark.parametrize(("status", "retry_after", "error", "code"), [
    (503, None, "temporarily_unavailable", 90033),
    (503, 5, "temporarily_unavailable", 90033),
    (429, 7, "temporarily_unavailable", 90055),
    (500, None, "server_error", 50000),
    (400, None, "invalid_request", 9002313),
])
def test_fault_on_the_token_endpoint_answers_in_entras_shape_not_dataverses(sandbox, faults, status, retry_after,
                                                                          error, code):
    info = sandbox.info
    faults.add_fault(path=r"/oauth2/v2\.0/token$", status=status, retry_after=retry_after, count=1)
    correlation = str(uuid.uuid4())
    path = f"/{info['tenant_id']}/oauth2/v2.0/token"
    refused = entra_call(info, "POST", path, client_credentials(info), correlation)
    assert_entra_error(refused, status, error, code, correlation=correlation, lookup=status < 429)
    assert refused.headers.get("Retry-After") == (str(retry_after) if retry_after is not None else None)
    assert refused.headers["Cache-Control"] == "no-store"
    served = entra_call(info, "POST", path, client_credentials(info))  # the rule was used up
    assert served.status_code == 200 and served.json()["access_token"]
    entry = [e for e in sandbox.control.log() if e["kind"] == "entra" and e["path"] == path][-2]
    assert (entry["status"], entry["caller"], bool(entry.get("fault"))) == (status, info["admin_client_id"], True)


def test_fault_on_discovery_and_a_rule_naming_its_own_error_answer_in_entras_shape(sandbox, faults):
    info = sandbox.info
    faults.add_fault(path=r"/openid-configuration$", status=503, count=1)
    discovery = f"/{info['tenant_id']}/v2.0/.well-known/openid-configuration"
    assert_entra_error(entra_call(info, "GET", discovery), 503, "temporarily_unavailable", 90033, lookup=False)
    faults.add_fault(path=r"/oauth2/v2\.0/token$", status=400, error="invalid_grant", code="AADSTS50076",
                     message="Due to a configuration change made by your administrator, you must use multi-factor "
                             "authentication.", count=1)
    body = assert_entra_error(entra_call(info, "POST", f"/{info['tenant_id']}/oauth2/v2.0/token",
                                         client_credentials(info)), 400, "invalid_grant", 50076)
    assert "multi-factor" in body["error_description"]


def test_msal_reads_an_injected_429_as_entras_temporarily_unavailable(sandbox, faults):
    info = sandbox.info
    faults.add_fault(path=r"/oauth2/v2\.0/token$", status=429, retry_after=3, count=1)
    result = confidential(info, info["admin_client_id"], info["admin_client_secret"]).acquire_token_for_client(
        [f"{info['instance_url']}/.default"])
    assert (result["error"], result["error_codes"]) == ("temporarily_unavailable", [90055])
    assert "access_token" not in result


@pytest.mark.parametrize(("case", "status", "error", "code"), [
    ("wrong secret", 401, "invalid_client", 7000215),
    ("no credential", 401, "invalid_client", 7000218),
    ("unknown client", 400, "unauthorized_client", 700016),
    ("unknown resource", 400, "invalid_resource", 500011),
    ("no scope", 400, "invalid_request", 900144),
    ("scope without /.default", 400, "invalid_scope", 1002012),
    ("two resources", 400, "invalid_scope", 700022),
    ("unsupported grant", 400, "unsupported_grant_type", 70003),
    ("no grant", 400, "invalid_request", 900144),
    ("assertion without its type", 400, "invalid_request", 900144),
    ("malformed assertion", 400, "invalid_request", 50027),
    ("GET on the token endpoint", 405, "invalid_request", 900561),
    ("unknown tenant", 400, "invalid_tenant", 90002),
])
def test_every_refusal_of_the_token_endpoint_has_entras_documented_shape(sandbox, case, status, error, code):
    info = sandbox.info
    token_path = f"/{info['tenant_id']}/oauth2/v2.0/token"
    method, path, form = {
        "wrong secret": ("POST", token_path, client_credentials(info, client_secret="not-the-secret")),
        "no credential": ("POST", token_path, client_credentials(info, client_secret=None)),
        "unknown client": ("POST", token_path, client_credentials(info, client_id=str(uuid.uuid4()))),
        "unknown resource": ("POST", token_path, client_credentials(
            info, scope=f"https://{info['authority_host']}/orgs/nowhere/.default")),
        "no scope": ("POST", token_path, client_credentials(info, scope=None)),
        "scope without /.default": ("POST", token_path, client_credentials(info, scope=f"{info['instance_url']}/x")),
        "two resources": ("POST", token_path, client_credentials(
            info, scope=f"{info['instance_url']}/.default https://graph.microsoft.com/.default")),
        "unsupported grant": ("POST", token_path, client_credentials(info, grant_type="implicit")),
        "no grant": ("POST", token_path, client_credentials(info, grant_type=None)),
        "assertion without its type": ("POST", token_path, client_credentials(
            info, client_secret=None, client_assertion="a.b.c")),
        "malformed assertion": ("POST", token_path, client_credentials(
            info, client_secret=None, client_assertion="not-a-jwt",
            client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")),
        "GET on the token endpoint": ("GET", token_path, None),
        "unknown tenant": ("GET", f"/{uuid.uuid4()}/v2.0/.well-known/openid-configuration", None),
    }[case]
    correlation = str(uuid.uuid4())
    body = assert_entra_error(entra_call(info, method, path, form, correlation), status, error, code,
                              correlation=correlation)
    assert info["admin_client_secret"] not in json.dumps(body) and "not-the-secret" not in json.dumps(body)


def test_a_retry_after_from_entra_holds_back_the_callers_token_requests_not_its_other_calls(sandbox, faults):
    info = sandbox.info
    app = sandbox.control.register_app(display_name="held back", client_secret="held-back-secret")
    form = client_credentials(info, client_id=app["client_id"], client_secret="held-back-secret",
                              scope="https://graph.microsoft.com/.default")
    token_path = f"/{info['tenant_id']}/oauth2/v2.0/token"
    seq = max((e["seq"] for e in sandbox.control.log()), default=0)
    faults.add_fault(path=r"/oauth2/v2\.0/token$", status=429, retry_after=30, count=1)
    assert entra_call(info, "POST", token_path, form).status_code == 429
    token = entra_call(info, "POST", token_path, form).json()["access_token"]  # at once: inside the window
    requests.get(info["partner_center_url"] + PC_PRODUCTS, headers={"Authorization": f"Bearer {token}"},
                 verify=info["ca_bundle"], timeout=10)  # another service: Entra's window does not apply
    mine = [(e["kind"], e["inside_retry_after"]) for e in sandbox.control.log(since=seq)
            if e["caller"] == app["client_id"]]
    assert mine == [("entra", False), ("entra", True), ("partnercenter", False)]
