"""Routing of the Dataverse emulator's Web API: `/api/data/v9.2/{path}` → the operation that serves it,
as a table of URL patterns (functions, bound actions, navigation properties, then entity sets and
rows), and the execution of a $batch's parts through the same table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from sandbox.common import GUID_PATTERN
from sandbox.dataverse.batch import format_batch, parse_batch
from sandbox.dataverse.operations import check_function_parameters
from sandbox.dataverse.protocol import (
    ODataError,
    Result,
    bad_request,
    json_result,
    not_allowed,
    parse_body,
    unknown_segment,
)
from sandbox.dataverse.roles import Roles
from sandbox.dataverse.schema import TABLES, parse_guid
from sandbox.dataverse.security import Principal
from sandbox.dataverse.solutions import SolutionImports
from sandbox.dataverse.tables import Tables
from sandbox.dataverse.users import Users

API_PREFIX = "/api/data/v9.2/"
QUERY_OPTIONS = ("$select", "$filter", "$top", "$expand", "$orderby", "$count", "$id", "$skiptoken")
# What RetrieveVersion answers (and the System solution's version): a Dataverse online 9.2 build number.
SERVER_VERSION = "9.2.24074.00164"


@dataclass
class Call:
    """One Web API request as the operations see it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    principal: Principal


Route = tuple[re.Pattern[str], Callable[[Call, re.Match[str]], Result]]


class Router:
    """Maps a Web API path to its operation; the first pattern that matches the whole path wins."""

    def __init__(self, base: str, organization_id: str, tables: Tables, users: Users, roles: Roles,
                 solutions: SolutionImports) -> None:
        self.base = base
        self.organization_id = organization_id
        self.tables, self.users, self.roles, self.solutions = tables, users, roles, solutions
        g = GUID_PATTERN
        self.routes: list[Route] = [
            (re.compile(r"WhoAmI(\(\))?"), self._who_am_i),
            (re.compile(r"RetrieveVersion(\(\))?"), self._retrieve_version),
            (re.compile(r"\$batch"), self._batch),
            (re.compile(r"(ImportSolutionAsync|StageAndUpgradeAsync|ImportSolution)"), self._import),
            (re.compile(r"RetrieveRolePrivilegesRole\(([^)]*)\)"), self._role_privileges),
            (re.compile(rf"systemusers\(({g})\)/(?:Microsoft\.Dynamics\.CRM\.)?RetrieveUserPrivileges(\(\))?"),
             self._user_privileges),
            (re.compile(rf"roles\(({g})\)/Microsoft\.Dynamics\.CRM\."
                        r"(AddPrivilegesRole|ReplacePrivilegesRole|RemovePrivilegeRole)"), self._privilege_action),
            (re.compile(rf"systemusers\(({g})\)/Microsoft\.Dynamics\.CRM\.SetBusinessSystemUser"),
             self._set_business_unit),
            (re.compile(rf"systemusers\(({g})\)/systemuserroles_association(?:\(({g})\))?(/\$ref)?"),
             self._association),
            (re.compile(r"(\w+)"), self._collection),
            (re.compile(r"(\w+)\(([^)]*)\)"), self._row),
        ]

    def route(self, method: str, path: str, args: list[tuple[str, str]], headers: dict[str, str], body: bytes,
              principal: Principal) -> Result:
        query: dict[str, str] = {}
        for k, v in args:
            if k.startswith("$") and k not in QUERY_OPTIONS:
                raise bad_request(f"The query parameter {k} is not supported")
            query[k] = v
        call = Call(method, path.strip("/"), query, headers, body, principal)
        for pattern, operation in self.routes:
            if m := pattern.fullmatch(call.path):
                return operation(call, m)
        raise unknown_segment(call.path)

    # ----- functions and actions ----------------------------------------------------------------
    def _require(self, call: Call, method: str) -> None:
        """A function (GET) or action (POST) called with another method: 404 with an empty code and "No HTTP
        resource was found that matches the request URI" (Microsoft's "Troubleshoot Dataverse Web API client
        errors", contract/fixtures/powerapps-docs/error-wrong-method-for-function.json)."""
        if call.method != method:
            raise ODataError(404, "", "No HTTP resource was found that matches the request URI "
                             f"'{self.base}{call.path}'.")

    def _who_am_i(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "GET")
        user = call.principal.user
        return json_result({"@odata.context": self.base + "$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                            "BusinessUnitId": user["_businessunitid_value"], "UserId": user["systemuserid"],
                            "OrganizationId": self.organization_id})

    def _retrieve_version(self, call: Call, m: re.Match[str]) -> Result:
        """Unbound function, no parameters; RetrieveVersionResponse has one property, Version (Edm.String)
        (doc: Microsoft Learn, Web API reference "RetrieveVersion Function" and "RetrieveVersionResponse
        ComplexType"). The @odata.context follows WhoAmI's documented answer (inferred)."""
        if call.method != "GET":
            raise not_allowed(call.method)
        return json_result({"@odata.context": self.base + "$metadata#Microsoft.Dynamics.CRM.RetrieveVersionResponse",
                            "Version": SERVER_VERSION})

    def _import(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "POST")
        return self.solutions.import_solution(m.group(1), parse_body(call.body), call.principal)

    def _role_privileges(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "GET")
        params = dict(p.split("=", 1) if "=" in p else (p, "") for p in m.group(1).split(",") if p)
        check_function_parameters("RetrieveRolePrivilegesRole", list(params))
        value = params.get("RoleId", "")
        raw = call.query.get(value, "") if value.startswith("@") else value
        return self.roles.retrieve_role_privileges(parse_guid(raw.strip("'")), call.principal)

    def _user_privileges(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "GET")
        return self.roles.retrieve_user_privileges(m.group(1).lower(), call.principal)

    def _privilege_action(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "POST")
        return self.roles.privilege_action(m.group(2), m.group(1).lower(), parse_body(call.body), call.principal)

    def _set_business_unit(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "POST")
        return self.users.set_business_system_user(m.group(1).lower(), parse_body(call.body), call.principal)

    def _association(self, call: Call, m: re.Match[str]) -> Result:
        return self.roles.association(call.method, m.group(1).lower(), (m.group(2) or "").lower() or None,
                                      bool(m.group(3)), call.query, call.body, call.principal)

    # ----- entity sets and rows -----------------------------------------------------------------
    def _collection(self, call: Call, m: re.Match[str]) -> Result:
        table = TABLES.get(m.group(1))
        if table is None:
            raise unknown_segment(call.path)
        if call.method == "GET":
            return self.tables.query(table, call.query, call.principal, call.headers)
        if call.method == "POST" and table.entity_set == "leads":
            return self.tables.create_lead(table, call.query, call.headers, parse_body(call.body), call.principal)
        if call.method == "POST" and table.entity_set == "systemusers":
            return self.users.create(table, call.query, call.headers, parse_body(call.body), call.principal)
        raise not_allowed(call.method)

    def _row(self, call: Call, m: re.Match[str]) -> Result:
        table = TABLES.get(m.group(1))
        if table is None:
            raise unknown_segment(call.path)
        record_id = parse_guid(m.group(2))
        if call.method == "GET":
            return self.tables.read(table, record_id, call.query, call.principal)
        if call.method == "PATCH":
            return self.tables.update(table, record_id, call.headers, parse_body(call.body), call.principal)
        if call.method == "DELETE" and table.entity_set == "solutions":
            return self.solutions.delete(record_id, call.principal)
        if call.method == "DELETE":
            return self.tables.delete(table, record_id, call.principal)
        raise not_allowed(call.method)

    # ----- $batch -------------------------------------------------------------------------------
    def _batch(self, call: Call, m: re.Match[str]) -> Result:
        self._require(call, "POST")
        parts = parse_batch(call.headers.get("content-type", ""), call.body)
        continue_on_error = "odata.continue-on-error" in call.headers.get("prefer", "")
        responses = []
        for part in parts:
            url = part.url
            path = urlsplit(url).path if "://" in url else url.split("?")[0]
            query = urlsplit(url).query if "?" in url else ""
            if API_PREFIX in path:
                path = path.split(API_PREFIX, 1)[1]
            elif path.startswith("/"):
                path = path.lstrip("/")
            try:
                status, hdrs, payload = self.route(part.method, unquote(path), parse_qsl(query, keep_blank_values=True),
                                                   part.headers, part.body, call.principal)
            except ODataError as err:
                status, hdrs, payload = err.status, {}, err.envelope()
            if payload:
                hdrs = {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0", **hdrs}
            responses.append((status, hdrs, payload))
            if status >= 400 and not continue_on_error:
                break
        content_type, payload = format_batch(responses)
        return 200, {"Content-Type": content_type}, payload
