"""Solutions of the Dataverse emulator: ImportSolutionAsync / StageAndUpgradeAsync / ImportSolution,
asyncoperations and importjobs that progress with elapsed time, the import rules (downgrade, managed
mismatch, missing dependency, armed fault), uninstall and DELETE of a solution.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from sandbox.common import SandboxSettings
from sandbox.dataverse import catalogue
from sandbox.dataverse.operations import check_action_parameters
from sandbox.dataverse.protocol import (
    E_BAD_ZIP,
    E_IMPORT_GENERIC,
    E_IMPORT_SOLUTION,
    E_INVALID_PRIVILEGE,
    E_MANAGED_OVER_UNMANAGED,
    E_MISSING_DEPENDENCIES,
    E_UNMANAGED_OVER_MANAGED,
    E_VERSION_NOT_HIGHER,
    ODataError,
    Result,
    bad_request,
    duplicate,
    json_result,
)
from sandbox.dataverse.schema import now_iso, parse_guid
from sandbox.dataverse.security import Principal, Security
from sandbox.dataverse.store import Store
from sandbox.solution_zip import SolutionManifest, parse_solution_zip, version_tuple

ASYNC_REQUEST = 54  # asyncoperation OperationType "Execute Async Request"
# (statecode, statuscode) pairs of a running system job, from the asyncoperation StatusCode table (Learn:
# reference/entities/asyncoperation): 0 Ready / 0 Waiting For Resources, 2 Locked / 20 In Progress
WAITING, IN_PROGRESS = (0, 0), (2, 20)


@dataclass
class ImportTask:
    asyncoperationid: str
    importjobid: str
    upgrade: bool
    manifest: SolutionManifest | None
    parse_error: str | None
    started: float
    duration: float
    owner: str


class _ImportFailure(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code = code


class SolutionImports:
    """Solution imports (async jobs advanced by elapsed time at each request) and uninstall of one organization."""

    def __init__(self, store: Store, security: Security, settings: SandboxSettings, base: str) -> None:
        self.store = store
        self.security = security
        self.settings = settings
        self.base = base
        self.tasks: dict[str, ImportTask] = {}
        self.armed_import_failure: str | None = None  # the fail_next_import drift

    def import_solution(self, action: str, body: dict, pr: Principal) -> Result:
        self.security.require(pr, "prvImportCustomization", "Global")
        check_action_parameters(action, body)
        for required in ("CustomizationFile", "OverwriteUnmanagedCustomizations", "PublishWorkflows"):
            if required not in body:
                raise bad_request(f"The parameter '{required}' is required for the operation '{action}'.")
        try:
            data = base64.b64decode(str(body["CustomizationFile"]), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("CustomizationFile is not valid base64.") from None
        import_job = parse_guid(str(body["ImportJobId"])) if body.get("ImportJobId") else str(uuid.uuid4())
        if import_job in self.store.rows["importjobs"]:
            raise duplicate(f"importjob {import_job}.")
        manifest, error = None, None
        try:
            manifest = parse_solution_zip(data)
        except ValueError as exc:
            error = str(exc)
        async_id = str(uuid.uuid4())
        duration = max(0.0, float(self.settings.import_seconds))
        owner = pr.user["systemuserid"]
        now = now_iso()
        self.store.rows["asyncoperations"][async_id] = self.store.stamp({
            # operationtype 54 "Execute Async Request" (Learn: reference/entities/asyncoperation, OperationType),
            # as the ImportSolutionAsync job Microsoft's Terraform provider recorded (contract/fixtures/
            # terraform-provider-power-platform/get-async-operation-succeeded.json); 202 is "Export Solution
            # Async Operation". StageAndUpgradeAsync's: the same (inferred, no recording).
            # name "ImportSolution" as recorded for an ImportSolutionAsync job; a StageAndUpgradeAsync's inferred
            "asyncoperationid": async_id, "name": action.removesuffix("Async"), "messagename": action,
            "operationtype": ASYNC_REQUEST,
            "statecode": 0, "statuscode": 0, "message": None, "friendlymessage": None,
            "startedon": now, "completedon": None, "_ownerid_value": owner, "correlationid": str(uuid.uuid4())},
            created=True)
        self.store.rows["importjobs"][import_job] = self.store.stamp({
            "importjobid": import_job, "progress": 0.0, "data": None,
            "solutionname": manifest.unique_name if manifest else None, "startedon": now, "completedon": None,
            "_solutionid_value": None, "name": "Customizations", "_ownerid_value": owner}, created=True)
        task = ImportTask(async_id, import_job, action == "StageAndUpgradeAsync", manifest, error, time.monotonic(),
                          duration, owner)
        self.tasks[async_id] = task
        if action == "ImportSolution":  # synchronous: finish now, failure is the response
            task.duration = 0.0
            self.tick()
            op = self.store.rows["asyncoperations"][async_id]
            if op["statuscode"] != 30:
                raise ODataError(400, E_IMPORT_SOLUTION, op["message"])
            return 204, {}, b""
        if duration == 0:
            self.tick()
        return json_result({"@odata.context": f"{self.base}$metadata#Microsoft.Dynamics.CRM.{action}Response",
                            "AsyncOperationId": async_id, "ImportJobKey": import_job})

    def tick(self) -> None:
        """Advance every pending import by elapsed time; finish those whose time is up."""
        now = time.monotonic()
        for async_id, task in list(self.tasks.items()):
            op = self.store.rows["asyncoperations"][async_id]
            job = self.store.rows["importjobs"][task.importjobid]
            elapsed = now - task.started
            if elapsed >= task.duration:
                del self.tasks[async_id]
                self._finish(task, op, job)
                continue
            fraction = elapsed / task.duration if task.duration else 1.0
            state = WAITING if fraction < 0.1 else IN_PROGRESS
            progress = round(min(99.0, fraction * 100.0), 2)
            if (op["statecode"], op["statuscode"]) != state:
                op["statecode"], op["statuscode"] = state
                self.store.stamp(op)
            if job["progress"] != progress:
                job["progress"] = progress
                self.store.stamp(job)

    def _finish(self, task: ImportTask, op: dict, job: dict) -> None:
        try:
            solution_id = self._apply(task)
            result, code, text = "success", "0", ""
        except _ImportFailure as failure:
            solution_id, result, code, text = None, "failure", failure.code, str(failure)
        now = now_iso()
        m = task.manifest
        op.update({"statecode": 3, "statuscode": 30 if result == "success" else 31, "completedon": now,
                   "message": text or None, "friendlymessage": text or None})
        self.store.stamp(op)
        manifest_attrs = (f' languagecode="1033" id={quoteattr(m.unique_name)} version={quoteattr(m.version)}'
                          if m else ' languagecode="1033"')
        unique = f"<UniqueName>{m.unique_name}</UniqueName>" if m else ""
        job.update({"progress": 100.0, "completedon": now, "_solutionid_value": solution_id, "data": (
            f'<importexportxml start="{job["startedon"]}" stop="{now}" progress="100" processed="true">'
            f"<solutionManifests><solutionManifest{manifest_attrs}>{unique}"
            f"<result result={quoteattr(result)} errorcode={quoteattr(code)} errortext={quoteattr(text)} "
            f'datetime="{now}" /></solutionManifest></solutionManifests></importexportxml>')})
        self.store.stamp(job)

    def _apply(self, task: ImportTask) -> str:
        if task.parse_error is not None:
            # the text after Microsoft's ImportCustomizationsBadZipFileError sentence is the sandbox's (inferred)
            raise _ImportFailure(E_BAD_ZIP, "The solution file is invalid. The compressed file must contain the "
                                 "following files at its root: solution.xml, customizations.xml, and "
                                 f"[Content_Types].xml. ({task.parse_error})")
        if self.armed_import_failure is not None:  # a drift: whatever text the test armed, under the generic code
            text, self.armed_import_failure = self.armed_import_failure, None
            raise _ImportFailure(E_IMPORT_GENERIC, text)
        m = task.manifest
        existing = next((s for s in self.store.rows["solutions"].values()
                         if s["uniquename"].casefold() == m.unique_name.casefold()), None)
        for role in m.roles:
            for p in role["privileges"]:
                priv = catalogue.find(p["name"] or "")
                if priv is None:  # a privilege of an entity the org lacks: a missing dependency
                    # Microsoft's ImportMissingDependenciesError sentence; the named privilege is the sandbox's
                    raise _ImportFailure(E_MISSING_DEPENDENCIES, f"The following solution cannot be imported: "
                                         f"{m.unique_name}. Some dependencies are missing. (The privilege "
                                         f"{p['name']} of role {role['name']} does not exist in this organization.)")
                if not priv.allows(p["level"]):  # inferred: which code a refused depth in a role gets on import
                    raise _ImportFailure(E_INVALID_PRIVILEGE, "The privilege to be imported is invalid: depth "
                                         f"{p['level']} is not valid for privilege {priv.name} of role {role['name']}.")
        if existing is not None:
            if existing["ismanaged"] and not m.managed:
                raise _ImportFailure(E_UNMANAGED_OVER_MANAGED, "The solution is already installed on this system as "
                                     "a managed solution and the package supplied is attempting to install it in "
                                     "unmanaged mode. Import can only update solutions when the modes match. "
                                     "Uninstall the current solution and try again.")
            if not existing["ismanaged"] and m.managed:
                raise _ImportFailure(E_MANAGED_OVER_UNMANAGED, "The solution is already installed on this system as "
                                     "an unmanaged solution and the package supplied is attempting to install it in "
                                     "managed mode. Import can only update solutions when the modes match. "
                                     "Uninstall the current solution and try again.")
            old, new = version_tuple(existing["version"]), version_tuple(m.version)
            if new < old or (task.upgrade and new == old):
                # The code and message of Microsoft's support article (docs/sandbox.md) (stated for an upgrade; inferred for a plain import of a lower
                # version too); the versions after it are the sandbox's addition
                raise _ImportFailure(E_VERSION_NOT_HIGHER, "The import solution must have a higher version than "
                                     f"the existing solution it is upgrading. ({m.unique_name}: importing "
                                     f"{m.version}, installed {existing['version']})")
        elif task.upgrade:  # inferred wording under the documented ImportSolutionError code
            raise _ImportFailure(E_IMPORT_SOLUTION, f"Solution '{m.unique_name}' is not installed, so it cannot be "
                                 "upgraded. Import it first.")
        if existing is None:
            sid = str(uuid.uuid4())
            existing = self.store.rows["solutions"][sid] = self.store.stamp({
                "solutionid": sid, "uniquename": m.unique_name, "friendlyname": m.unique_name,
                "version": m.version, "ismanaged": m.managed, "installedon": now_iso(), "description": None,
                "isvisible": True}, created=True)
        else:
            existing["version"] = m.version
            self.store.stamp(existing)
        sid = existing["solutionid"]
        declared = {r["id"] for r in m.roles}
        if task.upgrade:  # a stage-and-upgrade deletes the components the new version no longer has
            for role_id in [r for r, row in self.store.rows["roles"].items()
                            if row["solutionid"] == sid and row["_parentroleid_value"] is None
                            and r not in declared]:
                self.store.delete_role(role_id)
        for role in m.roles:
            if role["id"] not in self.store.rows["roles"]:
                self.store.create_role(role["name"], role["id"], m.managed, sid)
            # Inferred: an import sets the depths it declares and keeps privileges added in the org.
            privs = self.store.role_privileges.setdefault(role["id"], {})
            for p in role["privileges"]:
                privs[catalogue.find(p["name"]).privilegeid] = p["level"]
        return sid

    def uninstall(self, solution_id: str) -> None:
        for rid in [r for r, row in self.store.rows["roles"].items()
                    if row["solutionid"] == solution_id and row["_parentroleid_value"] is None]:
            self.store.delete_role(rid)
        del self.store.rows["solutions"][solution_id]

    def delete(self, solution_id: str, pr: Principal) -> Result:
        """DELETE solutions(id): uninstall, with its roles (system solutions cannot be deleted)."""
        row = self.store.get("solutions", solution_id)
        self.security.require(pr, "prvDeleteSolution", "Global")
        self.security.require(pr, "prvImportCustomization", "Global")
        if row["uniquename"] in ("Default", "System"):
            raise bad_request(f"The solution {row['uniquename']} is a system solution and cannot be deleted.")
        self.uninstall(solution_id)
        return 204, {}, b""
