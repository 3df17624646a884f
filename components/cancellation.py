"""A cancelled update ends the program with one line, not a Python traceback.

When the user presses Ctrl-C, the CLI cancels the update and the engine answers the program's pending
resource-monitor calls (RegisterResource, RegisterResourceOutputs, Invoke …) with gRPC status CANCELLED,
"context canceled". The Pulumi Python SDK turns only UNAVAILABLE into a `RunError` (a one-line diagnostic);
any other status becomes a bare `Exception(details)` (`pulumi/runtime/settings.py`,
`grpc_error_to_exception`, SDK 3.272.0), which the exec script reports as "Program failed with an unhandled
exception" followed by the traceback of the SDK's own frames: what a person pressing Ctrl-C while the
program declares resources sees. Nothing is wrong at that point: the engine has cancelled the run and
records what finished.

`install()` maps CANCELLED to a `RunError` that says so, and leaves every other status to the SDK. It
replaces the SDK's module-level converter, which its `handle_grpc_error` looks up at call time (settings)
and `invoke` imported by name; both are patched, each only if it is the SDK function we know.
tests/test_interruptions.py presses Ctrl-C at every point of a run (program start, registering, waiting
on a provider, end) and finds no traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import grpc
import pulumi

# by module path: `pulumi.runtime` re-exports a function named `invoke` over its module of that name
_settings = importlib.import_module("pulumi.runtime.settings")
_invoke = importlib.import_module("pulumi.runtime.invoke")

CANCELLED_MESSAGE = "the update was cancelled (Ctrl-C or `pulumi cancel`): the program stopped declaring resources"


def _quiet_on_cancel(original: Callable[[Any], Exception]) -> Callable[[Any], Exception]:
    def convert(exn: Any) -> Exception:
        code = getattr(exn, "code", None)
        if callable(code) and code() == grpc.StatusCode.CANCELLED:
            return pulumi.RunError(CANCELLED_MESSAGE)
        return original(exn)

    convert.__wrapped__ = original  # type: ignore[attr-defined]
    return convert


def install() -> None:
    """Map the engine's CANCELLED answers to a one-line RunError (idempotent)."""
    original = getattr(_settings, "grpc_error_to_exception", None)
    if original is None or hasattr(original, "__wrapped__"):
        return
    converter = _quiet_on_cancel(original)
    setattr(_settings, "grpc_error_to_exception", converter)  # noqa: B010 - a module attribute mypy cannot see
    if getattr(_invoke, "grpc_error_to_exception", None) is original:
        setattr(_invoke, "grpc_error_to_exception", converter)  # noqa: B010
