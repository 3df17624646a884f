"""Instance-URL validation per cloud (which hosts may ever receive a token) and cloud host mapping.

Pure functions of dynamics_provider.hosts: no sandbox, every case a table row.
"""

from __future__ import annotations

import pytest

from dynamics_provider.auth import DeployerSettings
from dynamics_provider.errors import InvalidAuthorityHost, InvalidInstanceUrl, LeadDestinationError
from dynamics_provider.hosts import (
    CLOUDS,
    authority_host,
    graph_resource,
    validate_authority_host,
    validate_instance_url,
)

ACCEPTED = [
    # (url, cloud, allow_loopback, normalized)
    ("https://contoso.crm.dynamics.com", "public", False, "https://contoso.crm.dynamics.com"),
    ("https://contoso.crm.dynamics.com/", "public", False, "https://contoso.crm.dynamics.com"),
    ("https://Contoso.CRM4.Dynamics.com", "public", False, "https://contoso.crm4.dynamics.com"),
    ("HTTPS://fabrikam-eu.crm4.dynamics.com", "public", False, "https://fabrikam-eu.crm4.dynamics.com"),
    ("https://contoso.crm11.dynamics.com", "public", False, "https://contoso.crm11.dynamics.com"),
    ("https://contoso.crm21.dynamics.com", "public", False, "https://contoso.crm21.dynamics.com"),
    ("https://contoso.crm9.dynamics.com", "public", False, "https://contoso.crm9.dynamics.com"),  # GCC
    ("https://contoso.api.crm.dynamics.com", "public", False, "https://contoso.api.crm.dynamics.com"),
    ("https://contoso.api.crm4.dynamics.com", "public", False, "https://contoso.api.crm4.dynamics.com"),
    ("https://contoso.crm.dynamics.com:443", "public", False, "https://contoso.crm.dynamics.com"),
    ("https://contoso.crm.microsoftdynamics.us", "usgovernment", False, "https://contoso.crm.microsoftdynamics.us"),
    ("https://contoso.crm.appsplatform.us", "dod", False, "https://contoso.crm.appsplatform.us"),
    ("https://contoso.crm.dynamics.cn", "china", False, "https://contoso.crm.dynamics.cn"),
    ("https://contoso.crm.dynamics.com", "global", False, "https://contoso.crm.dynamics.com"),  # azuread spelling
    ("https://127.0.0.1:48443/orgs/contoso", "public", True, "https://127.0.0.1:48443/orgs/contoso"),
    ("https://127.0.0.1:50000/orgs/contoso/", "public", True, "https://127.0.0.1:50000/orgs/contoso"),
    ("https://localhost:8443/orgs/org-2", "public", True, "https://localhost:8443/orgs/org-2"),
    ("https://[::1]:8443/orgs/x", "public", True, "https://[::1]:8443/orgs/x"),
]

REJECTED = [
    # (url, cloud, allow_loopback, words the error must contain)
    ("http://contoso.crm.dynamics.com", "public", False, "only https"),
    ("ftp://contoso.crm.dynamics.com", "public", False, "only https"),
    ("contoso.crm.dynamics.com", "public", False, "only https"),
    ("https://contoso.crm.dynamics.com.evil.example", "public", False, "not a Dynamics 365 host"),
    ("https://crm.dynamics.com", "public", False, "not a Dynamics 365 host"),
    ("https://contoso.dynamics.com", "public", False, "not a Dynamics 365 host"),
    ("https://contoso.crmx.dynamics.com", "public", False, "not a Dynamics 365 host"),
    ("https://a.b.crm.dynamics.com", "public", False, "not a Dynamics 365 host"),
    ("https://-bad.crm.dynamics.com", "public", False, "not a Dynamics 365 host"),
    ("https://evil.example/contoso.crm.dynamics.com", "public", False, "not a Dynamics 365 host"),
    ("https://user:pw@contoso.crm.dynamics.com", "public", False, "user info"),
    ("https://contoso.crm.dynamics.com@evil.example", "public", False, "user info"),
    ("https://contoso.crm.dynamics.com/main.aspx", "public", False, "path is not allowed"),
    ("https://contoso.crm.dynamics.com/api/data/v9.2", "public", False, "path is not allowed"),
    ("https://contoso.crm.dynamics.com?x=1", "public", False, "query"),
    ("https://contoso.crm.dynamics.com/#frag", "public", False, "query"),
    ("https://contoso.crm.dynamics.com:8443", "public", False, "default https port"),
    ("https://contoso.crm.dynamics.com:99999", "public", False, "not a valid URL"),
    ("https://contoso.crm.dynamics.com\n.evil", "public", False, "whitespace"),
    ("https://contoso.crm.dynamics.com", "usgovernment", False, "belongs to the 'public' cloud"),
    ("https://contoso.crm.microsoftdynamics.us", "public", False, "belongs to the 'usgovernment' cloud"),
    ("https://contoso.crm.appsplatform.us", "usgovernment", False, "belongs to the 'dod' cloud"),
    ("https://contoso.crm.dynamics.cn", "public", False, "belongs to the 'china' cloud"),
    ("https://127.0.0.1:48443/orgs/contoso", "public", False, "loopback"),
    ("https://localhost/orgs/contoso", "public", False, "loopback"),
    ("https://127.5.5.5:1/orgs/x", "public", False, "loopback"),
    ("https://[::1]:8443/orgs/x", "public", False, "loopback"),
    ("http://127.0.0.1:48443/orgs/contoso", "public", True, "only https"),
    ("https://127.0.0.1:48443/orgs/con%74oso", "public", True, "unexpected characters"),
    ("https://10.0.0.1/orgs/contoso", "public", True, "not a Dynamics 365 host"),
    ("", "public", False, "empty"),
]


@pytest.mark.parametrize(("url", "cloud", "loopback", "normalized"), ACCEPTED)
def test_dynamics_hosts_of_the_configured_cloud_are_accepted_and_normalized(url, cloud, loopback, normalized):
    assert validate_instance_url(url, cloud=cloud, allow_loopback=loopback) == normalized


@pytest.mark.parametrize(("url", "cloud", "loopback", "reason"), REJECTED)
def test_other_urls_are_refused_with_what_is_accepted(url, cloud, loopback, reason):
    with pytest.raises(InvalidInstanceUrl) as caught:
        validate_instance_url(url, cloud=cloud, allow_loopback=loopback)
    text = str(caught.value)
    assert reason in text
    assert "Accepted for cloud" in text  # says what would have been accepted
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, LeadDestinationError)


def test_refusal_never_echoes_a_password_in_the_url():
    with pytest.raises(InvalidInstanceUrl) as caught:
        validate_instance_url("https://admin:S3cretPassw0rd@contoso.crm.dynamics.com")
    assert "S3cretPassw0rd" not in str(caught.value)
    assert "S3cretPassw0rd" not in repr(caught.value)


def test_loopback_hint_mentions_the_sandbox_form_only_when_opted_in():
    with pytest.raises(InvalidInstanceUrl) as without:
        validate_instance_url("https://example.com")
    with pytest.raises(InvalidInstanceUrl) as with_opt_in:
        validate_instance_url("https://example.com", allow_loopback=True)
    assert "127.0.0.1" not in str(without.value)
    assert "https://127.0.0.1:{port}/orgs/{name}" in str(with_opt_in.value)


def test_unknown_cloud_is_refused_listing_the_clouds():
    with pytest.raises(ValueError) as caught:
        validate_instance_url("https://contoso.crm.dynamics.com", cloud="mars")
    for cloud in CLOUDS:
        assert cloud in str(caught.value)


@pytest.mark.parametrize(
    ("cloud", "login", "graph"),
    [
        ("public", "login.microsoftonline.com", "https://graph.microsoft.com"),
        ("usgovernment", "login.microsoftonline.us", "https://graph.microsoft.us"),
        ("dod", "login.microsoftonline.us", "https://dod-graph.microsoft.us"),
        ("china", "login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
        ("AzureUSGovernment", "login.microsoftonline.us", "https://graph.microsoft.us"),
    ],
)
def test_each_cloud_maps_to_its_authority_host_and_graph_resource(cloud, login, graph):
    assert authority_host(cloud) == login
    assert graph_resource(cloud) == graph


AUTHORITY_ACCEPTED = [
    ("login.microsoftonline.com", False, "login.microsoftonline.com"),
    ("https://login.microsoftonline.us/", False, "login.microsoftonline.us"),
    ("LOGIN.CHINACLOUDAPI.CN", False, "login.chinacloudapi.cn"),
    ("login.microsoftonline.com:443", False, "login.microsoftonline.com"),
    ("127.0.0.1:48443", True, "127.0.0.1:48443"),
    ("localhost:8443", True, "localhost:8443"),
]
AUTHORITY_REFUSED = [
    ("evil.example.com", False),
    ("login.microsoftonline.com.evil.example", False),
    ("login.microsoftonline.com:8443", False),
    ("127.0.0.1:48443", False),  # loopback without the sandbox opt-in
    ("login.microsoftonline.com/tenant", False),
    ("user@login.microsoftonline.com", False),
    ("10.0.0.5", True),  # private, not loopback: never
]


@pytest.mark.parametrize(("host", "loopback", "normalized"), AUTHORITY_ACCEPTED)
def test_authority_host_override_accepts_entra_login_hosts_and_opted_in_loopback(host, loopback, normalized):
    assert validate_authority_host(host, allow_loopback=loopback) == normalized


@pytest.mark.parametrize(("host", "loopback"), AUTHORITY_REFUSED)
def test_authority_host_override_elsewhere_is_refused_before_any_credential_is_sent(host, loopback):
    with pytest.raises(InvalidAuthorityHost) as caught:
        validate_authority_host(host, allow_loopback=loopback)
    assert "login.microsoftonline.com" in str(caught.value)  # says what is accepted


def test_deployer_settings_refuse_a_foreign_authority_host_instead_of_sending_the_secret_there():
    settings = DeployerSettings(tenant_id="00000000-0000-0000-0000-000000000001", client_id="x",
                                client_secret="never-sent-anywhere", authority_host="login.evil.example")
    with pytest.raises(InvalidAuthorityHost) as caught:
        settings.authority()
    assert "never-sent-anywhere" not in str(caught.value)
    assert "refused authorityHost" in settings.describe()
