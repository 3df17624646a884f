"""The sandbox's privilege catalogue: entities (logical name, object type code, ownership) and their
prv<Verb><Entity> privileges with the depths Dataverse allows for each. Ids are stable uuid5 values
per name (like real privilege ids they are the same in every organization).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

DEPTHS = ("Basic", "Local", "Deep", "Global")  # 0 User, 1 Business Unit, 2 Parent: Child BU, 3 Organization
DEPTH_RANK = {name: i for i, name in enumerate(DEPTHS)}
_NAMESPACE = uuid.UUID("3b0e6f0e-3d38-4c1e-9a6e-7c1f2b8a0d11")

USER_OWNED = ("Basic", "Local", "Deep", "Global")
BU_OWNED = ("Local", "Deep", "Global")
ORG_OWNED = ("Global",)
BASIC_ONLY = ("Basic",)

ALL_VERBS = ("Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign", "Share")
CRUD_APPEND = ("Create", "Read", "Write", "Delete", "Append", "AppendTo")
# accessright values of the privilege table per verb
ACCESS_RIGHTS = {"Read": 1, "Write": 2, "Append": 4, "AppendTo": 16, "Create": 32, "Delete": 65536,
                 "Share": 262144, "Assign": 524288}


@dataclass(frozen=True)
class Entity:
    logical_name: str
    privilege_suffix: str  # the <Entity> part of prv<Verb><Entity>
    otc: int  # object type code
    depths: tuple[str, ...]
    verbs: tuple[str, ...]


ENTITIES: tuple[Entity, ...] = (
    Entity("lead", "Lead", 4, USER_OWNED, ALL_VERBS),
    Entity("account", "Account", 1, USER_OWNED, ALL_VERBS),
    Entity("contact", "Contact", 2, USER_OWNED, ALL_VERBS),
    Entity("opportunity", "Opportunity", 3, USER_OWNED, ALL_VERBS),
    Entity("campaign", "Campaign", 4400, USER_OWNED, ALL_VERBS),
    Entity("activitypointer", "Activity", 4200, USER_OWNED, ALL_VERBS),
    Entity("email", "Email", 4202, USER_OWNED, ALL_VERBS),
    Entity("asyncoperation", "AsyncOperation", 4700, USER_OWNED, ALL_VERBS),
    Entity("userentityuisettings", "UserEntityUISettings", 2500, BASIC_ONLY, ("Create", "Read", "Write", "Delete")),
    Entity("systemuser", "User", 8, BU_OWNED, ("Create", "Read", "Write", "Append", "AppendTo")),
    Entity("team", "Team", 9, BU_OWNED, CRUD_APPEND),
    Entity("businessunit", "BusinessUnit", 10, BU_OWNED, ("Create", "Read", "Write", "Delete", "Append", "AppendTo")),
    Entity("role", "Role", 1036, BU_OWNED, ("Create", "Read", "Write", "Delete", "Append", "AppendTo")),
    Entity("usersettings", "UserSettings", 150, BU_OWNED, ("Read", "Write")),
    Entity("solution", "Solution", 7100, ORG_OWNED, ("Create", "Read", "Write", "Delete", "Append", "AppendTo")),
    Entity("publisher", "Publisher", 7101, ORG_OWNED, ("Create", "Read", "Write", "Delete", "Append", "AppendTo")),
    Entity("importjob", "ImportJob", 4428, USER_OWNED, ("Create", "Read", "Write", "Delete", "Append", "AppendTo")),
    Entity("pluginassembly", "PluginAssembly", 4605, ORG_OWNED, ("Create", "Read", "Write", "Delete")),
    Entity("sdkmessageprocessingstep", "SdkMessageProcessingStep", 4608, ORG_OWNED,
           ("Create", "Read", "Write", "Delete")),
    Entity("privilege", "Privilege", 1023, ORG_OWNED, ("Read",)),
    Entity("organization", "Organization", 1019, ORG_OWNED, ("Read", "Write")),
)

# Miscellaneous (non-entity) privileges: organization-wide only.
MISC_PRIVILEGES = ("prvImportCustomization", "prvExportCustomization", "prvPublishCustomization",
                   "prvAssignRole", "prvDisableUser", "prvUseInternetMarketing")


@dataclass(frozen=True)
class Privilege:
    privilegeid: str
    name: str
    depths: tuple[str, ...]
    entity: str | None
    accessright: int

    def allows(self, depth: str) -> bool:
        return depth in self.depths

    def row(self) -> dict:
        return {
            "privilegeid": self.privilegeid,
            "name": self.name,
            "accessright": self.accessright,
            "canbebasic": "Basic" in self.depths,
            "canbelocal": "Local" in self.depths,
            "canbedeep": "Deep" in self.depths,
            "canbeglobal": "Global" in self.depths,
            "canbeentityreference": False,
            "canbeparententityreference": False,
        }

    @property
    def deepest(self) -> str:
        return max(self.depths, key=DEPTH_RANK.__getitem__)


def privilege_id(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name.lower()))


def _build() -> dict[str, Privilege]:
    out: dict[str, Privilege] = {}
    for ent in ENTITIES:
        for verb in ent.verbs:
            name = f"prv{verb}{ent.privilege_suffix}"
            out[name.lower()] = Privilege(privilege_id(name), name, ent.depths, ent.logical_name, ACCESS_RIGHTS[verb])
    for name in MISC_PRIVILEGES:
        out[name.lower()] = Privilege(privilege_id(name), name, ORG_OWNED, None, 0)
    return out


PRIVILEGES: dict[str, Privilege] = _build()  # keyed by lower-case name
PRIVILEGES_BY_ID: dict[str, Privilege] = {p.privilegeid: p for p in PRIVILEGES.values()}
ENTITY_BY_NAME: dict[str, Entity] = {e.logical_name: e for e in ENTITIES}


def find(name: str) -> Privilege | None:
    return PRIVILEGES.get(name.lower())


# The privileges of the procedure's two grants to the Lead Writer role, with the depth each sets
# (docs/sandbox.md, "The Lead Writer's lead plug-in").
PROCEDURE_GRANTS: tuple[tuple[str, str], ...] = (
    ("prvCreateUserEntityUISettings", "Basic"),
    ("prvReadUserEntityUISettings", "Basic"),
    ("prvWriteUserEntityUISettings", "Basic"),
    ("prvReadAsyncOperation", "Global"),
    ("prvWriteAsyncOperation", "Global"),
    ("prvAppendToAsyncOperation", "Global"),
)
