"""Table operations of the Dataverse emulator: query a collection (with paging), read, update and
delete a row, create a lead, and the body checks every create and update shares. Privileges are
checked through Security; Principal is the caller as the organization knows it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from sandbox.common import GUID_PATTERN, SandboxSettings
from sandbox.dataverse import catalogue
from sandbox.dataverse.odata import (
    MAX_PAGE_SIZE,
    matches,
    page_start,
    parse_expand,
    parse_filter,
    parse_select,
    parse_top,
    preferred_page_size,
    project,
    skiptoken,
)
from sandbox.dataverse.protocol import (
    E_ETAG,
    E_HAS_USERSETTINGS,
    E_PAYLOAD,
    ODataError,
    Result,
    bad_request,
    duplicate,
    json_result,
    not_allowed,
    not_found,
)
from sandbox.dataverse.schema import TABLES, Table, parse_guid, unknown_property
from sandbox.dataverse.security import READ_PRIVILEGE, Principal, Security
from sandbox.dataverse.store import Store

LEAD_WRITER_SOLUTION = "MicrosoftMarketplacesLeadIntegrationSolution"


def split_body(table: Table, body: dict, allowed: frozenset[str]) -> tuple[dict, dict[str, str]]:
    """Validate a create/update body: (plain columns, {navigation property: id} of `nav@odata.bind`)."""
    fields, binds = {}, {}
    for key, value in body.items():
        if key.startswith("@odata."):
            continue
        if key.endswith("@odata.bind"):
            nav = key[: -len("@odata.bind")]
            if nav not in table.binds:  # Microsoft's troubleshooting page: 0x80048d19 around the OData error
                raise ODataError(400, E_PAYLOAD, f"Error identified in Payload provided by the user for Entity "
                                 f":'{table.entity_set}'  ---->  InnerException : Microsoft.OData.ODataException: An "
                                 f"undeclared property '{nav}' which only has property annotations in the payload "
                                 "but no property value was found in the payload. In OData, only declared navigation "
                                 "properties and declared named streams can be represented as properties without "
                                 "values.")
            m = re.fullmatch(rf"(?:.*/)?(\w+)\(({GUID_PATTERN})\)", str(value))
            if not m:
                raise bad_request(f"The value '{value}' of {key} is not a valid entity reference.")
            binds[nav] = m.group(2).lower()
            continue
        if key not in table.columns:
            raise unknown_property(key, table)
        if key not in allowed:
            raise bad_request(f"The property '{key}' of '{table.logical}' cannot be set: it is read-only.")
        fields[key] = _coerce(table, key, value)
    return fields, binds


def _coerce(table: Table, key: str, value: Any) -> Any:
    kind = table.columns[key]
    if value is None:
        return None
    ok = {"Edm.String": isinstance(value, str), "Edm.Boolean": isinstance(value, bool),
          "Edm.Int32": isinstance(value, int) and not isinstance(value, bool)}.get(kind, True)
    if kind == "Edm.Guid":
        return parse_guid(str(value))
    if not ok:
        raise bad_request(f"Cannot convert the literal '{value}' to the expected type '{kind}'.")
    return value


def created_result(base: str, table: Table, row: dict, query: dict, headers: dict[str, str]) -> Result:
    """204 with OData-EntityId, or 201 with the row under `Prefer: return=representation`.

    Learn, "Create a table row using the Web API" ("Create with data returned"): the 201 carries
    `Preference-Applied: return=representation` and "the OData-EntityId header containing the URI to the
    created record is not returned" (contract/fixtures/powerapps-docs/create-with-data-returned.json)."""
    entity_id = f"{base}{table.entity_set}({row[table.key]})"
    if "return=representation" in headers.get("prefer", "").replace(" ", ""):
        select = parse_select(table, query.get("$select"))
        ctx_cols = f"({','.join(select)})" if select else ""
        return json_result({"@odata.context": f"{base}$metadata#{table.entity_set}{ctx_cols}/$entity",
                            **project(table, row, select)}, 201, {"Preference-Applied": "return=representation"})
    return 204, {"OData-EntityId": entity_id, "Location": entity_id}, b""


class Tables:
    """Collection queries and row operations of one organization."""

    def __init__(self, store: Store, security: Security, base: str, settings: SandboxSettings) -> None:
        self.store = store
        self.security = security
        self.base = base
        self.settings = settings
        self.lead_rewrites: dict[str, str] = {}  # field -> value a "plug-in" writes into every new lead (a drift)

    # ----- reads --------------------------------------------------------------------------------
    def query(self, table: Table, query: dict, pr: Principal, headers: dict[str, str]) -> Result:
        self.security.require(pr, READ_PRIVILEGE[table.entity_set])
        select = parse_select(table, query.get("$select"))
        flt = parse_filter(table, query.get("$filter"))
        top = parse_top(query.get("$top"))
        expand = parse_expand(table, query.get("$expand"))
        prefer = preferred_page_size(headers.get("prefer", ""))
        rows = [r for r in self.store.rows[table.entity_set].values()
                if matches(flt, r) and self.security.can_read_row(pr, table, r)]
        if query.get("$orderby"):
            rows = self._order(table, rows, query["$orderby"])
        out_headers = {"Preference-Applied": f"odata.maxpagesize={prefer}"} if prefer else {}
        next_link = None
        if top is not None:  # $top is not paged: it wins over odata.maxpagesize (docs/sandbox.md, "Paging")
            rows = rows[:top]
            out_headers = {}
        else:
            size = prefer or max(1, int(self.settings.page_size or MAX_PAGE_SIZE))
            start, page = page_start(query["$skiptoken"], rows, table.key, size) if "$skiptoken" in query else (0, 1)
            more = len(rows) > start + size
            rows = rows[start:start + size]
            if more:
                token = skiptoken(table.key, page + 1, rows[0][table.key], rows[-1][table.key])
                params = [(k, v) for k, v in query.items() if k != "$skiptoken"] + [("$skiptoken", token)]
                next_link = f"{self.base}{table.entity_set}?" + "&".join(
                    f"{k}={quote(v, safe='$,()' if k != '$skiptoken' else '')}" for k, v in params)
        ctx_cols = f"({','.join(select)})" if select else ""
        value = [self._shape(table, r, select, expand, pr) for r in rows]
        body: dict[str, Any] = {"@odata.context": f"{self.base}$metadata#{table.entity_set}{ctx_cols}", "value": value}
        if next_link:
            body["@odata.nextLink"] = next_link
        return json_result(body, headers=out_headers)

    @staticmethod
    def _order(table: Table, rows: list[dict], text: str) -> list[dict]:
        for item in reversed([i.strip() for i in text.split(",") if i.strip()]):
            col, _, direction = item.partition(" ")
            if col not in table.columns:
                raise unknown_property(col, table)
            rows = sorted(rows, key=lambda r, c=col: (r.get(c) is not None, str(r.get(c) or "").casefold()),
                          reverse=direction.strip().lower() == "desc")
        return rows

    def _shape(self, table: Table, row: dict, select: list[str] | None, expand: list, pr: Principal) -> dict:
        out = project(table, row, select)
        links = sorted(self.store.user_roles)
        for nav, opts in expand:  # only systemuserroles_association is declared
            self.security.require(pr, "prvReadRole")
            if table.entity_set == "systemusers":
                linked_table = TABLES["roles"]
                linked = [self.store.rows["roles"][r] for (u, r) in links if u == row["systemuserid"]]
            else:
                linked_table = TABLES["systemusers"]
                linked = [self.store.rows["systemusers"][u] for (u, r) in links if r == row["roleid"]]
            sel = parse_select(linked_table, opts.get("$select"))
            flt = parse_filter(linked_table, opts.get("$filter"))
            out[nav] = [project(linked_table, r, sel) for r in linked if matches(flt, r)]
        return out

    def read(self, table: Table, record_id: str, query: dict, pr: Principal) -> Result:
        select = parse_select(table, query.get("$select"))
        expand = parse_expand(table, query.get("$expand"))
        self.security.require(pr, READ_PRIVILEGE[table.entity_set])
        row = self.store.get(table.entity_set, record_id)
        self.security.require_row(pr, table, row, READ_PRIVILEGE[table.entity_set])
        ctx_cols = f"({','.join(select)})" if select else ""
        return json_result({"@odata.context": f"{self.base}$metadata#{table.entity_set}{ctx_cols}/$entity",
                            **self._shape(table, row, select, expand, pr)})

    # ----- writes -------------------------------------------------------------------------------
    def create_lead(self, table: Table, query: dict, headers: dict[str, str], body: dict, pr: Principal) -> Result:
        fields, _ = split_body(table, body, table.creatable)
        self.security.require(pr, "prvCreateLead", "Basic")
        if any(s["uniquename"] == LEAD_WRITER_SOLUTION for s in self.store.rows["solutions"].values()):
            # Inferred rule (docs/sandbox.md, "The Lead Writer's lead plug-in"): while the Lead Writer solution
            # is installed its lead plug-in runs in the caller's context; it stores UI settings for the user and
            # writes/appends to a system job, so the caller needs these privileges at these depths.
            for name, depth in catalogue.PROCEDURE_GRANTS:
                self.security.require(pr, name, depth)
        if "return=representation" in headers.get("prefer", ""):
            self.security.require(pr, "prvReadLead", "Basic")
        lead_id = fields.pop("leadid", None) or str(uuid.uuid4())
        if lead_id in self.store.rows["leads"]:
            raise duplicate()
        row: dict = {c: None for c in table.columns}
        row.update(fields)
        row.update(self.lead_rewrites)  # the add_lead_rewrite drift: a plug-in rewrote the incoming lead
        row.update({"leadid": lead_id, "statecode": 0, "statuscode": 1, "_ownerid_value": pr.user["systemuserid"],
                    "_owningbusinessunit_value": pr.user["_businessunitid_value"],
                    "fullname": " ".join(x for x in (row.get("firstname"), row.get("lastname")) if x) or None})
        self.store.rows["leads"][lead_id] = self.store.stamp(row, created=True)
        return created_result(self.base, table, row, query, headers)

    def update(self, table: Table, record_id: str, headers: dict[str, str], body: dict, pr: Principal) -> Result:
        if table.entity_set not in ("leads", "systemusers"):
            raise not_allowed("PATCH")
        row = self.store.rows[table.entity_set].get(record_id)
        if row is None:
            # Inferred: the sandbox does not upsert; PATCH of a missing row is 404 (with or without If-Match: *).
            raise not_found(table.logical, record_id)
        if headers.get("if-none-match", "").strip() == "*":
            raise duplicate()
        match = headers.get("if-match", "").strip()
        if match and match != "*" and match != f'W/"{row["versionnumber"]}"':
            raise ODataError(412, E_ETAG, "The version of the existing record doesn't match the RowVersion "
                                          "property provided.")
        fields, binds = split_body(table, body, table.updatable)
        if table.entity_set == "leads":
            self.security.require_row(pr, table, row, "prvWriteLead")
        else:
            self.security.require_row(pr, table, row, "prvWriteUser")
            if set(binds) - {"businessunitid"}:
                raise bad_request(f"The navigation property '{sorted(set(binds) - {'businessunitid'})[0]}' of "
                                  "'systemuser' cannot be set with an update.")
            for col in ("internalemailaddress", "domainname"):
                if col in fields and (fields[col] or "").casefold() != (row.get(col) or "").casefold():
                    raise bad_request(f"The {col} of a user cannot be changed after it is created "
                                      f"(systemuser {record_id}).")
        if binds.get("businessunitid") and binds["businessunitid"] != row["_businessunitid_value"]:
            # Specialised update: Update of systemuser.businessunitid runs SetBusinessSystemUser
            # (docs/sandbox.md, "Business-unit moves").
            self.store.get("businessunits", binds["businessunitid"])
            self.store.move_user(row, binds["businessunitid"])
        row.update(fields)
        if "firstname" in fields or "lastname" in fields:
            row["fullname"] = " ".join(x for x in (row.get("firstname"), row.get("lastname")) if x)
        self.store.stamp(row)
        return 204, {"OData-EntityId": f"{self.base}{table.entity_set}({record_id})"}, b""

    def delete(self, table: Table, record_id: str, pr: Principal) -> Result:
        """DELETE of a lead; a systemuser's is refused (solutions are deleted by SolutionImports)."""
        if table.entity_set == "leads":
            row = self.store.get("leads", record_id)
            self.security.require_row(pr, table, row, "prvDeleteLead")
            del self.store.rows["leads"][record_id]
            return 204, {}, b""
        if table.entity_set == "systemusers":
            self.store.get("systemusers", record_id)
            # Every user owns its usersettings row, so the delete is refused (docs/sandbox.md).
            raise ODataError(400, E_HAS_USERSETTINGS,
                             "The object you tried to delete is associated with another object and cannot be "
                             f"deleted: systemuser {record_id} still owns its usersettings. Disable the user and "
                             "remove its roles instead.")
        raise not_allowed("DELETE")
