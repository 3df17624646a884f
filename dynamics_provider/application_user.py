"""ApplicationUser: the Dataverse systemuser of an Entra application (procedure step 2a, docs/architecture.md).

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
    DataverseResourceProvider,
    clean,
    new_revision,
    next_revision,
    owned_id,
    same,
    stack_owner,
    tell,
)
from dynamics_provider.checks import (
    need_email,
    need_guid,
    need_https_url,
    need_text,
)
from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse import roles, users
from dynamics_provider.dataverse.users import BusinessUnitNotFound, SystemUser
from dynamics_provider.errors import BadRequest, NotFound
from dynamics_provider.formats import GUID_RE

DEFAULT_FIRST_NAME, DEFAULT_LAST_NAME = "Marketplace", "Lead Writer"
INPUTS = ("instance_url", "application_id", "business_unit", "first_name", "last_name", "email")
NAMES = ("first_name", "last_name")  # the e-mail is set on create only (it replaces the user when it changes)
_SYSTEMUSER_NAMESPACE = uuid.UUID("6f3c2b1e-8a47-4c1d-9e5b-2d7a0c4f8b13")  # permanent: ids stored in Dataverse


def owned_systemuser_id(instance_url: str, application_id: str, owner: str) -> str:
    """The systemuserid stack `owner` gives the application user of `application_id` in `instance_url`.

    Dataverse takes a primary key supplied on create (systemuser's SystemUserId is a writable column). A
    create the engine retries after a crash (the first attempt's answer never reached the checkpoint)
    finds a user with this id and knows it as its own; a user with any other id was made by someone else
    (a person, another stack) and is adopted, then released on destroy.
    """
    return owned_id(_SYSTEMUSER_NAMESPACE, instance_url, owner, application_id)


def made_by_stack(instance_url: str, user_id: str, application_id: str | None, owner: str) -> bool:
    """Whether a systemuser (its id and application id) is the one stack `owner` creates."""
    return bool(application_id) and same(user_id, owned_systemuser_id(instance_url, str(application_id), owner))


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
        for key in NAMES:
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
        app_id = inputs["application_id"]
        subject = f"application {app_id}"
        with self.operation("create", subject):
            client = self.client(inputs["instance_url"])
            user, bu = self._lookup(client, inputs, subject, application_id=app_id)
            if user is None:
                user, _ = users.create_application_user(
                    client, app_id, bu, self._names(inputs), inputs.get("email"),
                    systemuserid=owned_systemuser_id(inputs["instance_url"], app_id, self.owner))
            # the user found (by the lookup, or on a duplicate or a lost answer) is the stack's own when it has
            # the id the stack gives it: made by an attempt the engine never recorded (a crash)
            adopted = not made_by_stack(inputs["instance_url"], user.id, app_id, self.owner)
            user, _ = self._converge(client, inputs, user, bu)
        if adopted:
            tell(f"ApplicationUser: systemuser {user.id} of application {app_id} existed before this stack: "
                 "adopted; `pulumi destroy` leaves it as it is")
        return CreateResult(user.id, self._outs(inputs, user, adopted, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"systemuser {id_}"):
            user = users.get_user(self.client(state["instance_url"]), id_)
        if user is None:
            return ReadResult("", {})
        observed = dict(state)
        # Field-by-field truth: names/e-mail as Dataverse has them; a business unit that moved is
        # shown as the id it moved to, so the next diff sees the input differ.
        for key in (*NAMES, "email"):
            if state.get(key) is not None:
                observed[key] = getattr(user, key)
        bu = user.business_unit_id
        if not same(bu, state.get("business_unit_id")) or (
            isinstance(state.get("business_unit"), str)
            and GUID_RE.match(state["business_unit"])
            and not same(bu, state["business_unit"])
        ):
            observed["business_unit"] = bu
        return ReadResult(id_, self._outs(observed, user, bool(state.get("adopted")), state.get("revision")))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        subject = f"systemuser {id_}"
        with self.operation("update", subject):
            client = self.client(inputs["instance_url"])
            user, bu = self._lookup(client, inputs, subject, user_id=id_)
            if user is None:
                raise self.refuse(
                    "update", subject, "the user no longer exists",
                    "run `pulumi refresh` so that the next `pulumi up` creates it again",
                )
            user, wrote = self._converge(client, inputs, user, bu)
        return UpdateResult(self._outs(inputs, user, bool(state.get("adopted")), next_revision(state, wrote)))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        if state.get("adopted"):
            tell(f"ApplicationUser: systemuser {id_} left as it is (it existed before this stack)")
            return
        with self.operation("delete", f"systemuser {id_}"):
            client = self.client(state["instance_url"])
            try:
                for role_id in roles.role_ids_of(client, id_):
                    roles.unassign_role(client, id_, role_id)
                users.update_user(client, id_, disabled=True)
            except NotFound:
                return

    # -- steps ---------------------------------------------------------------------------------

    @staticmethod
    def _names(inputs: dict[str, Any]) -> dict[str, str]:
        return {key: inputs[key] for key in NAMES if inputs.get(key) is not None}

    def _lookup(self, client: DataverseClient, inputs: dict[str, Any], subject: str,
                **user: str) -> tuple[SystemUser | None, str]:
        """The user and the wanted business unit's id, in one round trip."""
        try:
            return users.user_and_business_unit(client, inputs.get("business_unit"), **user)
        except BusinessUnitNotFound:
            raise self.refuse(
                "resolve", f"business unit {inputs.get('business_unit')!r}", "no business unit has this name",
                BusinessUnitNotFound.default_hint or "",
            ) from None

    def _converge(
        self, client: DataverseClient, inputs: dict[str, Any], user: SystemUser, bu: str
    ) -> tuple[SystemUser, bool]:
        """Enable, rename and move the user as the inputs say; (user as it is now, whether it wrote)."""
        names = {key: value for key, value in self._names(inputs).items() if getattr(user, key) != value}
        if names or user.disabled:
            users.update_user(client, user.id, names=names, disabled=False if user.disabled else None)
        moved = not same(bu, user.business_unit_id)
        if moved:
            try:
                users.move_user(client, user.id, bu)
            except (NotFound, BadRequest) as exc:
                raise self.refuse(
                    "update", f"systemuser {user.id}",
                    f"the user is in another business unit and this organization refused to move it ({exc.message})",
                    "move the user under Settings → Security → Users → Change Business Unit, then run `pulumi up`",
                ) from exc
        wrote = bool(names or user.disabled or moved)
        if wrote:
            user = users.get_user(client, user.id) or user
        return user, wrote

    @staticmethod
    def _outs(inputs: dict[str, Any], user: SystemUser, adopted: bool, revision: str | None) -> dict[str, Any]:
        outs = {k: inputs.get(k) for k in INPUTS}
        outs.update(
            systemuser_id=user.id,
            business_unit_id=user.business_unit_id,
            full_name=user.full_name,
            disabled=user.disabled,
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
