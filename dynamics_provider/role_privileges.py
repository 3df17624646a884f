"""RolePrivileges: exact depths for a listed set of privileges of a security role (procedure step 4, docs/architecture.md).

Works on the role's root copy, touches only the listed privileges, records the depths it found
before changing them and restores those on destroy. Depths are checked against the catalogue first.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    DataverseResourceProvider,
    clean,
    is_unknown,
    new_revision,
    next_revision,
)
from dynamics_provider.checks import (
    need_https_url,
    need_role,
)
from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse import privileges as api
from dynamics_provider.dataverse.privileges import (
    DEPTHS,
    PRIVILEGE_NAME_RE,
    RolePrivilegeState,
    normalize_depth,
)
from dynamics_provider.errors import NotFound

INPUTS = ("instance_url", "role_name", "role_id", "privileges")


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
    def _normalize(privileges: Any) -> tuple[list[Any], str | None]:
        if not isinstance(privileges, list) or not privileges:
            return [], "expected a non-empty list of {name, depth}, e.g. [{name: prvReadLead, depth: Global}]"
        out: list[Any] = []
        seen: set[str] = set()
        problems: list[str] = []
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
                    f"item {i}: depth {item.get('depth')!r} is not one of {'/'.join(DEPTHS)} "
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
                state = self._state(client, desired, subject, role_id=inputs.get("role_id"),
                                    role_name=inputs.get("role_name"))
            except NotFound:
                raise self.refuse("create", subject, "no role has this id", "pass an existing role's id") from None
            previous = {name: state.current.get(name.lower()) for name in desired}
            depths = self._read_back(desired, state.current, api.set_depths(client, state, desired))
        return CreateResult(state.role.id, self._outs(inputs, state.role.id, depths, previous, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"role {id_}"):
            try:
                current = api.current_depths(self.client(state["instance_url"]), id_)
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
            found = self._state(client, {**desired, **{n: None for n in released}}, subject, role_id=id_)
            for name in desired:
                previous.setdefault(name, found.current.get(name.lower()))
            restore = {n: previous.pop(n) for n in released}
            applied = api.set_depths(client, found, {**desired, **restore})
            depths = self._read_back(desired, found.current, applied)
        return UpdateResult(self._outs(inputs, id_, depths, previous, next_revision(state, bool(applied))))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        previous = self._previous(state)
        if not previous:
            return
        with self.operation("delete", f"role {id_}"):
            client = self.client(state["instance_url"])
            try:
                found = self._state(client, previous, f"role {id_}", role_id=id_)
            except NotFound:
                return  # the role is gone (solution uninstalled): nothing to restore
            api.set_depths(client, found, previous)

    # -- steps ---------------------------------------------------------------------------------

    def _state(self, client: DataverseClient, wanted: dict[str, str | None], subject: str,
               **role: str | None) -> RolePrivilegeState:
        """The role's privileges as they are; refuses a role not in the root business unit, unknown
        privileges and depths they do not allow (before anything is written)."""
        state = api.role_privilege_state(client, wanted, **role)
        if state is None:
            raise self.refuse(
                "create", subject, f"no role named {role.get('role_name')!r} exists in the root business unit",
                "import the solution that brings the role (SolutionImport) first, or fix the name",
            )
        problems = state.problems(wanted)
        if problems:
            unknown = [name for name in wanted if name not in state.catalogue]
            hints = []
            if unknown:
                hints.append("fix the privilege names in the spec of lead-destination:privileges (they are the names "
                             "Dataverse lists in its privilege table, e.g. prvReadLead)")
            if len(problems) > len(unknown):
                hints.append("give each privilege a depth it allows in the spec of lead-destination:privileges "
                             "(the Security Roles editor shows them)")
            raise self.refuse("write", subject, "; ".join(problems), "; ".join(hints) + "; nothing was changed")
        return state

    def _previous(self, state: dict[str, Any]) -> dict[str, str | None]:
        """Depths found before the first change; a managed name without an entry was absent (a null
        value may not survive the state round trip)."""
        recorded = state.get("previous_depths") or {}
        return {name: recorded.get(name) for name in [*self._desired(state), *recorded]}

    @staticmethod
    def _desired(props: dict[str, Any]) -> dict[str, str | None]:
        return {p["name"]: normalize_depth(p["depth"]) for p in props.get("privileges") or []}

    @staticmethod
    def _read_back(
        desired: dict[str, str | None], current: dict[str, str], applied: dict[str, str | None]
    ) -> dict[str, str | None]:
        """Depths of the managed names after the writes: what was read, with what was applied on top
        (the privilege actions answer 204 only once they took effect, so no second read)."""
        after: dict[str, str | None] = {**current, **{name.lower(): depth for name, depth in applied.items()}}
        return {name: after.get(name.lower()) for name in desired}

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
