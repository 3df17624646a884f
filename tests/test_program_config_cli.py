"""What a user sees under the real Pulumi CLI (.tools/bin/pulumi) when the config is wrong or a run fails:
no credential, no value of an unknown key, no URL user info or query, no Python traceback, no internal
class path, and the same exit code from `pulumi preview` and `pulumi up`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandbox.solution_zip import build_solution_zip
from tools.stacks import Project, Stack, dev_stack

# Each marker sits where a careless user could put a credential; none may reach the CLI's output.
URL_KEYS: dict[str, Any] = {
    "instanceUrl": "https://leak-user:UrlUserMarkerA@contoso.crm4.dynamics.com/?sig=UrlQueryMarkerA",
    "partnerCenterEndpoint": "https://leak-user:UrlUserMarkerB@pc.example/rp?sig=UrlQueryMarkerB",
    "authorityHost": "leak-user:UrlUserMarkerC@login.microsoftonline.com",
    "solution": {"url": "https://leak-user:UrlUserMarkerD@store.example/s.zip?sig=UrlQueryMarkerD", "sha256": "0" * 64},
    "application": {"redirectUris": ["https://leak-user:UrlUserMarkerE@app.example/auth?code=UrlQueryMarkerE"]},
}
UNKNOWN_KEYS = {  # as typed -> what the message suggests
    "deployerClientSecert": "deployerClientSecret",
    "DeployerClientSecret": "deployerClientSecret",
    "client_secret": "deployerClientSecret",
    "existingApplicationSecet": "existingApplicationSecret",
    "passwd": None,
}
NESTED_UNKNOWN = {"existingApplication": {"clientSecret": "NestedUnknownMarker"}}
PLAIN_SECRET = {"deployerClientSecret": "PlainSecretMarker"}  # in the stack file, not --secret


def markers() -> list[str]:
    return (["UrlUserMarker" + c for c in "ABCDE"] + ["UrlQueryMarker" + c for c in "ABDE"]
            + [f"UnknownMarker-{k}" for k in UNKNOWN_KEYS] + ["NestedUnknownMarker", "PlainSecretMarker", "leak-user"])


def run(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return stack.cli(*args, check=False)


@pytest.fixture(scope="module")
def bad_stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """One stack holding every kind of bad value at once (the program reports them all in one message)."""
    config: dict[str, Any] = {**URL_KEYS, **NESTED_UNKNOWN, **PLAIN_SECRET,
                              **{k: f"UnknownMarker-{k}" for k in UNKNOWN_KEYS}}
    return Project(tmp_path_factory.mktemp("cfg-cli")).stack("bad", config, {})


@pytest.fixture(scope="module")
def bad_runs(bad_stack: Stack) -> dict[str, subprocess.CompletedProcess]:
    return {"preview": run(bad_stack, "preview"), "up": run(bad_stack, "up", "--yes")}


@pytest.mark.parametrize("verb", ["preview", "up"])
def test_no_credential_or_unknown_value_reaches_the_cli_output(bad_runs, verb):
    done = bad_runs[verb]
    text = done.stdout + done.stderr
    assert "invalid stack configuration" in text, text[-2000:]
    assert [m for m in markers() if m in text] == []
    assert "Traceback" not in text and "an unhandled error occurred" not in text


@pytest.mark.parametrize("verb", ["preview", "up"])
def test_every_url_setting_and_every_unknown_key_is_named_with_what_to_do(bad_runs, verb):
    text = bad_runs[verb].stdout
    for key in ("instanceUrl", "partnerCenterEndpoint", "authorityHost", "solution.url", "application.redirectUris"):
        assert f"lead-destination:{key} = " in text, key
    assert "https://***@contoso.crm4.dynamics.com/?…" in text
    for typed, guess in UNKNOWN_KEYS.items():
        line = next(ln for ln in text.splitlines() if f"lead-destination:{typed}:" in ln)
        assert "unknown key" in line and (guess is None or f"did you mean {guess}?" in line), line
    assert "lead-destination:existingApplication.clientSecret: unknown key" in text
    assert "lead-destination:deployerClientSecret: stored in plain text, but it is a secret" in text
    assert "`pulumi config set --secret deployerClientSecret`" in text


def test_the_same_config_error_exits_alike_under_preview_and_up(bad_runs, bad_stack):
    assert bad_runs["preview"].returncode == bad_runs["up"].returncode == 1
    # a type the CLI checks itself (Pulumi.yaml `type: integer`) ends the same way in both
    bad_stack.cli("config", "set", "lead-destination:requestTimeoutSeconds", "soon")
    try:
        codes = {verb: run(bad_stack, *args) for verb, args in (("preview", ("preview",)), ("up", ("up", "--yes")))}
    finally:
        bad_stack.cli("config", "rm", "lead-destination:requestTimeoutSeconds")
    assert codes["preview"].returncode == codes["up"].returncode == 1
    for done in codes.values():
        assert "must be of type 'integer'" in done.stderr and "soon" not in done.stdout + done.stderr


# --- failures of a run, under the real CLI against the sandbox -------------------------------------


@pytest.fixture
def zip_path(tmp_path: Path) -> Path:
    path = tmp_path / "MicrosoftMarketplacesLeadIntegrationSolution_1_0_0_0_managed.zip"
    path.write_bytes(build_solution_zip(version="1.0.0.0"))
    return path


def no_python_internals(text: str) -> None:
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert "dynamics_provider." not in text and "Error: " not in text.replace("error: ", ""), text[-3000:]


def test_a_provider_failure_reads_as_its_message_without_traceback_or_class_path(sandbox, org, tmp_path, zip_path):
    stack = dev_stack(tmp_path, sandbox.info, org, zip_path, extra={"roleName": "No Such Role Here"})
    done = run(stack, "up", "--yes")
    assert done.returncode == 1
    no_python_internals(done.stdout + done.stderr)
    assert "error: lead-destination: SecurityRoleAssignment create refused for user" in done.stdout
    assert "no role named 'No Such Role Here'" in done.stdout


def test_a_refused_lead_writer_secret_names_the_setting_to_fix(sandbox, org, tmp_path, zip_path):
    stack = dev_stack(tmp_path, sandbox.info, org, zip_path)
    stack.set_config("existingApplicationSecret", "WrongWriterSecretMarker", secret=True)
    done = run(stack, "up", "--yes")
    assert done.returncode == 1
    no_python_internals(done.stdout + done.stderr)
    assert "LeadWriteCheck failed" in done.stdout and "credentials rejected by Entra ID" in done.stdout
    assert "pulumi config set --secret existingApplicationSecret" in done.stdout
    assert "WrongWriterSecretMarker" not in done.stdout + done.stderr


def test_a_syntax_error_and_a_truncated_state_end_without_a_traceback(sandbox, org, tmp_path, zip_path):
    # Ctrl-C at every point of a run: tests/test_interruptions.py (test_ctrl_c_at_any_point_of_a_run_...)
    stack = dev_stack(tmp_path, sandbox.info, org, zip_path)
    first = run(stack, "up", "--yes")
    assert first.returncode == 0, first.stdout[-3000:]

    stack_file = stack.project.dir / f"Pulumi.{stack.name}.yaml"
    good = stack_file.read_text()
    stack_file.write_text(good + "  lead-destination:roleName: [unclosed\n")
    for args in (("preview",), ("up", "--yes")):
        done = run(stack, *args)
        assert done.returncode == 1 and "invalid YAML file" in done.stderr
        no_python_internals(done.stdout + done.stderr)
    stack_file.write_text(good)

    state = next((tmp_path / "state").rglob(f"{stack.name}.json"))
    whole = state.read_text()
    state.write_text(whole[: len(whole) // 2])
    for args in (("preview",), ("up", "--yes")):
        done = run(stack, *args)
        assert done.returncode == 1 and "failed to load checkpoint" in done.stderr
        no_python_internals(done.stdout + done.stderr)
    state.write_text(whole)
