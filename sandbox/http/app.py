"""The sandbox's WSGI application: the emulated cloud's state (the Entra tenant, the Dataverse
organizations, the Partner Center account, hosted files, settings) and the request path every call
takes: log entry → which service → who is calling → fault rules → bearer token check → service
protection → the emulator → an `after` fault → log.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from sandbox.common import (
    DEFAULT_ORG,
    GRAPH_AUDIENCE,
    Caller,
    SandboxSettings,
    dataverse_error,
    segment_not_found,
)
from sandbox.contract import ContractGate
from sandbox.dataverse import Organization
from sandbox.dataverse.batch import parse_batch
from sandbox.dataverse.protocol import E_GENERIC, E_THROTTLED_REQUESTS, ODataError
from sandbox.entra import ENTRA_PATH, Directory, Entra, InvalidToken, caller_of, fault_error
from sandbox.entra.errors import error_response as entra_error_response
from sandbox.http.control import ControlApi
from sandbox.http.faults import FaultRules, Render, ResetConnection
from sandbox.http.files import HostedFiles
from sandbox.http.log import RequestLog
from sandbox.http.throttling import ServiceProtection
from sandbox.partner_center import PartnerCenter

ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CONTROL = re.compile(r"^/_control(?:/(.*))?$")
_DATAVERSE = re.compile(r"^/orgs/([^/]+)/api/data/v9\.2(?:/(.*))?$")
_PARTNER_CENTER = re.compile(r"^/rp/product-ingestion(?:/(.*))?$")
_FILES = re.compile(r"^/files/([^/]+)$")
_UNLOGGED_CONTROL = ("/_control/log", "/_control/reset")  # reading/clearing the log does not write to it


def _drop_connection(environ: dict[str, Any]) -> None:
    """Close the client's connection with a TCP reset (SO_LINGER 0) instead of an answer."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _batch_parts(request: Request) -> list[dict[str, str]]:
    """The inner requests of a Dataverse `$batch` (method, path without query) for its log entry, so a
    test can tell a batch of reads from one carrying writes; a body that does not parse logs none (the
    emulator answers it with its own error)."""
    try:
        parts = parse_batch(request.headers.get("Content-Type", ""), request.get_data())
    except ODataError:
        return []
    return [{"method": part.method, "path": urlsplit(part.url).path or part.url.split("?", 1)[0]} for part in parts]


class SandboxApp:
    """The WSGI application; the emulated services and the cross-cutting machinery around them."""

    def __init__(self, base_url: str, ca_bundle: str) -> None:
        self.base_url = base_url
        self.ca_bundle = ca_bundle
        self.settings = SandboxSettings()
        self.directory = Directory(base_url)
        self.entra = Entra(self.directory)
        self.log = RequestLog()
        self.faults = FaultRules()
        self.protection = ServiceProtection(self.settings)
        self.files = HostedFiles(base_url)
        self.partner_center = PartnerCenter(self.directory, self.settings, self.partner_center_url)
        self.control = ControlApi(self)
        # contract/register.yaml: every request an emulator would serve must be one of its operations (checked
        # after the fault rules: an injected answer, a replayed Microsoft example included, is no emulator's)
        self.contract = ContractGate()
        self._lock = threading.RLock()
        self._orgs: dict[str, Organization] = {}
        # path → (log kind, handler); the first pattern that matches wins
        self._routes: list[tuple[re.Pattern[str], str, Callable[[Request, dict[str, Any], re.Match[str]], Response]]] = [
            (_CONTROL, "control", self._control),
            (_DATAVERSE, "dataverse", self._dataverse),
            (_PARTNER_CENTER, "partnercenter", self._partner_center),
            (_FILES, "files", self._file),
            (ENTRA_PATH, "entra", self._entra),
        ]
        self.reset()

    # ----- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the seeded state: default settings, the two sandbox apps, one organization, one offer."""
        with self._lock:
            defaults = SandboxSettings()
            with self.settings.lock:
                for f in fields(SandboxSettings):
                    if f.name != "lock":
                        setattr(self.settings, f.name, getattr(defaults, f.name))
            self.directory.reset()
            self._orgs.clear()
            self.partner_center.reset()
            self.log.reset()
            self.faults.clear()
            self.protection.reset()
            self.files.clear()
            self.add_org(DEFAULT_ORG)

    @property
    def partner_center_url(self) -> str:
        return f"{self.base_url}/rp/product-ingestion"

    def instance_url(self, name: str) -> str:
        return f"{self.base_url}/orgs/{name}"

    def add_org(self, name: str) -> str:
        if not isinstance(name, str) or not ORG_NAME.match(name):
            raise ValueError("organization name must match [a-z0-9][a-z0-9-]*")
        with self._lock:
            if name in self._orgs:
                raise FileExistsError(name)
            self._orgs[name] = Organization(name, self.instance_url(name), self.directory, self.settings)
            return self.instance_url(name)

    def organization(self, name: str) -> Organization | None:
        with self._lock:
            return self._orgs.get(name)

    def organizations(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"name": o.name, "instance_url": o.instance_url} for o in self._orgs.values()]

    def resource_known(self, resource: str) -> bool:
        """Whether Entra knows `resource` (an organization's instance URL, or Graph) as a resource principal."""
        if resource == GRAPH_AUDIENCE:
            return True
        with self._lock:
            return any(o.instance_url == resource for o in self._orgs.values())

    # ----- WSGI ---------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.get_data()  # read the whole request first (a reset fault drops after reading)
        started = time.monotonic()
        entry = self.log.new_entry(request)
        try:
            response = self._dispatch(request, entry)
        except ResetConnection:
            entry.update(status=0, reset=True)
            self.log.record(entry, started)
            _drop_connection(environ)
            raise ConnectionResetError("sandbox fault: connection reset") from None
        except Exception as exc:  # an emulator bug: answer like Dataverse's generic failure, and keep the log whole
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            response = dataverse_error(500, E_GENERIC, f"Sandbox internal error: {type(exc).__name__}.")
        self.log.note_answer(entry, response.status_code, response.headers.get("Retry-After"))
        if not (entry["kind"] == "control" and request.path in _UNLOGGED_CONTROL):
            self.log.record(entry, started)
        return response(environ, start_response)

    def _dispatch(self, request: Request, entry: dict[str, Any]) -> Response:
        for pattern, kind, handler in self._routes:
            if m := pattern.match(request.path):
                entry["kind"] = kind
                return handler(request, entry, m)
        entry["kind"] = "unknown"
        return self.contract.refuse(request, "unknown", request.path, entry) or segment_not_found(request.path)

    def _control(self, request: Request, entry: dict[str, Any], m: re.Match[str]) -> Response:
        return self.control.handle(request, m.group(1) or "")

    # ----- Entra --------------------------------------------------------------------------------
    def _entra(self, request: Request, entry: dict[str, Any], m: re.Match[str]) -> Response:
        self.log.note_caller(entry, caller_of(request))
        if fault := self.faults.apply(request, entry, self._entra_fault(request)):
            return fault
        if refusal := self.contract.refuse(request, "entra", request.path, entry):
            return refusal
        return self.entra.handle(request, int(self.settings.token_lifetime_seconds), self.resource_known)

    @staticmethod
    def _entra_fault(request: Request) -> Render:
        """An injected status on an Entra path answers in Entra's OAuth error shape."""
        def render(status: int, rule: dict[str, Any], headers: dict[str, str]) -> Response:
            err = fault_error(status, rule.get("code"), rule.get("message"), rule.get("error"))
            return entra_error_response(err, request, headers)
        return render

    # ----- hosted files -------------------------------------------------------------------------
    def _file(self, request: Request, entry: dict[str, Any], m: re.Match[str]) -> Response:
        if fault := self.faults.apply(request, entry, self._envelope_fault):
            return fault
        if refusal := self.contract.refuse(request, "files", request.path, entry):
            return refusal
        return self.files.serve(request, m.group(1))

    @staticmethod
    def _envelope_fault(status: int, rule: dict[str, Any], headers: dict[str, str]) -> Response:
        """An injected status on a Dataverse, Partner Center or file path: the {"error": {code, message}} envelope."""
        default_code = E_THROTTLED_REQUESTS if status == 429 else E_GENERIC
        return dataverse_error(status, rule.get("code") or default_code,
                               rule.get("message") or f"Injected fault {rule['id']} (HTTP {status}).", headers)

    # ----- Dataverse and Partner Center ---------------------------------------------------------
    def _dataverse(self, request: Request, entry: dict[str, Any], m: re.Match[str]) -> Response:
        entry["org"] = m.group(1)
        if request.method == "POST" and m.group(2) == "$batch":
            entry["parts"] = _batch_parts(request)
        return self._protected(request, entry, m.group(2) or "", self.instance_url(m.group(1)),
                               lambda: self.organization(m.group(1)))

    def _partner_center(self, request: Request, entry: dict[str, Any], m: re.Match[str]) -> Response:
        return self._protected(request, entry, m.group(1) or "", GRAPH_AUDIENCE, lambda: self.partner_center)

    def _protected(self, request: Request, entry: dict[str, Any], subpath: str, audience: str,
                   target_of: Callable[[], Any]) -> Response:
        caller, problem = self._authenticate(request, entry, audience)
        self.log.note_caller(entry, caller.label if caller else None)
        if fault := self.faults.apply(request, entry, self._envelope_fault, authenticated=caller is not None):
            if "fault_respond" in entry:  # a recorded answer is sent exactly as recorded, a 401 too
                return fault
            # a refused token looks the same injected or not: the service's 401 with its bearer challenge
            return self._unauthenticated(entry, audience, "injected fault") if fault.status_code == 401 else fault
        if caller is None:
            return self._unauthenticated(entry, audience, problem)
        if refusal := self.contract.refuse(request, entry["kind"], subpath, entry):
            return refusal
        target = target_of()
        if target is None:
            return segment_not_found(request.path)
        key = (entry["org"] or "", caller.label)
        if refusal := self.protection.admit(key):
            return refusal
        began = time.monotonic()
        try:
            latency = int(self.settings.latency_ms or 0)
            if latency:
                time.sleep(latency / 1000)
            response = target.handle(request, caller, subpath)
        finally:
            self.protection.release(key, began)
        return self.faults.answer_after(entry, response)

    def _authenticate(self, request: Request, entry: dict[str, Any], audience: str) -> tuple[Caller | None, str]:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return None, "no bearer token"
        if entry["kind"] == "dataverse" and self.organization(entry["org"]) is None:
            return None, "unknown organization"
        try:
            claims = self.directory.verify_access_token(header[7:].strip(), audience)
        except InvalidToken as exc:
            return None, str(exc)
        if claims.get("upn"):
            return Caller(object_id=claims["oid"], tenant_id=claims["tid"], upn=claims["upn"]), ""
        return Caller(object_id=claims["oid"], tenant_id=claims["tid"], app_id=claims.get("appid")), ""

    def _unauthenticated(self, entry: dict[str, Any], audience: str, problem: str) -> Response:
        """401. Dataverse answers with an empty body and a bearer challenge naming the authority and the
        resource (the header a client reads to discover the authority at run time). Graph-hosted APIs
        (Partner Center) answer with their JSON envelope, InvalidAuthenticationToken."""
        challenge = f"Bearer authorization_uri={self.directory.authority}/oauth2/authorize, resource_id={audience}/"
        entry["auth_problem"] = problem
        if entry["kind"] == "partnercenter":
            return dataverse_error(401, "InvalidAuthenticationToken", f"Access token validation failure: {problem}.",
                                   {"WWW-Authenticate": challenge})
        return Response(b"", status=401, headers={"WWW-Authenticate": challenge})
