"""Cross-cutting proof that no secret leaks: with distinctive credentials, drive the real code paths
(a whole stack lifecycle through the real Pulumi CLI, the provider host over gRPC, providers in-process,
failures of every kind) and search all they emit — printed text, engine events, the checkpoint, the
CLI's automatic logs (decrypted) and -v logs, host stderr, DEBUG logs, exception texts, request log, files."""

from __future__ import annotations

import gzip
import json
import logging
import re
import subprocess
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pulumi.dynamic import Config, ConfigureRequest

from dynamics_provider.application_user import ApplicationUserProvider
from dynamics_provider.lead_check import LeadWriteCheckProvider
from dynamics_provider.offer_destination import OfferLeadDestinationProvider
from dynamics_provider.solution import SolutionImportProvider
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config
from tests.harness.provider_host import ProviderError, ProviderHost, Secret, provider_ref, urn_for
from tools.stacks import Run, Stack, dev_stack

REPO = Path(__file__).resolve().parent.parent
# header.payload of a JWT: a bearer token or an assertion (chance matches of "eyJ" in base64 are not enough)
SECRETS = ("client_secret", "password", "application_key")
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")


@dataclass
class Credentials:
    """Distinctive secret values of one test; `wrong_*` are refused ones, which must not leak either."""

    tag: str
    writer_id: str
    writer_secret: str = field(repr=False)
    deployer_secret: str = field(repr=False)
    outsider_id: str  # an app of the tenant that is no member of any organization
    outsider_secret: str = field(repr=False)
    upn: str
    password: str = field(repr=False)
    wrong_secret: str = field(repr=False)
    wrong_password: str = field(repr=False)

    def values(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ("writer_secret", "deployer_secret", "outsider_secret",
                                                        "password", "wrong_secret", "wrong_password")}


@dataclass
class Capture:
    """Everything a run emitted, by source."""

    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: Any) -> None:
        self.texts.append((where, text if isinstance(text, str) else json.dumps(text, default=repr)))

    def exception(self, where: str, exc: BaseException) -> None:
        self.add(f"{where}: str", str(exc))
        self.add(f"{where}: repr", repr(exc))
        self.add(f"{where}: args", repr(exc.args))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(exc)))
        for name in ("message", "details", "hint"):
            if isinstance(getattr(exc, name, None), str):
                self.add(f"{where}: .{name}", getattr(exc, name))

    def files(self, root: Path, *, decode: Callable[[Path], str | None] | None = None) -> int:
        """Every file under `root` (symlinks into the repository left out), as bytes and, where `decode`
        reads it, as the text it stands for (a compressed or encrypted log); returns how many."""
        count = 0
        for path in sorted(root.rglob("*")):
            inside = path.relative_to(root)
            if path.is_file() and not path.is_symlink() and not any((root / p).is_symlink() for p in inside.parents):
                count += 1
                self.add(f"file {inside}", path.read_bytes().decode(errors="replace"))
                text = decode(path) if decode else None
                if text is not None:
                    self.add(f"file {inside} (decoded)", text)
        return count

    def leaks(self, creds: Credentials) -> list[str]:
        found = []
        for where, text in self.texts:
            for name, value in creds.values().items():
                if value in text:
                    found.append(f"{name} in {where}")
            if JWT.search(text):
                found.append(f"a JWT in {where}")
        return found


def assert_clean(capture: Capture, creds: Credentials, *, sources: int = 1) -> None:
    assert len(capture.texts) >= sources, "captured less than expected: the test would prove nothing"
    assert capture.leaks(creds) == []


@pytest.fixture
def creds(sandbox: Any) -> Credentials:
    tag = uuid.uuid4().hex[:12]
    c = sandbox.control
    writer_secret = f"LeakWriter~{tag}~secret"
    writer = c.register_app(display_name=f"leak writer {tag}", client_secret=writer_secret)
    # a second secret of the sandbox's admin app: the deploying identity signs in with this one only
    deployer_secret = f"LeakDeployer~{tag}~secret"
    c.register_app(client_id=sandbox.info["admin_client_id"], client_secret=deployer_secret)
    outsider_secret = f"LeakOutsider~{tag}~secret"
    outsider = c.register_app(display_name=f"outsider {tag}", client_secret=outsider_secret)
    upn = f"leads-{tag}@contoso.example"
    password = f"LeakPassword~{tag}!"
    c.create_user(user_principal_name=upn, password=password)
    return Credentials(tag, writer["client_id"], writer_secret, deployer_secret, outsider["client_id"],
                       outsider_secret, upn, password, f"LeakWrong~{tag}~secret", f"LeakWrongPw~{tag}!")


def deployer_config(sandbox: Any, org: str, creds: Credentials, secret: str | None = None,
                    client_id: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = stack_config(sandbox.info, instance_url=org)
    config["lead-destination:deployerClientSecret"] = secret or creds.deployer_secret
    if client_id:
        config["lead-destination:deployerClientId"] = client_id
    return config


def log_text(sandbox: Any, since: int) -> str:
    return json.dumps([e for e in sandbox.control.log() if e["seq"] > since])


def last_seq(sandbox: Any) -> int:
    entries = sandbox.control.log()
    return entries[-1]["seq"] if entries else 0


# ----------------------------------------------------------------------------------------------
# provider failures in-process: exception texts, reprs, tracebacks and DEBUG logs


def configured(cls: type, config: dict[str, Any]) -> Any:
    provider = cls()
    provider.configure(ConfigureRequest(Config(config, "lead-destination")))
    return provider


def expect_failure(
    capture: Capture, where: str, action: Callable[[], Any], expected: type[BaseException] = Exception
) -> BaseException:
    """Run `action`, which must fail with `expected`; the failure's texts go into `capture`."""
    try:
        action()
    except expected as exc:
        capture.exception(where, exc)
        return exc
    pytest.fail(f"{where}: expected a failure")


def test_provider_failures_and_their_logs_never_quote_a_credential(
    sandbox: Any, org: str, creds: Credentials, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    since = last_seq(sandbox)
    capture = Capture()
    zip_path = tmp_path / "solution_managed.zip"
    zip_path.write_bytes(build_solution_zip(version="1.0.0.0"))
    good = deployer_config(sandbox, org, creds)
    org_name = org.rstrip("/").rsplit("/", 1)[-1]

    # deploying identity: a wrong secret; an app that is no member of the organization
    for where, config in (("wrong deployer secret", deployer_config(sandbox, org, creds, creds.wrong_secret)),
                          ("deployer not a member", deployer_config(sandbox, org, creds, creds.outsider_secret,
                                                                    creds.outsider_id))):
        sol = configured(SolutionImportProvider, config)
        inputs = sol.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs
        expect_failure(capture, where, lambda sol=sol, inputs=inputs: sol.create(inputs))

    # a failing solution import job
    sandbox.control.drift(org_name, "fail_next_import", errortext="Import failed: missing dependency Foo")
    sol = configured(SolutionImportProvider, good)
    inputs = sol.check({}, {"instance_url": org, "source_path": str(zip_path)}).inputs
    expect_failure(capture, "import failure", lambda: sol.create(inputs))
    sol.create(inputs)  # the next import succeeds

    # lead writer: a user without the role (missing privilege), a refused secret, an Office 365
    # user with a refused password and with the right one but no Dynamics user
    users = configured(ApplicationUserProvider, good)
    users.create(users.check({}, {"instance_url": org, "application_id": creds.writer_id,
                                  "email": "writer@contoso.example"}).inputs)
    check = configured(LeadWriteCheckProvider, good)
    tenant = sandbox.info["tenant_id"]
    for where, news in (
        ("writer lacks privileges", {"client_id": creds.writer_id, "tenant_id": tenant, "client_secret": creds.writer_secret}),
        ("refused writer secret", {"client_id": creds.writer_id, "tenant_id": tenant, "client_secret": creds.wrong_secret}),
        ("refused password", {"username": creds.upn, "password": creds.wrong_password}),
        ("user not in Dynamics", {"username": creds.upn, "password": creds.password}),
    ):  # fmt: skip
        checked = check.check({}, {"instance_url": org, "triggers": {"n": 1}, **news})
        capture.add(f"{where}: check failures", repr(checked.failures))
        expect_failure(capture, where, lambda checked=checked: check.create(checked.inputs))

    # Partner Center: a schema refusal, an answer that echoes the key, and a success in each mode
    offer_id = f"leak-offer-{creds.tag}"
    sandbox.control.partner_center("POST", "products", {"externalId": offer_id})
    offers = configured(OfferLeadDestinationProvider, good)
    azure = {"offer_id": offer_id, "instance_url": org, "authentication": "azureAD", "application_id": creds.writer_id,
             "directory_id": tenant, "application_key": creds.writer_secret, "contact_emails": ["leads@contoso.example"]}
    refused_shape = offers.check({}, {**azure, "username": creds.upn, "password": creds.password})
    capture.add("offer check failures", repr(refused_shape.failures))
    sandbox.control.partner_center("POST", "fail-next", {"message": f"applicationKey {creds.writer_secret} refused"})
    expect_failure(capture, "offer echoed key", lambda: offers.create(offers.check({}, azure).inputs))
    created = offers.create(offers.check({}, azure).inputs)
    capture.add("offer outputs (azureAD)", repr(created.outs))
    o365 = {k: v for k, v in azure.items() if k not in ("application_id", "directory_id", "application_key")}
    o365.update(authentication="office365", username=creds.upn, password=creds.password)
    updated = offers.update(created.id, created.outs, offers.check(created.outs, o365).inputs)
    capture.add("offer outputs (office365)", repr(updated.outs))
    # the stored destinations (the jobs keep the echo this test armed on purpose, as the API would)
    capture.add("partner center products", sandbox.control.partner_center("GET", "state")["products"])

    capture.add("python logging (DEBUG)", "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records))
    capture.add("sandbox request log", log_text(sandbox, since))
    capture.files(tmp_path)
    assert len(caplog.records) > 0, "nothing was logged: the DEBUG capture would prove nothing"
    # each failure is the one intended, and says so
    said = {where.split(": ")[0]: text for where, text in capture.texts if where.endswith(": str")}
    assert len(said) == 8, sorted(said)
    assert "Import failed: missing dependency Foo" in said["import failure"]
    assert "was refused" in said["offer echoed key"] or "refused" in said["offer echoed key"]
    assert_clean(capture, creds, sources=30)


# ----------------------------------------------------------------------------------------------
# the same failures over gRPC: what the engine receives and what the host prints


def test_failures_over_grpc_reach_the_engine_and_the_host_stderr_without_credentials(
    sandbox: Any, org: str, creds: Credentials
) -> None:
    capture = Capture()
    config = deployer_config(sandbox, org, creds)
    config["lead-destination:deployerClientSecret"] = Secret(creds.deployer_secret)
    tenant = sandbox.info["tenant_id"]
    offer_id = f"leak-offer-{creds.tag}"
    sandbox.control.partner_center("POST", "products", {"externalId": offer_id})
    with ProviderHost(REPO, project="lead-destination", stack="leaks") as host:
        host.configure(config)
        check_ref = provider_ref(LeadWriteCheckProvider())
        for name, news in (
            ("refused-secret", {"client_id": creds.writer_id, "tenant_id": tenant, "client_secret": Secret(creds.wrong_secret)}),
            ("refused-password", {"username": creds.upn, "password": Secret(creds.wrong_password)}),
            ("no-dynamics-user", {"username": creds.upn, "password": Secret(creds.password)}),
        ):  # fmt: skip
            urn = urn_for("leaks", "lead-destination", name, "pulumi-python:dynamic/dynamics:LeadWriteCheck")
            inputs, failures = host.check(urn, {}, {"__provider": check_ref, "instance_url": org,
                                                    "triggers": {"n": 1}, **news})
            capture.add(f"{name}: check failures", repr(failures))
            assert failures == [] and isinstance(inputs[next(k for k in news if k in SECRETS)], Secret)
            expect_failure(capture, name, lambda urn=urn, inputs=inputs: host.create(urn, inputs), ProviderError)

        offer_ref = provider_ref(OfferLeadDestinationProvider())
        urn = urn_for("leaks", "lead-destination", "offer", "pulumi-python:dynamic/dynamics:OfferLeadDestination")
        props = {"__provider": offer_ref, "offer_id": offer_id, "instance_url": org, "authentication": "office365",
                 "username": creds.upn, "password": Secret(creds.password), "contact_emails": ["leads@contoso.example"]}
        inputs, failures = host.check(urn, {}, {**props, "application_key": Secret(creds.writer_secret)})
        capture.add("offer: refused shape", repr(failures))
        assert failures, "azureAD-only field accepted in office365 mode"
        inputs, failures = host.check(urn, {}, props)
        assert failures == []
        sandbox.control.partner_center("POST", "fail-next", {"message": f"password '{creds.password}' is weak"})
        expect_failure(capture, "offer echoed password", lambda: host.create(urn, inputs), ProviderError)
        id_, outs = host.create(urn, inputs)
        capture.add("offer outputs", repr(outs))
        host.delete(urn, id_, outs)
        capture.add("provider host stderr", host.stderr_text())
    assert_clean(capture, creds, sources=10)


def test_the_search_finds_a_planted_credential_and_a_real_sandbox_token(sandbox: Any, creds: Credentials) -> None:
    token = sandbox.control.issue_token(audience=sandbox.info["instance_url"], client_id=creds.writer_id)
    capture = Capture()
    capture.add("clean", "nothing to see")
    assert capture.leaks(creds) == []
    capture.add("token", f"Authorization: Bearer {token['access_token']}")
    capture.add("password", {"nested": [creds.password]})
    assert capture.leaks(creds) == ["a JWT in token", "password in password"]


def test_certificate_password_and_federated_assertion_of_the_deployer_stay_out_of_failures_over_grpc(
    sandbox: Any, org: str, creds: Credentials, tmp_path: Path
) -> None:
    from tests.test_auth import _certificate

    capture = Capture()
    cert_password = f"LeakCertPw~{creds.tag}"
    wrong_cert_password = f"LeakWrongCertPw~{creds.tag}"
    path, cert_pem = _certificate(tmp_path, cert_password)
    cert_app = sandbox.control.register_app(display_name=f"cert deployer {creds.tag}", certificate_pem=cert_pem)
    assertion = sandbox.control.federated_token(subject=f"repo:contoso/leads:ref:refs/heads/{creds.tag}")
    token_file = tmp_path / "federated-token"
    token_file.write_text(assertion)  # no app trusts this subject: the exchange is refused
    zip_path = tmp_path / "solution_managed.zip"
    zip_path.write_bytes(build_solution_zip(version="1.0.0.0"))
    base = {k: v for k, v in stack_config(sandbox.info, instance_url=org).items() if not k.endswith("ClientSecret")}
    cases = {
        "wrong certificate password": {"lead-destination:deployerClientId": cert_app["client_id"],
                                       "lead-destination:deployerCertificatePath": str(path),
                                       "lead-destination:deployerCertificatePassword": Secret(wrong_cert_password)},
        "certificate app not in the organization": {
            "lead-destination:deployerClientId": cert_app["client_id"],
            "lead-destination:deployerCertificatePath": str(path),
            "lead-destination:deployerCertificatePassword": Secret(cert_password)},
        "untrusted federated subject": {"lead-destination:deployerClientId": creds.outsider_id,
                                        "lead-destination:deployerFederatedTokenFile": str(token_file)},
    }  # fmt: skip
    for where, extra in cases.items():
        with ProviderHost(REPO, project="lead-destination", stack="leaks") as host:
            host.configure({**base, **extra})
            urn = urn_for("leaks", "lead-destination", "sol", "pulumi-python:dynamic/dynamics:SolutionImport")
            inputs, failures = host.check(urn, {}, {"__provider": provider_ref(SolutionImportProvider()),
                                                    "instance_url": org, "source_path": str(zip_path)})
            assert failures == []
            expect_failure(capture, where, lambda urn=urn, inputs=inputs: host.create(urn, inputs), ProviderError)
            capture.add(f"{where}: provider host stderr", host.stderr_text())
    said = "\n".join(text for where, text in capture.texts if where.endswith(": str"))
    assert "certificate password" in said  # the failure names the cause
    leaks = capture.leaks(creds)
    leaks += [f"certificate password in {w}" for w, t in capture.texts if cert_password in t]
    leaks += [f"wrong certificate password in {w}" for w, t in capture.texts if wrong_cert_password in t]
    assert leaks == []
    assert JWT.search(assertion), "the federated assertion is a JWT, so the search above would find it"


# ----------------------------------------------------------------------------------------------
# a whole lifecycle through the real CLI: what a user sees, keeps and sends when debugging


def decoded_log(stack: Stack) -> Callable[[Path], str | None]:
    """What `pulumi logs decrypt` shows of an automatic log under $PULUMI_HOME/logs: the CLI writes them
    encrypted with the stack's secrets provider (PLOG) or gzip-compressed; the bytes alone would hide a
    leak. None for any other file."""

    def decode(path: Path) -> str | None:
        head = path.read_bytes()[:4]
        if head == b"PLOG":
            shown = stack.cli("logs", "decrypt", str(path))
            assert shown.stdout.strip(), f"{path.name} decrypted to nothing"
            return shown.stdout
        if head[:2] == b"\x1f\x8b":
            return gzip.decompress(path.read_bytes()).decode(errors="replace")
        return None

    return decode


def test_a_real_cli_lifecycle_with_an_offer_and_its_failures_emits_no_secret_and_no_token(
    sandbox: Any, org: str, creds: Credentials, tmp_path: Path
) -> None:
    since = last_seq(sandbox)
    tenant = sandbox.info["tenant_id"]
    offer_id = f"leak-offer-{creds.tag}"
    sandbox.control.partner_center("POST", "products", {"externalId": offer_id})
    zip_path = tmp_path / "solution_managed.zip"
    zip_path.write_bytes(build_solution_zip(version="1.0.0.0"))
    root, temp = tmp_path / "cli", tmp_path / "tmp"
    temp.mkdir()
    stack = dev_stack(
        root, sandbox.info, org, zip_path,
        extra={"existingApplication": {"clientId": creds.writer_id, "tenantId": tenant}, "offer": offer_id},
        secrets={"existingApplicationSecret": creds.writer_secret, "deployerClientSecret": creds.deployer_secret},
        # where `-v` logs go without --logtostderr, and every temporary file of the CLI, host and providers
        env={"TMPDIR": str(temp), "LEAD_DESTINATION_CACHE_DIR": str(tmp_path / "cache")},
    )
    capture = Capture()

    def record(where: str, run: Run | subprocess.CompletedProcess) -> Any:
        capture.add(f"{where}: stdout", run.stdout)
        capture.add(f"{where}: stderr", run.stderr)
        if isinstance(run, Run):  # the engine's events, debug diagnostics included
            capture.add(f"{where}: diagnostics", "\n".join(f"{d.severity} {d.urn} {d.message}" for d in run.diagnostics))
        return run

    def checkpoint(after: str) -> None:
        record(f"pulumi stack export after {after}", stack.cli("stack", "export"))

    preview = record("preview", stack.preview())
    assert preview.ok and "dev-offer" in preview.planned(), preview.text
    up = record("up", stack.up())
    assert up.ok and up.planned().get("dev-offer") == "create", up.text
    checkpoint("up")
    record("pulumi stack output", stack.cli("stack", "output", "--json"))
    record("pulumi config", stack.cli("config"))
    # --show-secrets is the way to see them: the secret is in the checkpoint and the outputs, encrypted
    shown = stack.cli("stack", "export", "--show-secrets").stdout
    assert creds.writer_secret in shown and creds.writer_secret not in stack.cli("stack", "export").stdout
    assert json.loads(stack.cli("stack", "output", "partnerCenter", "--show-secrets", "--json").stdout)[
        "clientSecret"] == creds.writer_secret

    # a person disables the lead writer in Dynamics; `up --refresh` repairs it
    state = sandbox.control.state(org)
    writer_user = next(u for u in state["systemusers"] if u.get("applicationid") == creds.writer_id)
    sandbox.control.drift(org, "disable_user", systemuserid=writer_user["systemuserid"])
    repaired = record("up --refresh", stack.up(refresh=True))
    assert repaired.ok and "dev-dynamics-user" in repaired.planned(), repaired.text

    # a refused lead-writer secret, run the way Pulumi's docs say to debug one: engine and providers at
    # -v=10 on stderr (the level up to which Pulumi avoids exposing known credentials)
    stack.set_config("existingApplicationSecret", creds.wrong_secret, secret=True)
    refused = record("up --logtostderr --logflow -v=10", stack.cli(
        "up", "--yes", "--skip-preview", "--logtostderr", "--logflow", "-v=10", check=False))
    assert refused.returncode != 0 and "dev-dynamics-check" in refused.stdout, refused.stdout
    # the debug log shows the inputs of each resource, the secret ones masked
    assert creds.writer_id in refused.stderr and "client_secret:{[secret]}" in refused.stderr
    checkpoint("the refused up")
    stack.set_config("existingApplicationSecret", creds.writer_secret, secret=True)

    # refresh with -v=9 and no --logtostderr: the engine writes its log to $TMPDIR
    refreshed = record("refresh -v=9", stack.cli("refresh", "--yes", "-v=9"))
    assert refreshed.returncode == 0
    assert list(temp.glob("pulumi*.log.*")), "the -v=9 log file went to TMPDIR"
    destroyed = record("destroy", stack.destroy())
    assert destroyed.ok and destroyed.planned().get("dev-offer") == "delete", destroyed.text
    checkpoint("destroy")

    said = "\n".join(text for _, text in capture.texts)
    assert "dynamics_provider: SolutionImport" in said, "the provider's stderr, as the CLI shows it, was captured"
    capture.add("sandbox request log", log_text(sandbox, since))
    home = Path(stack.project.env["PULUMI_HOME"])
    logs = sorted((home / "logs").glob("*.log"))
    assert len(logs) >= 6, "the CLI writes an automatic log per command under $PULUMI_HOME/logs"
    files = {name: capture.files(path, decode=decoded_log(stack)) for name, path in (
        ("PULUMI_HOME", home), ("backend", root / "state"), ("project", stack.project.dir), ("TMPDIR", temp))}
    assert all(files.values()), files
    decrypted = "\n".join(text for where, text in capture.texts if where.endswith("(decoded)"))
    # decrypted, they are the engine's log of each step (property values are not logged at their level)
    assert "Provider[" in decrypted and "::dev-offer" in decrypted, "the automatic logs were read"
    assert_clean(capture, creds, sources=40)

    # the search finds what it looks for in each kind of source: a planted secret in a file under
    # $PULUMI_HOME and a real sandbox token in printed text
    planted = home / "logs" / "planted.txt"
    planted.write_text(f"clientSecret={creds.deployer_secret}")
    token = sandbox.control.issue_token(audience=sandbox.info["instance_url"], client_id=creds.writer_id)
    check = Capture()
    check.files(home)
    check.add("printed", f"Authorization: Bearer {token['access_token']}")
    assert check.leaks(creds) == ["deployer_secret in file logs/planted.txt", "a JWT in printed"]
