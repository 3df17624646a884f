"""ApplicationUser: the Dataverse systemuser of an Entra application (step 2a.6 of the procedure).

Creates the user with an id derived from organization, application and stack, so a create retried
after a crash knows the user as its own; adopts a user found with any other id (it existed before),
repairs disabled/name/business-unit drift, and on destroy drops roles and disables the user it made.
"""

from __future__ import annotations

import uuid
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    GUID_RE,
    DataverseResourceProvider,
    clean,
    get_or_none,
    need_email,
    need_guid,
    need_https_url,
    need_text,
    new_revision,
    next_revision,
    owned_id,
    raise_errors,
    same,
    stack_owner,
)
from dynamics_provider.errors import AmbiguousWriteError, BadRequest, DuplicateRecord, NotFound

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
_SYSTEMUSER_NAMESPACE = uuid.UUID("6f3c2b1e-8a47-4c1d-9e5b-2d7a0c4f8b13")
INPUTS = ("instance_url", "application_id", "business_unit", "first_name", "last_name", "email")
# input → systemuser column; the e-mail is set on create only (it replaces the user when it changes)
NAME_COLUMNS = (("first_name", "firstname"), ("last_name", "lastname"))
COLUMNS = (*NAME_COLUMNS, ("email", "internalemailaddress"))


def owned_systemuser_id(instance_url: str, application_id: str, owner: str) -> str:
    """The systemuserid stack `owner` gives the application user of `application_id` in `instance_url`.

    Dataverse takes a primary key supplied on create (systemuser's SystemUserId is a writable column). A
    create the engine retries after a crash (the first attempt's answer never reached the checkpoint)
    finds a user with this id and knows it as its own; a user with any other id was made by someone else
    (a person, another stack) and is adopted, then released on destroy.
    """
    return owned_id(_SYSTEMUSER_NAMESPACE, instance_url, owner, application_id)


def made_by_stack(instance_url: str, user: dict[str, Any], owner: str) -> bool:
    """Whether a systemuser (with `systemuserid`, `applicationid`) is the one stack `owner` creates."""
    app_id = user.get("applicationid")
    return bool(app_id) and same(user.get("systemuserid"), owned_systemuser_id(instance_url, app_id, owner))


class ApplicationUserProvider(DataverseResourceProvider):
    resource_type = "ApplicationUser"
    replace_keys = ("instance_url", "application_id", "email")

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = self.given(news, INPUTS)
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
        return self.checked(inputs, checks)

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
            user, bu = self._lookup(client, inputs, self._by_application(inputs["application_id"]))
            if user is None:
                user = self._create(client, inputs, bu)
            adopted = not made_by_stack(inputs["instance_url"], user, self.owner)
            user, _ = self._converge(client, inputs, user, bu)
        return CreateResult(user["systemuserid"], self._outs(inputs, user, adopted, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"systemuser {id_}"):
            user = self._get(self.client(state["instance_url"]), id_)
        if user is None:
            return ReadResult("", {})
        observed = dict(state)
        # Field-by-field truth: names/e-mail as Dataverse has them; a business unit that moved is
        # shown as the id it moved to, so the next diff sees the input differ.
        for key, field in COLUMNS:
            if state.get(key) is not None:
                observed[key] = user.get(field)
        bu = user.get("_businessunitid_value")
        if not same(bu, state.get("business_unit_id")) or (
            isinstance(state.get("business_unit"), str)
            and GUID_RE.match(state["business_unit"])
            and not same(bu, state["business_unit"])
        ):
            observed["business_unit"] = bu
        return ReadResult(id_, self._outs(observed, user, bool(state.get("adopted")), state.get("revision")))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        with self.operation("update", f"systemuser {id_}"):
            client = self.client(inputs["instance_url"])
            user, bu = self._lookup(client, inputs, self._by_id(id_))
            if user is None:
                raise self.refuse(
                    "update", f"systemuser {id_}", "the user no longer exists",
                    "run `pulumi refresh` so that the next `pulumi up` creates it again",
                )
            user, wrote = self._converge(client, inputs, user, bu)
        return UpdateResult(self._outs(inputs, user, bool(state.get("adopted")), next_revision(state, wrote)))

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

    @staticmethod
    def _by_application(application_id: str) -> str:
        from dynamics_provider.client import odata_guid, odata_path

        return odata_path("systemusers", {"$select": ",".join(USER_FIELDS),
                                          "$filter": f"applicationid eq {odata_guid(application_id)}"})

    @staticmethod
    def _by_id(id_: str) -> str:
        from dynamics_provider.client import odata_guid, odata_path

        return odata_path(f"systemusers({odata_guid(id_)})", {"$select": ",".join(USER_FIELDS)})

    def _lookup(self, client: Any, inputs: dict[str, Any], user_path: str) -> tuple[dict[str, Any] | None, str]:
        """The user (by `user_path`) and the wanted business unit's id, in one `$batch` round trip."""
        from dynamics_provider.client import odata_path, odata_string

        wanted = inputs.get("business_unit")
        paths = [user_path]
        if not (wanted and GUID_RE.match(wanted)):
            paths.append(odata_path("businessunits", {
                "$select": "businessunitid",
                "$filter": f"name eq {odata_string(wanted)}" if wanted else "_parentbusinessunitid_value eq null",
            }))
        found, *units = client.batch_get(paths)
        if isinstance(found, NotFound):
            user = None
        else:
            found, *units = raise_errors([found, *units])
            user = found if "systemuserid" in found else next(iter(found.get("value") or []), None)
        if not units:
            return user, wanted
        rows = raise_errors(units)[0].get("value") or []
        if not rows:
            raise self.refuse(
                "resolve", f"business unit {wanted!r}", "no business unit has this name",
                "use the name shown under Settings → Business Management → Business Units, or its id",
            )
        return user, rows[0]["businessunitid"]

    def _find(self, client: Any, application_id: str) -> dict[str, Any] | None:
        from dynamics_provider.client import odata_guid

        rows = client.query("systemusers", select=USER_FIELDS, filter=f"applicationid eq {odata_guid(application_id)}")
        return rows[0] if rows else None

    @staticmethod
    def _get(client: Any, id_: str) -> dict[str, Any] | None:
        return get_or_none(client, f"systemusers({id_})", USER_FIELDS)

    def _create(self, client: Any, inputs: dict[str, Any], bu: str) -> dict[str, Any]:
        """Create the user with the id this stack owns (its row comes back in the same answer).

        Not idempotent, so an unknown outcome is settled by looking the application id up; a duplicate
        means the user exists (made concurrently, or our earlier send landed late): its id tells whose."""
        app_id = inputs["application_id"]
        body: dict[str, Any] = {"systemuserid": owned_systemuser_id(inputs["instance_url"], app_id, self.owner),
                                "applicationid": app_id, "businessunitid@odata.bind": f"/businessunits({bu})"}
        for key, field in COLUMNS:
            if inputs.get(key) is not None:
                body[field] = inputs[key]
        for attempt in (1, 2):
            try:
                return client.create_record("systemusers", body, USER_FIELDS)
            except DuplicateRecord:
                user = self._find(client, app_id)
                if user is not None:
                    return user
                raise
            except AmbiguousWriteError as exc:
                user = client.settle(lambda: self._find(client, app_id), exc)
                if user is not None:
                    return user
                if attempt == 2:
                    raise
                # the write did not happen: send it once more
        raise AssertionError("unreachable")  # pragma: no cover

    def _converge(
        self, client: Any, inputs: dict[str, Any], user: dict[str, Any], bu: str
    ) -> tuple[dict[str, Any], bool]:
        """Enable, rename and move the user as the inputs say; (user as it is now, whether it wrote)."""
        patch: dict[str, Any] = {}
        if user.get("isdisabled"):
            patch["isdisabled"] = False
        for key, field in NAME_COLUMNS:
            if inputs.get(key) is not None and user.get(field) != inputs[key]:
                patch[field] = inputs[key]
        if patch:
            client.update("systemusers", user["systemuserid"], patch)
        moved = not same(bu, user.get("_businessunitid_value"))
        if moved:
            self._move(client, user["systemuserid"], bu)
        if patch or moved:
            user = self._get(client, user["systemuserid"]) or user
        return user, bool(patch or moved)

    def _move(self, client: Any, user_id: str, bu: str) -> None:
        """A user's business unit changes only through SetBusinessSystemUser (PATCH is refused)."""
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

    @staticmethod
    def _outs(inputs: dict[str, Any], user: dict[str, Any], adopted: bool, revision: str | None) -> dict[str, Any]:
        outs = {k: inputs.get(k) for k in INPUTS}
        outs.update(
            systemuser_id=user["systemuserid"],
            business_unit_id=user.get("_businessunitid_value"),
            full_name=user.get("fullname"),
            disabled=bool(user.get("isdisabled")),
            adopted=adopted,
            revision=revision,
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
    revision: pulumi.Output[str]

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
            "revision": None,
        }
        super().__init__(ApplicationUserProvider(owner=stack_owner()), resource_name, props, opts)
