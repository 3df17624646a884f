"""`make demo`: the dev stack's story through the real Pulumi CLI (.tools/bin/pulumi) against a fresh sandbox.

Clean start (a new sandbox, a new file backend for the dev stack), then: `pulumi up` creates everything,
`pulumi up` again changes nothing, a person edits Dynamics by hand, `pulumi preview --refresh --diff` shows
that drift property by property, `pulumi up --refresh` repairs it and proves the chain with a fresh
validation lead, `pulumi preview --refresh --expect-no-changes` passes, the Partner Center values
(`pulumi stack output --show-secrets`, secrets masked on screen), `pulumi destroy`. Every line the CLI
prints is shown as it comes, with any sandbox secret or token masked (and the demo fails if one appears).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.offline_env import PULUMI, REPO, file_backend_dir, pulumi_env

DEFAULT_PORT = 48443
STACK = "dev"
ROLE = "Microsoft Marketplace Lead Writer"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")
# Partner Center output fields that carry a credential.
SECRET_FIELDS = {"clientSecret", "password", "applicationKey", "client_secret"}


class DemoFailed(Exception):
    """A step of the story did not show what it should."""


def header(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(3, 76 - len(text)), flush=True)


class Console:
    """Runs the CLI, echoing its output with the sandbox's secrets and any JWT masked."""

    CONFIG_FILE_VERBS = ("up", "preview", "refresh", "destroy")

    def __init__(self, env: dict[str, str], secrets: list[str]) -> None:
        self.env, self.secrets, self.leaks = env, [s for s in secrets if s], 0
        self.config_file: str | None = None  # another stack config file (the sandbox on another port)

    def mask(self, line: str, *, shown: bool = True) -> str:
        """The line with secrets and tokens masked; a shown line that needed it counts as a leak."""
        masked = JWT.sub("[masked token]", line)
        for secret in self.secrets:
            masked = masked.replace(secret, "[masked]")
        if shown and masked != line:
            self.leaks += 1
        return masked

    def pulumi(self, *args: str, ok_codes: tuple[int, ...] = (0,), show: bool = True) -> tuple[int, str]:
        command = [str(PULUMI), *args, "--stack", STACK, "--non-interactive"]
        if self.config_file and args[0] in self.CONFIG_FILE_VERBS:
            command += ["--config-file", self.config_file]
        if show:
            print(f"$ pulumi {' '.join(args)}", flush=True)
        proc = subprocess.Popen(command, cwd=REPO, env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            line = self.mask(line.rstrip("\n"), shown=show)
            lines.append(line)
            if show:
                print(f"  {line}", flush=True)
        code = proc.wait()
        if code not in ok_codes:
            raise DemoFailed(f"`pulumi {' '.join(args)}` exited with {code}")
        return code, "\n".join(lines)


@contextmanager
def dev_stack_on_port(console: Console, port: int) -> Iterator[None]:
    """The dev stack pointed at the sandbox's port. Pulumi.dev.yaml names the default port; for another one
    the commands read a copy of it with that port (`--config-file`), and the project's file is not touched."""
    if port == DEFAULT_PORT:
        yield
        return
    copy = Path(console.env["PULUMI_HOME"]) / f"Pulumi.{STACK}.port-{port}.yaml"
    text = (REPO / f"Pulumi.{STACK}.yaml").read_text()
    copy.write_text(text.replace(f"127.0.0.1:{DEFAULT_PORT}", f"127.0.0.1:{port}"))
    print(f"(port {port}: the dev stack's config is read from {copy.name}, Pulumi.dev.yaml with that port)")
    console.config_file = str(copy)
    try:
        yield
    finally:
        console.config_file = None
        copy.unlink(missing_ok=True)


def fresh_backend(env: dict[str, str]) -> None:
    """A clean start: the dev stack's file backend is emptied and the stack created again; Pulumi.dev.yaml
    (config and encryption salt) is kept, so the sandbox-only secrets stay readable."""
    backend = file_backend_dir(env["PULUMI_BACKEND_URL"])
    shutil.rmtree(backend, ignore_errors=True)
    backend.mkdir(parents=True)
    subprocess.run([str(PULUMI), "stack", "init", STACK, "--non-interactive"], cwd=REPO, env=env, check=True,
                   capture_output=True, text=True)


def masked_partner_center(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {k: ("[secret]" if k in SECRET_FIELDS else v) for k, v in value.items()}


def story(console: Console, control: Any, org: str) -> None:
    header("1. pulumi up: creates everything")
    console.pulumi("up", "--yes")
    _, text = console.pulumi("stack", "output", "applicationUserId", show=False)
    user_id = text.strip()

    header("2. pulumi up again: changes nothing")
    console.pulumi("up", "--yes", "--expect-no-changes")

    header("3. a person clicks in Dynamics")
    role = next(r for r in control.state(org)["roles"] if r.get("name") == ROLE and not r.get("_parentroleid_value"))
    control.drift(org, "remove_role", systemuserid=user_id, roleid=role["roleid"])
    print(f"    removed the role '{ROLE}' from the application user")
    control.drift(org, "set_privilege_depth", roleid=role["roleid"], privilege="prvReadAsyncOperation", depth="Basic")
    print("    lowered prvReadAsyncOperation to User (Basic) depth")
    control.drift(org, "disable_user", systemuserid=user_id)
    print("    disabled the application user")

    header("4. pulumi preview --refresh --diff: shows that drift, property by property")
    _, text = console.pulumi("preview", "--refresh", "--diff")
    for shown in ("disabled", "prvReadAsyncOperation", "dev-dynamics-role"):
        if shown not in text:
            raise DemoFailed(f"the preview does not show the drift of {shown!r}")

    header("5. pulumi up --refresh: repairs it; a fresh validation lead proves the chain")
    mark = max((e["seq"] for e in control.log()), default=0)
    console.pulumi("up", "--refresh", "--yes")
    leads = [e for e in control.log(since=mark) if e.get("org") == org and "/leads" in e.get("path", "")]
    wrote = any(e["method"] == "POST" and e["status"] in (201, 204) for e in leads)
    deleted = any(e["method"] == "DELETE" and e["status"] == 204 for e in leads)
    if not (wrote and deleted) or control.state(org).get("leads"):
        raise DemoFailed("the repair did not write and delete a fresh validation lead")
    print("--> a validation lead was written as the lead writer, read back and deleted: chain proven")

    header("6. pulumi preview --refresh --expect-no-changes: nothing left to do")
    console.pulumi("preview", "--refresh", "--expect-no-changes")

    header("7. what Partner Center asks for: pulumi stack output --show-secrets partnerCenter")
    _, text = console.pulumi("stack", "output", "partnerCenter", "--show-secrets", "--json", show=False)
    print("$ pulumi stack output partnerCenter --show-secrets   (secrets masked here)")
    print(json.dumps(masked_partner_center(json.loads(text)), indent=2, sort_keys=True))

    header("8. pulumi destroy: removes what the stack created")
    console.pulumi("destroy", "--yes")
    left = [u for u in control.state(org)["systemusers"] if u.get("systemuserid") == user_id and not u.get("isdisabled")]
    if left:
        raise DemoFailed("destroy left the application user it created enabled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the sandbox's port (default %(default)s)")
    args = parser.parse_args(argv)
    if not PULUMI.exists():
        print("demo: .tools/bin/pulumi is missing: run `make pulumi` (or `make demo`, which builds it)", file=sys.stderr)
        return 2
    started = time.monotonic()

    from sandbox.solution_zip import build_solution_zip, default_zip_path
    from sandbox.testing import start_sandbox

    state_dir = REPO / ".sandbox"
    header("a fresh sandbox, the Lead Writer solution zip, a fresh state for the dev stack")
    zip_path = default_zip_path("1.0.0.0", state_dir=state_dir)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    print(f"solution: {zip_path.relative_to(REPO)}")
    env = pulumi_env()
    print(f"pulumi:   {PULUMI.relative_to(REPO)} {subprocess.run([str(PULUMI), 'version'], env=env, text=True, capture_output=True).stdout.strip()}"
          f", state in {file_backend_dir(env['PULUMI_BACKEND_URL']).relative_to(REPO)}/")
    fresh_backend(env)
    try:
        handle = start_sandbox(state_dir=state_dir, port=args.port)
    except OSError as error:
        print(f"demo: cannot serve the sandbox on port {args.port} ({error.strerror}); "
              f"free it or pass --port N", file=sys.stderr)
        return 2
    info = handle.info
    print(f"sandbox:  {info['instance_url']} (CA {Path(info['ca_bundle']).relative_to(REPO)})")
    console = Console(env, [info["admin_client_secret"], info["leadwriter_client_secret"]])
    code = 0
    try:
        with dev_stack_on_port(console, args.port):
            story(console, handle.control, info["instance_url"].rstrip("/").rsplit("/", 1)[-1])
    except DemoFailed as failure:
        print(f"\ndemo: {failure}", file=sys.stderr)
        code = 1
    finally:
        handle.stop()
    if console.leaks:
        print(f"\ndemo: {console.leaks} line(s) carried a sandbox secret or a token (masked above)", file=sys.stderr)
        code = 1
    header(f"done in {time.monotonic() - started:.1f}s, sandbox stopped" + ("" if code == 0 else " (FAILED)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
