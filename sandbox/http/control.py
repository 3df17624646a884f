"""The control API, `/_control/*` on the sandbox's HTTPS port (JSON, no auth; docs/architecture.md
lists every call): a routing table of (method, path pattern) → handler over the SandboxApp."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from sandbox.common import SandboxSettings, json_response, segment_not_found
from sandbox.entra import FEDERATED_AUDIENCE
from sandbox.partner_center import AccountControl

if TYPE_CHECKING:  # the app owns its control API; only the type is needed here
    from sandbox.http.app import SandboxApp

# handler(request, JSON body, path match) -> answer
Handler = Callable[[Request, dict[str, Any], re.Match[str]], Response]
APP_FIELDS = {"client_id", "client_secret", "display_name", "certificate_pem", "federated_subject", "object_id"}


def _no_content() -> Response:
    return Response(status=204)


class ControlApi:
    def __init__(self, app: SandboxApp) -> None:
        self.app = app
        self.partner_center = AccountControl(app.partner_center)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "log", self._log),
            ("DELETE", "log", lambda r, b, m: self._done(self.app.log.clear)),
            ("POST", "faults", lambda r, b, m: json_response({"id": self.app.faults.add(b)}, 201)),
            ("GET", "faults", lambda r, b, m: json_response({"faults": self.app.faults.rules()})),
            ("DELETE", "faults", lambda r, b, m: self._done(self.app.faults.clear)),
            ("POST", "settings", self._update_settings),
            ("GET", "settings", lambda r, b, m: json_response(self._settings())),
            ("POST", "reset", lambda r, b, m: self._done(self.app.reset)),
            ("POST", "orgs", self._add_org),
            ("GET", "orgs", lambda r, b, m: json_response({"orgs": self.app.organizations()})),
            ("GET", "orgs/([^/]+)/state", self._org_state),
            ("POST", "orgs/([^/]+)/drift", self._org_drift),
            ("POST", "files", self._host_file),
            ("DELETE", "files/([^/]+)", lambda r, b, m: self._done(lambda: self.app.files.remove(m.group(1)))),
            ("POST", "apps", lambda r, b, m: json_response(
                self.app.directory.register_app(**{k: v for k, v in b.items() if k in APP_FIELDS}), 201)),
            ("POST", "users", self._create_user),
            ("POST", "issue-token", self._issue_token),
            ("POST", "federated-token", self._federated_token),
            ("*", "partner-center(?:/(.*))?", self._partner_center),
        ]
        self.routes = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]

    def handle(self, request: Request, sub: str) -> Response:
        """`sub` is the path after /_control/. Bad input (ValueError, KeyError, TypeError) answers 400."""
        try:
            body = self._body(request)
            for method, pattern, handler in self.routes:
                if method in ("*", request.method) and (m := pattern.fullmatch(sub.strip("/"))):
                    return handler(request, body, m)
            return segment_not_found(request.path)
        except (ValueError, KeyError, TypeError) as exc:
            return json_response({"error": {"code": "BadRequest", "message": str(exc)}}, 400)

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if request.method not in ("POST", "PATCH", "PUT") or not request.get_data():
            return {}
        body = json.loads(request.get_data())
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    @staticmethod
    def _done(action: Callable[[], Any]) -> Response:
        action()
        return _no_content()

    # ----- log and settings ---------------------------------------------------------------------
    def _log(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        return json_response({"entries": self.app.log.since(int(request.args.get("since", 0)))})

    def _settings(self) -> dict[str, Any]:
        return {f.name: getattr(self.app.settings, f.name) for f in fields(SandboxSettings) if f.name != "lock"}

    def _update_settings(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        known = {f.name for f in fields(SandboxSettings)} - {"lock"}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        throttle = body.get("throttle")
        if throttle is not None and not isinstance(throttle, dict):
            raise ValueError("throttle must be an object or null")
        if "random_faults" in body:
            self.app.faults.set_random(body["random_faults"])
        with self.app.settings.lock:
            for key, value in body.items():
                setattr(self.app.settings, key, value)
        if "throttle" in body:
            self.app.protection.reset()
        return json_response(self._settings())

    # ----- organizations ------------------------------------------------------------------------
    def _add_org(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        try:
            url = self.app.add_org(body.get("name"))  # validated there
        except FileExistsError:
            return json_response({"error": {"code": "Conflict", "message": f"organization {body.get('name')} exists"}},
                                 409)
        return json_response({"name": body["name"], "instance_url": url}, 201)

    def _org_state(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        org = self.app.organization(m.group(1))
        return json_response(org.state()) if org else segment_not_found(request.path)

    def _org_drift(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        org = self.app.organization(m.group(1))
        if org is None:
            return segment_not_found(request.path)
        return json_response(org.drift(body.get("action", ""), {k: v for k, v in body.items() if k != "action"}))

    # ----- files --------------------------------------------------------------------------------
    def _host_file(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        try:
            data = base64.b64decode(body["content_b64"], validate=True)
        except binascii.Error:
            raise ValueError("content_b64 is not valid base64") from None
        return json_response(self.app.files.put(body["name"], data), 201)

    # ----- Entra --------------------------------------------------------------------------------
    def _create_user(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        user = self.app.directory.create_user(user_principal_name=body["user_principal_name"],
                                              password=body["password"], object_id=body.get("object_id"))
        return json_response(user, 201)

    def _issue_token(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        """What a logged-in Azure CLI hands out: a token for `audience` as an app or a user."""
        audience = body["audience"]
        if not self.app.resource_known(audience):
            raise ValueError(f"unknown audience {audience}")
        token, expires_on = self.app.directory.issue_access_token(
            audience, int(self.app.settings.token_lifetime_seconds), client_id=body.get("client_id"),
            upn=body.get("user_principal_name"))
        return json_response({"access_token": token, "expires_on": expires_on, "token_type": "Bearer",
                              "tenant": self.app.directory.tenant_id})

    def _federated_token(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        token = self.app.directory.issue_federated_token(body["subject"], body.get("audience") or FEDERATED_AUDIENCE)
        return json_response({"token": token, "issuer": self.app.directory.workload_issuer})

    # ----- Partner Center -----------------------------------------------------------------------
    def _partner_center(self, request: Request, body: dict[str, Any], m: re.Match[str]) -> Response:
        return self.partner_center.handle(request, m.group(1) or "")
