"""ApplicationUser: the Dataverse systemuser of an Entra application (step 2a.6 of the procedure).

Adopts an existing user by application id, repairs disabled/name/business-unit drift, and on
destroy drops roles and disables the user, only if this resource created it.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    GUID_RE,
    DataverseResourceProvider,
    clean,
    failures_for,
    need_email,
    need_guid,
    need_https_url,
    need_text,
    same,
)
from dynamics_provider.errors import AmbiguousWriteError, DuplicateRecord, NotFound

USER_FIELDS = [
    "systemuserid",
    "applicationid",
    "isdisabled",
    "_businessunitid_value",
    "firstname",
    "lastname",
    "fullname",
    "internalemailaddress",
]
DEFAULT_FIRST_NAME, DEFAULT_LAST_NAME = "Marketplace", "Lead Writer"
INPUTS = ("instance_url", "application_id", "business_unit", "first_name", "last_name", "email")


class ApplicationUserProvider(DataverseResourceProvider):
    resource_type = "ApplicationUser"
    replace_keys = ("instance_url", "application_id", "email")

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = {k: v for k, v in clean(news).items() if k in INPUTS and v is not None}
        inputs.setdefault("first_name", DEFAULT_FIRST_NAME)  # Dataverse requires a last name; the
        inputs.setdefault("last_name", DEFAULT_LAST_NAME)  # UI's full name is "first last"
        checks = {
            "instance_url": need_https_url(inputs.get("instance_url")),
            "application_id": need_guid(inputs.get("application_id"), "the application (client) id"),
        }
        if "business_unit" in inputs:
            checks["business_unit"] = need_text(inputs["business_unit"], "a business unit name or id", 160)
        for key in ("first_name", "last_name"):
            if key in inputs:
                checks[key] = need_text(inputs[key], key.replace("_", " "), 64)
        checks["email"] = need_email(inputs.get("email"))  # Dataverse requires it; it cannot change later
        checks = {k: v for k, v in checks.items() if not self._unknown(inputs, k)}
        return self.check_result(inputs, failures_for(checks))

    def _unknown(self, props: dict[str, Any], key: str) -> bool:
        return key in props and not self.known(props, key)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        changed = self.diff_inputs(olds, news, INPUTS)
        if olds.get("disabled"):
            changed.append("disabled")
        return self.diff_result(changed)

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        subject = f"application {inputs['application_id']}"
        with self.operation("create", subject):
            client = self.client(inputs["instance_url"])
            user = self._find(client, inputs["application_id"])
            adopted = user is not None
            if user is None:
                user = self._create(client, inputs)
                adopted = user.pop("_adopted", False)
            user = self._converge(client, inputs, user)
        return CreateResult(user["systemuserid"], self._outs(inputs, user, adopted))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"systemuser {id_}"):
            user = self._get(self.client(state["instance_url"]), id_)
        if user is None:
            return ReadResult("", {})
        observed = dict(state)
        # Field-by-field truth: names/e-mail as Dataverse has them; a business unit that moved is
        # shown as the id it moved to, so the next diff sees the input differ.
        for key, field in (("first_name", "firstname"), ("last_name", "lastname"), ("email", "internalemailaddress")):
            if state.get(key) is not None:
                observed[key] = user.get(field)
        bu = user.get("_businessunitid_value")
        if not same(bu, state.get("business_unit_id")) or (
            isinstance(state.get("business_unit"), str)
            and GUID_RE.match(state["business_unit"])
            and not same(bu, state["business_unit"])
        ):
            observed["business_unit"] = bu
        return ReadResult(id_, self._outs(observed, user, bool(state.get("adopted"))))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        with self.operation("update", f"systemuser {id_}"):
            client = self.client(inputs["instance_url"])
            user = self._get(client, id_)
            if user is None:
                raise self.refuse(
                    "update", f"systemuser {id_}", "the user no longer exists",
                    "run `pulumi refresh` so that the next `pulumi up` creates it again",
                )
            user = self._converge(client, inputs, user)
        return UpdateResult(self._outs(inputs, user, bool(state.get("adopted"))))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        if state.get("adopted"):
            return  # released: it existed before this stack
        with self.operation("delete", f"systemuser {id_}"):
            client = self.client(state["instance_url"])
            try:
                roles = client.query(f"systemusers({id_})/systemuserroles_association", select=["roleid"])
                for role in roles:
                    try:
                        client.disassociate("systemusers", id_, "systemuserroles_association", role["roleid"])
                    except NotFound:
                        pass
                client.update("systemusers", id_, {"isdisabled": True})
            except NotFound:
                return

    # -- steps ---------------------------------------------------------------------------------

    def _find(self, client: Any, application_id: str) -> dict[str, Any] | None:
        from dynamics_provider.client import odata_guid

        rows = client.query("systemusers", select=USER_FIELDS, filter=f"applicationid eq {odata_guid(application_id)}")
        return rows[0] if rows else None

    def _get(self, client: Any, id_: str) -> dict[str, Any] | None:
        try:
            return client.get(f"systemusers({id_})", {"$select": ",".join(USER_FIELDS)})
        except NotFound:
            return None

    def _create(self, client: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "applicationid": inputs["application_id"],
            "businessunitid@odata.bind": f"/businessunits({self._business_unit_id(client, inputs)})",
        }
        for key, field in (("first_name", "firstname"), ("last_name", "lastname"), ("email", "internalemailaddress")):
            if inputs.get(key) is not None:
                body[field] = inputs[key]
        try:
            client.create("systemusers", body)
        except AmbiguousWriteError:
            pass  # it may exist now: the lookup below decides
        except DuplicateRecord:
            user = self._find(client, inputs["application_id"])  # created concurrently by someone else
            if user is not None:
                return {**user, "_adopted": True}
            raise
        user = self._find(client, inputs["application_id"])
        if user is None:  # the ambiguous write did not happen: send it once more
            client.create("systemusers", body)
            user = self._find(client, inputs["application_id"])
        if user is None:
            raise self.refuse(
                "create", f"application {inputs['application_id']}", "the new user cannot be found",
                "check the organization's audit log and retry",
            )
        return user

    def _converge(self, client: Any, inputs: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        patch: dict[str, Any] = {}
        if user.get("isdisabled"):
            patch["isdisabled"] = False
        for key, field in (("first_name", "firstname"), ("last_name", "lastname")):
            if inputs.get(key) is not None and user.get(field) != inputs[key]:
                patch[field] = inputs[key]
        if patch:
            client.update("systemusers", user["systemuserid"], patch)
        bu = self._business_unit_id(client, inputs)
        if not same(bu, user.get("_businessunitid_value")):
            self._move(client, user["systemuserid"], bu)
        if patch or not same(bu, user.get("_businessunitid_value")):
            user = self._get(client, user["systemuserid"]) or user
        return user

    def _move(self, client: Any, user_id: str, bu: str) -> None:
        """A user's business unit changes only through SetBusinessSystemUser (PATCH is refused)."""
        from dynamics_provider.errors import BadRequest

        body = {
            "BusinessUnit": {"@odata.type": "Microsoft.Dynamics.CRM.businessunit", "businessunitid": bu},
            "ReassignPrincipal": {"@odata.type": "Microsoft.Dynamics.CRM.systemuser", "systemuserid": user_id},
        }
        try:
            client.action("SetBusinessSystemUser", body, bound=("systemusers", user_id))
        except (NotFound, BadRequest) as exc:
            raise self.refuse(
                "update", f"systemuser {user_id}",
                f"the user is in another business unit and this organization refused to move it ({exc.message})",
                "move the user under Settings → Security → Users → Change Business Unit, then run `pulumi up`",
            ) from exc

    def _business_unit_id(self, client: Any, inputs: dict[str, Any]) -> str:
        from dynamics_provider.client import odata_string

        wanted = inputs.get("business_unit")
        if wanted and GUID_RE.match(wanted):
            return wanted
        if wanted:
            rows = client.query("businessunits", select=["businessunitid"], filter=f"name eq {odata_string(wanted)}")
        else:
            rows = client.query("businessunits", select=["businessunitid"], filter="_parentbusinessunitid_value eq null")
        if not rows:
            raise self.refuse(
                "resolve", f"business unit {wanted!r}", "no business unit has this name",
                "use the name shown under Settings → Business Management → Business Units, or its id",
            )
        return rows[0]["businessunitid"]

    @staticmethod
    def _outs(inputs: dict[str, Any], user: dict[str, Any], adopted: bool) -> dict[str, Any]:
        outs = {k: inputs.get(k) for k in INPUTS}
        outs.update(
            systemuser_id=user["systemuserid"],
            business_unit_id=user.get("_businessunitid_value"),
            full_name=user.get("fullname"),
            disabled=bool(user.get("isdisabled")),
            adopted=adopted,
        )
        return outs


class ApplicationUser(Resource, module="dynamics", name="ApplicationUser"):
    """The Dataverse application user (systemuser) of an Entra application."""

    instance_url: pulumi.Output[str]
    application_id: pulumi.Output[str]
    business_unit: pulumi.Output[str | None]
    first_name: pulumi.Output[str | None]
    last_name: pulumi.Output[str | None]
    email: pulumi.Output[str | None]
    systemuser_id: pulumi.Output[str]
    business_unit_id: pulumi.Output[str]
    full_name: pulumi.Output[str]
    disabled: pulumi.Output[bool]
    adopted: pulumi.Output[bool]

    def __init__(
        self,
        resource_name: str,
        *,
        instance_url: pulumi.Input[str],
        application_id: pulumi.Input[str],
        business_unit: pulumi.Input[str] | None = None,
        first_name: pulumi.Input[str] | None = None,
        last_name: pulumi.Input[str] | None = None,
        email: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "instance_url": instance_url,
            "application_id": application_id,
            "business_unit": business_unit,
            "first_name": first_name,
            "last_name": last_name,
            "email": email,
            "systemuser_id": None,
            "business_unit_id": None,
            "full_name": None,
            "disabled": None,
            "adopted": None,
        }
        super().__init__(ApplicationUserProvider(), resource_name, props, opts)
