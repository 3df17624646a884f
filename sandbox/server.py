"""The sandbox's HTTPS server: TLS from a persisted trustme CA, dispatch to the Entra, Dataverse and
Partner Center emulators, bearer-token checks, and the cross-cutting request log, fault rules,
service protection (429) and latency, plus the `/_control` API and `python -m sandbox serve`."""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hashlib
import json
import math
import re
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import fields
from importlib import import_module
from pathlib import Path
from typing import Any

import trustme
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sandbox.common import (
    ADMIN_CLIENT_ID,
    ADMIN_CLIENT_SECRET,
    DEFAULT_ORG,
    DEFAULT_PORT,
    GRAPH_AUDIENCE,
    LEADWRITER_CLIENT_ID,
    LEADWRITER_CLIENT_SECRET,
    TENANT_ID,
    Caller,
    SandboxSettings,
    dataverse_error,
    json_response,
)
from sandbox.entra import FEDERATED_AUDIENCE, Directory, EntraError, InvalidToken

HOST = "127.0.0.1"
ORG_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DATAVERSE = re.compile(r"^/orgs/([^/]+)/api/data/v9\.2(?:/(.*))?$")
_PARTNER_CENTER = re.compile(r"^/rp/product-ingestion(?:/(.*))?$")
_ENTRA = re.compile(r"^/([^/]+)/(v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token|discovery/v2\.0/keys)$")
_USERREALM = re.compile(r"^/common/userrealm/([^/]+)$")
_FILES = re.compile(r"^/files/([^/]+)$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
KEEP_ALIVE_IDLE_SECONDS = 120  # Azure front ends keep idle connections ~4 min; long enough for any test file
_UNLOGGED_CONTROL = ("/_control/log", "/_control/reset")  # reading/clearing the log does not write to it


class _ResetConnection(Exception):
    """Raised inside dispatch to drop the connection without an answer."""


def _retry_after_until(value: str) -> float:
    """Epoch seconds a Retry-After header (delay-seconds or HTTP-date) asks the caller to wait until."""
    try:
        return time.time() + float(value)
    except ValueError:
        return email.utils.parsedate_to_datetime(value).timestamp()


def _not_found(path: str) -> Response:
    return dataverse_error(404, "0x8006088a", f"Resource not found for the segment '{path.rsplit('/', 1)[-1]}'.")


def _load(module: str, attr: str) -> Any | None:
    """A class from a sibling emulator module, or None while that module does not exist yet."""
    try:
        return getattr(import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


class SandboxApp:
    """The WSGI application: all sandbox state lives here, guarded by one lock."""

    def __init__(self, base_url: str, ca_bundle: str) -> None:
        self.base_url = base_url
        self.ca_bundle = ca_bundle
        self.settings = SandboxSettings()
        self.directory = Directory(base_url)
        self._lock = threading.RLock()
        self._orgs: dict[str, dict[str, Any]] = {}
        self._partner_center: Any = None
        self._log: list[dict[str, Any]] = []
        self._seq = 0
        self._faults: list[dict[str, Any]] = []
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        self._throttled_until: dict[tuple[str, str], float] = {}
        self._retry_until: dict[tuple[str, str], float] = {}
        self._files: dict[str, bytes] = {}
        self._execution: dict[tuple[str, str], deque[tuple[float, float]]] = {}  # (finished, ms) per caller+org
        self.reset()

    # ----- state ------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            defaults = SandboxSettings()
            for f in fields(SandboxSettings):
                if f.name != "lock":
                    setattr(self.settings, f.name, getattr(defaults, f.name))
            self.directory.reset()
            self._orgs.clear()
            self._partner_center = None
            self._log.clear()
            self._faults.clear()
            self._windows.clear()
            self._inflight.clear()
            self._throttled_until.clear()
            self._retry_until.clear()
            self._files.clear()
            self._execution.clear()
            self.add_org(DEFAULT_ORG)

    def instance_url(self, name: str) -> str:
        return f"{self.base_url}/orgs/{name}"

    def add_org(self, name: str) -> str:
        if not isinstance(name, str) or not ORG_NAME.match(name):
            raise ValueError("organization name must match [a-z0-9][a-z0-9-]*")
        with self._lock:
            if name in self._orgs:
                raise FileExistsError(name)
            self._orgs[name] = {"name": name, "instance_url": self.instance_url(name), "impl": None}
            self._organization(name)  # construct now if the emulator exists, so it is seeded
            return self.instance_url(name)

    def _organization(self, name: str) -> Any | None:
        with self._lock:
            record = self._orgs.get(name)
            if record is None:
                return None
            if record["impl"] is None:
                cls = _load("sandbox.dataverse", "Organization")
                if cls is not None:
                    record["impl"] = cls(name, record["instance_url"], self.directory, self.settings)
            return record["impl"]

    def partner_center(self) -> Any | None:
        with self._lock:
            if self._partner_center is None:
                cls = _load("sandbox.partner_center", "PartnerCenter")
                if cls is not None:
                    self._partner_center = cls(self.directory, self.settings)
            return self._partner_center

    def resource_known(self, resource: str) -> bool:
        if resource == GRAPH_AUDIENCE:
            return True
        with self._lock:
            return any(r["instance_url"] == resource for r in self._orgs.values())

    # ----- WSGI -------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.get_data()  # read the whole request first (a reset fault drops after reading)
        started = time.monotonic()
        entry: dict[str, Any] = {"time": time.time(), "org": None, "kind": None, "method": request.method,
                                 "path": request.path, "query": request.query_string.decode("latin-1"),
                                 "status": None, "caller": None, "inside_retry_after": False}
        try:
            response = self._dispatch(request, entry)
        except _ResetConnection:
            entry.update(status=0, reset=True)
            self._record(entry, started)
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            raise ConnectionResetError("sandbox fault: connection reset") from None
        except Exception as exc:  # an emulator bug: answer like Dataverse's generic failure, and keep the log whole
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            response = dataverse_error(500, "0x80040216", f"Sandbox internal error: {type(exc).__name__}.")
        entry["status"] = response.status_code
        retry_after = response.headers.get("Retry-After")
        if retry_after and entry["caller"] is not None:
            until = _retry_after_until(retry_after)
            entry["throttled_until"] = until
            with self._lock:
                key = (entry["org"] or "", entry["caller"])
                self._retry_until[key] = max(until, self._retry_until.get(key, 0.0))
        if not (entry["kind"] == "control" and request.path in _UNLOGGED_CONTROL):
            self._record(entry, started)
        return response(environ, start_response)

    def _record(self, entry: dict[str, Any], started: float) -> None:
        entry["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._log.append(entry)

    def _note_caller(self, entry: dict[str, Any], label: str | None) -> None:
        entry["caller"] = label
        if label is None:
            return
        with self._lock:
            until = self._retry_until.get((entry["org"] or "", label))
        if until is not None and time.time() < until:
            entry["inside_retry_after"] = True

    def _dispatch(self, request: Request, entry: dict[str, Any]) -> Response:
        path = request.path
        if path == "/_control" or path.startswith("/_control/"):
            entry["kind"] = "control"
            try:
                return self._control(request, path[len("/_control"):].strip("/"))
            except (ValueError, KeyError, TypeError) as exc:
                return json_response({"error": {"code": "BadRequest", "message": str(exc)}}, 400)
        if m := _DATAVERSE.match(path):
            entry.update(kind="dataverse", org=m.group(1))
            return self._protected(request, entry, m.group(2) or "", self.instance_url(m.group(1)))
        if m := _PARTNER_CENTER.match(path):
            entry["kind"] = "partnercenter"
            return self._protected(request, entry, m.group(1) or "", GRAPH_AUDIENCE)
        if m := _FILES.match(path):
            entry["kind"] = "files"
            return self._serve_file(request, entry, m.group(1))
        if (m := _ENTRA.match(path)) or (m := _USERREALM.match(path)):
            entry["kind"] = "entra"
            return self._entra(request, entry, m)
        entry["kind"] = "unknown"
        return _not_found(path)

    # ----- hosted files -----------------------------------------------------------------------
    def _serve_file(self, request: Request, entry: dict[str, Any], name: str) -> Response:
        """A file put with POST /_control/files, served without auth (like a public blob URL)."""
        if fault := self._apply_fault(request, entry):
            return fault
        if request.method not in ("GET", "HEAD"):
            return Response("Method Not Allowed", status=405, headers={"Allow": "GET, HEAD"})
        with self._lock:
            data = self._files.get(name)
        if data is None:
            return Response("The specified blob does not exist.", status=404, mimetype="text/plain")
        mimetype = "application/zip" if name.lower().endswith(".zip") else "application/octet-stream"
        return Response(data, status=200, mimetype=mimetype)

    def host_file(self, name: str, data: bytes) -> dict[str, Any]:
        if not isinstance(name, str) or not FILE_NAME.match(name):
            raise ValueError("file name must match [A-Za-z0-9][A-Za-z0-9._-]*")
        with self._lock:
            self._files[name] = data
        return {"name": name, "url": f"{self.base_url}/files/{name}", "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}

    # ----- Entra ------------------------------------------------------------------------------
    def _entra(self, request: Request, entry: dict[str, Any], m: re.Match[str]) -> Response:
        if m.re is _USERREALM:
            self._note_caller(entry, m.group(1))
            if fault := self._apply_fault(request, entry):
                return fault
            return self.directory.userrealm(m.group(1))
        tenant, endpoint = m.group(1), m.group(2)
        form_caller = request.form.get("client_id") if request.method == "POST" else None
        if request.method == "POST" and request.form.get("grant_type") == "password":
            form_caller = request.form.get("username") or form_caller
        self._note_caller(entry, form_caller)
        if fault := self._apply_fault(request, entry):
            return fault
        if tenant != TENANT_ID:
            return self.directory.error_response(EntraError(
                400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found. Check to make sure you have the correct "
                "tenant ID and are signing into the correct cloud."))
        if endpoint.endswith("openid-configuration"):
            return self.directory.openid_configuration()
        if endpoint.endswith("keys"):
            return json_response(self.directory.jwks())
        if request.method != "POST":
            return self.directory.error_response(EntraError(
                405, "invalid_request", 900561, "The endpoint only accepts POST requests."))
        return self.directory.token(request, int(self.settings.token_lifetime_seconds), self.resource_known)

    # ----- Dataverse and Partner Center ---------------------------------------------------------
    def _protected(self, request: Request, entry: dict[str, Any], subpath: str, audience: str) -> Response:
        caller, problem = self._authenticate(request, audience)
        self._note_caller(entry, caller.label if caller else None)
        if fault := self._apply_fault(request, entry):
            # a refused token looks the same injected or not: the service's 401 with its bearer challenge
            return self._unauthenticated(entry, audience, "injected fault") if fault.status_code == 401 else fault
        if caller is None:
            return self._unauthenticated(entry, audience, problem)
        if entry["kind"] == "dataverse":
            target = self._organization(entry["org"])
            if target is None:
                return _not_found(request.path)
        else:
            target = self.partner_center()
            if target is None:
                return _not_found(request.path)
        key = (entry["org"] or "", caller.label)
        if refusal := self._admit(key):
            return refusal
        began = time.monotonic()
        try:
            latency = int(self.settings.latency_ms or 0)
            if latency:
                time.sleep(latency / 1000)
            response = target.handle(request, caller, subpath)
        finally:
            with self._lock:
                self._inflight[key] -= 1
                if (self.settings.throttle or {}).get("max_execution_ms") is not None:
                    self._execution.setdefault(key, deque()).append((time.time(), (time.monotonic() - began) * 1000))
        return self._answer_after_fault(entry, response)

    @staticmethod
    def _answer_after_fault(entry: dict[str, Any], response: Response) -> Response:
        """A fault rule with `after`: the request was processed; now hold its answer (latency) or drop the
        connection (reset) — the ambiguity that matters most: the write happened, the client cannot know."""
        after = entry.get("fault_after")
        if not after:
            return response
        entry["fault_after"] = True
        entry["applied_status"] = response.status_code
        if after.get("latency_ms"):
            time.sleep(int(after["latency_ms"]) / 1000)
        if after.get("reset"):
            raise _ResetConnection()
        return response

    def _unauthenticated(self, entry: dict[str, Any], audience: str, problem: str) -> Response:
        """401. Dataverse answers with an empty body and a bearer challenge naming the authority and the
        resource (the header Microsoft's "discover the authority at run time" reads); round 1 sent the
        403 code 0x80072560 ("not a member of the organization") here, which is a different failure.
        Graph-hosted APIs (Partner Center) answer with their JSON envelope, InvalidAuthenticationToken."""
        challenge = f"Bearer authorization_uri={self.directory.authority}/oauth2/authorize, resource_id={audience}/"
        entry["auth_problem"] = problem
        if entry["kind"] == "partnercenter":
            return json_response({"error": {"code": "InvalidAuthenticationToken", "message":
                                            f"Access token validation failure: {problem}."}}, 401,
                                 {"WWW-Authenticate": challenge})
        return Response(b"", status=401, headers={"WWW-Authenticate": challenge})

    def _authenticate(self, request: Request, audience: str) -> tuple[Caller | None, str]:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return None, "no bearer token"
        if entry_org := _DATAVERSE.match(request.path):
            with self._lock:
                if entry_org.group(1) not in self._orgs:
                    return None, "unknown organization"
        try:
            claims = self.directory.verify_access_token(header[7:].strip(), audience)
        except InvalidToken as exc:
            return None, str(exc)
        if claims.get("upn"):
            return Caller(object_id=claims["oid"], tenant_id=claims["tid"], upn=claims["upn"]), ""
        return Caller(object_id=claims["oid"], tenant_id=claims["tid"], app_id=claims.get("appid")), ""

    def _admit(self, key: tuple[str, str]) -> Response | None:
        """Service protection per caller per organization; on admission counts one in-flight request."""
        with self._lock:
            throttle = self.settings.throttle or {}
            now = time.time()
            retry_setting = throttle.get("retry_after")
            until = self._throttled_until.get(key, 0.0)
            window = float(throttle.get("window_seconds", 300))
            max_requests = throttle.get("max_requests")
            if throttle and now < until:
                wait = int(retry_setting) if retry_setting else max(1, math.ceil(until - now))
                self._throttled_until[key] = now + wait  # sending while throttled extends the wait
                return self._too_many("0x80072322", max_requests, window, wait)
            if max_requests is not None:
                stamps = self._windows.setdefault(key, deque())
                while stamps and stamps[0] <= now - window:
                    stamps.popleft()
                if len(stamps) >= int(max_requests):
                    wait = int(retry_setting) if retry_setting else max(1, math.ceil(stamps[0] + window - now))
                    self._throttled_until[key] = now + wait
                    return self._too_many("0x80072322", max_requests, window, wait)
            max_execution = throttle.get("max_execution_ms")
            if max_execution is not None:
                spent = self._execution.setdefault(key, deque())
                while spent and spent[0][0] <= now - window:
                    spent.popleft()
                if sum(ms for _, ms in spent) >= float(max_execution):
                    wait = int(retry_setting) if retry_setting else max(1, math.ceil(spent[0][0] + window - now))
                    seconds = int(window) if float(window).is_integer() else window
                    # Code and wording: Microsoft Learn, "Service protection API limits" (execution time).
                    return dataverse_error(429, "0x80072321", f"Combined execution time of incoming requests "
                                           f"exceeded limit of {int(max_execution):,} milliseconds over time window "
                                           f"of {seconds} seconds. Decrease number of concurrent requests or reduce "
                                           "the duration of requests and try again later.", {"Retry-After": str(wait)})
            max_concurrent = throttle.get("max_concurrent")
            if max_concurrent is not None and self._inflight.get(key, 0) >= int(max_concurrent):
                wait = int(retry_setting) if retry_setting else 1
                return dataverse_error(429, "0x80072326", f"Number of concurrent requests exceeded the limit of "
                                       f"{max_concurrent}.", {"Retry-After": str(wait)})
            if max_requests is not None:
                self._windows[key].append(now)
            self._inflight[key] = self._inflight.get(key, 0) + 1
            return None

    @staticmethod
    def _too_many(code: str, max_requests: Any, window: float, wait: int) -> Response:
        seconds = int(window) if float(window).is_integer() else window
        return dataverse_error(429, code, f"Number of requests exceeded the limit of {max_requests} over time window "
                               f"of {seconds} seconds.", {"Retry-After": str(wait)})

    # ----- faults -----------------------------------------------------------------------------
    def _apply_fault(self, request: Request, entry: dict[str, Any]) -> Response | None:
        with self._lock:
            rule = None
            for candidate in self._faults:
                method = (candidate.get("method") or "*").upper()
                if method not in ("*", request.method):
                    continue
                if candidate.get("org") and candidate["org"] != entry["org"]:
                    continue
                if candidate.get("path") and not re.search(candidate["path"], request.path):
                    continue
                rule = candidate
                break
            if rule is None:
                return None
            rule["remaining"] -= 1
            if rule["remaining"] <= 0:
                self._faults.remove(rule)
        entry["fault"] = rule["id"]
        if rule.get("after"):
            # the write lands, then its answer is held or lost: applied by _answer_after_fault
            entry["fault_after"] = {k: rule.get(k) for k in ("latency_ms", "reset")}
            return None
        if rule.get("latency_ms"):
            time.sleep(int(rule["latency_ms"]) / 1000)
        if rule.get("reset"):
            raise _ResetConnection()
        status = rule.get("status")
        if not status:
            return None  # latency-only rule: carry on normally
        headers = {}
        if rule.get("retry_after") is not None:
            if rule.get("retry_after_http_date"):  # RFC 7231 §7.1.3: an HTTP-date is as valid as delay-seconds
                when = math.ceil(time.time() + float(rule["retry_after"]))
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            else:
                headers["Retry-After"] = str(rule["retry_after"])
        default_code = {429: "0x80072322", 503: "0x80040216"}.get(int(status), "0x80040216")
        return dataverse_error(int(status), rule.get("code") or default_code,
                               rule.get("message") or f"Injected fault {rule['id']} (HTTP {status}).", headers)

    # ----- control API ------------------------------------------------------------------------
    def _control(self, request: Request, sub: str) -> Response:  # noqa: C901 - a flat route table
        method = request.method
        body: dict[str, Any] = {}
        if method in ("POST", "PATCH", "PUT") and request.get_data():
            body = json.loads(request.get_data())
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        parts = sub.split("/") if sub else []
        if sub == "log" and method == "GET":
            since = int(request.args.get("since", 0))
            with self._lock:
                entries = [dict(e) for e in self._log if e["seq"] > since]
            return json_response({"entries": entries})
        if sub == "log" and method == "DELETE":
            with self._lock:
                self._log.clear()
            return Response(status=204)
        if sub == "faults" and method == "POST":
            rule = {k: body.get(k) for k in ("method", "path", "status", "retry_after", "retry_after_http_date",
                                             "latency_ms", "reset", "after", "org", "code", "message")}
            if rule["path"]:
                re.compile(rule["path"])  # re.error is a ValueError → 400
            count = int(body.get("count") or 1)
            rule.update(id=str(uuid.uuid4()), count=count, remaining=count)
            with self._lock:
                self._faults.append(rule)
            return json_response({"id": rule["id"]}, 201)
        if sub == "faults" and method == "GET":
            with self._lock:
                return json_response({"faults": [dict(r) for r in self._faults]})
        if sub == "faults" and method == "DELETE":
            with self._lock:
                self._faults.clear()
            return Response(status=204)
        if sub == "settings" and method == "POST":
            return self._update_settings(body)
        if sub == "settings" and method == "GET":
            return json_response(self._settings_dict())
        if sub == "reset" and method == "POST":
            self.reset()
            return Response(status=204)
        if sub == "orgs" and method == "POST":
            try:
                url = self.add_org(body.get("name"))
            except FileExistsError:
                return json_response({"error": {"code": "Conflict", "message": f"organization {body.get('name')} "
                                                "exists"}}, 409)
            return json_response({"name": body["name"], "instance_url": url}, 201)
        if sub == "orgs" and method == "GET":
            with self._lock:
                return json_response({"orgs": [{"name": r["name"], "instance_url": r["instance_url"]}
                                               for r in self._orgs.values()]})
        if len(parts) == 3 and parts[0] == "orgs" and parts[2] in ("state", "drift"):
            org = self._organization(parts[1])
            if org is None:
                return _not_found(request.path)
            if parts[2] == "state" and method == "GET":
                return json_response(org.state())
            if parts[2] == "drift" and method == "POST":
                params = {k: v for k, v in body.items() if k != "action"}
                return json_response(org.drift(body.get("action", ""), params))
        if sub == "files" and method == "POST":
            try:
                data = base64.b64decode(body["content_b64"], validate=True)
            except binascii.Error:
                raise ValueError("content_b64 is not valid base64") from None
            return json_response(self.host_file(body["name"], data), 201)
        if len(parts) == 2 and parts[0] == "files" and method == "DELETE":
            with self._lock:
                self._files.pop(parts[1], None)
            return Response(status=204)
        if sub == "apps" and method == "POST":
            allowed = {"client_id", "client_secret", "display_name", "certificate_pem", "federated_subject", "object_id"}
            return json_response(self.directory.register_app(**{k: v for k, v in body.items() if k in allowed}), 201)
        if sub == "users" and method == "POST":
            user = self.directory.create_user(user_principal_name=body["user_principal_name"],
                                              password=body["password"], object_id=body.get("object_id"))
            return json_response(user, 201)
        if sub == "issue-token" and method == "POST":
            audience = body["audience"]
            if not self.resource_known(audience):
                raise ValueError(f"unknown audience {audience}")
            token, expires_on = self.directory.issue_access_token(
                audience, int(self.settings.token_lifetime_seconds), client_id=body.get("client_id"),
                upn=body.get("user_principal_name"))
            return json_response({"access_token": token, "expires_on": expires_on, "token_type": "Bearer",
                                  "tenant": self.directory.tenant_id})
        if sub == "federated-token" and method == "POST":
            token = self.directory.issue_federated_token(body["subject"], body.get("audience") or FEDERATED_AUDIENCE)
            return json_response({"token": token, "issuer": self.directory.workload_issuer})
        if parts and parts[0] == "partner-center":
            pc = self.partner_center()
            if pc is None:
                return _not_found(request.path)
            return pc.control(request, "/".join(parts[1:]))
        return _not_found(request.path)

    def _settings_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self.settings, f.name) for f in fields(SandboxSettings) if f.name != "lock"}

    def _update_settings(self, body: dict[str, Any]) -> Response:
        known = {f.name for f in fields(SandboxSettings)} - {"lock"}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        throttle = body.get("throttle")
        if throttle is not None and not isinstance(throttle, dict):
            raise ValueError("throttle must be an object or null")
        with self._lock, self.settings.lock:
            for key, value in body.items():
                setattr(self.settings, key, value)
            if "throttle" in body:
                self._windows.clear()
                self._throttled_until.clear()
                self._execution.clear()
        return json_response(self._settings_dict())


class _LazyHandshake:
    """Wraps an SSLContext so the TLS handshake runs in the request thread, not the accept loop."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)


class _KeepAliveInput:
    """The connection's read side. After werkzeug has written an answer it "drains" the socket with
    read(10 MB) while it looks readable, assuming the connection then closes; on a kept-alive
    connection that would swallow (or block on) the client's next request. Once the app's answer is
    complete (`mark_answered`), read() returns b"" so the drain stops at once; readline, which
    http.server uses for the next request line and headers, is untouched."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.answered = False

    def mark_answered(self) -> None:
        self.answered = True

    def read(self, size: int | None = -1) -> bytes:
        if self.answered:
            return b""
        return self._raw.read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _then(chunks: Any, done: Any) -> Any:
    """The answer's chunks, then `done()` (the body has been handed to the server in full)."""
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if done is not None:
        done()


class _QuietHandler(WSGIRequestHandler):
    """HTTP/1.1 keep-alive, as Dataverse's front end does, so a client pays one TLS handshake per
    connection instead of one per request. werkzeug sends `Connection: close` on every answer because
    http.server cannot drain an unread request body; the sandbox app reads every body whole before it
    answers (SandboxApp.__call__), so the connection is safe to reuse and that header is dropped unless
    the exchange must end (client asked, parse error, reset fault). Every answer has a Content-Length
    (werkzeug sets it for byte bodies; 204/304 have none), else werkzeug would chunk it.
    No per-request access lines on stderr: the sandbox keeps its own request log. TCP_NODELAY, or
    Nagle + delayed ACK add ~20 ms to every keep-alive answer (headers and body are separate writes)."""

    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_IDLE_SECONDS  # an idle connection is closed after this long (socket timeout)
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.rfile = _KeepAliveInput(self.rfile)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        self.rfile.answered = False  # type: ignore[attr-defined]
        super().handle_one_request()

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ["sandbox.answered"] = self.rfile.mark_answered  # type: ignore[attr-defined]
        return environ

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close" and not self.close_connection \
                and self.environ_keep_alive():
            return
        super().send_header(keyword, value)

    def environ_keep_alive(self) -> bool:
        """Keep the connection unless the client asked to close it (HTTP/1.0 without keep-alive included)."""
        asked = (self.headers.get("Connection", "") if self.headers else "").lower()
        if self.request_version == "HTTP/1.0":
            return asked == "keep-alive"
        return asked != "close"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass


def load_or_create_ca(state_dir: Path) -> trustme.CA:
    """The CA persisted as ca.pem (+ ca-key.pem) in the state dir, created on first use."""
    cert_path, key_path = state_dir / "ca.pem", state_dir / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    ca = trustme.CA(organization_name="lead-destination sandbox")
    state_dir.mkdir(parents=True, exist_ok=True)
    ca.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    ca.cert_pem.write_to_path(str(cert_path))
    return ca


class Sandbox:
    """An in-process sandbox: `start()` serves on a background thread and returns the info dict."""

    def __init__(self, port: int = 0, state_dir: str | Path | None = None) -> None:
        self.port = port
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="sandbox-"))
        self.app: SandboxApp | None = None
        self.info: dict[str, Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> dict[str, Any]:
        ca = load_or_create_ca(self.state_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST, "localhost").configure_cert(context)
        holder: dict[str, SandboxApp] = {}

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            return _then(holder["app"](environ, start_response), environ.get("sandbox.answered"))

        self._server = make_server(HOST, self.port, app, threaded=True, request_handler=_QuietHandler,
                                   ssl_context=_LazyHandshake(context))  # type: ignore[arg-type]
        self._server.daemon_threads = True
        port = self._server.server_port
        base = f"https://{HOST}:{port}"
        ca_bundle = str((self.state_dir / "ca.pem").resolve())
        self.app = holder["app"] = SandboxApp(base, ca_bundle)
        self.info = {
            "instance_url": self.app.instance_url(DEFAULT_ORG),
            "authority": f"{base}/{TENANT_ID}",
            "authority_host": f"{HOST}:{port}",
            "tenant_id": TENANT_ID,
            "ca_bundle": ca_bundle,
            "admin_client_id": ADMIN_CLIENT_ID,
            "admin_client_secret": ADMIN_CLIENT_SECRET,
            "leadwriter_client_id": LEADWRITER_CLIENT_ID,
            "leadwriter_client_secret": LEADWRITER_CLIENT_SECRET,
            "control_url": f"{base}/_control",
            "partner_center_url": f"{base}/rp/product-ingestion",
            "port": port,
        }
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"sandbox-{port}", daemon=True)
        self._thread.start()
        (self.state_dir / "serve.json").write_text(json.dumps(self.info) + "\n")
        return dict(self.info)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox serve", description="Serve the sandbox over HTTPS.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 = free)")
    parser.add_argument("--state-dir", default=".sandbox", help="where ca.pem and serve.json live (default .sandbox)")
    args = parser.parse_args(argv)
    sandbox = Sandbox(port=args.port, state_dir=args.state_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    info = sandbox.start()
    print(json.dumps(info), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
