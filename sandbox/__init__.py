"""Offline stand-ins for Microsoft's cloud — Entra ID, the Dataverse Web API and Partner Center's
Product Ingestion API — on one local HTTPS port, for tests and the demo.

Test and demo machinery only: nothing in dynamics_provider, components or fleet imports this package.

    http/            the HTTPS port: server, dispatch, request log, faults, throttling, control API
    entra/           Entra ID for one tenant (apps, users, token endpoint, Entra's error shape)
    dataverse/       the Dataverse Web API, one Organization per instance URL
    partner_center/  the Product Ingestion API for one account
    testing.py       the test API (start_sandbox, SandboxHandle, ControlClient, stack_config)
    solution_zip.py  the representative Lead Writer solution zip (build and parse)

docs/architecture.md has the constants, control API and test API; docs/sandbox.md what the emulators
answer and on what authority.
"""
