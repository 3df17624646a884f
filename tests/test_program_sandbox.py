"""The program in existing-application mode under Pulumi's mock runtime, with every dynamic resource
really created against the sandbox (the mock unpickles each provider, configures it with the stack
config, then checks and creates), and the Partner Center values proven usable by a real lead write."""

from __future__ import annotations

import base64
import datetime as dt
import json

import dill
import msal
import pulumi
import requests
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.runtime import rpc
from pulumi.runtime._serialization import _deserialize

from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config
from tests.test_program_graph import GraphMocks, ProgramRun

TODAY = dt.date(2025, 3, 10)


class SandboxMocks(GraphMocks):
    """Dynamic resources go to their real providers (configured like the engine's provider host does)."""

    def __init__(self, config: dict[str, str]) -> None:
        super().__init__()
        self.config = config
        self.created: dict[str, dict] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        if not args.typ.startswith("pulumi-python:dynamic"):
            return super().new_resource(args)
        super().new_resource(args)  # record the registration
        packed = args.inputs["__provider"]
        packed = packed["value"] if rpc.is_rpc_secret(packed) else packed
        provider = _deserialize(lambda: dill.loads(base64.b64decode(packed)))
        provider.configure(ConfigureRequest(Config(raw_config=self.config, project_name="lead-destination")))
        news = dict(args.inputs)
        checked = provider.check({}, news)
        assert not checked.failures, [(args.name, f.property, f.reason) for f in checked.failures]
        result = provider.create(checked.inputs)
        outs = {k: v for k, v in (result.outs or {}).items() if not k.startswith("__")}
        self.created[args.name] = outs
        return result.id, outs


def test_dev_like_stack_converges_against_the_sandbox_and_its_outputs_write_a_lead(sandbox, org, tmp_path):
    info = sandbox.info
    zip_path = tmp_path / "MicrosoftMarketplacesLeadIntegrationSolution_1_0_0_0_managed.zip"
    zip_path.write_bytes(build_solution_zip(version="1.0.0.0"))
    config = stack_config(info, instance_url=org)
    config.update({
        "lead-destination:existingApplication": json.dumps({"clientId": info["leadwriter_client_id"],
                                                            "tenantId": info["tenant_id"]}),
        "lead-destination:existingApplicationSecret": info["leadwriter_client_secret"],
        "lead-destination:solution": json.dumps({"path": str(zip_path)}),
        "lead-destination:contactEmails": json.dumps(["leads@contoso.example", "sales@contoso.example"]),
    })  # fmt: skip
    secret_keys = ["lead-destination:existingApplicationSecret", "lead-destination:deployerClientSecret"]
    pulumi.runtime.set_all_config(config, secret_keys=secret_keys)
    mocks = SandboxMocks(config)
    try:
        result = ProgramRun(mocks, stack="sandbox")(None, TODAY)  # reads the stack config itself
    finally:
        pulumi.runtime.set_all_config({})

    # every Dynamics step really happened, in order, in this organization
    created = [n for n in mocks.order if n in mocks.created]
    assert sorted(created) == sorted(f"sandbox-dynamics-{p}" for p in ("solution", "user", "role", "privileges", "check"))
    position = {name.rsplit("-", 1)[1]: i for i, name in enumerate(created)}
    # the program's dependencies (the user needs no solution: the two are created side by side)
    assert position["solution"] < position["role"] and position["user"] < position["role"] < position["check"]
    assert position["solution"] < position["privileges"] < position["check"]
    state = sandbox.control.state(org)
    user_id = mocks.created["sandbox-dynamics-user"]["systemuser_id"]
    assert result.outputs["applicationUserId"] == (user_id, False)
    assert result.outputs["solutionVersion"] == ("1.0.0.0", False)
    assert result.outputs["validatedAt"][0]
    assert any(u.get("systemuserid") == user_id for u in state["systemusers"])

    pc, pc_secret = result.outputs["partnerCenter"]
    assert pc_secret is True
    assert pc["instanceUrl"] == org and pc["authentication"] == "azureAD"
    assert pc["contactEmail"] == "leads@contoso.example;sales@contoso.example"

    # Partner Center's side: sign in with exactly these values and write a lead
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace the sandbox CA
    http.verify = info["ca_bundle"]
    app = msal.ConfidentialClientApplication(
        pc["applicationId"], client_credential=pc["clientSecret"],
        authority=f"https://{info['authority_host']}/{pc['directoryId']}",
        instance_discovery=False, http_client=http,
    )  # fmt: skip
    token = app.acquire_token_for_client(scopes=[f"{pc['instanceUrl']}/.default"])
    assert "access_token" in token, token.get("error")
    response = http.post(
        f"{pc['instanceUrl']}/api/data/v9.2/leads",
        json={"subject": "Marketplace lead via partnerCenter output", "lastname": "Buyer",
              "leadsourcecode": 8, "description": "AzureMarketplace-INS|contoso.offer"},
        headers={"Authorization": f"Bearer {token['access_token']}", "Accept": "application/json",
                 "OData-MaxVersion": "4.0", "OData-Version": "4.0"},
        timeout=30,
    )  # fmt: skip
    assert response.status_code in (201, 204), response.text
    leads = sandbox.control.state(org)["leads"]
    assert any(lead.get("subject") == "Marketplace lead via partnerCenter output" for lead in leads)
