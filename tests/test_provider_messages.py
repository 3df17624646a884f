"""Provider messages send the user the right way: hints name the setting a user types (from the one
declaration of settings), an unknown privilege name gets a name hint, and values quoted in check
failures go through the one masking function. The providers run in-process against the sandbox."""

from __future__ import annotations

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.base import (
    ResourceOperationError,
)
from dynamics_provider.checks import (
    need_https_url,
)
from dynamics_provider.role_privileges import RolePrivilegesProvider
from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config


def configured(cls: type, sandbox, org):
    p = cls()
    p.configure(ConfigureRequest(Config(stack_config(sandbox.info, instance_url=org), "lead-destination")))
    return p


def test_an_unmanaged_zip_is_refused_with_the_setting_that_allows_it(tmp_path):
    path = tmp_path / "unmanaged.zip"
    path.write_bytes(build_solution_zip(managed=False))
    [failure] = SolutionImportProvider().check({}, {"instance_url": "https://x.crm.dynamics.com",
                                                    "source_path": str(path)}).failures
    assert "pulumi config set --path solution.allowUnmanaged true" in failure.reason
    assert "allow_unmanaged" not in failure.reason


def test_an_unknown_privilege_name_gets_a_name_hint_not_a_depth_hint(sandbox, org):
    p = configured(RolePrivilegesProvider, sandbox, org)
    news = p.check({}, {"instance_url": org, "role_name": "Basic User",
                        "privileges": [{"name": "prvReadAsyncOperations", "depth": "Global"}]}).inputs
    with pytest.raises(ResourceOperationError) as caught:
        p.create(news)
    text = str(caught.value)
    assert "prvReadAsyncOperations is not a privilege of this organization" in text
    assert "fix the privilege names in the spec of lead-destination:privileges" in text
    assert "depth" not in text.split("nothing was changed")[0].split("privilege names")[1]


def test_a_disallowed_depth_still_gets_the_depth_hint(sandbox, org):
    p = configured(RolePrivilegesProvider, sandbox, org)
    news = p.check({}, {"instance_url": org, "role_name": "Basic User",
                        "privileges": [{"name": "prvCreateUserEntityUISettings", "depth": "Global"}]}).inputs
    with pytest.raises(ResourceOperationError) as caught:
        p.create(news)
    assert "give each privilege a depth it allows" in str(caught.value)
    assert "privilege names" not in str(caught.value)


def test_a_check_failure_quoting_a_url_input_cuts_its_user_info_and_query():
    reason = need_https_url("http://leak-user:CheckUserMarker@x.crm.dynamics.com/?sig=CheckQueryMarker")
    assert reason is not None and "***@x.crm.dynamics.com/?…" in reason
    assert "CheckUserMarker" not in reason and "CheckQueryMarker" not in reason and "leak-user" not in reason


def test_a_deployer_value_the_providers_cannot_read_names_its_source_and_is_a_user_error():
    from dynamics_provider.auth import DeployerSettings
    from dynamics_provider.errors import LeadDestinationError

    with pytest.raises(LeadDestinationError) as caught:
        DeployerSettings.from_sources({}, {"ARM_USE_CLI": "maybe"})
    assert str(caught.value) == "ARM_USE_CLI: deployerUseAzureCli = 'maybe': expected true or false"
    with pytest.raises(LeadDestinationError) as caught:
        DeployerSettings.from_sources({"lead-destination:requestTimeoutSeconds": "https://u:EnvMarker@x?y"}, {})
    assert "EnvMarker" not in str(caught.value) and "lead-destination:requestTimeoutSeconds" in str(caught.value)
