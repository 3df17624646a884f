"""Solutions: the installed solution by unique name, an import of it still running, starting an import
or an upgrade (ImportSolutionAsync / StageAndUpgradeAsync), following it to the end, uninstalling.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynamics_provider.client import DataverseClient, odata_guid, odata_path, odata_string
from dynamics_provider.dataverse.writes import batch, first, get_or_none, send_once
from dynamics_provider.errors import DuplicateRecord, LeadDestinationError, NotFound, UnexpectedAnswer

log = logging.getLogger("dynamics_provider")

SOLUTION_COLUMNS = ("solutionid", "uniquename", "version", "ismanaged")
IMPORT = "ImportSolutionAsync"  # a new solution, or the same version again (an update in place)
UPGRADE = "StageAndUpgradeAsync"  # a higher version of an installed one
SUCCEEDED, FAILED, CANCELED = 30, 31, 32  # asyncoperation status codes
COMPLETED = 3  # asyncoperation state code
PROGRESS_EVERY_SECONDS = 5.0  # import progress (the import job) is read and logged this often


@dataclass(frozen=True)
class Solution:
    id: str
    unique_name: str
    version: str
    managed: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Solution:
        return cls(str(row["solutionid"]).lower(), row["uniquename"], row["version"], bool(row.get("ismanaged")))


class SolutionImportFailed(LeadDestinationError):
    """The import job ended without installing the solution; the message quotes its error text."""


def version_key(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def _solution_filter(unique_name: str) -> str:
    return f"uniquename eq {odata_string(unique_name)}"


def installed_solution(client: DataverseClient, unique_name: str) -> Solution | None:
    rows = client.query("solutions", select=SOLUTION_COLUMNS, filter=_solution_filter(unique_name))
    return Solution.from_row(rows[0]) if rows else None


def installed_and_running(
    client: DataverseClient, unique_name: str
) -> tuple[Solution | None, str | None, list[str]]:
    """The installed solution, the id of an import of it still running, and the ids (lower case, oldest
    start first) of all its import jobs, in one request.

    A running import is one a `pulumi up` started and never saw finish (its provider was killed, or its
    answer was lost): waiting for it, instead of importing again, is the crash-recovery path. Import jobs
    outlive the solution (an uninstall keeps them); their ids tell who installed it (docs/architecture.md,
    "Ownership ids").
    """
    name = odata_string(unique_name)
    solutions, jobs = batch(client, [
        odata_path("solutions", {"$select": ",".join(SOLUTION_COLUMNS), "$filter": _solution_filter(unique_name)}),
        odata_path("importjobs", {"$select": "importjobid,startedon,completedon",
                                  "$filter": f"solutionname eq {name}"}),
    ])
    row = first(solutions)
    every = sorted(jobs.get("value") or [], key=lambda job: job.get("startedon") or "")
    running = [job for job in every if not job.get("completedon")]
    return ((Solution.from_row(row) if row else None), (running[-1]["importjobid"] if running else None),
            [str(job["importjobid"]).lower() for job in every])


def import_job(client: DataverseClient, job_id: str) -> dict[str, Any] | None:
    return get_or_none(client, f"importjobs({odata_guid(job_id)})", ["progress", "data", "solutionname", "completedon"])


def wait_for_running_import(client: DataverseClient, job_id: str, *, timeout: float, what: str) -> None:
    from dynamics_provider.waiting import wait_until

    wait_until(lambda: (import_job(client, job_id) or {"completedon": "gone"}).get("completedon"),
               timeout=timeout, what=f"the running import of {what}", first_delay=0.5)


def start_import(client: DataverseClient, action: str, data: bytes, job_id: str) -> str | None:
    """Send the import under import job `job_id`; the id of its system job (None when the answer was lost
    but the import job exists: then the import job is followed instead). The import job id is the caller's,
    so a lost answer is settled by it and a resend (the write policy) reuses it; a duplicate answered to the
    first send means an earlier send of this very id landed late (the caller's ids are its own), and that
    import is followed."""
    body = {
        "OverwriteUnmanagedCustomizations": False,
        "PublishWorkflows": True,
        "CustomizationFile": base64.b64encode(data).decode("ascii"),
        "ImportJobId": job_id,
    }

    def send() -> dict[str, Any]:
        return client.action(action, body) or {}

    def find() -> dict[str, Any] | None:
        return {} if import_job(client, job_id) is not None else None

    try:
        return send_once(client, send, find, what=f"import job {job_id}").get("AsyncOperationId")
    except DuplicateRecord:
        if import_job(client, job_id) is None:
            raise
        return None


def follow_import(
    client: DataverseClient, job_id: str, operation_id: str | None, *, timeout: float, what: str,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Wait for the import to end; SolutionImportFailed with the import job's error text if it failed.

    The system job says when it is done (one read a poll); the import job is read for progress every few
    seconds, and at the end only when its text is needed. Without a system job id, the import job is
    followed. An import just started is never done: the first look is after 0.25 s, then each wait 1.15×
    the last (capped at 5 s), so the finish is noticed within ~15 % of the time waited so far; one read a
    poll keeps that cheap (a 3-minute import: ~50 polls; Dataverse allows 6000 / 5 min).
    """
    from dynamics_provider.waiting import wait_until

    seen: list[float] = []
    next_progress = [time.monotonic() + PROGRESS_EVERY_SECONDS]

    def report(job: dict[str, Any]) -> None:
        value = job.get("progress")
        if value is not None and (not seen or value != seen[-1]):
            seen.append(value)
            if progress is not None:
                progress(float(value))

    def finished() -> dict[str, Any] | None:
        if not operation_id:
            job = import_job(client, job_id) or {}
            report(job)
            return {"op": None, "job": job} if job.get("completedon") else None
        if time.monotonic() >= next_progress[0]:
            next_progress[0] = time.monotonic() + PROGRESS_EVERY_SECONDS
            report(import_job(client, job_id) or {})
        op = client.get(f"asyncoperations({odata_guid(operation_id)})",
                        {"$select": "statecode,statuscode,message,friendlymessage"})
        return {"op": op, "job": None} if op.get("statecode") == COMPLETED else None

    done = wait_until(finished, timeout=timeout, what=f"the import of {what}", first_delay=0.25,
                      max_delay=5.0, factor=1.15, probe_at_once=False)
    op, job = done["op"], done["job"]
    if op is not None and op.get("statuscode") == SUCCEEDED:
        return
    if job is None:
        job = import_job(client, job_id) or {}  # the failure's text is in the import job
    verdict, detail = job_outcome(job)
    if op is None and verdict == "success":
        return  # followed by its import job alone: it completed with a success result
    if op is None and verdict == "unknown":
        raise UnexpectedAnswer(f"import of {what}", f"the import job completed, but its outcome cannot be read "
                               f"({detail})", path=f"importjobs({job_id})")
    error = (detail if verdict == "failure" else None) or (op or {}).get("friendlymessage") or (op or {}).get("message")
    status = {FAILED: "failed", CANCELED: "was canceled"}.get((op or {}).get("statuscode") or FAILED, "failed")
    raise SolutionImportFailed(
        f"import of {what} {status}: {error or 'no error text'}",
        hint="fix the cause named by the import job (missing dependency, newer version installed, …) and "
        "run `pulumi up` again",
    )


def job_outcome(job: dict[str, Any]) -> tuple[str, str | None]:
    """("success" | "failure" | "unknown", failure text) from an import job's `data` XML.

    Microsoft documents `data` only as the job's XML (importjob: "Unformatted import job data"), not its
    shape. Read: any `result` element (any case, any namespace) whose result attribute is failure / failed /
    error is a failure, its errortext and errorcode (any case) the text; results that all say success are a
    success; no data, XML that does not parse, or no result element at all is "unknown" with what was missing.
    """
    import defusedxml.ElementTree as SafeET

    data = job.get("data")
    if not data:
        return "unknown", "the import job has no result data"
    try:
        root = SafeET.fromstring(data)
    except Exception:  # noqa: BLE001 - defusedxml raises several kinds; any of them means "not readable XML"
        return "unknown", "the import job's result data is not readable XML"
    outcomes: list[tuple[str, str | None]] = []
    for element in root.iter():
        if str(element.tag).rsplit("}", 1)[-1].lower() != "result":
            continue
        attrs = {key.rsplit("}", 1)[-1].lower(): value for key, value in element.attrib.items()}
        verdict = (attrs.get("result") or "").strip().lower()
        if verdict in ("failure", "failed", "error"):
            code = attrs.get("errorcode")
            outcomes.append(("failure", (attrs.get("errortext") or "failure") + (f" ({code})" if code else "")))
        elif verdict in ("success", "succeeded"):
            outcomes.append(("success", None))
    failures = [text for verdict, text in outcomes if verdict == "failure"]
    if failures:
        return "failure", failures[0]
    if outcomes:
        return "success", None
    return "unknown", "the import job's result data has no result element"


def job_error(job: dict[str, Any]) -> str | None:
    """The failure text of an import job's result XML, or None."""
    verdict, text = job_outcome(job)
    return text if verdict == "failure" else None


def uninstall_solution(client: DataverseClient, solution_id: str) -> None:
    """Delete (uninstall) the solution; one that is gone already counts as done."""
    try:
        client.delete("solutions", solution_id)
    except NotFound:
        return
