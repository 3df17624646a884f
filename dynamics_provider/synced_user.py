"""SyncedUser: the Dataverse systemuser of an Office 365 lead writer (procedure step 2b, docs/architecture.md).

Licence sync creates the user, not us: create waits (bounded, capped backoff) until it appears and
adopts it; a user disabled by hand is re-enabled; destroy releases it and never deletes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    DataverseResourceProvider,
    clean,
    ensure_stderr_logging,
    log,
    new_revision,
    next_revision,
    tell,
)
from dynamics_provider.checks import (
    need_guid,
    need_https_url,
    need_positive_int,
    need_text,
)
from dynamics_provider.client import DataverseClient
from dynamics_provider.dataverse import users
from dynamics_provider.dataverse.users import SystemUser
from dynamics_provider.waiting import wait_until

INPUTS = ("instance_url", "user_principal_name", "azure_object_id", "wait_timeout_seconds")
DEFAULT_WAIT = 900


class SyncedUserProvider(DataverseResourceProvider):
    resource_type = "SyncedUser"
    replace_keys = ("instance_url", "user_principal_name", "azure_object_id")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = self.given(news, INPUTS)
        inputs.setdefault("wait_timeout_seconds", DEFAULT_WAIT)
        checks: dict[str, str | None] = {
            "instance_url": need_https_url(inputs.get("instance_url")),
            "user_principal_name": need_text(inputs.get("user_principal_name"), "the user principal name", 320),
            "wait_timeout_seconds": need_positive_int(inputs["wait_timeout_seconds"], 24 * 3600),
        }
        if "azure_object_id" in inputs:
            checks["azure_object_id"] = need_guid(inputs["azure_object_id"], "the Entra object id")
        return self.checked(inputs, checks)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        changed = self.diff_inputs(olds, news, INPUTS, expected={
            "wait_timeout_seconds": news.get("wait_timeout_seconds", DEFAULT_WAIT)})
        if olds.get("disabled"):
            changed.append("disabled")
        return self.diff_result(changed)

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        upn = inputs["user_principal_name"]
        with self.operation("create", f"user {upn}"):
            client = self.client(inputs["instance_url"])
            ensure_stderr_logging()

            def waiting(elapsed: float) -> None:
                log.info("SyncedUser: %s not in the organization yet (licence sync), %.0f s", upn, elapsed)

            user = wait_until(
                lambda: users.find_synced_user(client, upn, inputs.get("azure_object_id")),
                timeout=int(inputs.get("wait_timeout_seconds") or DEFAULT_WAIT),
                what=f"licence sync to create the systemuser of {upn} (is a Dynamics 365 licence assigned?)",
                first_delay=1.0, max_delay=15.0, on_wait=waiting,
            )
            user, _ = self._enable(client, user)
        tell(f"SyncedUser: systemuser {user.id} of {upn} adopted (licence sync made it); "
             "`pulumi destroy` leaves it in place")
        return CreateResult(user.id, self._outs(inputs, user, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"systemuser {id_}"):
            user = users.get_user(self.client(state["instance_url"]), id_)
        if user is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(state, user, state.get("revision")))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        with self.operation("update", f"systemuser {id_}"):
            client = self.client(inputs["instance_url"])
            user = users.get_user(client, id_)
            if user is None:
                raise self.refuse("update", f"systemuser {id_}", "the user no longer exists",
                                  "run `pulumi refresh`, then `pulumi up` waits for licence sync again")
            user, enabled = self._enable(client, user)
        return UpdateResult(self._outs(inputs, user, next_revision(state, enabled)))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Released: licence sync owns the systemuser; removing the licence is the Entra side's job."""
        tell(f"SyncedUser: systemuser {id_} left in place (licence sync owns it)")

    # -- steps ---------------------------------------------------------------------------------

    @staticmethod
    def _enable(client: DataverseClient, user: SystemUser) -> tuple[SystemUser, bool]:
        """(the user, enabled; whether it had to re-enable it)."""
        if not user.disabled:
            return user, False
        users.update_user(client, user.id, disabled=False)
        return dataclasses.replace(user, disabled=False), True

    @staticmethod
    def _outs(inputs: dict[str, Any], user: SystemUser, revision: str | None) -> dict[str, Any]:
        outs = {k: inputs.get(k) for k in INPUTS}
        outs["wait_timeout_seconds"] = int(outs.get("wait_timeout_seconds") or DEFAULT_WAIT)
        outs.update(
            systemuser_id=user.id,
            business_unit_id=user.business_unit_id,
            disabled=user.disabled,
            revision=revision,
        )
        return outs


class SyncedUser(Resource, module="dynamics", name="SyncedUser"):
    """The systemuser licence sync created for an Office 365 lead writer, adopted once it appears."""

    instance_url: pulumi.Output[str]
    user_principal_name: pulumi.Output[str]
    azure_object_id: pulumi.Output[str | None]
    wait_timeout_seconds: pulumi.Output[int]
    systemuser_id: pulumi.Output[str]
    business_unit_id: pulumi.Output[str]
    disabled: pulumi.Output[bool]
    revision: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        instance_url: pulumi.Input[str],
        user_principal_name: pulumi.Input[str],
        azure_object_id: pulumi.Input[str] | None = None,
        wait_timeout_seconds: pulumi.Input[int] = DEFAULT_WAIT,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "instance_url": instance_url,
            "user_principal_name": user_principal_name,
            "azure_object_id": azure_object_id,
            "wait_timeout_seconds": wait_timeout_seconds,
            "systemuser_id": None,
            "business_unit_id": None,
            "disabled": None,
            "revision": None,
        }
        super().__init__(SyncedUserProvider(), resource_name, props, opts)
