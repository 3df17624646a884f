"""Drive the real dynamic-provider host (`python -u -m pulumi.dynamic`) over gRPC, as the Pulumi engine does.

Owns the process lifecycle, the translation of plain Python dicts to and from protobuf Structs
(secrets as `Secret`), and the mapping of provider exceptions to `ProviderError`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from fleet.inline import guard_provider_serialization  # the SDK's serialize_provider, safe for many calls
from tests.harness.interrupt import first_line

PROVIDER_KEY = "__provider"
DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"
CALL_TIMEOUT_SECONDS = 1800.0


class Secret:
    """A value the engine treats as secret; its repr never shows the value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret([secret])"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("Secret", repr(type(self.value))))


class ProviderError(Exception):
    """A provider method failed; `message` is the last line of the provider's traceback."""

    def __init__(self, message: str, *, method: str = "", code: str = "UNKNOWN", details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        return f"ProviderError({self.message!r}, method={self.method!r}, code={self.code})"


@dataclass
class DiffResult:
    changes: bool
    replaces: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    diffs: list[str] = field(default_factory=list)


def provider_ref(provider: Any) -> str:
    """The `__provider` input string, serialized exactly as `pulumi.dynamic.Resource` does."""
    from pulumi.runtime._serialization import _serialize

    guard_provider_serialization()
    from pulumi.dynamic.dynamic import serialize_provider

    value, _ = _serialize(True, serialize_provider, provider)
    return value


def urn_for(stack: str, project: str, name: str, type_: str = DYNAMIC_TYPE) -> str:
    return f"urn:pulumi:{stack}::{project}::{type_}::{name}"


# ---------------------------------------------------------------- value translation


def _to_wire(value: Any, strip_secrets: bool) -> Any:
    if isinstance(value, Secret):
        inner = _to_wire(value.value, strip_secrets)
        return inner if strip_secrets else rpc.wrap_rpc_secret(inner)
    if isinstance(value, dict):
        return {k: _to_wire(v, strip_secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v, strip_secrets) for v in value]
    return value


def _from_wire(value: Any) -> Any:
    if rpc.is_rpc_secret(value):
        return Secret(_from_wire(rpc.unwrap_rpc_secret(value)))
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


def _run_coro(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = _run_coro(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=runner)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def to_struct(props: dict[str, Any] | None, strip_secrets: bool = False) -> struct_pb2.Struct:
    return _run_coro(rpc.serialize_properties(_to_wire(dict(props or {}), strip_secrets), {}))


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return _from_wire(rpc.deserialize_properties(struct, keep_unknowns=True))


def secret_keys(props: dict[str, Any] | None) -> set[str]:
    return {k for k, v in (props or {}).items() if isinstance(v, Secret)}


def _annotate(outs: dict[str, Any], secret_names: set[str]) -> dict[str, Any]:
    """What the engine does for providers that do not accept secrets: re-mark secret top-level keys."""
    return {k: (Secret(v) if k in secret_names and not isinstance(v, Secret) else v) for k, v in outs.items()}


# ---------------------------------------------------------------- the host


class ProviderHost:
    """A running `python -u -m pulumi.dynamic` process and a gRPC stub to it."""

    def __init__(
        self,
        project_dir: str | os.PathLike[str],
        project: str = "lead-destination",
        stack: str = "test",
        env: dict[str, str] | None = None,
    ) -> None:
        self.project_dir = os.fspath(project_dir)
        self.project = project
        self.stack = stack
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.channel: grpc.Channel | None = None
        self.stub: provider_pb2_grpc.ResourceProviderStub | None = None
        self.accept_secrets = False
        self._stderr_file: Any = None

    # lifecycle ---------------------------------------------------------------
    def start(self) -> ProviderHost:
        environ = dict(os.environ)
        environ.update(self.env or {})
        environ["PULUMI_PROJECT"] = self.project
        environ.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr_file = tempfile.TemporaryFile(prefix="provider-host-", suffix=".stderr")
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "pulumi.dynamic"],
            cwd=self.project_dir,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
        )
        assert self.process.stdout is not None
        line = first_line(self.process.stdout, 120).decode().strip()
        if not line.isdigit():
            self.process.wait(timeout=10)
            raise ProviderError(f"provider host did not start: {self.stderr_text()[-2000:]}", method="start")
        self.port = int(line)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        return self

    def __enter__(self) -> ProviderHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=5)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def stderr_text(self) -> str:
        if self._stderr_file is None:
            return ""
        self._stderr_file.flush()
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    # calls -------------------------------------------------------------------
    def _call(self, method: str, request: Any) -> Any:
        if self.stub is None:
            raise ProviderError("provider host is not running", method=method, code="UNAVAILABLE")
        try:
            return getattr(self.stub, method)(request, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = (exc.details() if hasattr(exc, "details") else "") or ""
            lines = [ln for ln in details.strip().splitlines() if ln.strip()]
            message = lines[-1].strip() if lines else f"{method} failed ({code})"
            if code != "UNKNOWN":
                message = f"{method}: provider host unreachable ({code}): {message}"
            raise ProviderError(message, method=method, code=code, details=details) from None

    def configure(self, config: dict[str, Any]) -> None:
        args = struct_pb2.Struct()
        for key, value in config.items():
            args[key] = rpc.wrap_rpc_secret(value.value) if isinstance(value, Secret) else value
        variables = {k: (v.value if isinstance(v, Secret) else v) for k, v in config.items()}
        resp = self._call(
            "Configure",
            provider_pb2.ConfigureRequest(args=args, variables=variables, acceptSecrets=True),
        )
        self.accept_secrets = bool(resp.acceptSecrets)

    def check(self, urn: str, olds: dict[str, Any], news: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
        strip = not self.accept_secrets
        resp = self._call(
            "Check",
            provider_pb2.CheckRequest(urn=urn, olds=to_struct(olds, strip), news=to_struct(news, strip)),
        )
        inputs = _annotate(from_struct(resp.inputs), secret_keys(news))
        failures = [{"property": f.property, "reason": f.reason} for f in resp.failures]
        return inputs, failures

    def diff(self, urn: str, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        strip = not self.accept_secrets
        resp = self._call(
            "Diff",
            provider_pb2.DiffRequest(id=id_, urn=urn, olds=to_struct(olds, strip), news=to_struct(news, strip)),
        )
        if resp.changes == provider_pb2.DiffResponse.DIFF_UNKNOWN:
            changes = _plain(olds) != _plain(news)
        else:
            changes = resp.changes == provider_pb2.DiffResponse.DIFF_SOME
        return DiffResult(
            changes=changes,
            replaces=list(resp.replaces),
            delete_before_replace=bool(resp.deleteBeforeReplace),
            diffs=list(resp.diffs),
        )

    def create(self, urn: str, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        resp = self._call(
            "Create",
            provider_pb2.CreateRequest(urn=urn, properties=to_struct(props, not self.accept_secrets)),
        )
        return resp.id, _annotate(from_struct(resp.properties), secret_keys(props))

    def read(
        self, urn: str, id_: str, props: dict[str, Any], inputs: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        strip = not self.accept_secrets
        request = provider_pb2.ReadRequest(id=id_, urn=urn, properties=to_struct(props, strip))
        if inputs is not None:
            request.inputs.CopyFrom(to_struct(inputs, strip))
        resp = self._call("Read", request)
        names = secret_keys(props) | secret_keys(inputs)
        new_inputs = _annotate(from_struct(resp.inputs), names) if resp.HasField("inputs") else None
        if new_inputs is not None and not new_inputs:
            new_inputs = None
        return resp.id, _annotate(from_struct(resp.properties), names), new_inputs

    def update(self, urn: str, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
        strip = not self.accept_secrets
        resp = self._call(
            "Update",
            provider_pb2.UpdateRequest(id=id_, urn=urn, olds=to_struct(olds, strip), news=to_struct(news, strip)),
        )
        return _annotate(from_struct(resp.properties), secret_keys(news))

    def delete(self, urn: str, id_: str, props: dict[str, Any]) -> None:
        self._call(
            "Delete",
            provider_pb2.DeleteRequest(id=id_, urn=urn, properties=to_struct(props, not self.accept_secrets)),
        )


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
