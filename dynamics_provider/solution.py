"""SolutionImport: a managed solution installed in the organization (procedure step 1, docs/architecture.md).

Identity is the unique name + version read from the zip (local path, or an https URL pinned by sha256
and downloaded once). Imports, upgrades, re-imports changed bytes of the same version in place, adopts
what someone else installed already (and leaves it installed on destroy), refuses downgrades. A fresh
install runs under an import job id the stack derives, so a create retried after a crash knows the
solution it installed as its own (deleted on destroy) from one found installed before (released).
"""

from __future__ import annotations

import hashlib
import uuid
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
    new_revision,
    next_revision,
    owned_id,
    stack_owner,
    tell,
)
from dynamics_provider.checks import (
    need_bool,
    need_https_url,
    need_positive_int,
)
from dynamics_provider.client import DataverseClient
from dynamics_provider.config_schema import hint_for_input
from dynamics_provider.dataverse import solutions as api
from dynamics_provider.dataverse.solutions import Solution, version_key
from dynamics_provider.solution_source import (
    SHA256_RE,
    Manifest,
    SolutionZipError,
    cached,
    download,
    read_manifest,
)

INPUTS = ("instance_url", "source_path", "source_url", "sha256", "allow_unmanaged", "import_timeout_seconds")
DEFAULT_TIMEOUT = 1200
_IMPORT_JOB_NAMESPACE = uuid.UUID("a5d1e7c3-2f84-4b69-8c0e-7b3f9d2a6e41")  # permanent: ids stored in Dataverse
SAME_VERSION_NOTE = ("an import of the same version updates the solution in place: components the zip no "
                     "longer has stay; raise the version in solution.xml for an upgrade that removes them")


def install_job_id(instance_url: str, unique_name: str, owner: str, n: int) -> str:
    """The n-th import job id stack `owner` uses to install `unique_name` into `instance_url`.

    ImportSolutionAsync takes the ImportJobId from the client, and import jobs outlive the solution
    (an uninstall keeps them), so the stack's installs of one solution in one organization use this
    series in turn. A solution whose latest import job is one of these was installed by the stack.
    """
    return owned_id(_IMPORT_JOB_NAMESPACE, instance_url, owner, unique_name, str(n))


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
            if not (isinstance(sha, str) and SHA256_RE.match(sha)):
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
            return (f"{path} is an unmanaged solution; export the managed one, or set "
                    f"{hint_for_input('SolutionImport', 'allow_unmanaged', 'true')} to import it anyway")
        inputs["sha256"] = digest  # a changed zip changes the inputs, so the engine calls diff/update
        return None

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = clean(olds), clean(news)
        changed = self.diff_inputs(olds, news, INPUTS)
        manifest = self._manifest_offline(news)
        if manifest is not None:
            if manifest.unique_name != olds.get("unique_name"):
                changed.append("unique_name")
            elif olds.get("version") and version_key(manifest.version) < version_key(str(olds["version"])):
                # refused here, so `pulumi preview` says so, instead of planning an update that `up` refuses
                raise self._downgrade(manifest, str(olds["version"]))
            elif manifest.version != olds.get("version") or manifest.managed != olds.get("managed"):
                changed.append("version")  # upgrade, or drift (installed version differs)
            elif self._same_version_changed(olds, news):
                tell(f"SolutionImport {manifest.unique_name}: the zip differs from the one installed at the same "
                     f"version {manifest.version}; `pulumi up` imports it again ({SAME_VERSION_NOTE})")
        return self.diff_result(changed)

    def _downgrade(self, manifest: Manifest, installed: str) -> ResourceOperationError:
        return self.refuse(
            "import", manifest.unique_name,
            f"version {installed} is installed and the zip has {manifest.version}; Dataverse cannot downgrade a solution",
            "use a zip of version ≥ the installed one, or uninstall the solution first (then `pulumi up --refresh`)",
        )

    @staticmethod
    def _same_version_changed(olds: dict[str, Any], inputs: dict[str, Any]) -> bool:
        """Different bytes than the ones this stack installed or adopted (both digests known)."""
        new, old = inputs.get("sha256"), olds.get("sha256")
        return isinstance(new, str) and isinstance(old, str) and new.lower() != old.lower()

    def _manifest_offline(self, props: dict[str, Any]) -> Manifest | None:
        """The zip's manifest when it is available without network (local file or cached download)."""
        try:
            if self.known(props, "source_path"):
                return read_manifest(Path(props["source_path"]).read_bytes())
            if self.known(props, "sha256"):
                data = cached(props["sha256"])
                return read_manifest(data) if data is not None else None
        except (OSError, SolutionZipError):
            return None
        return None

    # -- create / read / update / delete -------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        inputs = clean(props)
        subject = inputs.get("source_path") or inputs.get("source_url") or "the solution zip"
        with self.operation("create", subject):
            data, digest = self._load(inputs)
            manifest = self._manifest(inputs, data)
            client = self.client(inputs["instance_url"])
            installed, running, jobs = api.installed_and_running(client, manifest.unique_name)
            # installed before this create: the stack's own only if the stack's import installed it (a
            # create retried after a crash); otherwise it existed before, is adopted and released on destroy
            adopted = installed is not None and not self._installed_by_this_stack(inputs, manifest, jobs)
            installed, imported = self._converge(client, inputs, data, manifest, installed, running, jobs,
                                                 reimport=False)
        if adopted and not imported:
            tell(f"SolutionImport {manifest.unique_name}: version {installed.version} was installed before this "
                 "stack: adopted, not imported (its contents are not compared with the zip; raise the version "
                 "to import the zip); `pulumi destroy` leaves it installed")
        return CreateResult(installed.id, self._outs(inputs, manifest, installed, digest, adopted, new_revision()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = clean(props)
        with self.operation("read", f"solution {state.get('unique_name')}"):
            installed = api.installed_solution(self.client(state["instance_url"]), state["unique_name"])
        if installed is None or installed.id != id_.lower():
            return ReadResult("", {})
        # version/managed as installed: a different version shows as drift in the next diff
        return ReadResult(id_, {**state, "version": installed.version, "managed": installed.managed})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        inputs, state = clean(news), clean(olds)
        with self.operation("update", f"solution {state.get('unique_name')}"):
            data, digest = self._load(inputs)
            manifest = self._manifest(inputs, data)
            client = self.client(inputs["instance_url"])
            reimport = self._same_version_changed(state, {"sha256": digest})
            installed, imported = self._converge(
                client, inputs, data, manifest, *api.installed_and_running(client, manifest.unique_name),
                reimport=reimport)
        # an import this stack never saw finish (its provider was killed) changed the solution all the same
        changed = imported or version_key(installed.version) != version_key(str(state.get("version") or "0"))
        return UpdateResult(self._outs(inputs, manifest, installed, digest, bool(state.get("adopted")),
                                       next_revision(state, changed)))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        state = clean(props)
        if state.get("adopted"):
            tell(f"SolutionImport {state.get('unique_name')}: left installed (it was installed before this stack)")
            return
        with self.operation("delete", f"solution {state.get('unique_name')}"):
            api.uninstall_solution(self.client(state["instance_url"]), id_)

    # -- steps ---------------------------------------------------------------------------------

    def _load(self, inputs: dict[str, Any]) -> tuple[bytes, str]:
        if inputs.get("source_path"):
            data = Path(inputs["source_path"]).read_bytes()
            return data, hashlib.sha256(data).hexdigest()
        settings = self.settings
        ensure_stderr_logging()
        data = download(inputs["source_url"], inputs["sha256"], ca_bundle=settings.ca_bundle,
                        allow_loopback=settings.allow_loopback)
        return data, inputs["sha256"].lower()

    def _manifest(self, inputs: dict[str, Any], data: bytes) -> Manifest:
        manifest = read_manifest(data)
        if not manifest.managed and not inputs.get("allow_unmanaged"):
            raise self.refuse(
                "import", manifest.unique_name, "the zip is an unmanaged solution",
                "export the managed solution, or set "
                f"{hint_for_input('SolutionImport', 'allow_unmanaged', 'true')} if you really want it unmanaged",
            )
        return manifest

    def _installed_by_this_stack(self, inputs: dict[str, Any], manifest: Manifest, jobs: list[str]) -> bool:
        """Whether the latest import job of the solution (`jobs`: ids, oldest start first) is one of the
        stack's installs."""
        if not jobs:
            return False
        ours = {install_job_id(inputs["instance_url"], manifest.unique_name, self.owner, n) for n in range(len(jobs))}
        return jobs[-1] in ours

    def _next_install_job(self, inputs: dict[str, Any], manifest: Manifest, jobs: list[str]) -> str:
        """The first id of the stack's install series that no import job of the solution has."""
        taken = set(jobs)
        series = (install_job_id(inputs["instance_url"], manifest.unique_name, self.owner, n)
                  for n in range(len(jobs) + 1))
        return next(job_id for job_id in series if job_id not in taken)

    def _converge(
        self, client: DataverseClient, inputs: dict[str, Any], data: bytes, manifest: Manifest,
        installed: Solution | None, running: str | None, jobs: list[str], *, reimport: bool,
    ) -> tuple[Solution, bool]:
        """Import, upgrade or re-import as needed; (the installed solution, whether it imported). A fresh
        install runs under the next id of the stack's series (`jobs`: the solution's import job ids)."""
        timeout = int(inputs.get("import_timeout_seconds") or DEFAULT_TIMEOUT)
        what = f"{manifest.unique_name} {manifest.version}"
        if running:
            ensure_stderr_logging()
            log.info("SolutionImport: import job %s of %s is still running; waiting for it", running,
                     manifest.unique_name)
            api.wait_for_running_import(client, running, timeout=timeout, what=manifest.unique_name)
            installed = api.installed_solution(client, manifest.unique_name)
            if installed is not None and version_key(installed.version) == version_key(manifest.version):
                return installed, True  # that import installed what is wanted
        if installed is None:
            action = api.IMPORT
        else:
            have, want = version_key(installed.version), version_key(manifest.version)
            if have > want:
                raise self._downgrade(manifest, installed.version)
            if have == want and not reimport:
                return installed, False  # same version: adopt without importing
            action = api.IMPORT if have == want else api.UPGRADE
        job_id = self._next_install_job(inputs, manifest, jobs) if installed is None else str(uuid.uuid4())
        self._import(client, action, data, what, timeout, job_id)
        if installed is not None:
            if action == api.IMPORT:
                tell(f"SolutionImport {manifest.unique_name}: imported again at the same version "
                     f"{manifest.version} ({SAME_VERSION_NOTE})")
            # an upgrade keeps the solution's id and the finished job proved the version: no read needed
            return Solution(installed.id, installed.unique_name, manifest.version, manifest.managed), True
        result = api.installed_solution(client, manifest.unique_name)  # the new solution's id
        if result is None or version_key(result.version) != version_key(manifest.version):
            raise self.refuse(
                "import", manifest.unique_name, "the import job finished but the solution is not installed at "
                f"version {manifest.version}", "check Settings → Solutions → Solution History",
            )
        return result, True

    @staticmethod
    def _import(client: DataverseClient, action: str, data: bytes, what: str, timeout: int, job_id: str) -> None:
        ensure_stderr_logging()
        log.info("SolutionImport: %s of %s started (import job %s)", action, what, job_id)
        operation_id = api.start_import(client, action, data, job_id)
        api.follow_import(client, job_id, operation_id, timeout=timeout, what=what,
                          progress=lambda value: log.info("SolutionImport: %s %.0f%%", what, value))
        log.info("SolutionImport: %s imported", what)

    @staticmethod
    def _outs(inputs: dict[str, Any], manifest: Manifest, installed: Solution, digest: str,
              adopted: bool, revision: str | None) -> dict[str, Any]:
        return {
            "instance_url": inputs.get("instance_url"),
            "source_path": inputs.get("source_path"),
            "source_url": inputs.get("source_url"),
            "allow_unmanaged": bool(inputs.get("allow_unmanaged")),
            "import_timeout_seconds": int(inputs.get("import_timeout_seconds") or DEFAULT_TIMEOUT),
            "unique_name": manifest.unique_name,
            "version": installed.version,
            "solution_id": installed.id,
            "managed": installed.managed,
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
