"""One Dataverse organization of the emulator: its lock, its seeded state (root business unit, the
System and Default solutions, System Administrator and Basic User roles, the deploying identity as an
application user), and its three entry points: a Web API request, the state dump and a drift.
"""

from __future__ import annotations

import threading
import uuid
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from sandbox.common import ADMIN_CLIENT_ID, Caller, SandboxSettings
from sandbox.dataverse import catalogue
from sandbox.dataverse.drift import Drift
from sandbox.dataverse.protocol import ODataError, Result
from sandbox.dataverse.roles import Roles
from sandbox.dataverse.routing import API_PREFIX, SERVER_VERSION, Router
from sandbox.dataverse.schema import now_iso
from sandbox.dataverse.security import Security
from sandbox.dataverse.solutions import SolutionImports
from sandbox.dataverse.store import Store
from sandbox.dataverse.tables import Tables
from sandbox.dataverse.users import Users
from sandbox.entra import Directory

SYSTEM_ADMINISTRATOR = "System Administrator"
# The built-in System Administrator role's template, "the same in every environment" (doc: Microsoft Learn,
# "Security roles and templates", power-apps/developer/data-platform/security-roles: SystemAdmin =
# {627090FF-40A3-4053-8790-584EDC5BE201}); the Web API reads it as the role's `_roletemplateid_value`.
SYSTEM_ADMINISTRATOR_TEMPLATE = "627090ff-40a3-4053-8790-584edc5be201"
_NS = uuid.UUID("9a3c1e0b-7d51-4f5a-8c3e-2b6d0f4e9a21")


def _id(*parts: str) -> str:
    """A stable id for a seeded row (the same in every run)."""
    return str(uuid.uuid5(_NS, "/".join(parts)))


class Organization:
    """One Dataverse organization. Thread-safe: every entry point takes the org's lock; async imports
    progress by elapsed time, evaluated at the next request (nothing sleeps under the lock)."""

    def __init__(self, name: str, instance_url: str, directory: Directory | None, settings: SandboxSettings):
        self.name = name
        self.instance_url = instance_url.rstrip("/")
        self.base = self.instance_url + API_PREFIX
        self.directory = directory
        self.settings = settings
        self.lock = threading.RLock()
        self.organization_id = _id("organization", name)
        self.store = Store()
        self.security = Security(self.store, self.organization_id, _id(name, "role", SYSTEM_ADMINISTRATOR))
        self.tables = Tables(self.store, self.security, self.base, settings)
        self.users = Users(self.store, self.security, directory, self.base)
        self.roles = Roles(self.store, self.security, self.base)
        self.solutions = SolutionImports(self.store, self.security, settings, self.base)
        self.router = Router(self.base, self.organization_id, self.tables, self.users, self.roles, self.solutions)
        self.drifts = Drift(self.store, self.tables, self.solutions)
        self._seed()

    def _seed(self) -> None:
        store, name = self.store, self.name
        root = store.add_business_unit(name, None, bu_id=_id(name, "root-bu"))
        for priv in catalogue.PRIVILEGES.values():
            store.rows["privileges"][priv.privilegeid] = priv.row()
        for uniquename, managed, version in (("Default", False, "1.0"), ("System", True, SERVER_VERSION)):
            sid = _id(name, "solution", uniquename)
            store.rows["solutions"][sid] = store.stamp({
                "solutionid": sid, "uniquename": uniquename, "friendlyname": f"{uniquename} Solution",
                "version": version, "ismanaged": managed, "installedon": now_iso(), "description": None,
                "isvisible": uniquename == "Default"}, created=True)
        system_solution = _id(name, "solution", "System")
        admin_role = store.create_role(SYSTEM_ADMINISTRATOR, _id(name, "role", SYSTEM_ADMINISTRATOR), True,
                                       system_solution)
        store.rows["roles"][admin_role]["_roletemplateid_value"] = SYSTEM_ADMINISTRATOR_TEMPLATE
        store.role_privileges[admin_role] = {p.privilegeid: p.deepest for p in catalogue.PRIVILEGES.values()}
        basic = store.create_role("Basic User", _id(name, "role", "Basic User"), True, system_solution)
        store.role_privileges[basic] = {
            catalogue.find(n).privilegeid: d for n, d in (
                ("prvReadAccount", "Basic"), ("prvReadContact", "Basic"), ("prvReadBusinessUnit", "Local"),
                ("prvReadUser", "Global"), ("prvReadUserEntityUISettings", "Basic"),
                ("prvCreateUserEntityUISettings", "Basic"), ("prvWriteUserEntityUISettings", "Basic"))}
        sp = self.directory.find_service_principal(ADMIN_CLIENT_ID) if self.directory else None
        admin_user = store.insert_user({
            "applicationid": ADMIN_CLIENT_ID,
            "azureactivedirectoryobjectid": (sp or {}).get("object_id") or _id("sp", ADMIN_CLIENT_ID),
            "firstname": "# Sandbox", "lastname": "Deployer",
            "internalemailaddress": "deployer@sandbox.invalid", "domainname": "deployer@sandbox.invalid",
            "accessmode": 4, "_businessunitid_value": root,
        }, user_id=_id(name, "user", ADMIN_CLIENT_ID))
        store.user_roles.add((admin_user, admin_role))

    # ----- entry points -------------------------------------------------------------------------
    def handle(self, request: Request, caller: Caller, subpath: str) -> Response:
        """Serve one `{instance_url}/api/data/v9.2/{subpath}` request as `caller`."""
        body = request.get_data()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self.lock:
            self.solutions.tick()
            status, out_headers, payload = self._serve(request.method, subpath, list(request.args.items(multi=True)),
                                                       headers, body, caller)
        resp = Response(payload, status=status)
        resp.headers["OData-Version"] = "4.0"
        for k, v in out_headers.items():
            resp.headers[k] = v
        if payload and "Content-Type" not in out_headers:
            resp.headers["Content-Type"] = "application/json; odata.metadata=minimal"
        elif not payload:
            resp.headers.pop("Content-Type", None)
        return resp

    def _serve(self, method: str, subpath: str, args: list[tuple[str, str]], headers: dict[str, str],
               body: bytes, caller: Caller) -> Result:
        try:
            principal = self.security.principal(caller)
            return self.router.route(method, unquote(subpath), args, headers, body, principal)
        except ODataError as err:
            return err.status, {}, err.envelope()

    def state(self) -> dict:
        """Everything the organization holds, for `GET /_control/orgs/{org}/state`."""
        with self.lock:
            self.solutions.tick()
            rows = self.store.rows
            roles = []
            for role in rows["roles"].values():
                privs = [{"name": catalogue.PRIVILEGES_BY_ID[p].name, "privilegeid": p, "depth": d}
                         for p, d in sorted(self.store.privileges_of_role(role).items(),
                                            key=lambda kv: catalogue.PRIVILEGES_BY_ID[kv[0]].name)]
                roles.append({**role, "privileges": privs})
            return {
                "organizationid": self.organization_id, "name": self.name, "instance_url": self.instance_url,
                "businessunits": list(rows["businessunits"].values()),
                "systemusers": list(rows["systemusers"].values()),
                "roles": roles,
                "assignments": [{"systemuserid": u, "roleid": r} for u, r in sorted(self.store.user_roles)],
                "solutions": list(rows["solutions"].values()),
                "leads": list(rows["leads"].values()),
                "asyncoperations": list(rows["asyncoperations"].values()),
                "importjobs": list(rows["importjobs"].values()),
            }

    def drift(self, action: str, params: dict) -> dict:
        """Edits a person would make in the Dynamics UI (no privilege checks, no HTTP)."""
        with self.lock:
            self.solutions.tick()
            try:
                return self.drifts.apply(action, params or {})
            except KeyError as exc:
                raise ValueError(f"drift {action}: missing or unknown {exc}") from None
            except ODataError as exc:  # e.g. an unknown user or business unit: the control API answers 400
                raise ValueError(f"drift {action}: {exc.message}") from None
