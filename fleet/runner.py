"""Run `preview --refresh` or `up --refresh` on many stacks at once through the Automation API, with
bounded parallelism: each stack's run is its own `pulumi` process with its own log file, one stack's
failure is recorded as its result and never stops or spoils the others. A stack another run holds
(its lock) is reported `locked` with the lock's owner, never attempted twice over the other run."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from fleet.events import EventCollector
from fleet.locks import (
    Lock,
    contended,
    describe_age,
    describe_duration,
    pending_creates,
    recovery_commands,
    refusal_locks,
)
from fleet.progress import Progress
from fleet.report import CHANGED, DRIFTED, FAILED, IN_SYNC, LOCKED, StackResult, failure_reason
from fleet.workspace import Workspace, _NamedStack

PREVIEW, UP = "preview", "up"
CONTENTION_RETRIES = 2  # tries again after both runs of a simultaneous start gave way (see fleet.locks)


def log_name(stack: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stack) + ".log"


class _RunStack(_NamedStack):
    """The stack for one fleet run. After `pulumi up`, Pulumi's `Stack.up` runs three more CLI processes:
    `stack output --json` twice (masked, then with --show-secrets) and `stack history --page-size 1` for
    its summary; each decrypts the config and reads the whole checkpoint again (~0.25 s of CPU apiece,
    most of a cold stack's CLI time). The fleet reads neither outputs nor history: the summary comes from
    the run's own engine events (the `summaryEvent`, the same counts the history entry records)."""

    def __init__(self, name: str, workspace: auto.LocalWorkspace) -> None:  # noqa: D107
        super().__init__(name, workspace)
        self.resource_changes: dict[Any, int] = {}
        self._started = dt.datetime.now(dt.UTC)

    def seen(self, event: auto.EngineEvent) -> None:
        if event.summary_event is not None:
            self.resource_changes = dict(event.summary_event.resource_changes or {})

    def outputs(self) -> auto.OutputMap:
        return {}

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary:  # noqa: ARG002 - nothing secret in it
        return auto.UpdateSummary(kind="update", start_time=self._started, message="", environment={}, config={},
                                  result="succeeded", end_time=dt.datetime.now(dt.UTC),
                                  resource_changes=self.resource_changes)


def run_stack(ws: Workspace, name: str, verb: str, log_dir: Path, *, refresh: bool = True,
              on_activity: Callable[[str], None] | None = None,
              recover_older_than: dt.timedelta | None = None,
              program: Callable[[], None] | None = None) -> StackResult:
    """One stack's `pulumi preview|up [--refresh] --diff`, its output kept in `log_dir/<stack>.log`.

    `program`: the stack's program, hosted in this process (fleet.inline); None: the CLI starts the
    project's language host and runs `__main__.py` in a process of its own.

    Refused by another run's lock: `locked`, with the lock's owner and the pending creates; with
    `recover_older_than`, a lock at least that old whose holder is not known to be alive is removed the
    README's way (cancel, refresh --clear-pending-creates) and the run goes on.
    """
    started = time.monotonic()
    log_path = log_dir / log_name(name)
    stderr: list[str] = []
    lock = threading.Lock()
    recovered: dict[str, Any] | None = None
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"$ pulumi {verb} --stack {name}{' --refresh' if refresh else ''} --diff\n")

        def out(text: str) -> None:
            with lock:
                log.write(text + "\n")
                log.flush()

        def err(text: str) -> None:
            stderr.append(text)
            out(text)

        stack = _RunStack(name, ws.automation)
        retries = CONTENTION_RETRIES
        while True:
            collector = EventCollector(on_activity)

            def on_event(event: auto.EngineEvent, collector: EventCollector = collector) -> None:
                stack.seen(event)
                collector(event)

            kwargs: dict[str, Any] = {"diff": True, "refresh": refresh or None, "on_event": on_event,
                                      "on_output": out, "on_error": err, "program": program}
            attempt_started = dt.datetime.now(dt.UTC)
            stderr.clear()
            try:
                result = stack.preview(**kwargs) if verb == PREVIEW else stack.up(**kwargs)
                break
            except auto.errors.CommandError as error:
                text = "\n".join(stderr) or str(error)
                locks = refusal_locks(text)
                if locks is None:
                    code = _exit_code(error)
                    reason = ws.explained(failure_reason(collector.diagnostics, text, code))
                    out(f"# fleet: failed: {reason}")
                    return StackResult(name, FAILED, collector.changes(), reason, time.monotonic() - started,
                                       log_path, lock=recovered)
                if retries and contended(locks, attempt_started) and not _updated_since(ws, name, attempt_started):
                    retries -= 1
                    out("# fleet: another run took the lock at the same moment; trying again")
                    # A random back-off breaks the tie of two runs that both gave way (not a synchronisation:
                    # nothing to wait for; the next attempt either takes the lock or meets the winner's).
                    time.sleep(random.uniform(0.5, 3.0))  # noqa: S311 - not cryptographic
                    continue
                if recover_older_than is not None and recovered is None and _stale(locks, recover_older_than):
                    recovered, failure = _recover(ws, name, locks, out)
                    if failure:
                        return StackResult(name, FAILED, [], failure, time.monotonic() - started, log_path,
                                           lock=recovered)
                    continue
                result_locked = _locked(ws, name, locks, recover_older_than)
                out(f"# fleet: locked: {result_locked.error}")
                result_locked.duration_s, result_locked.log = time.monotonic() - started, log_path
                return result_locked
            except Exception as error:  # the CLI could not even start: say so, keep the fleet going
                reason = f"{type(error).__name__}: {error}"
                out(f"# fleet: failed: {reason}")
                return StackResult(name, FAILED, collector.changes(), reason, time.monotonic() - started, log_path)
    changes = collector.changes()
    summary = _summary(result)
    pending = any(count for op, count in summary.items() if op not in ("same", "read"))
    if verb == PREVIEW:
        status = DRIFTED if changes or pending else IN_SYNC
    else:
        status = CHANGED if changes or pending else IN_SYNC
    return StackResult(name, status, changes, None, time.monotonic() - started, log_path, lock=recovered,
                       pending=recovered.get("pending") if recovered else None)


# --- locks ---------------------------------------------------------------------------------------------
def _updated_since(ws: Workspace, name: str, since: dt.datetime) -> bool:
    """Whether the stack's history has an update that began at or after `since` (to the second)."""
    try:
        history = json.loads(ws.pulumi("stack", "history", "--json", "--page-size", "1", stack=name) or "[]")
    except (auto.errors.CommandError, ValueError):
        return False
    for entry in history[:1]:
        try:
            began = dt.datetime.fromisoformat(str(entry.get("startTime"))).astimezone(dt.UTC)
        except ValueError:
            return False
        return began >= since.replace(microsecond=0)
    return False


def _stale(locks: list[Lock], older_than: dt.timedelta) -> bool:
    """Every lock is at least `older_than` old and none is held by a process known to be alive."""
    for lk in locks:
        age = lk.age()
        if age is None or age < older_than or lk.holder_alive():
            return False
    return True


def _pending(ws: Workspace, name: str) -> list[str]:
    try:
        return pending_creates(ws.export(name))
    except (auto.errors.CommandError, ValueError):
        return []


def _recover(ws: Workspace, name: str, locks: list[Lock], out: Callable[[str], None]) -> tuple[dict[str, Any], str | None]:
    """`pulumi cancel`, then `pulumi refresh --clear-pending-creates` when creates are pending: the
    README's recovery before the run goes on. (lock record, failure reason or None)."""
    pending = _pending(ws, name)
    record = {**locks[0].to_json(), "recovered": True, "pending": pending}
    for command in recovery_commands(name, pending)[:-1]:  # the last one, `up`, is the run itself
        argv = [a for a in command.split()[1:] if a not in ("--stack", name)]
        out(f"# fleet: stale lock of {locks[0].owner} ({describe_age(locks[0].age())}): {command}")
        try:
            ws.pulumi(*argv, stack=name)
        except auto.errors.CommandError as error:
            return record, f"recovery step `{command}` failed: {ws.cli_failure(str(error))}"
    return record, None


def _locked(ws: Workspace, name: str, locks: list[Lock], recover_older_than: dt.timedelta | None) -> StackResult:
    """The `locked` result: who holds the stack since when, whether that holder is gone, the pending
    creates, and what to run when the holder is dead."""
    first = locks[0]
    pending = _pending(ws, name)
    alive = first.holder_alive()
    text = f"locked by {first.owner}"
    if first.since is not None:
        text += f" since {first.since.strftime('%Y-%m-%dT%H:%M:%SZ')} ({describe_age(first.age())})"
    if len(locks) > 1:
        text += f" and {len(locks) - 1} other lock(s)"
    if pending:
        text += f"; pending creates: {', '.join(pending)}"
    commands = " && ".join(recovery_commands(name, pending))
    if alive:
        text += "; that run is still in progress"
    elif alive is False:
        text += f"; that process no longer runs (stale lock): run {commands}, or fleet up --recover-stale-locks-older-than N"
    elif first.host is not None:
        text += f"; if that run is dead: {commands}, or fleet up --recover-stale-locks-older-than N"
    if recover_older_than is not None and alive is not True and not _stale(locks, recover_older_than):
        text += f" (not {describe_duration(recover_older_than)} old yet: not recovered)"
    lock = {**first.to_json(), "count": len(locks), "recovered": False,
            "recovery": recovery_commands(name, pending) if alive is not True and first.host else []}
    return StackResult(name, LOCKED, [], text, 0.0, None, lock=lock, pending=pending)


def _summary(result: Any) -> dict[str, int]:
    raw = getattr(result, "change_summary", None)
    if raw is None and getattr(result, "summary", None) is not None:
        raw = result.summary.resource_changes
    return {str(getattr(k, "value", k)): int(v) for k, v in (raw or {}).items()}


def _exit_code(error: Exception) -> int | None:
    match = re.search(r"code: (-?\d+)", str(error))
    return int(match.group(1)) if match else None


def run_fleet(ws: Workspace, names: Sequence[str], verb: str, *, parallel: int, log_dir: Path,
              progress: Progress, refresh: bool = True,
              recover_older_than: dt.timedelta | None = None,
              program: Callable[[], None] | None = None) -> list[StackResult]:
    """Every stack of `names` through `run_stack`, `parallel` at a time; results in `names` order.

    Ctrl-C: the running `pulumi` processes get the terminal's SIGINT and cancel gracefully (Pulumi's
    own handling); stacks not started yet are reported failed as not run.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    return run_each(names, lambda name, activity: run_stack(ws, name, verb, log_dir, refresh=refresh,
                                                            on_activity=activity,
                                                            recover_older_than=recover_older_than,
                                                            program=program),
                    parallel=parallel, progress=progress)


def run_each(names: Sequence[str], work: Callable[[str, Callable[[str], None]], StackResult], *, parallel: int,
             progress: Progress) -> list[StackResult]:
    """`work(name, on_activity)` for every stack, `parallel` at a time, each one's start, activity and result
    shown by `progress`; results in `names` order. Ctrl-C: stacks not started are reported failed as not
    run (Interrupted carries every result)."""
    results: dict[str, StackResult] = {}

    def one(name: str) -> StackResult:
        progress.started(name)
        result = work(name, lambda text: progress.activity(name, text))
        progress.finished(result)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="fleet")
    futures: dict[Future[StackResult], str] = {pool.submit(one, n): n for n in names}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, name in futures.items():
            if name not in results:
                if future.done() and not future.cancelled():
                    results[name] = future.result()
                else:
                    results[name] = StackResult(name, FAILED, error="not run: interrupted")
        raise Interrupted([results[n] for n in names]) from None
    finally:
        pool.shutdown(wait=True)
    return [results[n] for n in names]


class Interrupted(Exception):
    """Ctrl-C during a fleet run; `results` holds what finished and what did not run."""

    def __init__(self, results: list[StackResult]) -> None:
        super().__init__("interrupted")
        self.results = results
