"""`python -m fleet add|preview|up|status|doctor|matrix`: the command line."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleet import inline
from fleet.doctor import CHECKS, printable, run_doctor
from fleet.locks import parse_age
from fleet.onboard import Row, onboard, read_inventory, set_path
from fleet.progress import Progress, progress_for
from fleet.report import (
    DRIFTED,
    FAILED,
    LOCKED,
    StackResult,
    doctor_headline,
    doctor_markdown,
    headline,
    line,
    markdown,
    status_markdown,
    write_json,
)
from fleet.runner import PREVIEW, UP, Interrupted, run_fleet
from fleet.status import stack_status
from fleet.workspace import FleetError, Workspace

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ATTENTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_LOCKED = 4
GITHUB_MATRIX_LIMIT = 256  # jobs one matrix may generate
# Stacks at a time: 3 per core, 4 to 16. A cold stack mostly waits (on the solution import), a warm preview
# mostly computes (Pulumi's CLI and provider processes). make bench, fleet of 50 on 2 cores, quiet machine
# (2026-12-06): 4 / 6 / 8 at a time gave cold up 35.0 / 50.4 / 59.3 organizations per minute and warm preview
# 84.5 / 80.7 / 74.2; 6 is the one meeting both targets (≥ 40, ≥ 80). Each stack is its own organization, so
# Dataverse's service protection (per caller per organization) does not tighten with it.
DEFAULT_PARALLEL = min(16, max(4, 3 * (os.cpu_count() or 2)))
DEFAULT_PROGRAM_HOST = inline.INLINE

EPILOG = """\
exit codes:
  0  every stack in sync (preview), converged (up), created (add), nothing flagged (status), ready (doctor)
  1  at least one stack failed (doctor: a check failed), or an inventory row was bad
  2  usage error: bad arguments, no stack matches a pattern, unreadable inventory, no Pulumi CLI
  3  no failure, but something needs a look: drift found (preview), flags raised (status), warnings (doctor)
  4  no failure, but another run holds the lock of some stacks (up): reported `locked`, with the owner
  130  interrupted (Ctrl-C): running stacks cancel the Pulumi way, the others are reported not run

The stacks are the project's ordinary stacks in the backend your Pulumi uses (PULUMI_BACKEND_URL or
`pulumi login`, PULUMI_CONFIG_PASSPHRASE[_FILE] or the stack's secrets provider, PULUMI_HOME). Stacks are
never selected: your current stack stays what it was.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-C", "--cwd", type=Path, default=Path.cwd(), metavar="DIR",
                        help="the Pulumi project directory (default: the current directory)")
    parser.add_argument("--json", type=Path, metavar="PATH", dest="json_path",
                        help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="write the Markdown report here (e.g. \"$GITHUB_STEP_SUMMARY\")")


def _runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("patterns", nargs="*", metavar="STACK-PATTERN",
                        help="stack names or globs (e.g. 'contoso-*'); default every stack of the project")
    parser.add_argument("-p", "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"stacks at a time (default {DEFAULT_PARALLEL})")
    parser.add_argument("--no-refresh", dest="refresh", action="store_false",
                        help="skip reading the real objects first (no drift detection)")
    parser.add_argument("--log-dir", type=Path, metavar="DIR",
                        help="where each stack's log goes (default .fleet/logs/<time>-<command> in the project)")
    parser.add_argument("--program-host", choices=inline.HOSTS, default=DEFAULT_PROGRAM_HOST,
                        help="where each stack's program runs: 'inline' in this process (Pulumi's Automation API "
                             "serves it to the CLI; no language host and no Python interpreter per stack), or "
                             "'process': the CLI starts the project's language host, which runs __main__.py in a "
                             f"Python process per stack, as the plain CLI does (default {DEFAULT_PROGRAM_HOST}). "
                             "Inline applies only when the project directory holds this fleet's own program")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fleet", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Fleet operations on this project's stacks, one stack per customer organization.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = sub.add_parser("add", help="create a customer's stack, or many from a CSV/YAML inventory",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    add.add_argument("name", nargs="?", metavar="NAME", help="the new stack's name")
    add.add_argument("--from", dest="inventory", type=Path, metavar="FILE",
                     help="a CSV or YAML inventory, one stack per row (see docs)")
    add.add_argument("--instance-url", help="the customer's Dynamics 365 organization URL")
    add.add_argument("--contact-email", action="append", default=[], metavar="EMAIL",
                     help="a lead notification address (repeatable)")
    add.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                     help="any other setting, dotted for object fields (solution.path=./x.zip); repeatable")
    add.add_argument("--secret", action="append", default=[], metavar="KEY[=VALUE]",
                     help="a secret setting, stored encrypted; without =VALUE it is prompted for (repeatable)")
    add.add_argument("--copy-config-from", metavar="STACK",
                     help="start from that stack's settings (shared deployer identity, solution, …)")
    add.add_argument("--secrets-provider", metavar="URL", help="as `pulumi stack init --secrets-provider`")
    add.add_argument("--skip-invalid", action="store_true",
                     help="with --from: create the good rows even if others are bad")
    add.add_argument("-p", "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                     help=f"stacks created at a time (default {DEFAULT_PARALLEL})")
    _common(add)

    for verb, text in ((PREVIEW, "drift review: `pulumi preview --refresh` of every selected stack"),
                       (UP, "converge: `pulumi up --refresh` of every selected stack")):
        cmd = sub.add_parser(verb, help=text, description=text, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        _runs(cmd)
        if verb == UP:
            cmd.add_argument("--recover-stale-locks-older-than", type=_age, metavar="AGE", dest="recover_older_than",
                             help="for a stack locked by a run that died (lock at least AGE old, e.g. 30m, 2h, "
                                  "its process not alive on this machine): pulumi cancel, refresh "
                                  "--clear-pending-creates, then the up. Only when no such run can be alive")
        _common(cmd)

    status = sub.add_parser("status", help="credential expiry and rotation, last validation, offer lead destination",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("patterns", nargs="*", metavar="STACK-PATTERN")
    status.add_argument("--days", type=int, default=30, metavar="N",
                        help="flag what expires within N days or was not validated for N days (default 30)")
    status.add_argument("-p", "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N")
    _common(status)

    doctor = sub.add_parser("doctor", help="read-only preflight of each stack's organization before `pulumi up`",
                            description="Read-only preflight, per stack: the deploying identity signs in and is "
                            "System Administrator, the Web API version, the Lead Writer solution, its role, the "
                            "privileges spec, the lead writer app's sign-in, the Partner Center offer. Sends token "
                            "requests and GETs only.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("patterns", nargs="*", metavar="STACK-PATTERN",
                        help="stack names or globs (e.g. 'contoso-*'); default every stack of the project")
    doctor.add_argument("-p", "--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"stacks at a time (default {DEFAULT_PARALLEL})")
    _common(doctor)

    matrix = sub.add_parser("matrix", help="the stacks as a CI matrix (JSON on stdout)")
    matrix.add_argument("patterns", nargs="*", metavar="STACK-PATTERN")
    matrix.add_argument("--shards", type=int, metavar="N",
                        help=f"split into N jobs (default one job per stack, at most {GITHUB_MATRIX_LIMIT})")
    matrix.add_argument("-C", "--cwd", type=Path, default=Path.cwd(), metavar="DIR")
    return parser


def _age(text: str) -> dt.timedelta:
    try:
        return parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ws = Workspace(args.cwd)
        command = {"add": _add, PREVIEW: _run, UP: _run, "status": _status, "doctor": _doctor,
                   "matrix": _matrix}[args.command]
        return command(ws, args)
    except FleetError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return EXIT_USAGE


# --- commands -------------------------------------------------------------------------------------
def _reports(args: argparse.Namespace, verb: str, results: list[StackResult], seconds: float,
             log_dir: Path | None = None, days: int | None = None) -> None:
    if args.json_path:
        write_json(args.json_path, results)
        print(f"JSON report: {args.json_path}")
    if args.markdown:
        if verb == "doctor":
            text = doctor_markdown(results, seconds, CHECKS)
        elif days is not None:
            text = status_markdown(results, seconds, days)
        else:
            text = markdown(verb, results, seconds, log_dir)
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"Markdown report: {args.markdown}")


def _stacks_to_run(ws: Workspace, args: argparse.Namespace) -> list[str]:
    if args.parallel < 1:
        raise FleetError("--parallel must be at least 1")
    names = ws.select(args.patterns)
    if not names:
        raise FleetError("the project has no stacks yet: fleet add NAME --instance-url URL, or fleet add --from FILE")
    return names


def _with_progress(args: argparse.Namespace, names: list[str], note: str,
                   work: Callable[[Progress], list[StackResult]]) -> tuple[list[StackResult], float, bool]:
    """`work` under the command's progress display: (results, seconds, interrupted by Ctrl-C)."""
    progress = progress_for(args.command, names)
    progress.start(min(args.parallel, len(names)), note)
    started = time.monotonic()
    try:
        results, interrupted = work(progress), False
    except Interrupted as stop:
        results, interrupted = stop.results, True
    finally:
        progress.close()
    return results, time.monotonic() - started, interrupted


def _run(ws: Workspace, args: argparse.Namespace) -> int:
    names = _stacks_to_run(ws, args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = (args.log_dir or ws.dir / ".fleet" / "logs" / f"{stamp}-{args.command}").resolve()
    program, hosted = inline.choose(ws.dir, args.program_host)
    results, seconds, interrupted = _with_progress(
        args, names, f"; {hosted}; logs in {log_dir}",
        lambda progress: run_fleet(ws, names, args.command, parallel=args.parallel, log_dir=log_dir,
                                   progress=progress, refresh=args.refresh,
                                   recover_older_than=getattr(args, "recover_older_than", None),
                                   program=program))
    print(headline(args.command, results, seconds) + (" (interrupted)" if interrupted else ""))
    _reports(args, args.command, results, seconds, log_dir)
    if interrupted:
        return EXIT_INTERRUPTED
    if any(r.status == FAILED for r in results):
        return EXIT_FAILED
    if any(r.status == LOCKED for r in results):
        return EXIT_LOCKED
    if args.command == PREVIEW and any(r.status == DRIFTED for r in results):
        return EXIT_ATTENTION
    return EXIT_OK


def _add(ws: Workspace, args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.inventory):
        raise FleetError("give either NAME (one stack) or --from FILE (an inventory)")
    single = args.inventory is None
    if single:
        row = Row("command line", args.name)
        if args.instance_url:
            row.settings["instanceUrl"] = args.instance_url
        if args.contact_email:
            row.settings["contactEmails"] = list(args.contact_email)
        for item in args.config:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise FleetError(f"--config {item!r}: use KEY=VALUE")
            set_path(row.settings, key.strip(), value)
        for item in args.secret:
            key, sep, value = item.partition("=")
            if not key.strip():
                raise FleetError(f"--secret {item!r}: use KEY or KEY=VALUE")
            if not sep:
                if not sys.stdin.isatty():
                    raise FleetError(f"--secret {key}: no terminal to prompt on; use --secret {key}=VALUE")
                value = getpass.getpass(f"{key} (secret): ")
            row.settings[key.strip()] = value
            row.secret_keys.add(key.strip().split(":", 1)[-1])
        if "instanceUrl" not in row.settings:
            raise FleetError("--instance-url is required (the customer's Dynamics 365 organization URL)")
        rows = [row]
    else:
        if args.instance_url or args.contact_email or args.config or args.secret:
            raise FleetError("with --from, put settings in the inventory (or in a stack named by --copy-config-from)")
        rows = read_inventory(args.inventory)
        if not rows:
            raise FleetError(f"inventory {args.inventory} has no rows")
    started = time.monotonic()
    results = onboard(ws, rows, skip_invalid=args.skip_invalid, secrets_provider=args.secrets_provider,
                      copy_config_from=args.copy_config_from, single=single, out=sys.stdout,
                      parallel=args.parallel)
    seconds = time.monotonic() - started
    print(headline("add", results, seconds))
    _reports(args, "add", results, seconds)
    return EXIT_FAILED if any(r.status == FAILED for r in results) else EXIT_OK


def _status(ws: Workspace, args: argparse.Namespace) -> int:
    names = ws.select(args.patterns)
    today = dt.datetime.now(dt.UTC).date()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = list(pool.map(lambda n: stack_status(ws, n, days=args.days, today=today), names))
    seconds = time.monotonic() - started
    width = min(max((len(n) for n in names), default=0), 40)
    for r in results:
        d = r.details or {}
        facts = [d.get("credential")]
        if d.get("expires_on"):
            facts.append(f"expires {d['expires_on']}")
        if d.get("rotates_on"):
            facts.append(f"next rotation {d['rotates_on']}")
        facts.append(f"validated {d.get('validated_at') or 'never'}")
        facts.append(f"offer {d.get('offer')}")
        text = line(r, width) if r.status == FAILED else f"{r.name.ljust(width)}  " + "; ".join(f for f in facts if f)
        print(text)
        for flag in r.flags or []:
            print(f"{''.ljust(width)}  ⚠ {flag}")
    flagged = sum(1 for r in results if r.flags)
    print(f"fleet status: {len(results)} stack(s), {flagged} flagged (within {args.days} days), "
          f"{sum(1 for r in results if r.status == FAILED)} failed")
    _reports(args, "status", results, seconds, days=args.days)
    if any(r.status == FAILED for r in results):
        return EXIT_FAILED
    return EXIT_ATTENTION if flagged else EXIT_OK


def _doctor(ws: Workspace, args: argparse.Namespace) -> int:
    names = _stacks_to_run(ws, args)
    results, seconds, interrupted = _with_progress(
        args, names, "; read-only", lambda progress: run_doctor(ws, names, parallel=args.parallel, progress=progress))
    print()
    for result in results:
        print("\n".join(printable(result)))
    print(doctor_headline(results, seconds) + (" (interrupted)" if interrupted else ""))
    _reports(args, "doctor", results, seconds)
    if interrupted:
        return EXIT_INTERRUPTED
    if any(r.status == FAILED for r in results):
        return EXIT_FAILED
    return EXIT_ATTENTION if any(r.status == DRIFTED for r in results) else EXIT_OK


def shards(names: Sequence[str], count: int | None) -> list[dict[str, object]]:
    """Stacks dealt round-robin (sorted by name) into `count` shards: {"shard": i, "stacks": "a b c"}."""
    names = sorted(names)
    count = min(count or len(names), len(names), GITHUB_MATRIX_LIMIT)
    groups = [names[i::count] for i in range(count)] if count else []
    return [{"shard": i + 1, "stacks": " ".join(g)} for i, g in enumerate(groups) if g]


def _matrix(ws: Workspace, args: argparse.Namespace) -> int:
    if args.shards is not None and args.shards < 1:
        raise FleetError("--shards must be at least 1")
    names = ws.select(args.patterns)
    print(json.dumps({"include": shards(names, args.shards)}))
    return EXIT_OK
