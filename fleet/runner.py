"""Run `preview --refresh` or `up --refresh` on many stacks at once through the Automation API, with
bounded parallelism: each stack's run is its own `pulumi` process with its own log file, one stack's
failure is recorded as its result and never stops or spoils the others."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from fleet.events import EventCollector
from fleet.progress import Progress
from fleet.report import CHANGED, DRIFTED, FAILED, IN_SYNC, StackResult, failure_reason
from fleet.workspace import Workspace, _NamedStack

PREVIEW, UP = "preview", "up"


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
              on_activity: Callable[[str], None] | None = None) -> StackResult:
    """One stack's `pulumi preview|up [--refresh] --diff`, its output kept in `log_dir/<stack>.log`."""
    started = time.monotonic()
    collector = EventCollector(on_activity)
    log_path = log_dir / log_name(name)
    stderr: list[str] = []
    lock = threading.Lock()
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

        def on_event(event: auto.EngineEvent) -> None:
            stack.seen(event)
            collector(event)

        kwargs: dict[str, Any] = {"diff": True, "refresh": refresh or None, "on_event": on_event,
                                  "on_output": out, "on_error": err}
        try:
            result = stack.preview(**kwargs) if verb == PREVIEW else stack.up(**kwargs)
        except auto.errors.CommandError as error:
            code = _exit_code(error)
            reason = ws.explained(failure_reason(collector.diagnostics, "\n".join(stderr) or str(error), code))
            out(f"# fleet: failed: {reason}")
            return StackResult(name, FAILED, collector.changes(), reason, time.monotonic() - started, log_path)
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
    return StackResult(name, status, changes, None, time.monotonic() - started, log_path)


def _summary(result: Any) -> dict[str, int]:
    raw = getattr(result, "change_summary", None)
    if raw is None and getattr(result, "summary", None) is not None:
        raw = result.summary.resource_changes
    return {str(getattr(k, "value", k)): int(v) for k, v in (raw or {}).items()}


def _exit_code(error: Exception) -> int | None:
    match = re.search(r"code: (-?\d+)", str(error))
    return int(match.group(1)) if match else None


def run_fleet(ws: Workspace, names: Sequence[str], verb: str, *, parallel: int, log_dir: Path,
              progress: Progress, refresh: bool = True) -> list[StackResult]:
    """Every stack of `names` through `run_stack`, `parallel` at a time; results in `names` order.

    Ctrl-C: the running `pulumi` processes get the terminal's SIGINT and cancel gracefully (Pulumi's
    own handling); stacks not started yet are reported failed as not run.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    return run_each(names, lambda name, activity: run_stack(ws, name, verb, log_dir, refresh=refresh,
                                                            on_activity=activity),
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
