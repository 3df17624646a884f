"""The actions and functions the Dataverse emulator implements, with the parameters Microsoft's Web API
reference lists for each (name → Edm/entity type), and the checks every call goes through: a parameter
the operation does not have is refused the way Dataverse refuses it, and an entity-typed parameter is
read in each documented form.

Sources (docs/sandbox.md, "Actions, functions and their parameters"):
- parameter tables: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/<name>
- entity-typed parameters: "Use Web API actions", section "Specify entity parameter type"
  (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/use-web-api-actions): the entity
  as a JSON object with its primary key, `@odata.type` "Microsoft.Dynamics.CRM.<logical name>" where the type
  is ambiguous (a base type such as principal, whose key is `ownerid`); without the key Dataverse answers
  "EdmEntityObject passed should have the key property value set."; a reference
  `{"@odata.id": "<set>(<id>)"}` is the documented form of an entity-typed function parameter
  ("Create a table row using the Web API", InitializeFrom) and is accepted for actions too (inferred).
- an unknown action parameter: 400 0x80048d19 "Error identified in Payload provided by the user for Entity
  :'' … InnerException : Microsoft.OData.ODataException: The parameter '<p>' in the request payload is not a
  valid parameter for the operation '<action>'." (wrapper and code: Microsoft's "Troubleshoot Dataverse Web
  API client errors"; the inner sentence: a real answer quoted in Azure/LogicAppsUX#2512).
- an unknown function parameter: 400 "Request message has unresolved parameters." ("Use Web API actions",
  bound operations; code 0x0 inferred).
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.common import GUID_PATTERN
from sandbox.dataverse.protocol import E_BAD, E_PAYLOAD, ODataError, bad_request
from sandbox.dataverse.schema import parse_guid

REFERENCE = "https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/"
_IMPORT = {"OverwriteUnmanagedCustomizations": "Edm.Boolean", "PublishWorkflows": "Edm.Boolean",
           "CustomizationFile": "Edm.Binary", "ImportJobId": "Edm.Guid", "ConvertToManaged": "Edm.Boolean",
           "SkipProductUpdateDependencies": "Edm.Boolean", "SkipQueueRibbonJob": "Edm.Boolean",
           "AsyncRibbonProcessing": "Edm.Boolean", "ComponentParameters": "Collection(mscrm.crmbaseentity)",
           "SolutionParameters": "mscrm.SolutionParameters"}

#: action → {parameter: type}, from each action's Learn reference page (bound actions: the binding
#: parameter `entity` is the URL, never a body parameter)
ACTIONS: dict[str, dict[str, str]] = {
    "AddPrivilegesRole": {"Privileges": "Collection(mscrm.RolePrivilege)"},
    "ReplacePrivilegesRole": {"Privileges": "Collection(mscrm.RolePrivilege)"},
    "RemovePrivilegeRole": {"Privilege": "mscrm.privilege"},
    "ImportSolutionAsync": {**_IMPORT, "HoldingSolution": "Edm.Boolean", "LayerDesiredOrder": "mscrm.LayerDesiredOrder"},
    "StageAndUpgradeAsync": dict(_IMPORT),
    "ImportSolution": {**_IMPORT, "HoldingSolution": "Edm.Boolean", "LayerDesiredOrder": "mscrm.LayerDesiredOrder",
                       "IsTemplateMode": "Edm.Boolean", "TemplateSuffix": "Edm.String"},
    "SetBusinessSystemUser": {"BusinessUnit": "mscrm.businessunit", "ReassignPrincipal": "mscrm.principal",
                              "DoNotMoveAllRecords": "Edm.Boolean"},
}
#: function → {parameter: type}
FUNCTIONS: dict[str, dict[str, str]] = {
    "WhoAmI": {},
    "RetrieveRolePrivilegesRole": {"RoleId": "Edm.Guid"},
    "RetrieveUserPrivileges": {},
}
#: the properties of the RolePrivilege complex type (Learn: reference/roleprivilege)
ROLE_PRIVILEGE_PROPERTIES = {"BusinessUnitId", "Depth", "PrivilegeId", "PrivilegeName", "RecordFilterId",
                             "RecordFilterUniqueName"}
#: entity types whose key is inherited (principal: ownerid) and the concrete types that derive from them
_DERIVED = {"principal": ("systemuser", "team")}
_NAMESPACE = "Microsoft.Dynamics.CRM."


def payload_error(inner: str) -> ODataError:
    """Dataverse's 0x80048d19 envelope around an OData payload error."""
    return ODataError(400, E_PAYLOAD, "Error identified in Payload provided by the user for Entity :'', For more "
                      "information on this error please follow this help link https://go.microsoft.com/fwlink/"
                      f"?linkid=2195293  ---->  InnerException : Microsoft.OData.ODataException: {inner}")


def check_action_parameters(action: str, body: dict[str, Any]) -> None:
    """Refuse a body parameter the action does not have (the first one, in name order)."""
    known = ACTIONS[action]
    unknown = sorted(k for k in body if k not in known and not k.startswith("@odata."))
    if unknown:
        raise payload_error(f"The parameter '{unknown[0]}' in the request payload is not a valid parameter for "
                            f"the operation '{action}'.")


def check_function_parameters(function: str, names: list[str]) -> None:
    if set(names) - set(FUNCTIONS[function]):
        raise ODataError(400, E_BAD, "Request message has unresolved parameters.")


def entity_parameter(value: Any, name: str, entity_type: str) -> tuple[str, str]:
    """(logical name, id) of an entity-typed parameter given in a documented form:
    {"<key>": id} with or without "@odata.type": "Microsoft.Dynamics.CRM.<type>", or {"@odata.id": "<set>(<id>)"}.
    For a base type (principal) the key is `ownerid` and @odata.type names the concrete type."""
    if not isinstance(value, dict):
        raise bad_request(f"Cannot convert the value of parameter '{name}' to the expected type "
                          f"'{_NAMESPACE}{entity_type}': an entity object is expected.")
    concrete = _DERIVED.get(entity_type, (entity_type,))
    declared = str(value.get("@odata.type") or "").lstrip("#")
    if declared:
        logical = declared[len(_NAMESPACE):] if declared.startswith(_NAMESPACE) else ""
        if logical not in concrete and logical != entity_type:
            raise bad_request(f"The type '{declared}' of parameter '{name}' is not compatible with the expected "
                              f"type '{_NAMESPACE}{entity_type}'.")
    else:
        logical = entity_type
    key = "ownerid" if entity_type in _DERIVED else f"{entity_type}id"
    if value.get(key):
        if entity_type in _DERIVED and logical not in concrete:
            # "you must use the @odata.type property to specify the type of entity" (ambiguous base type)
            raise bad_request("EdmEntityObject passed should have the key property value set.")
        return logical, parse_guid(str(value[key]))
    reference = str(value.get("@odata.id") or "")
    for entity in concrete:
        if m := re.fullmatch(rf"(?:.*/)?{entity}s\(({GUID_PATTERN})\)", reference):
            return entity, m.group(1).lower()
    raise bad_request("EdmEntityObject passed should have the key property value set.")

