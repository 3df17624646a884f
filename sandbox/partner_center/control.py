"""`/_control/partner-center/*`: what tests do to the Partner Center account behind the API (add
products, grant or revoke the Manager role, edit a lead destination as a person in the portal would,
fail the next configure job, tune job duration, read the state with secrets masked, reset)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request, Response

from sandbox.common import json_response
from sandbox.partner_center.account import PartnerCenter, error
from sandbox.partner_center.schema import SCHEMA_BASE, SUPPORTED_VERSIONS, mask

Handler = Callable[[list[str], dict[str, Any]], Response]


class AccountControl:
    """The control routes of one account: (method, first path segment) → handler."""

    def __init__(self, account: PartnerCenter) -> None:
        self.account = account
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "state"): lambda parts, body: json_response(self.account.state()),
            ("POST", "products"): self._add_product,
            ("POST", "managers"): self._add_manager,
            ("DELETE", "managers"): self._remove_manager,
            ("POST", "drift"): lambda parts, body: self._drift(body),
            ("POST", "fail-next"): self._fail_next,
            ("POST", "settings"): self._settings,
            ("POST", "reset"): self._reset,
        }

    def handle(self, request: Request, subpath: str) -> Response:
        parts = [p for p in subpath.strip("/").split("/") if p]
        body = request.get_json(silent=True) or {}
        handler = self.routes.get((request.method, parts[0])) if parts else None
        expected_length = 2 if parts[:1] == ["managers"] and request.method == "DELETE" else 1
        if handler is None or len(parts) != expected_length:
            return error(404, "NotFound", f"No control route for {request.method} /{subpath}.")
        with self.account.lock:
            self.account.advance()
            return handler(parts, body)

    def _add_product(self, parts: list[str], body: dict[str, Any]) -> Response:
        external_id = body.get("externalId")
        if not external_id:
            return error(400, "BadRequest", "externalId is required")
        try:
            guid = self.account.add_product(str(external_id), body.get("name"))
        except ValueError as exc:
            return error(409, "Conflict", str(exc))
        return json_response({"id": guid})

    def _add_manager(self, parts: list[str], body: dict[str, Any]) -> Response:
        client_id = str(body.get("client_id", "")).lower()
        if not client_id:
            return error(400, "BadRequest", "client_id is required")
        self.account.managers.add(client_id)
        return json_response({"managers": sorted(self.account.managers)})

    def _remove_manager(self, parts: list[str], body: dict[str, Any]) -> Response:
        self.account.managers.discard(parts[1].lower())
        return json_response({"managers": sorted(self.account.managers)})

    def _fail_next(self, parts: list[str], body: dict[str, Any]) -> Response:
        self.account.fail_next.append(str(body.get("message") or "The lead destination could not be validated."))
        return json_response({"pending": len(self.account.fail_next)})

    def _settings(self, parts: list[str], body: dict[str, Any]) -> Response:
        if "job_seconds" in body:
            self.account.job_seconds = float(body["job_seconds"])
        return json_response({"job_seconds": self.account.job_seconds})

    def _reset(self, parts: list[str], body: dict[str, Any]) -> Response:
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
