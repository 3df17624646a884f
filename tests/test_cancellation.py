"""The program's answer to a cancelled update (components/cancellation.py), through the Pulumi SDK's own
error path: the engine's CANCELLED becomes a one-line RunError; every other status stays the SDK's.
The end-to-end proof (Ctrl-C at every point of a real run, no traceback) is in test_interruptions.py."""

from __future__ import annotations

import importlib

import grpc
import pulumi
import pytest

from components import cancellation

settings = importlib.import_module("pulumi.runtime.settings")
invoke = importlib.import_module("pulumi.runtime.invoke")


class EngineAnswer(grpc.RpcError):
    """What grpc raises for a failed unary call: an RpcError that is also a Call (code(), details())."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_cancelled_engine_call_ends_the_program_with_one_line_and_other_failures_keep_their_shape():
    cancellation.install()
    cancellation.install()  # idempotent: the converter is not wrapped twice
    with pytest.raises(pulumi.RunError, match="the update was cancelled"):
        settings.handle_grpc_error(EngineAnswer(grpc.StatusCode.CANCELLED, "context canceled"))
    assert isinstance(invoke.grpc_error_to_exception(EngineAnswer(grpc.StatusCode.CANCELLED, "context canceled")),
                      pulumi.RunError)
    unavailable = settings.grpc_error_to_exception(EngineAnswer(grpc.StatusCode.UNAVAILABLE, "gone"))
    assert isinstance(unavailable, pulumi.RunError) and "Resource monitor has terminated" in str(unavailable)
    other = settings.grpc_error_to_exception(EngineAnswer(grpc.StatusCode.INVALID_ARGUMENT, "bad urn"))
    assert type(other) is Exception and str(other) == "bad urn"
    assert settings.grpc_error_to_exception.__wrapped__.__module__ == "pulumi.runtime.settings"
