"""`make bench`: request, write, token and wall-time figures of the dev stack, from the sandbox request log.

Figures, not assertions; printed beside the targets of design.md. Critical-path minimum = the longest
dependency chain of the stack, each step counted at the minimum requests it must make, × the latency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sandbox.rehearsal import Rehearsal
from sandbox.solution_zip import build_solution_zip
from sandbox.testing import stack_config, start_sandbox

REPO = Path(__file__).resolve().parent.parent
WRITES = {"POST", "PATCH", "PUT", "DELETE"}
# Minimum Dataverse requests per step on the longest chain of a cold converge (a lookup before every
# non-idempotent write, an import start, one status read, the user create, the association, one
# privilege write, one lead create + read + delete):
# SolutionImport 3 (lookup, import, solution read) → ApplicationUser 2 (lookup, create) →
# SecurityRoleAssignment 2 (role copy lookup, associate) → LeadWriteCheck 3 (create, read, delete).
CRITICAL_PATH_REQUESTS = 3 + 2 + 2 + 3


def _is_poll(entry: dict[str, Any]) -> bool:
    return "asyncoperation" in entry.get("path", "").lower() and entry.get("method") == "GET"


def figures(entries: list[dict[str, Any]]) -> dict[str, int]:
    dv = [e for e in entries if e.get("kind") == "dataverse"]
    return {
        "dataverse": sum(1 for e in dv if not _is_poll(e)),
        "polls": sum(1 for e in dv if _is_poll(e)),
        "tokens": sum(1 for e in entries if e.get("kind") == "entra" and "token" in e.get("path", "")),
        "writes": sum(1 for e in dv if e.get("method") in WRITES),
        "reads": sum(1 for e in dv if e.get("method") == "GET"),
        "inside_retry_after": sum(1 for e in entries if e.get("inside_retry_after")),
        "throttled": sum(1 for e in entries if e.get("status") == 429),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox bench", description=__doc__)
    parser.add_argument("--fleet", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=100)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    zip_path = tmp / "solution.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    rows: list[tuple[str, str, str]] = []
    with start_sandbox(state_dir=tmp / "sandbox", port=0) as sb:
        control = sb.control

        def rehearsal(org_url: str, name: str) -> Rehearsal:
            ov = stack_config(sb.info, org_url)
            ov["lead-destination:solution"] = json.dumps({"path": str(zip_path)})
            return Rehearsal(REPO, "dev", tmp / f"{name}.json", ov, key_path=tmp / "key")

        # 1. cold converge, then no-change refresh + preview
        url = control.add_org("benchcold")
        control.clear_log()
        reh = rehearsal(url, "cold")
        cold = reh.run("up")
        cold_f = figures(control.log())
        control.clear_log()
        reh.run("refresh")
        reh.run("preview")
        quiet = figures(control.log())
        managed = len([s for s in cold.steps if s.op != "failed"])
        rows += [
            ("cold converge: Dataverse requests (besides polls)", str(cold_f["dataverse"]), "≤ 15"),
            ("cold converge: import-status polls", str(cold_f["polls"]), "few (poll ≤ 1 s, capped backoff)"),
            ("cold converge: token requests", str(cold_f["tokens"]), "1 per (identity, audience)"),
            ("no-change refresh + preview: writes", str(quiet["writes"]), "0"),
            ("no-change refresh + preview: reads", f"{quiet['reads']} for {managed} resources", "≤ 1 per resource"),
        ]

        # 2. wall time with added latency vs the critical-path minimum
        control.settings(latency_ms=args.latency_ms)
        url = control.add_org("benchlatency")
        started = time.monotonic()
        slow = rehearsal(url, "latency").run("up")
        wall = time.monotonic() - started
        control.settings(latency_ms=0)
        minimum = CRITICAL_PATH_REQUESTS * args.latency_ms / 1000
        rows.append((f"converge wall time at {args.latency_ms} ms/request",
                     f"{wall:.1f}s vs critical path {minimum:.1f}s (×{wall / minimum:.2f}){'' if slow.ok else ' FAILED'}",
                     "≤ 1.2 × critical path"))

        # 3. fleet under service protection
        control.settings(throttle={"window_seconds": 5, "max_requests": 600, "max_concurrent": 52, "retry_after": 2})
        urls = [control.add_org(f"fleet{i:03d}") for i in range(args.fleet)]
        control.clear_log()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(args.fleet, 10)) as pool:
            results = list(pool.map(lambda iu: rehearsal(iu[1], f"fleet{iu[0]}").run("up"), enumerate(urls)))
        elapsed = time.monotonic() - started
        fleet_f = figures(control.log())
        duplicates = 0
        for u in urls:
            users = [x for x in control.state(u.rsplit("/", 1)[-1])["systemusers"]
                     if x.get("applicationid") == "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"]
            duplicates += max(0, len(users) - 1)
        failures = sum(1 for r in results if not r.ok)
        rows += [
            (f"fleet of {args.fleet}: failures", str(failures), "0"),
            (f"fleet of {args.fleet}: duplicate application users", str(duplicates), "0"),
            (f"fleet of {args.fleet}: requests inside a Retry-After window", str(fleet_f["inside_retry_after"]), "0"),
            (f"fleet of {args.fleet}: 429 answers", str(fleet_f["throttled"]), "(figure)"),
            (f"fleet of {args.fleet}: organizations per minute", f"{args.fleet / elapsed * 60:.0f}", "(figure)"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure'.ljust(width)}  {'measured':30}  target (design.md)")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:30}  {target}")
    return 0
