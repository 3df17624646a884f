"""Drift: the edits a person makes in the Dynamics UI (or a plug-in makes behind the API), applied to
one organization without privilege checks or HTTP, for `POST /_control/orgs/{org}/drift`."""

from __future__ import annotations

from collections.abc import Callable

from sandbox.dataverse import catalogue
from sandbox.dataverse.schema import TABLES, parse_guid
from sandbox.dataverse.solutions import SolutionImports
from sandbox.dataverse.store import Store
from sandbox.dataverse.tables import Tables


class Drift:
    """`apply(action, params)` → a JSON-able result; ValueError for a bad action or parameter."""

    def __init__(self, store: Store, tables: Tables, solutions: SolutionImports) -> None:
        self.store = store
        self.tables = tables
        self.solutions = solutions
        self.actions: dict[str, Callable[[dict], dict]] = {
            "disable_user": lambda p: self._set_disabled(p, True),
            "enable_user": lambda p: self._set_disabled(p, False),
            "remove_role": self._remove_role,
            "set_privilege_depth": self._set_privilege_depth,
            "remove_privilege": self._remove_privilege,
            "uninstall_solution": self._uninstall_solution,
            "add_business_unit": self._add_business_unit,
            "create_systemuser": self._create_systemuser,
            "move_user": self._move_user,
            "add_lead_rewrite": self._add_lead_rewrite,
            "clear_lead_rewrites": self._clear_lead_rewrites,
            "fail_next_import": self._fail_next_import,
        }

    def apply(self, action: str, params: dict) -> dict:
        handler = self.actions.get(action)
        if handler is None:
            raise ValueError(f"unknown drift action {action!r}")
        return handler(params)

    def _set_disabled(self, p: dict, disabled: bool) -> dict:
        user = self.store.get("systemusers", parse_guid(p["systemuserid"]))
        user["isdisabled"] = disabled
        self.store.stamp(user)
        return {"systemuserid": user["systemuserid"], "isdisabled": user["isdisabled"]}

    def _remove_role(self, p: dict) -> dict:
        pair = (parse_guid(p["systemuserid"]), parse_guid(p["roleid"]))
        removed = pair in self.store.user_roles
        self.store.user_roles.discard(pair)
        return {"removed": removed}

    def _root_privileges(self, p: dict) -> tuple[dict[str, str], catalogue.Privilege]:
        role = self.store.get("roles", parse_guid(p["roleid"]))
        priv = catalogue.find(p["privilege"])
        if priv is None:
            raise ValueError(f"unknown privilege {p['privilege']!r}")
        return self.store.role_privileges[role["_parentrootroleid_value"]], priv

    def _set_privilege_depth(self, p: dict) -> dict:
        privs, priv = self._root_privileges(p)
        if p["depth"] not in priv.depths:
            raise ValueError(f"{priv.name} allows {', '.join(priv.depths)}, not {p['depth']!r}")
        privs[priv.privilegeid] = p["depth"]
        return {"privilege": priv.name, "depth": p["depth"]}

    def _remove_privilege(self, p: dict) -> dict:
        privs, priv = self._root_privileges(p)
        return {"removed": privs.pop(priv.privilegeid, None) is not None}

    def _uninstall_solution(self, p: dict) -> dict:
        sol = next((s for s in self.store.rows["solutions"].values()
                    if s["uniquename"].casefold() == str(p["uniquename"]).casefold()), None)
        if sol is None:
            raise ValueError(f"no solution {p['uniquename']!r} is installed")
        self.solutions.uninstall(sol["solutionid"])
        return {"solutionid": sol["solutionid"]}

    def _add_business_unit(self, p: dict) -> dict:
        parent = parse_guid(p["parentbusinessunitid"]) if p.get("parentbusinessunitid") else \
            self.store.root_business_unit()
        self.store.get("businessunits", parent)
        return {"businessunitid": self.store.add_business_unit(str(p["name"]), parent)}

    def _create_systemuser(self, p: dict) -> dict:
        """The licence sync creating the systemuser of an Office 365 user."""
        bu = parse_guid(p["businessunitid"]) if p.get("businessunitid") else self.store.root_business_unit()
        self.store.get("businessunits", bu)
        upn = str(p["domainname"])
        if self.store.find_user_by_domainname(upn) is not None:
            raise ValueError(f"a systemuser with domainname {upn!r} already exists")
        uid = self.store.insert_user({
            "domainname": upn, "internalemailaddress": p.get("internalemailaddress") or upn,
            "azureactivedirectoryobjectid": parse_guid(p["azureactivedirectoryobjectid"]),
            "firstname": p.get("firstname"), "lastname": p.get("lastname") or upn.split("@")[0],
            "accessmode": 0, "islicensed": True, "_businessunitid_value": bu})
        return {"systemuserid": uid}

    def _move_user(self, p: dict) -> dict:
        """Settings → Users → Change Business Unit: the same effect as SetBusinessSystemUser."""
        user = self.store.get("systemusers", parse_guid(p["systemuserid"]))
        bu = parse_guid(p["businessunitid"])
        self.store.get("businessunits", bu)
        return self.store.move_user(user, bu)

    def _add_lead_rewrite(self, p: dict) -> dict:
        """A synchronous pre-operation plug-in or business rule on lead create that rewrites a field of every
        incoming lead (e.g. normalises the company name): what the marketplace wrote is not what is stored."""
        field = str(p["field"])
        if field not in TABLES["leads"].creatable or field == "leadid":
            raise ValueError(f"{field!r} is not a writable lead column")
        value = p["value"]
        if value is not None and not isinstance(value, str):
            raise ValueError("value must be a string or null")
        self.tables.lead_rewrites[field] = value
        return {"rewrites": dict(self.tables.lead_rewrites)}

    def _clear_lead_rewrites(self, p: dict) -> dict:
        removed = sorted(self.tables.lead_rewrites)
        self.tables.lead_rewrites.clear()
        return {"removed": removed}

    def _fail_next_import(self, p: dict) -> dict:
        self.solutions.armed_import_failure = str(p.get("errortext") or
                                                  "Import failed: a fault was armed in the sandbox.")
        return {"armed": True}
