"""Plumbing shared by the dynamic providers: stack config from configure(), property hygiene (secrets,
unknowns, floats, `__*` keys), explicit diffs, ids that prove which stack made an
object, lines for the user, and error messages that name resource, operation, cause and remedy. The
Dataverse providers also get their client.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pulumi.dynamic import CheckFailure, CheckResult, ConfigureRequest, DiffResult, ResourceProvider
from pulumi.runtime import rpc

from dynamics_provider.checks import failures_for
from dynamics_provider.errors import (
    AmbiguousWriteError,
    AuthenticationError,
    LeadDestinationError,
    ServiceError,
)
from dynamics_provider.formats import EMAIL_RE, GUID_RE

if TYPE_CHECKING:
    from dynamics_provider.auth import DeployerSettings, TokenProvider
    from dynamics_provider.client import DataverseClient

UNKNOWN = rpc.UNKNOWN  # the wire sentinel of a value not known yet (preview)

log = logging.getLogger("dynamics_provider")


class ResourceOperationError(LeadDestinationError):
    """A provider operation failed; the message names resource, operation, cause and what to do."""


# ---------------------------------------------------------------------------------------------
# how a failure reaches the user
#
# Pulumi's provider host (pulumi/dynamic/__main__.py) answers a failed call with the text of
# `traceback.format_exc()`, and the CLI prints that text after `error: `: a whole Python traceback
# ending in `dynamics_provider.base.ResourceOperationError: <message>`. Python's traceback module prints
# no frames when `sys.tracebacklimit` is 0, and a class of module `builtins` without a module path.
# So, in that host process only, every failure of a lifecycle method leaves as a `UserFacingFailure`
# (shown as `lead-destination: <message>`) once, at the boundary below; a defect (an exception that is
# no LeadDestinationError) keeps its trace inside the message, because that trace is what fixes it.


class UserFacingFailure(Exception):
    """What a provider operation raises to Pulumi's provider host: shown as `lead-destination: <message>`."""


UserFacingFailure.__module__ = "builtins"  # no module path in front of the message
UserFacingFailure.__qualname__ = UserFacingFailure.__name__ = "lead-destination"

_LIFECYCLE = ("check", "diff", "create", "read", "update", "delete")


def in_provider_host() -> bool:
    """True in the process Pulumi runs dynamic providers in (`python -m pulumi.dynamic`)."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == "pulumi.dynamic.__main__"


def user_facing(method: Callable[..., Any], resource_type: str, op: str) -> Callable[..., Any]:
    """`method` whose failures, in the provider host, reach the CLI as their message only."""

    @functools.wraps(method)
    def run(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as exc:
            if not in_provider_host():
                raise
            if isinstance(exc, LeadDestinationError):
                text = str(exc)
            else:
                trace = "".join(traceback.format_exception(exc, limit=30)).rstrip()
                text = (f"{resource_type} {op} failed unexpectedly ({type(exc).__name__}): this is a defect of "
                        f"lead-destination; run `pulumi up` again, and report it with this trace:\n{trace}")
            sys.tracebacklimit = 0  # the host formats our failure: its message, without our frames
            raise UserFacingFailure(text) from None

    run.__user_facing__ = True  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------------------------------------
# property hygiene


def is_secret(value: Any) -> bool:
    return rpc.is_rpc_secret(value)


def secret(value: Any) -> Any:
    """Wrap a value with Pulumi's secret signature (kept secret through the provider host)."""
    if value is None:
        return value
    return rpc.wrap_rpc_secret(value)


def is_unknown(value: Any) -> bool:
    """True for a value not known yet (preview): the wire sentinel or pulumi's Unknown object."""
    if isinstance(value, str):
        return value == UNKNOWN
    if is_secret(value):
        return is_unknown(value.get("value"))
    return type(value).__name__ == "Unknown" and type(value).__module__.startswith("pulumi")


def _plain(value: Any) -> Any:
    if is_secret(value):
        return _plain(value.get("value"))
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def clean(props: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plain values: `__*` keys stripped, secrets unwrapped, integral floats turned into ints."""
    return _plain(dict(props or {}))


def wire(value: Any) -> Any:
    """Make a value serializable by the provider host (pulumi's Unknown object → wire sentinel)."""
    if is_unknown(value) and not isinstance(value, str) and not is_secret(value):
        return UNKNOWN
    if isinstance(value, Mapping):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wire(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equality that ignores secret wrapping, float/int and GUID/e-mail case."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, str) and isinstance(b, str) and (GUID_RE.match(a) or EMAIL_RE.match(a)):
        return a.lower() == b.lower()
    return a == b


# ---------------------------------------------------------------------------------------------
# revisions: a marker that changes whenever a resource wrote to Dataverse, so that what proves the
# chain (LeadWriteCheck's triggers) re-runs after a repair or an upgrade


def new_revision() -> str:
    """A fresh, unique revision marker (UTC time for people, random suffix for uniqueness)."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def next_revision(state: Mapping[str, Any], wrote: bool) -> str:
    """The revision after an update: fresh if it wrote anything (or none was recorded), else the stored one."""
    stored = state.get("revision")
    return new_revision() if wrote or not isinstance(stored, str) or not stored else stored


# ---------------------------------------------------------------------------------------------
# ownership: the engine records a create only once it returns, so a create retried after a crash must
# tell an object its killed attempt made (the stack's own: deleted on destroy) from one that existed
# before (adopted: released on destroy). Where Dataverse takes an id from the client, this stack derives
# it; an object found with that id is its own (docs/architecture.md, "Ownership ids").


def stack_owner() -> str:
    """`project/stack` of the running Pulumi program, given to a provider when its resource is declared
    (it travels in the pickled provider, so create knows it); "" outside a program."""
    import pulumi

    try:
        return f"{pulumi.get_project()}/{pulumi.get_stack()}"
    except Exception:  # noqa: BLE001 - no program running (a provider built by hand): no owner
        return ""


def owned_id(namespace: uuid.UUID, instance_url: str, owner: str, *parts: str) -> str:
    """The GUID this stack (`owner`) uses for an object identified by `parts` in an organization.

    uuid5 of the parts, case-folded and trimmed (the instance URL without a trailing slash): any run of
    the same stack computes the same id, another stack or a person's edit never does."""
    key = "|".join([instance_url.strip().rstrip("/").lower(), owner, *(p.strip().lower() for p in parts)])
    return str(uuid.uuid5(namespace, key))


def tell(message: str) -> None:
    """One line for the person running Pulumi: the CLI shows a provider's stderr lines as diagnostics of
    the stack, under preview, up, refresh and destroy alike (so the line names the object it is about)."""
    print(message, file=sys.stderr, flush=True)


def ensure_stderr_logging() -> None:
    """Progress logs go to stderr (the provider host's stderr) unless logging is configured already."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


# ---------------------------------------------------------------------------------------------
# the provider base


class ProviderBase(ResourceProvider):
    """Base of every provider of this package. Only plain data lives on `self` (it is pickled by reference
    and shared by the host's threads); clients, sessions and token caches are process-wide.
    """

    resource_type = "Resource"
    #: inputs that replace the object when they change
    replace_keys: tuple[str, ...] = ("instance_url",)
    #: secret inputs: re-wrapped as secrets wherever they are passed back
    secret_keys: tuple[str, ...] = ()
    #: the stack that declared the resource (`stack_owner()`); "" in providers pickled before it existed
    owner: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for op in _LIFECYCLE:
            method = cls.__dict__.get(op)
            if callable(method) and not getattr(method, "__user_facing__", False):
                setattr(cls, op, user_facing(method, cls.resource_type, op))

    def __init__(self, owner: str = "") -> None:
        super().__init__()
        self._config: dict[str, str] = {}
        if owner:
            self.owner = owner

    # -- configuration -------------------------------------------------------------------------

    def configure(self, req: ConfigureRequest) -> None:
        """Keep the stack config the providers read: the declared deploying-identity keys and their
        `azuread:*` fallbacks (dynamics_provider.config_schema), asked by name through `Config.get`."""
        from dynamics_provider.config_schema import stack_config

        self._config = stack_config(req.config.get)

    @property
    def settings(self) -> DeployerSettings:
        """The deploying identity's settings: stack config from configure(), else environment."""
        from dynamics_provider.auth import DeployerSettings

        config = getattr(self, "_config", None) or None
        return DeployerSettings.from_sources(config)

    # -- property helpers ----------------------------------------------------------------------

    def outputs(self, inputs: Mapping[str, Any], **observed: Any) -> dict[str, Any]:
        """Full outputs: the (clean) inputs, then observed values; secret inputs stay secret."""
        outs = clean(inputs)
        outs.update(observed)
        for key in self.secret_keys:
            if outs.get(key) is not None:
                outs[key] = secret(outs[key])
        return outs

    def check_result(self, inputs: dict[str, Any], failures: list[CheckFailure]) -> CheckResult:
        """Inputs as the engine should store them: secrets re-wrapped, unknowns on the wire form."""
        for key in self.secret_keys:
            if inputs.get(key) is not None:
                inputs[key] = secret(inputs[key])
        return CheckResult(wire(inputs), failures)

    @staticmethod
    def given(news: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        """The inputs among `keys` that were given (clean values, None dropped)."""
        keys = set(keys)
        return {k: v for k, v in clean(news).items() if k in keys and v is not None}

    def checked(self, inputs: dict[str, Any], checks: Mapping[str, str | None]) -> CheckResult:
        """The check result: a failure per bad value that is known (unknowns are checked once known)."""
        return self.check_result(
            inputs, failures_for({k: v for k, v in checks.items() if not (k in inputs and not self.known(inputs, k))}))

    @staticmethod
    def known(props: Mapping[str, Any], key: str) -> bool:
        return key in props and props[key] is not None and not is_unknown(props[key])

    def diff_inputs(
        self,
        olds: Mapping[str, Any],
        news: Mapping[str, Any],
        keys: Iterable[str],
        *,
        expected: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Names of `keys` whose new value (unknown counts as changed) differs from the old state.

        `expected` overrides the value compared for a key (e.g. a default the input omits).
        """
        changed = []
        for key in keys:
            new = (expected or {}).get(key, news.get(key))
            if is_unknown(new) or not same(olds.get(key), new):
                changed.append(key)
        return changed

    def diff_result(self, changed: Iterable[str], replace_keys: Iterable[str] | None = None) -> DiffResult:
        changed = list(dict.fromkeys(changed))
        replaces = [k for k in changed if k in set(replace_keys or self.replace_keys)]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    # -- errors --------------------------------------------------------------------------------

    @contextmanager
    def operation(self, op: str, subject: str) -> Iterator[None]:
        """Re-raise failures as ResourceOperationError naming resource, operation, cause, remedy."""
        try:
            yield
        except ResourceOperationError:
            raise
        except ServiceError as exc:
            cause = f"{exc.service} answered {exc.status or '-'}"
            if exc.code:
                cause += f" {exc.code}"
            cause += f": {exc.message}"
            raise ResourceOperationError(
                f"{self.resource_type} {op} failed for {subject}: {cause}",
                hint=exc.hint or "check the organization and retry",
            ) from exc
        except AuthenticationError as exc:
            raise ResourceOperationError(
                f"{self.resource_type} {op} failed for {subject}: the deploying identity could not get a "
                f"token ({exc.code or exc.error or 'no code'}): {Exception.__str__(exc)}",
                hint=exc.hint
                or "check lead-destination:deployerTenantId/deployerClientId/deployerClientSecret "
                "(or ARM_* variables)",
            ) from exc
        except AmbiguousWriteError as exc:
            raise ResourceOperationError(
                f"{self.resource_type} {op} failed for {subject}: {Exception.__str__(exc)}",
                hint="run `pulumi up` again: create looks the object up first and adopts it if it exists",
            ) from exc
        except LeadDestinationError as exc:
            raise ResourceOperationError(
                f"{self.resource_type} {op} failed for {subject}: {Exception.__str__(exc)}", hint=exc.hint
            ) from exc
        except TimeoutError as exc:
            raise ResourceOperationError(
                f"{self.resource_type} {op} failed for {subject}: {exc}",
                hint="raise the timeout input or check the organization's system jobs",
            ) from exc

    def refuse(self, op: str, subject: str, message: str, hint: str) -> ResourceOperationError:
        return ResourceOperationError(f"{self.resource_type} {op} refused for {subject}: {message}", hint=hint)


class DataverseResourceProvider(ProviderBase):
    """Base of the providers of Dataverse objects: the organization's client comes from here."""

    def client(self, instance_url: str, tokens: TokenProvider | None = None) -> DataverseClient:
        """The DataverseClient for an organization: the deploying identity's is process-wide (cached by
        the client module); one for other `tokens` (a lead writer's) is new on each call."""
        from dynamics_provider.client import DataverseClient

        return DataverseClient.for_instance(instance_url, self.settings, tokens=tokens)

