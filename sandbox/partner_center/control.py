"""`/_control/partner-center/*`: what tests do to the Partner Center account behind the API (add
products, grant or revoke the Manager role, edit a lead destination as a person in the portal would,
fail the next configure job, tune job duration, read the state with secrets masked, reset)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request, Response

from sandbox.common import json_response
from sandbox.partner_center.account import SPELLINGS, PartnerCenter, error
from sandbox.partner_center.schema import SCHEMA_BASE, SUPPORTED_VERSIONS, mask

Handler = Callable[[re.Match[str], dict[str, Any]], Response]


class AccountControl:
    """The control routes of one account: (method, path pattern) → handler."""

    def __init__(self, account: PartnerCenter) -> None:
        self.account = account
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "state", lambda m, body: json_response(self.account.state())),
            ("POST", "products", self._add_product),
            ("POST", "managers", self._add_manager),
            ("DELETE", "managers/([^/]+)", self._remove_manager),
            ("POST", "drift", lambda m, body: self._drift(body)),
            ("POST", "fail-next", self._fail_next),
            ("POST", "settings", self._settings),
            ("POST", "reset", self._reset),
        ]
        self.routes = [(method, re.compile(pattern), handler) for method, pattern, handler in routes]

    def handle(self, request: Request, subpath: str) -> Response:
        body = request.get_json(silent=True) or {}
        for method, pattern, handler in self.routes:
            if method == request.method and (m := pattern.fullmatch(subpath.strip("/"))):
                with self.account.lock:
                    self.account.advance()
                    return handler(m, body)
        return error(404, "NotFound", f"No control route for {request.method} /{subpath}.")

    def _add_product(self, m: re.Match[str], body: dict[str, Any]) -> Response:
        external_id = body.get("externalId")
        if not external_id:
            return error(400, "BadRequest", "externalId is required")
        try:
            guid = self.account.add_product(str(external_id), body.get("name"))
        except ValueError as exc:
            return error(409, "Conflict", str(exc))
        return json_response({"id": guid})

    def _add_manager(self, m: re.Match[str], body: dict[str, Any]) -> Response:
        client_id = str(body.get("client_id", "")).lower()
        if not client_id:
            return error(400, "BadRequest", "client_id is required")
        self.account.managers.add(client_id)
        return json_response({"managers": sorted(self.account.managers)})

    def _remove_manager(self, m: re.Match[str], body: dict[str, Any]) -> Response:
        self.account.managers.discard(m.group(1).lower())
        return json_response({"managers": sorted(self.account.managers)})

    def _fail_next(self, m: re.Match[str], body: dict[str, Any]) -> Response:
        self.account.fail_next.append(str(body.get("message") or "The lead destination could not be validated."))
        return json_response({"pending": len(self.account.fail_next)})

    def _settings(self, m: re.Match[str], body: dict[str, Any]) -> Response:
        """`job_seconds` (how long a configure job runs) and `spelling` ("current": `jobID`,
        `identity.externalID` as Microsoft's Learn page writes them now; "2022": `jobId`, `externalId`)."""
        if "spelling" in body:
            if body["spelling"] not in SPELLINGS:
                return error(400, "BadRequest", f"spelling must be one of {sorted(SPELLINGS)}")
            self.account.spelling = body["spelling"]
        if "job_seconds" in body:
            self.account.job_seconds = float(body["job_seconds"])
        return json_response({"job_seconds": self.account.job_seconds, "spelling": self.account.spelling})

    def _reset(self, m: re.Match[str], body: dict[str, Any]) -> Response:
        self.account.reset()
        return json_response({})

    def _drift(self, body: dict[str, Any]) -> Response:
        """A person edits the lead destination in the portal: top-level leadDestination, or config fields."""
        product = self.account.product(str(body.get("product", "")))
        if product is None:
            return error(404, "NotFound", f"product '{body.get('product')}' was not found")
        fields = {k: v for k, v in body.items() if k != "product"}
        leads = product["customerLeads"] or {
            "$schema": f"{SCHEMA_BASE}/customer-leads/{SUPPORTED_VERSIONS[0]}",
            "id": f"customer-leads/{product['id']}", "product": f"product/{product['id']}",
            "leadDestination": "none"}
        if "leadDestination" in fields:
            leads["leadDestination"] = fields.pop("leadDestination")
            if leads["leadDestination"] != "dynamics":
                leads.pop("dynamicsLeadConfiguration", None)
        if fields:
            config = leads.setdefault("dynamicsLeadConfiguration", {})
            for key, value in fields.items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = value
        product["customerLeads"] = leads
        return json_response({"customerLeads": mask(leads)})
