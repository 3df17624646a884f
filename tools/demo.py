"""`make demo`: the dev-stack story end to end against a fresh local sandbox.

Builds the solution zip, starts the sandbox on its default port, then runs the dev stack with the
Pulumi CLI when one is on PATH, otherwise through the rehearsal engine; stops the sandbox at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.rehearsal import Rehearsal, RunResult

from tests.harness.provider_host import Secret

SECRET_FIELDS = {"clientSecret", "password", "applicationKey", "client_secret"}


def header(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(3, 76 - len(text)), flush=True)


def masked_partner_center(value: Any) -> dict[str, Any]:
    inner = value.value if isinstance(value, Secret) else value
    if not isinstance(inner, dict):
        return {}
    return {k: ("[secret]" if k in SECRET_FIELDS or isinstance(v, Secret) else v) for k, v in inner.items()}


def _org_of(instance_url: str) -> str:
    return instance_url.rstrip("/").rsplit("/", 1)[-1]


def run_with_cli(project: Path) -> int:
    env = dict(os.environ, PULUMI_CONFIG_PASSPHRASE="")
    backend = project / ".pulumi-state"
    backend.mkdir(exist_ok=True)
    for cmd in (
        ["pulumi", "login", f"file://{backend}"],
        ["pulumi", "stack", "select", "--create", "dev"],
        ["pulumi", "up", "--yes", "-s", "dev"],
        ["pulumi", "up", "--yes", "-s", "dev"],
        ["pulumi", "preview", "--refresh", "-s", "dev"],
        ["pulumi", "stack", "output", "-s", "dev", "partnerCenter"],
    ):
        header(" ".join(cmd))
        if subprocess.call(cmd, cwd=project, env=env) != 0:
            return 1
    return 0


def story(reh: Rehearsal, control: Any, instance_url: str) -> int:
    org = _org_of(instance_url)

    def step(title: str, verb: str, refresh: bool = False) -> RunResult:
        header(title)
        result = reh.run(verb, refresh=refresh)
        if not result.ok:
            raise SystemExit(f"demo: `{verb}` failed")
        return result

    first = step("1. pulumi up: creates everything", "up")
    print(f"--> {len(first.ops('create'))} created")
    again = step("2. pulumi up again: changes nothing", "up")
    print(f"--> {len(again.changes())} changes")

    header("3. a person clicks in Dynamics")
    state = control.state(org)
    user_id = first.outputs.get("applicationUserId")
    role = next(r for r in state["roles"] if r.get("name") == "Microsoft Marketplace Lead Writer"
                and not r.get("_parentroleid_value"))
    control.drift(org, "remove_role", systemuserid=user_id, roleid=role["roleid"])
    print(f"    removed the role '{role['name']}' from the application user")
    control.drift(org, "set_privilege_depth", roleid=role["roleid"], privilege="prvReadAsyncOperation", depth="Basic")
    print("    lowered prvReadAsyncOperation to User (Basic) depth")
    control.drift(org, "disable_user", systemuserid=user_id)
    print("    disabled the application user")

    preview = step("4. pulumi preview --refresh: shows exactly that drift", "preview", refresh=True)
    print(f"--> drift found: {sorted(s.name for s in preview.ops('refresh-update') + preview.ops('refresh-delete'))}")
    print(f"--> planned: {sorted((s.op, s.name) for s in preview.changes() if not s.op.startswith('refresh'))}")
    log_mark = max((e["seq"] for e in control.log()), default=0)
    repair = step("5. pulumi up --refresh: repairs it, the validation lead proves the chain", "up", refresh=True)
    print(f"--> repaired: {sorted((s.op, s.name) for s in repair.changes() if not s.op.startswith('refresh'))}")
    rechecked = [s for s in repair.steps if s.name.endswith("-check") and s.op in ("create", "replace")]
    if not rechecked or repair.outputs.get("validatedAt") == first.outputs.get("validatedAt"):
        print("demo: the repair did not re-run the validation lead", file=sys.stderr)
        return 1
    leads_since = [e for e in control.log(since=log_mark) if e.get("org") == org and "/leads" in e.get("path", "")]
    wrote = any(e["method"] == "POST" and e["status"] in (201, 204) for e in leads_since)
    deleted = any(e["method"] == "DELETE" and e["status"] == 204 for e in leads_since)
    if not (wrote and deleted) or control.state(org).get("leads"):
        print("demo: no validation lead was written and deleted by the repair", file=sys.stderr)
        return 1
    print(f"--> validation lead written and deleted: chain proven (validatedAt {repair.outputs.get('validatedAt')})")
    clean = step("6. pulumi preview --refresh: nothing left to do", "preview", refresh=True)
    if clean.changes():
        print("demo: the stack did not converge", file=sys.stderr)
        return 1
    header("7. what Partner Center asks for (pulumi stack output partnerCenter)")
    print(json.dumps(masked_partner_center(repair.outputs.get("partnerCenter")), indent=2, sort_keys=True))
    print(f"validatedAt: {repair.outputs.get('validatedAt')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox demo", description=__doc__)
    parser.add_argument("--cwd", default=".")
    parser.add_argument("--port", type=int, default=48443)
    parser.add_argument("--rehearse", action="store_true", help="use the rehearsal engine even if `pulumi` is on PATH")
    args = parser.parse_args(argv)
    project = Path(args.cwd).resolve()
    started = time.monotonic()

    from sandbox.solution_zip import build_solution_zip, default_zip_path
    from sandbox.testing import start_sandbox

    state_dir = project / ".sandbox"
    header("building the Lead Writer solution zip and starting the sandbox")
    zip_path = project / default_zip_path("1.0.0.0", state_dir=state_dir).relative_to(project)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    print(f"solution: {zip_path.relative_to(project)}")
    handle = start_sandbox(state_dir=state_dir, port=args.port)
    try:
        info = handle.info
        print(f"sandbox: {info['instance_url']} (CA {info['ca_bundle']})")
        if shutil.which("pulumi") and not args.rehearse:
            code = run_with_cli(project)
        else:
            print("no `pulumi` CLI on PATH: the dev stack runs through the rehearsal engine "
                  "(dynamic resources driven through the real provider host)")
            state_path = project / ".rehearsal" / "dev.json"
            if state_path.exists():
                state_path.unlink()  # the sandbox starts fresh, so does the stack
            reh = Rehearsal(project, "dev", state_path, echo=print)
            code = story(reh, handle.control, reh.config["lead-destination:instanceUrl"])
    finally:
        handle.stop()
    header(f"done in {time.monotonic() - started:.1f}s, sandbox stopped")
    return code
