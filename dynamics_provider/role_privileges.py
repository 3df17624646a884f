"""RolePrivileges: exact depths for a listed set of privileges of a security role (step 3.2).

Works on the role's root copy, touches only the listed privileges, records the depths it found
before changing them and restores those on destroy. Depths are checked against the catalogue first.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    DataverseResourceProvider,
    clean,
    is_unknown,
    need_https_url,
    need_role,
    new_revision,
    next_revision,
    raise_errors,
    same,
)
from dynamics_provider.errors import NotFound

DEPTHS = ("Basic", "Local", "Deep", "Global")
_ALIASES = {
    "basic": "Basic", "user": "Basic",
    "local": "Local", "businessunit": "Local",
    "deep": "Deep", "parentchildbusinessunits": "Deep", "parentchildbusinessunit": "Deep",
    "global": "Global", "organization": "Global",
}  # fmt: skip
PRIVILEGE_NAME_RE = re.compile(r"^prv[A-Za-z0-9_]+$")
INPUTS = ("instance_url", "role_name", "role_id", "privileges")


def normalize_depth(depth: Any) -> str | None:
    """Basic/Local/Deep/Global from either Dataverse or UI names (case, spaces and ':' ignored)."""
    if isinstance(depth, int) and not isinstance(depth, bool) and 0 <= depth < 4:
        return DEPTHS[depth]
    if not isinstance(depth, str):
        return None
    return _ALIASES.get(re.sub(r"[\s:_\-]", "", depth).lower())


def rank(depth: str | None) -> int:
    return -1 if depth is None else DEPTHS.index(depth)


class RolePrivilegesProvider(DataverseResourceProvider):
    resource_type = "RolePrivileges"
    replace_keys = ("instance_url", "role_name", "role_id")

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = self.given(news, INPUTS)
        checks: dict[str, str | None] = {"instance_url": need_https_url(inputs.get("instance_url"))}
        checks.update(need_role(inputs))
        privileges = inputs.get("privileges")
        if not is_unknown(privileges):
            normalized, reason = self._normalize(privileges)
            checks["privileges"] = reason
            if reason is None:
                inputs["privileges"] = normalized
        return self.checked(inputs, checks)

    @staticmethod
    def _normalize(privileges: Any) -> tuple[list[dict[str, str]], str | None]:
        if not isinstance(privileges, list) or not privileges:
            return [], "expected a non-empty list of {name, depth}, e.g. [{name: prvReadLead, depth: Global}]"
        out, seen, problems = [], set(), []
        for i, item in enumerate(privileges):
            if is_unknown(item) or (isinstance(item, dict) and any(is_unknown(v) for v in item.values())):
                out.append(item)
                continue
            if not isinstance(item, dict) or set(item) - {"name", "depth"}:
                problems.append(f"item {i}: expected exactly the keys name and depth")
                continue
            name, depth = item.get("name"), normalize_depth(item.get("depth"))
            if not isinstance(name, str) or not PRIVILEGE_NAME_RE.match(name):
                problems.append(f"item {i}: privilege name {name!r} must look like prvReadLead")
            elif name.lower() in seen:
                problems.append(f"{name} is listed twice")
            if depth is None:
                problems.append(
                    f"item {i}: depth {item.get('depth')!r} is not one of Basic/Local/Deep/Global "
                    "(or User/BusinessUnit/ParentChildBusinessUnits/Organization)"
                )
            if isinstance(name, str):
                seen.add(name.lower())
            out.append({"name": name, "depth": depth})
        return out, ("; ".join(problems) or None)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        changed = self.diff_inputs(olds, news, ["instance_url", "role_name", "role_id"])
        wanted = news.get("privileges")
        if is_unknown(wanted) or not isinstance(wanted, list):
            changed.append("privileges")
        else:
            found = olds.get("depths") or {}
            desired = {p.get("name"): normalize_depth(p.get("depth")) for p in wanted if isinstance(p, dict)}
            managed_before = {p.get("name") for p in olds.get("privileges") or []}
            if set(desired) != managed_before or any(found.get(n) != d for n, d in desired.items()):
                changed.append("privileges")
        return self.diff_result(changed)

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        subject = f"role {inputs.get('role_name') or inputs.get('role_id')}"
        with self.operation("create", subject):
            client = self.client(inputs["instance_url"])
            desired = self._desired(inputs)
            try:
                role, catalogue, current = self._lookup(client, inputs, desired, subject)
            except NotFound:
                raise self.refuse("create", subject, "no role has this id", "pass an existing role's id") from None
            previous = {name: current.get(name.lower()) for name in desired}
            depths = self._read_back(desired, current, self._apply(client, role, desired, current, catalogue))
        return CreateResult(role["roleid"], self._outs(inputs, role["roleid"], depths, previous, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"role {id_}"):
            try:
                current = self._current(self.client(state["instance_url"]), id_)
            except NotFound:
                return ReadResult("", {})
        return ReadResult(id_, {**state, "depths": self._read_back(self._desired(state), current, {})})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        subject = f"role {id_}"
        with self.operation("update", subject):
            client = self.client(inputs["instance_url"])
            desired = self._desired(inputs)
            previous = self._previous(state)
            released = [n for n in previous if n not in desired]
            role, catalogue, current = self._lookup(
                client, {"role_id": id_}, {**desired, **{n: None for n in released}}, subject)
            for name in desired:
                previous.setdefault(name, current.get(name.lower()))
            restore = {n: previous.pop(n) for n in released}
            applied = self._apply(client, role, {**desired, **restore}, current, catalogue)
            depths = self._read_back(desired, current, applied)
        return UpdateResult(self._outs(inputs, id_, depths, previous, next_revision(state, bool(applied))))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        previous = self._previous(state)
        if not previous:
            return
        with self.operation("delete", f"role {id_}"):
            client = self.client(state["instance_url"])
            try:
                role, catalogue, current = self._lookup(client, {"role_id": id_}, previous, f"role {id_}")
            except NotFound:
                return  # the role is gone (solution uninstalled): nothing to restore
            self._apply(client, role, previous, current, catalogue)

    # -- steps ---------------------------------------------------------------------------------

    def _previous(self, state: dict[str, Any]) -> dict[str, str | None]:
        """Depths found before the first change; a managed name without an entry was absent (a null
        value may not survive the state round trip)."""
        recorded = state.get("previous_depths") or {}
        return {name: recorded.get(name) for name in [*self._desired(state), *recorded]}

    @staticmethod
    def _desired(props: dict[str, Any]) -> dict[str, str]:
        return {p["name"]: normalize_depth(p["depth"]) for p in props.get("privileges") or []}

    def _lookup(
        self, client: Any, inputs: dict[str, Any], names: dict[str, Any], subject: str
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, str]]:
        """(root role, catalogue rows of `names`, current depths by lower-case name).

        By id: one `$batch` (role, catalogue, the role's privileges). By name: one `$batch` (root
        business unit, the role's copies, catalogue), then the root copy's privileges.
        Raises NotFound for a role id that does not exist.
        """
        from dynamics_provider.client import odata_guid, odata_path, odata_string

        columns = "roleid,name,_businessunitid_value,_parentrootroleid_value"
        catalogue_path = odata_path("privileges", {
            "$select": "privilegeid,name,canbebasic,canbelocal,canbedeep,canbeglobal",
            "$filter": " or ".join(f"name eq {odata_string(n)}" for n in names)})
        if inputs.get("role_id"):
            role_id = odata_guid(inputs["role_id"])
            role, catalogue, privileges = client.batch_get([
                odata_path(f"roles({role_id})", {"$select": columns}), catalogue_path,
                f"RetrieveRolePrivilegesRole(RoleId={role_id})"])
            role, catalogue, privileges = raise_errors([role, catalogue, privileges])
            root = role.get("_parentrootroleid_value")
            if root and not same(root, role["roleid"]):
                role = client.get(f"roles({odata_guid(root)})", {"$select": columns})
                privileges = None
        else:
            unit, copies, catalogue = raise_errors(client.batch_get([
                odata_path("businessunits", {"$select": "businessunitid",
                                             "$filter": "_parentbusinessunitid_value eq null"}),
                odata_path("roles", {"$select": columns, "$filter": f"name eq {odata_string(inputs['role_name'])}"}),
                catalogue_path]))
            root_bu = (unit.get("value") or [{}])[0].get("businessunitid")
            role = next((r for r in copies.get("value") or [] if same(r.get("_businessunitid_value"), root_bu)), None)
            if role is None:
                raise self.refuse(
                    "create", subject, f"no role named {inputs['role_name']!r} exists in the root business unit",
                    "import the solution that brings the role (SolutionImport) first, or fix the name",
                )
            privileges = None
        current = self._depths(privileges) if privileges is not None else self._current(client, role["roleid"])
        return role, self._check_catalogue(catalogue.get("value") or [], names, subject), current

    def _check_catalogue(
        self, rows: list[dict[str, Any]], names: dict[str, Any], subject: str
    ) -> dict[str, dict[str, Any]]:
        """Privilege rows by name; refuses unknown privileges and depths they do not allow."""
        by_name = {r["name"].lower(): r for r in rows}
        unknown, too_deep = [], []
        for name, depth in names.items():
            row = by_name.get(name.lower())
            if row is None:
                unknown.append(f"{name} is not a privilege of this organization")
                continue
            allowed = [d for d in DEPTHS if row.get(f"canbe{d.lower()}")]
            if depth is not None and depth not in allowed:
                too_deep.append(f"{name} cannot be {depth} (allowed: {', '.join(allowed) or 'none'})")
        hints = []
        if unknown:
            hints.append("fix the privilege names in the spec of lead-destination:privileges (they are the names "
                         "Dataverse lists in its privilege table, e.g. prvReadLead)")
        if too_deep:
            hints.append("give each privilege a depth it allows in the spec of lead-destination:privileges "
                         "(the Security Roles editor shows them)")
        if unknown or too_deep:
            raise self.refuse("write", subject, "; ".join(unknown + too_deep), "; ".join(hints) + "; nothing was changed")
        return {name: by_name[name.lower()] for name in names}

    @staticmethod
    def _depths(result: dict[str, Any]) -> dict[str, str]:
        """Depth by lower-case privilege name from a RetrieveRolePrivilegesRole answer."""
        return {
            p["PrivilegeName"].lower(): normalize_depth(p.get("Depth")) or "Basic"
            for p in (result or {}).get("RolePrivileges", [])
        }

    def _current(self, client: Any, role_id: str) -> dict[str, str]:
        return self._depths(client.function("RetrieveRolePrivilegesRole", RoleId=role_id))

    @staticmethod
    def _read_back(
        desired: dict[str, str], current: dict[str, str], applied: dict[str, str | None]
    ) -> dict[str, str | None]:
        """Depths of the managed names after the writes: what was read, with what was applied on top
        (the privilege actions answer 204 only once they took effect, so no second read)."""
        after = {**current, **{name.lower(): depth for name, depth in applied.items()}}
        return {name: after.get(name.lower()) for name in desired}

    @staticmethod
    def _apply(
        client: Any,
        role: dict[str, Any],
        target: dict[str, str | None],
        current: dict[str, str],
        catalogue: dict[str, dict[str, Any]],
    ) -> dict[str, str | None]:
        """Bring each listed privilege to exactly its target depth (None = absent), nothing else;
        returns what it changed ({name: depth}, empty when nothing was written).

        AddPrivilegesRole only adds or raises; lowering needs RemovePrivilegeRole first.
        """
        role_id, bu = role["roleid"], role.get("_businessunitid_value")
        to_add, changed = [], {}
        for name, depth in target.items():
            have = current.get(name.lower())
            if have == depth:
                continue
            changed[name] = depth
            privilege_id = catalogue[name]["privilegeid"]
            if have is not None and (depth is None or rank(depth) < rank(have)):
                try:
                    client.action("RemovePrivilegeRole", {"PrivilegeId": privilege_id}, bound=("roles", role_id))
                except NotFound:
                    pass
            if depth is not None:
                to_add.append({"PrivilegeId": privilege_id, "Depth": depth, "BusinessUnitId": bu})
        if to_add:
            client.action("AddPrivilegesRole", {"Privileges": to_add}, bound=("roles", role_id))
        return changed

    @staticmethod
    def _outs(
        inputs: dict[str, Any],
        root_role_id: str,
        depths: dict[str, str | None],
        previous: dict[str, str | None],
        revision: str | None,
    ) -> dict[str, Any]:
        return {
            "instance_url": inputs.get("instance_url"),
            "role_name": inputs.get("role_name"),
            "role_id": inputs.get("role_id"),
            "privileges": inputs.get("privileges"),
            "root_role_id": root_role_id,
            "depths": depths,
            "previous_depths": previous,
            "revision": revision,
        }


class RolePrivileges(Resource, module="dynamics", name="RolePrivileges"):
    """Exact depths for the listed privileges of a security role; other privileges are untouched."""

    instance_url: pulumi.Output[str]
    role_name: pulumi.Output[str | None]
    role_id: pulumi.Output[str | None]
    privileges: pulumi.Output[list]
    root_role_id: pulumi.Output[str]
    depths: pulumi.Output[dict]
    previous_depths: pulumi.Output[dict]
    revision: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        instance_url: pulumi.Input[str],
        privileges: pulumi.Input[list],
        role_name: pulumi.Input[str] | None = None,
        role_id: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "instance_url": instance_url,
            "role_name": role_name,
            "role_id": role_id,
            "privileges": privileges,
            "root_role_id": None,
            "depths": None,
            "previous_depths": None,
            "revision": None,
        }
        super().__init__(RolePrivilegesProvider(), resource_name, props, opts)
