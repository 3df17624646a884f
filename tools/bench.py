"""`make bench`: request, write, token, wall-time and fleet figures of the dev stack, from the sandbox request log.

Figures, not assertions, printed beside design.md's targets with the command that reproduces them.
The critical-path model (what no client can avoid on the longest dependency chain) is `CHAIN` below.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sandbox.rehearsal import Rehearsal, RunResult

from sandbox.solution_zip import build_solution_zip
from sandbox.testing import dev_stack_rehearsal, start_sandbox

REPO = Path(__file__).resolve().parent.parent
COMMAND = "make bench   (= .venv/bin/python -m sandbox bench --fleet 50 --latency-ms 100)"
WRITES = {"POST", "PATCH", "PUT", "DELETE"}
LEADWRITER_APP = "0b1f5a3c-5a4d-4e8b-9c6f-5a0d8b0c0b01"
ROLE = "Microsoft Marketplace Lead Writer"

# Critical-path minimum of a cold converge = the import's server-side duration + the sequential Dataverse
# round trips no client can avoid on the longest dependency chain × the added latency. Reads a step can
# send at once count as one round trip; token requests go to Entra, which gets no added latency.
#   SolutionImport 3: lookup by unique name (adopt), import start, one status read once the server is done
#   RolePrivileges 3: role lookup, current depths, one privilege write        (needs the solution's role)
#   LeadWriteCheck 3: lead create (as the lead writer), read back, delete    (needs role + privileges)
# The other branch, ApplicationUser 2 (lookup, create; alongside the import) -> SecurityRoleAssignment 2
# (role copy lookup, associate) -> LeadWriteCheck, is shorter (the user is done before the import).
CHAIN = (("SolutionImport", 3), ("RolePrivileges", 3), ("LeadWriteCheck", 3))
CHAIN_ROUND_TRIPS = sum(n for _, n in CHAIN)
# Service protection for the fleet, per caller per organization, small enough that it really throttles.
FLEET_THROTTLE = {"window_seconds": 2, "max_requests": 6, "max_concurrent": 2, "retry_after": 1}
FLEET_WORKERS = 10
# A request logged within this time of a 429's answer may have left its client before that answer was
# read: the server stamps requests from WSGI threads that share two cores (and this process's GIL) with
# ten rehearsal engines, so arrival stamps lag by up to tens of ms under the fleet's load.
KNOWN_SLACK_SECONDS = 0.05


def is_poll(entry: dict[str, Any]) -> bool:
    """Import-status polls: GETs of asyncoperations and importjobs."""
    path = entry.get("path", "").lower()
    return entry.get("method") == "GET" and ("/asyncoperations" in path or "/importjobs" in path)


def figures(entries: list[dict[str, Any]]) -> dict[str, int]:
    dv = [e for e in entries if e.get("kind") == "dataverse"]
    return {
        "dataverse": sum(1 for e in dv if not is_poll(e)),
        "polls": sum(1 for e in dv if is_poll(e)),
        "tokens": sum(1 for e in entries if e.get("kind") == "entra" and e.get("path", "").endswith("/token")),
        "writes": sum(1 for e in dv if e.get("method") in WRITES),
        "reads": sum(1 for e in dv if e.get("method") == "GET"),
        "throttled": sum(1 for e in entries if e.get("status") == 429),
    }


def span_seconds(entries: list[dict[str, Any]]) -> float:
    """From the first request's arrival to the last answer, over every logged request."""
    timed = [e for e in entries if e.get("kind") in ("dataverse", "entra", "partnercenter")]
    if not timed:
        return 0.0
    return max(e["time"] + e["duration_ms"] / 1000 for e in timed) - min(e["time"] for e in timed)


def retry_after_split(entries: list[dict[str, Any]]) -> tuple[int, int]:
    """Requests inside a Retry-After window: (already in flight when the 429 was answered, sent after it).

    A request arriving inside the window of a 429 whose answer had left the server (plus loopback slack)
    before it arrived was sent by a client that could have known that window; one inside only windows
    answered later (sending while throttled extends the wait) was already on its way.
    """
    answers: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for e in entries:
        if e.get("status") == 429 and e.get("throttled_until"):
            answered = e["time"] + e["duration_ms"] / 1000
            answers.setdefault((e.get("org"), e.get("caller")), []).append((answered, e["throttled_until"]))
    in_flight = after = 0
    for e in entries:
        if not e.get("inside_retry_after"):
            continue
        windows = answers.get((e.get("org"), e.get("caller")), [])
        known = [w for w in windows if w[0] + KNOWN_SLACK_SECONDS < e["time"] < w[1]]
        if known:
            after += 1
        else:
            in_flight += 1
    return in_flight, after


def duplicates(state: dict[str, Any]) -> dict[str, int]:
    users = [u for u in state["systemusers"] if u.get("applicationid") == LEADWRITER_APP]
    role_ids = {r["roleid"] for r in state["roles"] if r.get("name") == ROLE}
    user_ids = {u["systemuserid"] for u in users}
    held = [a for a in state["assignments"] if a["systemuserid"] in user_ids and a["roleid"] in role_ids]
    return {"users": max(0, len(users) - 1), "associations": max(0, len(held) - 1), "leads": len(state["leads"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox bench", description=__doc__)
    parser.add_argument("--fleet", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=100)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    zip_path = tmp / "solution.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    with start_sandbox(state_dir=tmp / "sandbox", port=0) as sb:
        control = sb.control

        def rehearsal(org_url: str, name: str) -> Rehearsal:
            return dev_stack_rehearsal(sb.info, org_url, solution_zip=zip_path, state_path=tmp / f"{name}.json",
                                       key_path=tmp / "key")

        def failed(label: str, result: RunResult) -> None:
            if not result.ok:
                tail = [ln.strip() for ln in result.text.splitlines() if ln.strip().startswith("error:")]
                notes.append(f"{label} failed: {'; '.join(tail) or 'see the run output'}")

        # 1. cold converge, then no-change refresh + preview
        url = control.add_org("benchcold")
        control.clear_log()
        reh = rehearsal(url, "cold")
        cold = reh.run("up")
        failed("cold converge", cold)
        cold_f = figures(control.log())
        control.clear_log()
        failed("refresh", reh.run("refresh"))
        failed("preview", reh.run("preview"))
        quiet = figures(control.log())
        managed = len([s for s in cold.steps if s.op != "failed"])
        rows += [
            ("cold converge: Dataverse requests (besides polls)", str(cold_f["dataverse"]), "≤ 15"),
            ("cold converge: import-status polls", str(cold_f["polls"]), "(figure: GETs of asyncoperations/importjobs)"),
            ("cold converge: token requests", str(cold_f["tokens"]), "1 per (identity, audience)"),
            ("no-change refresh + preview: writes", str(quiet["writes"]), "0"),
            ("no-change refresh + preview: reads", f"{quiet['reads']} for {managed} resources", "≤ 1 per resource"),
        ]

        # 2. wall time with added latency vs the critical-path minimum
        import_seconds = float(control.settings()["import_seconds"])
        control.settings(latency_ms=args.latency_ms)
        url = control.add_org("benchlatency")
        control.clear_log()
        started = time.monotonic()
        slow = rehearsal(url, "latency").run("up")
        wall = time.monotonic() - started
        span = span_seconds(control.log())
        control.settings(latency_ms=0)
        failed("latency converge", slow)
        minimum = import_seconds + CHAIN_ROUND_TRIPS * args.latency_ms / 1000
        rows += [
            (f"critical path at {args.latency_ms} ms/request",
             f"{minimum:.2f}s = import {import_seconds:.1f}s + {CHAIN_ROUND_TRIPS} round trips", "(model, see bench.py)"),
            ("converge wall time: first to last request", f"{span:.2f}s (×{span / minimum:.2f})", "≤ 1.2 × critical path"),
            ("converge wall time: whole `up` (engine start incl.)", f"{wall:.2f}s (×{wall / minimum:.2f})", "(figure)"),
        ]

        # 3. fleet under service protection (per caller per organization)
        urls = [control.add_org(f"fleet{i:03d}") for i in range(args.fleet)]
        control.settings(throttle=FLEET_THROTTLE)
        control.clear_log()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(args.fleet, FLEET_WORKERS)) as pool:
            results = list(pool.map(lambda iu: rehearsal(iu[1], f"fleet{iu[0]}").run("up"), enumerate(urls)))
        elapsed = time.monotonic() - started
        log = control.log()
        control.settings(throttle=None)
        fleet_f = figures(log)
        in_flight, after = retry_after_split(log)
        dup = {"users": 0, "associations": 0, "leads": 0}
        for u in urls:
            for key, count in duplicates(control.state(u)).items():
                dup[key] += count
        for i, result in enumerate(results):
            failed(f"fleet{i:03d}", result)
        fleet_failures = sum(1 for r in results if not r.ok)
        throttle = ", ".join(f"{k}={v}" for k, v in FLEET_THROTTLE.items())
        rows += [
            (f"fleet of {args.fleet}: failures", str(fleet_failures), "0"),
            (f"fleet of {args.fleet}: duplicates (users/associations/leads)",
             f"{dup['users']}/{dup['associations']}/{dup['leads']}", "0"),
            (f"fleet of {args.fleet}: 429 answers", str(fleet_f["throttled"]), f"(figure; throttle {throttle})"),
            (f"fleet of {args.fleet}: sent after a known Retry-After window", str(after), "0"),
            (f"fleet of {args.fleet}: in flight when the 429 was answered", str(in_flight), "(figure)"),
            (f"fleet of {args.fleet}: organizations per minute",
             f"{args.fleet / elapsed * 60:.0f} ({FLEET_WORKERS} at once)", "(figure)"),
        ]
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"command: {COMMAND}")
    print(f"{'figure'.ljust(width)}  {'measured'.ljust(vwidth)}  target (design.md)")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value.ljust(vwidth)}  {target}")
    for note in notes:
        print(f"note: {note}")
    return 0
