"""SolutionImport: a managed solution installed in the organization (step 1 of the procedure).

Identity is the unique name + version read from the zip (local path, or an https URL pinned by
sha256 and downloaded once). Imports, upgrades, adopts the same version, refuses downgrades. A fresh
install runs under an import job id the stack derives, so a create retried after a crash knows the
solution it installed as its own (deleted on destroy) from one found installed before (released).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ReadResult, Resource, UpdateResult

from dynamics_provider.base import (
    DataverseResourceProvider,
    ResourceOperationError,
    clean,
    ensure_stderr_logging,
    is_unknown,
    log,
    need_bool,
    need_https_url,
    need_positive_int,
    new_revision,
    next_revision,
    owned_id,
    raise_errors,
    stack_owner,
    wait_until,
)
from dynamics_provider.errors import AmbiguousWriteError, DuplicateRecord, LeadDestinationError, NotFound

INPUTS = ("instance_url", "source_path", "source_url", "sha256", "allow_unmanaged", "import_timeout_seconds")
SOLUTION_FIELDS = ["solutionid", "uniquename", "version", "ismanaged"]
DEFAULT_TIMEOUT = 1200
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_VERSION = re.compile(r"^\d{1,9}(\.\d{1,9}){1,3}$")
_MAX_SOLUTION_XML = 5 * 1024 * 1024
_MAX_DOWNLOAD = 512 * 1024 * 1024
SUCCEEDED, FAILED, CANCELED = 30, 31, 32
PROGRESS_EVERY_SECONDS = 5.0  # import progress (the import job) is read and logged this often
_IMPORT_JOB_NAMESPACE = uuid.UUID("a5d1e7c3-2f84-4b69-8c0e-7b3f9d2a6e41")


def install_job_id(instance_url: str, unique_name: str, owner: str, n: int) -> str:
    """The n-th import job id stack `owner` uses to install `unique_name` into `instance_url`.

    ImportSolutionAsync takes the ImportJobId from the client, and import jobs outlive the solution
    (an uninstall keeps them), so the stack's installs of one solution in one organization use this
    series in turn. A solution whose latest import job is one of these was installed by the stack.
    """
    return owned_id(_IMPORT_JOB_NAMESPACE, instance_url, owner, unique_name, str(n))


class SolutionZipError(LeadDestinationError):
    """The solution zip cannot be read (not a zip, no solution.xml, malformed manifest)."""


@dataclass(frozen=True)
class Manifest:
    unique_name: str
    version: str
    managed: bool


def version_key(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def read_manifest(data: bytes) -> Manifest:
    """Unique name, version and managed flag from the zip's solution.xml (hardened XML parser)."""
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            try:
                info = zf.getinfo("solution.xml")
            except KeyError:
                raise SolutionZipError("the zip has no solution.xml at its root: not a solution export") from None
            if info.file_size > _MAX_SOLUTION_XML:
                raise SolutionZipError("solution.xml is implausibly large")
            xml = zf.read(info)
    except zipfile.BadZipFile:
        raise SolutionZipError("the file is not a zip archive") from None
    try:
        root = SafeET.fromstring(xml)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise SolutionZipError(f"solution.xml is not acceptable XML ({type(exc).__name__})") from None
    manifest = root.find("SolutionManifest")
    if root.tag != "ImportExportXml" or manifest is None:
        raise SolutionZipError("solution.xml lacks ImportExportXml/SolutionManifest")
    unique_name = (manifest.findtext("UniqueName") or "").strip()
    version = (manifest.findtext("Version") or "").strip()
    managed = (manifest.findtext("Managed") or "").strip()
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", unique_name):
        raise SolutionZipError(f"solution.xml has an invalid UniqueName {unique_name!r}")
    if not _VERSION.match(version):
        raise SolutionZipError(f"solution.xml has an invalid Version {version!r} (expected a.b.c.d)")
    if managed not in ("0", "1"):
        raise SolutionZipError(f"solution.xml has an invalid Managed flag {managed!r} (expected 0 or 1)")
    return Manifest(unique_name, version, managed == "1")


def cache_dir() -> Path:
    base = os.environ.get("LEAD_DESTINATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lead-destination"
    )
    return Path(base) / "solutions"


class SolutionImportProvider(DataverseResourceProvider):
    resource_type = "SolutionImport"
    replace_keys = ("instance_url", "unique_name")

    # -- check / diff --------------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = self.given(news, INPUTS)
        inputs.setdefault("allow_unmanaged", False)
        inputs.setdefault("import_timeout_seconds", DEFAULT_TIMEOUT)
        checks: dict[str, str | None] = {
            "instance_url": need_https_url(inputs.get("instance_url")),
            "allow_unmanaged": need_bool(inputs["allow_unmanaged"]),
            "import_timeout_seconds": need_positive_int(inputs["import_timeout_seconds"], 6 * 3600),
        }
        path, url, sha = inputs.get("source_path"), inputs.get("source_url"), inputs.get("sha256")
        if (path is None) == (url is None):
            checks["source_path"] = "give either source_path (a zip in the project) or source_url + sha256"
        elif url is not None:
            checks["source_url"] = need_https_url(url) and "expected an https URL of the solution zip"
            if not (isinstance(sha, str) and _SHA256.match(sha)):
                checks["sha256"] = "expected the zip's SHA-256 as 64 hex characters (pins the download)"
        elif self.known(inputs, "source_path") and not is_unknown(sha):
            checks["source_path"] = self._check_local(inputs)
        return self.checked(inputs, checks)

    def _check_local(self, inputs: dict[str, Any]) -> str | None:
        path = Path(inputs["source_path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"cannot read {path} (relative to the project directory): {exc.strerror or exc}"
        digest = hashlib.sha256(data).hexdigest()
        if inputs.get("sha256") and inputs["sha256"].lower() != digest:
            return f"{path} does not match the given sha256 (it has {digest})"
        try:
            manifest = read_manifest(data)
        except SolutionZipError as exc:
            return f"{path}: {exc}"
        if not manifest.managed and not inputs.get("allow_unmanaged"):
            return f"{path} is an unmanaged solution; set allow_unmanaged=True to import it anyway"
        inputs["sha256"] = digest  # a changed zip changes the inputs, so the engine calls diff/update
        return None

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        changed = self.diff_inputs(olds, news, INPUTS)
        manifest = self._manifest_offline(news)
        if manifest is not None:
            if manifest.unique_name != olds.get("unique_name"):
                changed.append("unique_name")
            if manifest.version != olds.get("version") or manifest.managed != olds.get("managed"):
                changed.append("version")  # upgrade, or drift (installed version differs)
        return self.diff_result(changed)

    def _manifest_offline(self, props: dict[str, Any]) -> Manifest | None:
        """The zip's manifest when it is available without network (local file or cached download)."""
        try:
            if self.known(props, "source_path"):
                return read_manifest(Path(props["source_path"]).read_bytes())
            if self.known(props, "sha256"):
                cached = cache_dir() / f"{props['sha256'].lower()}.zip"
                if cached.is_file():
                    return read_manifest(cached.read_bytes())
        except (OSError, SolutionZipError):
            return None
        return None

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        subject = inputs.get("source_path") or inputs.get("source_url")
        with self.operation("create", subject):
            data, digest = self._load(inputs)
            manifest = self._manifest(inputs, data)
            client = self.client(inputs["instance_url"])
            installed, running, jobs = self._installed_or_running(client, manifest.unique_name)
            # installed before this create: the stack's own only if the stack's import installed it (a
            # create retried after a crash); otherwise it existed before, is adopted and released on destroy
            adopted = installed is not None and not self._installed_by_this_stack(inputs, manifest, jobs)
            installed, _ = self._converge(client, inputs, data, manifest, installed, running, jobs)
        return CreateResult(installed["solutionid"],
                            self._outs(inputs, manifest, installed, digest, adopted, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"solution {state.get('unique_name')}"):
            client = self.client(state["instance_url"])
            installed = self._installed(client, state["unique_name"])
        if installed is None or installed["solutionid"].lower() != id_.lower():
            return ReadResult("", {})
        # version/managed as installed: a different version shows as drift in the next diff
        return ReadResult(id_, {**state, "version": installed["version"], "managed": bool(installed["ismanaged"])})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        with self.operation("update", f"solution {state.get('unique_name')}"):
            data, digest = self._load(inputs)
            manifest = self._manifest(inputs, data)
            client = self.client(inputs["instance_url"])
            installed, imported = self._converge(
                client, inputs, data, manifest, *self._installed_or_running(client, manifest.unique_name))
        # an import this stack never saw finish (its provider was killed) changed the solution all the same
        changed = imported or version_key(installed["version"]) != version_key(str(state.get("version") or "0"))
        return UpdateResult(self._outs(inputs, manifest, installed, digest, bool(state.get("adopted")),
                                       next_revision(state, changed)))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        if state.get("adopted"):
            return  # it was installed before this stack: leave it
        with self.operation("delete", f"solution {state.get('unique_name')}"):
            try:
                self.client(state["instance_url"]).delete("solutions", id_)
            except NotFound:
                pass

    # -- steps ---------------------------------------------------------------------------------

    def _load(self, inputs: dict[str, Any]) -> tuple[bytes, str]:
        if inputs.get("source_path"):
            data = Path(inputs["source_path"]).read_bytes()
            return data, hashlib.sha256(data).hexdigest()
        return self._download(inputs["source_url"], inputs["sha256"].lower()), inputs["sha256"].lower()

    def _download(self, url: str, sha256: str) -> bytes:
        """Download once into the cache (verified by sha256, written atomically)."""
        from urllib.parse import urlsplit

        import requests

        from dynamics_provider.hosts import is_loopback_host

        settings = self.settings
        if is_loopback_host(urlsplit(url).hostname or "") and not settings.allow_loopback:
            raise SolutionZipError("refusing to download from a loopback address without lead-destination:allowLoopback")
        target = cache_dir() / f"{sha256}.zip"
        if target.is_file():
            data = target.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
        ensure_stderr_logging()
        log.info("SolutionImport: downloading %s", url.split("?", 1)[0])
        with requests.get(url, stream=True, timeout=(10, 120), verify=settings.ca_bundle or True) as response:
            response.raise_for_status()
            digest, chunks, size = hashlib.sha256(), [], 0
            for chunk in response.iter_content(1 << 20):
                size += len(chunk)
                if size > _MAX_DOWNLOAD:
                    raise SolutionZipError("the download exceeds 512 MiB; refusing it")
                digest.update(chunk)
                chunks.append(chunk)
        if digest.hexdigest() != sha256:
            raise SolutionZipError(
                f"the downloaded file has sha256 {digest.hexdigest()}, not the pinned {sha256}; refusing it"
            )
        data = b"".join(chunks)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
        return data

    def _manifest(self, inputs: dict[str, Any], data: bytes) -> Manifest:
        manifest = read_manifest(data)
        if not manifest.managed and not inputs.get("allow_unmanaged"):
            raise self.refuse(
                "import", manifest.unique_name, "the zip is an unmanaged solution",
                "export the managed solution, or set allow_unmanaged=True if you really want it unmanaged",
            )
        return manifest

    @staticmethod
    def _installed(client: Any, unique_name: str) -> dict[str, Any] | None:
        from dynamics_provider.client import odata_string

        rows = client.query("solutions", select=SOLUTION_FIELDS, filter=f"uniquename eq {odata_string(unique_name)}")
        return rows[0] if rows else None

    @staticmethod
    def _installed_or_running(
        client: Any, unique_name: str
    ) -> tuple[dict[str, Any] | None, str | None, list[dict[str, Any]]]:
        """The installed solution, the id of an import of it still running and its import jobs, in one request.

        A running import is one a `pulumi up` started and never saw finish (its provider was killed,
        or its answer was lost): waiting for it, instead of importing again, is the crash-recovery path.
        """
        from dynamics_provider.client import odata_path, odata_string

        name = odata_string(unique_name)
        solutions, jobs = raise_errors(client.batch_get([
            odata_path("solutions", {"$select": ",".join(SOLUTION_FIELDS),
                                     "$filter": f"uniquename eq {name}"}),
            odata_path("importjobs", {"$select": "importjobid,startedon,completedon",
                                      "$filter": f"solutionname eq {name}"}),
        ]))
        rows = solutions.get("value") or []
        every = sorted(jobs.get("value") or [], key=lambda job: job.get("startedon") or "")
        running = [job for job in every if not job.get("completedon")]
        return (rows[0] if rows else None), (running[-1]["importjobid"] if running else None), every

    def _installed_by_this_stack(self, inputs: dict[str, Any], manifest: Manifest, jobs: list[dict[str, Any]]) -> bool:
        """Whether the latest import job of the solution (`jobs` by start) is one of the stack's installs."""
        if not jobs:
            return False
        ours = {install_job_id(inputs["instance_url"], manifest.unique_name, self.owner, n) for n in range(len(jobs))}
        return str(jobs[-1].get("importjobid", "")).lower() in ours

    def _next_install_job(self, inputs: dict[str, Any], manifest: Manifest, jobs: list[dict[str, Any]]) -> str:
        """The first id of the stack's install series that no import job of the solution has."""
        taken = {str(job.get("importjobid", "")).lower() for job in jobs}
        series = (install_job_id(inputs["instance_url"], manifest.unique_name, self.owner, n)
                  for n in range(len(jobs) + 1))
        return next(job_id for job_id in series if job_id not in taken)

    def _converge(
        self, client: Any, inputs: dict[str, Any], data: bytes, manifest: Manifest, installed: dict | None,
        running: str | None = None, jobs: list[dict[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Import or upgrade as needed; (the installed solution, whether it imported). A fresh install
        runs under the next id of the stack's series (`jobs`: the solution's import jobs)."""
        timeout = int(inputs.get("import_timeout_seconds") or DEFAULT_TIMEOUT)
        if running:
            log.info("SolutionImport: import job %s of %s is still running; waiting for it", running,
                     manifest.unique_name)
            wait_until(lambda: (self._job(client, running) or {"completedon": "gone"}).get("completedon"),
                       timeout=timeout, what=f"the running import of {manifest.unique_name}", first_delay=0.5)
            installed = self._installed(client, manifest.unique_name)
            if installed is not None and version_key(installed["version"]) == version_key(manifest.version):
                return installed, True  # that import installed what is wanted
        if installed is None:
            action = "ImportSolutionAsync"
        else:
            have, want = version_key(installed["version"]), version_key(manifest.version)
            if have == want:
                return installed, False  # same version: adopt without importing
            if have > want:
                raise self.refuse(
                    "import", manifest.unique_name,
                    f"version {installed['version']} is installed and the zip has {manifest.version}; "
                    "Dataverse cannot downgrade a solution",
                    "use a zip of version ≥ the installed one, or uninstall the solution first",
                )
            action = "StageAndUpgradeAsync"
        job_id = self._next_install_job(inputs, manifest, jobs or []) if installed is None else None
        self._import(client, action, data, manifest, timeout, job_id)
        if installed is not None:
            # an upgrade keeps the solution's id and the finished job proved the version: no read needed
            return {**installed, "version": manifest.version, "ismanaged": manifest.managed}, True
        result = self._installed(client, manifest.unique_name)  # the new solution's id
        if result is None or version_key(result["version"]) != version_key(manifest.version):
            raise self.refuse(
                "import", manifest.unique_name, "the import job finished but the solution is not installed at "
                f"version {manifest.version}", "check Settings → Solutions → Solution History",
            )
        return result, True

    def _import(self, client: Any, action: str, data: bytes, manifest: Manifest, timeout: int,
                job_id: str | None = None) -> None:
        ensure_stderr_logging()
        job_id = job_id or str(uuid.uuid4())
        body = {
            "OverwriteUnmanagedCustomizations": False,
            "PublishWorkflows": True,
            "CustomizationFile": base64.b64encode(data).decode("ascii"),
            "ImportJobId": job_id,
        }
        what = f"{manifest.unique_name} {manifest.version}"
        log.info("SolutionImport: %s of %s started (import job %s)", action, what, job_id)
        try:
            answer = client.action(action, body) or {}
            operation_id = answer.get("AsyncOperationId")
        except AmbiguousWriteError as exc:
            # The request may have started an import: its import job (our id) tells, once it exists.
            if client.settle(lambda: self._job(client, job_id), exc) is None:
                log.info("SolutionImport: no import job %s after an unanswered request; sending again", job_id)
                return self._import(client, action, data, manifest, timeout, job_id)
            operation_id = None
        except DuplicateRecord:
            # the import job exists already: an earlier send of this very request landed late
            if self._job(client, job_id) is None:
                raise
            operation_id = None

        progress_seen: list[float] = []
        next_progress = [time.monotonic() + PROGRESS_EVERY_SECONDS]

        def progress(job: dict[str, Any]) -> None:
            value = job.get("progress")
            if value is not None and (not progress_seen or value != progress_seen[-1]):
                progress_seen.append(value)
                log.info("SolutionImport: %s %.0f%%", what, float(value))

        def finished() -> dict[str, Any] | None:
            # The system job says when it is done (one read a poll); the import job is read for
            # progress every few seconds, and at the end only when its text is needed.
            if not operation_id:
                job = self._job(client, job_id) or {}
                progress(job)
                return {"op": None, "job": job} if job.get("completedon") else None
            if time.monotonic() >= next_progress[0]:
                next_progress[0] = time.monotonic() + PROGRESS_EVERY_SECONDS
                progress(self._job(client, job_id) or {})
            op = client.get(f"asyncoperations({operation_id})",
                            {"$select": "statecode,statuscode,message,friendlymessage"})
            return {"op": op, "job": None} if op.get("statecode") == 3 else None

        # An import just started is never done: the first look is after 0.25 s, then each wait 1.15× the
        # last (capped at 5 s), so the finish is noticed within ~15 % of the time waited so far; one
        # read a poll keeps that cheap (a 3-minute import: ~50 polls; Dataverse allows 6000 / 5 min).
        done = wait_until(finished, timeout=timeout, what=f"the import of {what}", first_delay=0.25,
                          max_delay=5.0, factor=1.15, probe_at_once=False)
        op, job = done["op"], done["job"]
        if op is not None and op.get("statuscode") == SUCCEEDED:
            log.info("SolutionImport: %s imported", what)
            return None
        if job is None:
            job = self._job(client, job_id) or {}  # the failure's text is in the import job
        error = self._job_error(job) or (op or {}).get("friendlymessage") or (op or {}).get("message")
        if op is None and error is None:
            return None  # job completed without a failure result
        status = {FAILED: "failed", CANCELED: "was canceled"}.get((op or {}).get("statuscode"), "failed")
        raise ResourceOperationError(
            f"SolutionImport import of {what} {status}: {error or 'no error text'}",
            hint="fix the cause named by the import job (missing dependency, newer version installed, …) and "
            "run `pulumi up` again",
        )

    @staticmethod
    def _job(client: Any, job_id: str) -> dict[str, Any] | None:
        try:
            return client.get(f"importjobs({job_id})", {"$select": "progress,data,solutionname,completedon"})
        except NotFound:
            return None

    @staticmethod
    def _job_error(job: dict[str, Any]) -> str | None:
        import defusedxml.ElementTree as SafeET

        data = job.get("data")
        if not data:
            return None
        try:
            root = SafeET.fromstring(data)
        except Exception:  # noqa: BLE001 - any unreadable job data just means no detail
            return None
        for result in root.iter("result"):
            if result.get("result") == "failure":
                code = result.get("errorcode")
                return f"{result.get('errortext') or 'failure'}" + (f" ({code})" if code else "")
        return None

    @staticmethod
    def _outs(inputs: dict[str, Any], manifest: Manifest, installed: dict[str, Any], digest: str,
              adopted: bool, revision: str | None) -> dict[str, Any]:
        return {
            "instance_url": inputs.get("instance_url"),
            "source_path": inputs.get("source_path"),
            "source_url": inputs.get("source_url"),
            "allow_unmanaged": bool(inputs.get("allow_unmanaged")),
            "import_timeout_seconds": int(inputs.get("import_timeout_seconds") or DEFAULT_TIMEOUT),
            "unique_name": manifest.unique_name,
            "version": installed["version"],
            "solution_id": installed["solutionid"],
            "managed": bool(installed.get("ismanaged")),
            "sha256": digest,
            "adopted": adopted,
            "revision": revision,
        }


class SolutionImport(Resource, module="dynamics", name="SolutionImport"):
    """A managed Dataverse solution, imported (or upgraded) from a zip."""

    instance_url: pulumi.Output[str]
    source_path: pulumi.Output[str | None]
    source_url: pulumi.Output[str | None]
    allow_unmanaged: pulumi.Output[bool]
    import_timeout_seconds: pulumi.Output[int]
    unique_name: pulumi.Output[str]
    version: pulumi.Output[str]
    solution_id: pulumi.Output[str]
    managed: pulumi.Output[bool]
    sha256: pulumi.Output[str]
    adopted: pulumi.Output[bool]
    revision: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        instance_url: pulumi.Input[str],
        source_path: pulumi.Input[str] | None = None,
        source_url: pulumi.Input[str] | None = None,
        sha256: pulumi.Input[str] | None = None,
        allow_unmanaged: pulumi.Input[bool] = False,
        import_timeout_seconds: pulumi.Input[int] = DEFAULT_TIMEOUT,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "instance_url": instance_url,
            "source_path": source_path,
            "source_url": source_url,
            "sha256": sha256,
            "allow_unmanaged": allow_unmanaged,
            "import_timeout_seconds": import_timeout_seconds,
            "unique_name": None,
            "version": None,
            "solution_id": None,
            "managed": None,
            "adopted": None,
            "revision": None,
        }
        super().__init__(SolutionImportProvider(owner=stack_owner()), resource_name, props, opts)
