"""Test-side access to the sandbox: start one in-process, drive its `/_control` API over HTTPS
(ControlClient), and build the `lead-destination:*` stack config that points providers at it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import requests

from sandbox.http.server import Sandbox


class ControlError(RuntimeError):
    """A control API call that did not succeed."""


class ControlClient:
    """Thin client for `{control_url}`; every call goes over the sandbox's real HTTPS port."""

    def __init__(self, control_url: str, ca_bundle: str, timeout: float = 30) -> None:
        self.url = control_url.rstrip("/")
        self.timeout = timeout
        self.ca_bundle = ca_bundle
        self._session = requests.Session()
        self._session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override session.verify

    def __repr__(self) -> str:
        return f"ControlClient({self.url})"

    def _call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = self._session.request(method, f"{self.url}/{path}", json=body, params=params or None,
                                         timeout=self.timeout, verify=self.ca_bundle)
        if response.status_code >= 400:
            raise ControlError(f"{method} /_control/{path} → {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", "log", since=since)["entries"]

    def clear_log(self) -> None:
        self._call("DELETE", "log")

    def add_fault(self, **rule: Any) -> str:
        """A fault rule (docs/architecture.md, `POST /_control/faults`), e.g. a status, a reset, or
        `respond={"status": N, "headers": {...}, "body": ...}` to replay a recorded answer exactly."""
        return self._call("POST", "faults", rule)["id"]

    def respond(self, path: str, status: int, body: Any = None, headers: dict[str, str] | None = None,
                **rule: Any) -> str:
        """Replay a recorded answer: the next `count` (default 1) authenticated requests matching `path`
        (regex) and `method`/`org` (name or instance URL)/`after` get exactly this status, headers and body."""
        if rule.get("org"):
            rule["org"] = _org_name(rule["org"])  # a name or an instance URL
        return self.add_fault(path=path, respond={"status": status, "headers": headers or {}, "body": body}, **rule)

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules in place, each with its `remaining` count."""
        return self._call("GET", "faults")["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def settings(self, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "settings", kw)

    def reset(self) -> None:
        self._call("POST", "reset")

    def add_org(self, name: str) -> str:
        return self._call("POST", "orgs", {"name": name})["instance_url"]

    def orgs(self) -> list[dict[str, str]]:
        return self._call("GET", "orgs")["orgs"]

    def state(self, org: str) -> dict[str, Any]:
        return self._call("GET", f"orgs/{_org_name(org)}/state")

    def drift(self, org: str, action: str, **params: Any) -> dict[str, Any]:
        return self._call("POST", f"orgs/{_org_name(org)}/drift", {"action": action, **params})

    def host_file(self, name: str, data: bytes) -> str:
        """Serve `data` without auth at {base}/files/{name}; returns that https URL."""
        return self._call("POST", "files", {"name": name, "content_b64": base64.b64encode(data).decode()})["url"]

    def remove_file(self, name: str) -> None:
        self._call("DELETE", f"files/{name}")

    def register_app(self, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "apps", kw)

    def create_user(self, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "users", kw)

    def issue_token(self, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "issue-token", kw)

    def federated_token(self, **kw: Any) -> str:
        return self._call("POST", "federated-token", kw)["token"]

    def partner_center(self, method: str, subpath: str, body: Any = None) -> Any:
        return self._call(method, f"partner-center/{subpath.lstrip('/')}", body)

    def close(self) -> None:
        self._session.close()


def _org_name(org: str) -> str:
    """Accept an organization name or its instance URL."""
    return org.rstrip("/").rsplit("/orgs/", 1)[-1] if "/orgs/" in org else org


class SandboxHandle:
    """A running in-process sandbox."""

    def __init__(self, sandbox: Sandbox, info: dict[str, Any]) -> None:
        self._sandbox = sandbox
        self.info = info
        self.control = ControlClient(info["control_url"], info["ca_bundle"])

    @property
    def state_dir(self) -> Path:
        return self._sandbox.state_dir

    def __repr__(self) -> str:
        return f"SandboxHandle(port={self.info['port']})"

    def stop(self) -> None:
        self.control.close()
        self._sandbox.stop()

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_sandbox(state_dir: str | Path | None = None, port: int = 0) -> SandboxHandle:
    sandbox = Sandbox(port=port, state_dir=state_dir)
    return SandboxHandle(sandbox, sandbox.start())


def stack_config(info: dict[str, Any], instance_url: str | None = None) -> dict[str, str]:
    """The lead-destination:* stack config that makes the providers use this sandbox as the admin."""
    return {
        "lead-destination:deployerTenantId": info["tenant_id"],
        "lead-destination:deployerClientId": info["admin_client_id"],
        "lead-destination:deployerClientSecret": info["admin_client_secret"],
        "lead-destination:authorityHost": info["authority_host"],
        "lead-destination:caBundle": info["ca_bundle"],
        "lead-destination:allowLoopback": "true",
        "lead-destination:partnerCenterEndpoint": info["partner_center_url"],
        "lead-destination:instanceUrl": instance_url or info["instance_url"],
    }

