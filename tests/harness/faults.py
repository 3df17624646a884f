"""The Dataverse writes of a cold `up` and the fault kinds both fault matrices inject at each: the exhaustive
one at the provider level (tests/test_fault_matrix.py) and the representative one through the real CLI
(tests/test_engine_faults.py)."""

from __future__ import annotations

from typing import Any

# method and path pattern of each write, in the order the engine reaches them
COLD_UP_WRITES = {
    "import": ("POST", r"/ImportSolutionAsync$"),
    "user": ("POST", r"/systemusers$"),
    "association": ("POST", r"/systemuserroles_association/\$ref$"),
    "privileges": ("POST", r"/Microsoft\.Dynamics\.CRM\.AddPrivilegesRole$"),
    "lead": ("POST", r"/leads$"),
    "lead cleanup": ("DELETE", r"/leads\("),
}


def fault_kinds(timeout_seconds: int) -> dict[str, dict[str, Any]]:
    """Sandbox fault rules by kind; `timeout` holds the answer past a client timeout of `timeout_seconds`."""
    return {
        "429": {"status": 429, "retry_after": 1},
        "503": {"status": 503},
        "reset": {"reset": True},
        "lost answer": {"reset": True, "after": True},  # processed, then the connection dropped
        "timeout": {"latency_ms": (timeout_seconds + 1) * 1000},  # processed after the client stopped waiting
    }


def injected(sandbox: Any, org_name: str, rule: str, *, wait: float = 0) -> list[dict[str, Any]]:
    """The request-log entries of fault rule `rule` in organization `org_name`; with `wait`, as soon as there is
    one, at most `wait` seconds (a held request is logged when the sandbox answers it, which may be after the
    client gave up and went on). Reads the in-process sandbox's log, which wakes this wait with each entry."""
    return sandbox._sandbox.app.log.wait(lambda e: e.get("org") == org_name and e.get("fault") == rule, wait)
