"""The contract register (`contract/register.yaml`) inside the sandbox: every request the emulator
receives is matched against the operations the register lists — the operations the program sends, each
with its Microsoft source — before any emulator sees it.

- A request no operation matches is answered 501 and named ("not in contract/register.yaml"): the
  sending test fails on the answer, and the request is appended to the file named by the environment
  variable `SANDBOX_CONTRACT_VIOLATIONS` (JSON lines), which tests/conftest.py sets for a pytest session
  and reads at its end, so a request whose 501 a caller swallowed still fails the session — also from a
  sandbox in another process (`python -m sandbox serve` inherits the variable).
- For a matched operation the register's names are checked: query options, `$select` columns and
  `$expand` navigation properties, the parameters of an action, a function or the token endpoint, the
  properties of an entity create or update. A name the register does not list is refused in the
  service's own shape (Dataverse: 400, code 0x0) and recorded the same way.
- A deliberate negative request of a sandbox test (a path nobody serves, a parameter an action does not
  have) is listed under `probes` in the register, with the test that sends it and why: the contract
  check steps aside and the emulator answers it as it answers any wrong request. A probe names exact
  paths or names, and applies only to requests the program's own clients did not send (their
  User-Agent: `lead-destination`, azure-identity's `azsdk-python-identity`) unless it says `sender: any`
  — so the program cannot hide behind one (the .NET SDK's PrivilegeId, probed by a test, is still
  refused when the client sends it).

Only names are checked here; values, required parameters and the semantics are the emulators'.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

REGISTER_PATH = Path(__file__).resolve().parent.parent / "contract" / "register.yaml"
VIOLATIONS_ENV = "SANDBOX_CONTRACT_VIOLATIONS"
SERVICES = ("dataverse", "entra", "partnercenter", "files")
PROGRAM_AGENTS = ("lead-destination", "azsdk-python-identity")  # User-Agents of the program's own clients
KINDS = ("read", "create", "update", "delete", "action", "function", "ref", "batch", "token", "metadata",
         "download")
GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# placeholder types of a path template: {name} one segment, {name:guid}, {name:call} "(…)" of a function,
# {name:optcall} an optional "(…)"
_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")
_TYPES = {None: r"[^/()]+", "guid": GUID, "call": r"\((?P<{n}>[^)]*)\)", "optcall": r"(?:\((?P<{n}>[^)]*)\))?"}
_API_PREFIX = "/api/data/v9.2/"


class RegisterError(ValueError):
    """contract/register.yaml is not a valid register (the message names the entry and the field)."""


def compile_path(template: str) -> re.Pattern[str]:
    """The regular expression of a path template (whole-path match)."""
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        name, kind = m.group(1), m.group(2)
        if kind not in _TYPES:
            raise RegisterError(f"path {template!r}: unknown placeholder type {kind!r} (one of guid, call, optcall)")
        pattern = _TYPES[kind]
        out.append(pattern.format(n=name) if "{n}" in pattern else f"(?P<{name}>{pattern})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


def _names(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, Mapping):
        return frozenset(str(k) for k in value)
    return frozenset(str(v) for v in value)


@dataclass(frozen=True)
class Operation:
    """One register entry, with what the sandbox checks."""

    id: str
    service: str
    method: str
    path: str
    kind: str
    patterns: tuple[re.Pattern[str], ...]
    parameters: frozenset[str]
    properties: frozenset[str]
    query: frozenset[str]
    fields: frozenset[str]
    expand: frozenset[str]
    entry: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Probe:
    """A deliberate negative request of a sandbox test (register section `probes`)."""

    id: str
    service: str
    method: str
    pattern: re.Pattern[str] | None
    operation: str | None
    names: frozenset[str]
    sent_by: str
    why: str
    sender: str = "tests"  # "tests": not from the program's own clients; "any": a test drives the program's client

    def covers(self, request: Request) -> bool:
        return self.sender == "any" or not request.user_agent.startswith(PROGRAM_AGENTS)


@dataclass(frozen=True)
class Verdict:
    """What the register says about one request: the operation it is (None: none), the problem (None: it
    conforms), the status and error code to refuse it with, and the probe that excuses it."""

    operation: str | None
    problem: str | None = None
    status: int = 501
    code: str = "NotInContract"
    probe: str | None = None
    said: str | None = None  # the service's own words for the refusal (Dataverse's, for a 400)

    @property
    def refused(self) -> bool:
        return self.problem is not None and self.probe is None


@dataclass(frozen=True)
class Request:
    """The parts of a request the register speaks about; `path` is relative to the service's base
    (Dataverse: after /api/data/v9.2/, Partner Center: after /rp/product-ingestion/, else the whole path
    without its leading slash)."""

    service: str
    method: str
    path: str
    args: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str = ""
    user_agent: str = ""


class Register:
    """The loaded register: operations by service and the probes."""

    def __init__(self, data: Mapping[str, Any], source: str = "contract/register.yaml") -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("operations"), list):
            raise RegisterError(f"{source}: expected a mapping with an `operations` list")
        self.source = source
        self.data = data
        self.operations: list[Operation] = []
        seen: set[str] = set()
        for index, entry in enumerate(data["operations"]):
            op = self._operation(index, entry)
            if op.id in seen:
                raise RegisterError(f"{source}: operation id {op.id} appears twice")
            seen.add(op.id)
            self.operations.append(op)
        self.probes = [self._probe(index, entry) for index, entry in enumerate(data.get("probes") or [])]
        known = {op.id for op in self.operations}
        self.fixture_groups: dict[str, Mapping[str, Any]] = dict(data.get("fixture_groups") or {})
        for group, spec in self.fixture_groups.items():
            if group in known or not isinstance(spec, Mapping) or not str(spec.get("why", "")).strip():
                raise RegisterError(f"{source}: fixture group {group} needs a `why` and an id no operation has")
            if unknown := set(spec.get("covers") or []) - known:
                raise RegisterError(f"{source}: fixture group {group} covers unknown operation(s) {sorted(unknown)}")
        for probe in self.probes:
            if probe.operation is not None and probe.operation not in known:
                raise RegisterError(f"{source}: probe {probe.id} names unknown operation {probe.operation}")

    @classmethod
    def load(cls, path: str | Path = REGISTER_PATH) -> Register:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise RegisterError(f"cannot read the contract register {path}: {exc}") from None
        return cls(data, str(path))

    def _operation(self, index: int, entry: Any) -> Operation:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
            raise RegisterError(f"{self.source}: operations[{index}] has no id")
        op_id = entry["id"]
        service = op_id.split(".", 1)[0]
        if service not in SERVICES or not re.fullmatch(r"[a-z]+\.[A-Z][A-Za-z0-9]+", op_id):
            raise RegisterError(f"{self.source}: {op_id}: id must be <service>.<Name>, service one of {SERVICES}")
        for key in ("method", "path", "kind"):
            if not isinstance(entry.get(key), str) and not (key == "path" and isinstance(entry.get(key), list)):
                raise RegisterError(f"{self.source}: {op_id}: `{key}` is missing")
        if entry["kind"] not in KINDS:
            raise RegisterError(f"{self.source}: {op_id}: kind {entry['kind']!r} is not one of {KINDS}")
        templates = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
        try:
            patterns = tuple(compile_path(str(t)) for t in templates)
        except re.error as exc:
            raise RegisterError(f"{self.source}: {op_id}: path does not compile: {exc}") from None
        return Operation(
            id=op_id, service=service, method=entry["method"].upper(), path=" | ".join(templates), kind=entry["kind"],
            patterns=patterns, parameters=_names(entry.get("parameters")), properties=_names(entry.get("properties")),
            query=_names(entry.get("query")), fields=_names(entry.get("response_fields")),
            expand=_names(entry.get("expand")), entry=entry)

    def _probe(self, index: int, entry: Any) -> Probe:
        if not isinstance(entry, Mapping) or not str(entry.get("id", "")).startswith("probe."):
            raise RegisterError(f"{self.source}: probes[{index}] needs an id probe.<Name>")
        for key in ("service", "method", "sent_by", "why"):
            if not entry.get(key):
                raise RegisterError(f"{self.source}: {entry['id']}: `{key}` is missing")
        if not entry.get("path") and not (entry.get("operation") and entry.get("names")):
            raise RegisterError(f"{self.source}: {entry['id']}: a probe names a path, or an operation and its names")
        if entry.get("sender", "tests") not in ("tests", "any"):
            raise RegisterError(f"{self.source}: {entry['id']}: sender is tests or any")
        return Probe(id=entry["id"], service=entry["service"], method=entry["method"].upper(),
                     pattern=compile_path(entry["path"]) if entry.get("path") else None,
                     operation=entry.get("operation"), names=_names(entry.get("names")),
                     sent_by=entry["sent_by"], why=entry["why"], sender=entry.get("sender", "tests"))

    # ----- matching -------------------------------------------------------------------------------
    def operation_for(self, service: str, method: str, path: str) -> tuple[Operation, re.Match[str]] | None:
        for op in self.operations:
            if op.service == service and op.method == method:
                for pattern in op.patterns:
                    if m := pattern.fullmatch(path):
                        return op, m
        return None

    def _path_probe(self, request: Request) -> Probe | None:
        return next((p for p in self.probes if p.pattern is not None and p.service == request.service
                     and p.method == request.method and p.pattern.fullmatch(request.path) and p.covers(request)),
                    None)

    def check(self, request: Request) -> Verdict:
        """The verdict on one request (a $batch: on each of its parts; the first problem wins)."""
        found = self.operation_for(request.service, request.method, request.path)
        if found is None:
            probe = self._path_probe(request)
            return Verdict(None, f"{request.method} {request.service}:/{request.path} matches no operation",
                           probe=probe.id if probe else None)
        op, match = found
        refusal = self._names_problem(op, match, request)
        if refusal is None:
            return self._batch(op, request) if op.kind == "batch" else Verdict(op.id)
        problem, status, unknown, said, code = refusal
        probe = next((p for p in self.probes
                      if p.operation == op.id and unknown and unknown <= p.names and p.covers(request)), None)
        return Verdict(op.id, problem, status, code, probe.id if probe else None, said)

    def _names_problem(self, op: Operation, match: re.Match[str],
                       request: Request) -> tuple[str, int, frozenset[str], str | None, str] | None:
        """None when every name the request carries is registered, else (problem, status, the unknown
        names, the service's words, the service's code). A Dataverse refusal says what the emulator says
        for the same mistake (docs/sandbox.md): an unknown column or property "Could not find a property
        named …" (seen: verbb/formie#1185), an undeclared navigation property and an unknown action
        parameter the 0x80048d19 payload error of Microsoft's troubleshooting page, an unknown function
        parameter "Request message has unresolved parameters." ("Use Web API actions")."""
        names = [k for k, _ in request.args]
        aliases = {k for k in names if k.startswith("@") and op.kind == "function"}
        unknown = frozenset(k for k in names if k not in op.query and k not in aliases)
        if unknown:
            return (f"{op.id}: query option(s) {', '.join(sorted(unknown))} not in the register", 501, unknown, None,
                    "NotInContract")
        args = dict(request.args)
        entity = request.path.split("(", 1)[0].split("/", 1)[0].removesuffix("s")
        if "$select" in args:
            columns = frozenset(c.strip() for c in args["$select"].split(",") if c.strip())
            if extra := columns - op.fields:
                return (f"{op.id}: $select column(s) {', '.join(sorted(extra))} not among its response fields", 400,
                        extra, _not_found(min(extra), entity), E_BAD)
        if "$expand" in args:
            navs = frozenset(re.split(r"[(]", part, maxsplit=1)[0].strip() for part in _top_level(args["$expand"]))
            if extra := navs - op.expand:
                return (f"{op.id}: $expand of {', '.join(sorted(extra))} not in the register", 400, extra,
                        _not_found(min(extra), entity), E_BAD)
        sent = self._sent_names(op, match, request)
        parameters = op.kind in ("action", "function", "token")
        extra = (sent or frozenset()) - (op.parameters if parameters else op.properties)
        if not extra:
            return None
        first = min(extra)
        name = op.id.split(".", 1)[1]
        if op.kind == "action":
            said, code = _payload_error(f"The parameter '{first}' in the request payload is not a valid parameter "
                                        f"for the operation '{name}'."), E_PAYLOAD
        elif op.kind == "function":
            said, code = "Request message has unresolved parameters.", E_BAD
        elif first.endswith("@odata.bind"):
            said, code = _payload_error(f"An undeclared property '{first.removesuffix('@odata.bind')}' which only has "
                                        "property annotations in the payload but no property value was found in the "
                                        "payload."), E_PAYLOAD
        else:
            said, code = _not_found(first, entity), E_BAD
        if op.service != "dataverse":
            code = "invalid_request" if op.kind == "token" else "BadRequest"
        what = "parameter(s)" if parameters else "property(ies)"
        return f"{op.id}: {what} {', '.join(sorted(extra))} not in the register", 400, extra, said, code

    @staticmethod
    def _sent_names(op: Operation, match: re.Match[str], request: Request) -> frozenset[str] | None:
        """The parameter / property names a request carries (None: the kind carries none)."""
        if op.kind == "function":
            call = (match.groupdict().get("parameters") or "").strip()
            return frozenset(part.split("=", 1)[0].strip() for part in call.split(",") if part.strip())
        if op.kind == "token":
            return frozenset(k for k, _ in parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        if op.kind in ("action", "create", "update", "ref") or (op.kind == "metadata" and request.body):
            if not request.body.strip():
                return frozenset()
            try:
                body = json.loads(request.body)
            except ValueError:
                return None  # not JSON: the emulator refuses it in its own words
            return frozenset(body) if isinstance(body, dict) else None
        return None

    def _batch(self, op: Operation, request: Request) -> Verdict:
        from sandbox.dataverse.batch import parse_batch
        from sandbox.dataverse.protocol import ODataError

        try:
            parts = parse_batch(request.content_type, request.body)
        except ODataError:
            return Verdict(op.id)  # a malformed $batch: the emulator answers it
        for part in parts:
            url = urlsplit(part.url)
            path = unquote(url.path)
            path = path.split(_API_PREFIX, 1)[1] if _API_PREFIX in path else path.lstrip("/")
            inner = self.check(Request("dataverse", part.method, path, tuple(parse_qsl(url.query, keep_blank_values=True)),
                                       part.body, part.headers.get("content-type", ""), request.user_agent))
            if inner.problem is not None and inner.probe is None:
                return Verdict(op.id, f"$batch part {part.method} {path}: {inner.problem}", inner.status, inner.code)
        return Verdict(op.id)


E_BAD, E_PAYLOAD = "0x0", "0x80048d19"


def _not_found(name: str, entity: str) -> str:
    return f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'."


def _payload_error(inner: str) -> str:
    """Dataverse's 0x80048d19 wrapper around an OData payload error (Microsoft's "Troubleshoot Dataverse Web
    API client errors")."""
    return ("Error identified in Payload provided by the user for Entity :'', For more information on this error "
            "please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : "
            f"Microsoft.OData.ODataException: {inner}")


def _top_level(text: str) -> Iterable[str]:
    """The comma-separated items of an $expand, ignoring commas inside parentheses."""
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


@lru_cache(maxsize=1)
def default_register() -> Register:
    """contract/register.yaml, loaded once per process."""
    return Register.load()


class ViolationLog:
    """Appends refused requests to the file named by SANDBOX_CONTRACT_VIOLATIONS (read when the sandbox
    starts), one JSON object a line: what was sent (method, service path, query option names — never a
    body or a query value) and which test was running."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else os.environ.get(VIOLATIONS_ENV) or None
        self._lock = threading.Lock()

    def record(self, request: Request, verdict: Verdict) -> None:
        if not self.path:
            return
        line = json.dumps({"time": time.time(), "pid": os.getpid(), "test": os.environ.get("PYTEST_CURRENT_TEST"),
                           "service": request.service, "method": request.method, "path": request.path,
                           "query": sorted({k for k, _ in request.args}), "operation": verdict.operation,
                           "problem": verdict.problem})
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def read_violations(path: str | Path) -> list[dict[str, Any]]:
    """The violations recorded in `path` (none when it does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def refusal_message(verdict: Verdict) -> str:
    """The refusal's text: the service's own words (when it has them), then what the register lacks."""
    lead = f"{verdict.said} " if verdict.said else ""
    return (f"{lead}[sandbox: {verdict.problem} — not in contract/register.yaml. Register it with its Microsoft "
            "source (or the reason it is inferred), or fix the request.]")


class ContractGate:
    """The sandbox's check of each request against the register (SandboxApp calls `refuse` before any
    emulator): the request log entry gets the operation id (and the probe or the problem), a refused
    request its answer in the service's error shape and a line in the violations file."""

    def __init__(self, register: Register | None = None, violations: ViolationLog | None = None) -> None:
        self.register = register or default_register()
        self.violations = violations or ViolationLog()

    def refuse(self, request: Any, service: str, relative: str, entry: dict[str, Any]) -> Any:
        """None when `request` (a werkzeug Request) may go on to its emulator, else the answer to send;
        `relative` is its path under the service's base."""
        from sandbox.common import dataverse_error, json_response

        sent = Request(service, request.method.upper(), relative.lstrip("/"), tuple(request.args.items(multi=True)),
                       request.get_data(), request.headers.get("Content-Type", ""), request.headers.get("User-Agent", ""))
        verdict = self.register.check(sent)
        entry["operation"] = verdict.operation
        if verdict.probe:
            entry["probe"] = verdict.probe
        if not verdict.refused:
            return None
        entry["contract"] = verdict.problem
        self.violations.record(sent, verdict)
        message = refusal_message(verdict)
        if service == "entra":
            return json_response({"error": "invalid_request" if verdict.status == 400 else "not_in_contract",
                                  "error_description": message}, verdict.status)
        return dataverse_error(verdict.status, verdict.code, message)


# ----- what the register claims about answers ------------------------------------------------------
def field_leaf(field_name: str) -> str:
    """The key a response field names: `a[].b.c` → `c`, `@odata.nextLink` → itself."""
    last = field_name.split("[].")[-1]
    return last if last.startswith("@") else last.split(".")[-1]


def quoted_names(entry: Mapping[str, Any]) -> set[str]:
    """Every name the entry's Microsoft sources quote."""
    names: set[str] = set()
    for source in entry.get("sources") or []:
        names.update(str(n) for n in source.get("quoted") or [])
    return names


def fixture_names(fixtures_dir: str | Path) -> dict[str, set[str]]:
    """Per operation id, the keys of the Microsoft-published answers under contract/fixtures/ (each file:
    {provenance, operation, request, response}; keys at any depth of response.body)."""
    found: dict[str, set[str]] = {}

    def walk(value: Any, into: set[str]) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                into.add(str(key))
                walk(inner, into)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, into)

    for path in sorted(Path(fixtures_dir).glob("*/*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("operation"), str):
            walk((data.get("response") or {}).get("body"), found.setdefault(data["operation"], set()))
    return found


def undocumented_fields(register: Register, fixtures: Mapping[str, set[str]]) -> list[str]:
    """'<operation>: <field>' for each response field the client reads that neither a source of its entry
    quotes, nor a Microsoft-published answer of that operation carries, nor `fields_inferred` explains.
    Dataverse names compare without case (a column's logical name is its schema name in lower case);
    other services' JSON keys are case-sensitive (Partner Center's jobId / jobID)."""
    missing = []
    for op in register.operations:
        if op.entry.get("inferred"):
            continue  # an inferred operation claims no documented answer; its reason is in the entry
        explained = {k for k, why in (op.entry.get("fields_inferred") or {}).items() if str(why).strip()}
        known = quoted_names(op.entry) | fixtures.get(op.id, set())
        for group, spec in register.fixture_groups.items():
            if op.id in (spec.get("covers") or []):
                known |= fixtures.get(group, set())
        fold = (lambda name: name.lower()) if op.service == "dataverse" else (lambda name: name)
        known_folded = {fold(n) for n in known}
        for name in sorted(op.fields):
            if name not in explained and fold(field_leaf(name)) not in known_folded:
                missing.append(f"{op.id}: {name}")
    return missing
