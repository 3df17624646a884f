"""The tables the Dataverse emulator holds: their columns (Edm types), which columns a create or an
update may set, their @odata.bind navigation properties, and the GUID literal parser.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sandbox.dataverse.protocol import ODataError, bad_request


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


GUID, STR, BOOL, INT, DATE, MEMO = "Edm.Guid", "Edm.String", "Edm.Boolean", "Edm.Int32", "Edm.DateTimeOffset", "Edm.String"


@dataclass(frozen=True)
class Table:
    logical: str
    entity_set: str
    key: str
    display: str  # the name used in "{entity} With Id = … Does Not Exist"
    columns: dict[str, str]
    creatable: frozenset[str] = frozenset()
    updatable: frozenset[str] = frozenset()
    binds: dict[str, str] = field(default_factory=dict)  # nav property -> (lookup column) for @odata.bind
    navigations: frozenset[str] = frozenset()


_COMMON = {"createdon": DATE, "modifiedon": DATE, "versionnumber": INT}

TABLES: dict[str, Table] = {}


def _table(t: Table) -> None:
    TABLES[t.entity_set] = t


_table(Table("businessunit", "businessunits", "businessunitid", "BusinessUnit",
             {"businessunitid": GUID, "name": STR, "_parentbusinessunitid_value": GUID, "isdisabled": BOOL,
              "divisionname": STR, **_COMMON},
             creatable=frozenset({"name", "divisionname"}), updatable=frozenset({"name", "divisionname"}),
             binds={"parentbusinessunitid": "_parentbusinessunitid_value"}))
_table(Table("systemuser", "systemusers", "systemuserid", "SystemUser",
             {"systemuserid": GUID, "applicationid": GUID, "azureactivedirectoryobjectid": GUID,
              "firstname": STR, "lastname": STR, "fullname": STR, "internalemailaddress": STR,
              "domainname": STR, "isdisabled": BOOL, "accessmode": INT, "_businessunitid_value": GUID,
              "islicensed": BOOL, "title": STR, **_COMMON},
             creatable=frozenset({"applicationid", "firstname", "lastname", "internalemailaddress", "domainname",
                                  "accessmode", "isdisabled", "title"}),
             updatable=frozenset({"firstname", "lastname", "isdisabled", "title", "internalemailaddress",
                                  "domainname"}),
             binds={"businessunitid": "_businessunitid_value"},
             navigations=frozenset({"systemuserroles_association"})))
_table(Table("role", "roles", "roleid", "Role",
             {"roleid": GUID, "name": STR, "_businessunitid_value": GUID, "_parentrootroleid_value": GUID,
              "_parentroleid_value": GUID, "ismanaged": BOOL, "solutionid": GUID, **_COMMON},
             navigations=frozenset({"systemuserroles_association"})))
_table(Table("solution", "solutions", "solutionid", "Solution",
             {"solutionid": GUID, "uniquename": STR, "friendlyname": STR, "version": STR, "ismanaged": BOOL,
              "installedon": DATE, "description": STR, "isvisible": BOOL, **_COMMON}))
_table(Table("asyncoperation", "asyncoperations", "asyncoperationid", "AsyncOperation",
             {"asyncoperationid": GUID, "name": STR, "messagename": STR, "operationtype": INT, "statecode": INT,
              "statuscode": INT,
              "message": STR, "friendlymessage": STR, "startedon": DATE, "completedon": DATE,
              "_ownerid_value": GUID, "correlationid": GUID,
              # no versionnumber (so no @odata.etag): the asyncoperation Microsoft's Terraform provider recorded
              # has neither (contract/fixtures/terraform-provider-power-platform/get-async-operation-succeeded.json)
              "createdon": DATE, "modifiedon": DATE}))
_table(Table("importjob", "importjobs", "importjobid", "ImportJob",
             {"importjobid": GUID, "progress": "Edm.Double", "data": STR, "solutionname": STR,
              "startedon": DATE, "completedon": DATE, "_solutionid_value": GUID, "name": STR, **_COMMON}))
_table(Table("privilege", "privileges", "privilegeid", "Privilege",
             {"privilegeid": GUID, "name": STR, "accessright": INT, "canbebasic": BOOL, "canbelocal": BOOL,
              "canbedeep": BOOL, "canbeglobal": BOOL, "canbeentityreference": BOOL,
              "canbeparententityreference": BOOL}))
_LEAD_FIELDS = ("subject", "firstname", "lastname", "emailaddress1", "companyname", "telephone1", "mobilephone",
                "jobtitle", "description", "address1_country", "address1_city", "address1_stateorprovince",
                "address1_postalcode", "address1_line1", "websiteurl")
_table(Table("lead", "leads", "leadid", "lead",
             {"leadid": GUID, **{f: STR for f in _LEAD_FIELDS}, "numberofemployees": INT, "fullname": STR,
              "leadsourcecode": INT, "statecode": INT, "statuscode": INT, "_ownerid_value": GUID,
              "_owningbusinessunit_value": GUID, **_COMMON},
             creatable=frozenset({*_LEAD_FIELDS, "leadsourcecode", "numberofemployees", "leadid"}),
             updatable=frozenset({*_LEAD_FIELDS, "leadsourcecode", "numberofemployees", "statecode", "statuscode"})))

# A role's template, the lookup `_roletemplateid_value` (Web API reference, role EntityType: roletemplateid):
# organization.py gives the built-in System Administrator its documented one; a solution's role has none.
# Copies in other business units are made from the root role's row, so they carry it too.
TABLES["roles"].columns["_roletemplateid_value"] = GUID


def unknown_property(name: str, table: Table) -> ODataError:
    # Dataverse/OData wording for an unknown column in $select, $filter or a body.
    return bad_request(f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{table.logical}'.")


def parse_guid(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip().strip("{}")))
    except (ValueError, AttributeError):
        raise bad_request(f"Unrecognized 'Edm.Guid' literal '{text}'.") from None
