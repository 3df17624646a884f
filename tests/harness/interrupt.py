"""Interrupting a real `pulumi` run at a chosen Dataverse write, the ways a machine or a person does.

`AtWrite` is WSGI middleware on the in-process sandbox: the first time Dataverse applies a matching write of
one organization (2xx), it runs an action before the answer goes back (the sandbox has logged the write and
werkzeug sends the answer only when the returned body is iterated), so the write is in Dataverse while the
CLI has not seen it succeed: the window in which a crash loses the engine's record of it.

`CliRun` is a CLI started by `Stack.popen` (own process group) with its output collected as it comes. Pulumi
starts the language host and every provider plugin in process groups of their own, so a SIGKILL of the CLI's
group leaves them running as orphans: `kill_tree` kills the CLI's group and the group of every process
below it (a crashed machine or CI runner), `kill_cli_group` the CLI's group alone, `kill_providers` only the
dynamic-provider processes (`python -u -m pulumi.dynamic`), `interrupt` sends one SIGINT (Ctrl-C).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")
PROVIDER_MARK = "-m pulumi.dynamic"


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_tree(pid: int) -> dict[int, str]:
    """Every process below `pid` (not `pid` itself): pid -> command line."""
    kids, found, todo = _children(), {}, [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found[child] = cmdline(child)
            todo.append(child)
    return found


def alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` still running (same pid and command line, not a zombie)."""
    running = {}
    for pid, cmd in processes.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmdline(pid) == cmd:
            running[pid] = cmd
    return running


class CliRun:
    """A `pulumi` command started in its own process group, its output read as it comes."""

    def __init__(self, stack: Any, *args: str) -> None:
        self.proc = stack.popen(*args)
        self.seen: dict[int, str] = {}  # every process of the run noticed below the CLI
        self._chunks: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self._chunks.append(line)
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._chunks)

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        """Whether the CLI printed `text` within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in "".join(self._chunks):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return text in "".join(self._chunks)
                self._changed.wait(min(left, 0.2))
            return True

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def tree(self) -> dict[int, str]:
        current = process_tree(self.proc.pid)
        self.seen.update(current)
        return current

    def kill_tree(self) -> None:
        """SIGKILL the CLI's process group and the group of every process below it: nothing of the run survives."""
        groups = {self.proc.pid}
        for pid in self.tree():
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill_cli_group(self) -> None:
        """SIGKILL the CLI's process group only (what `kill -9 -<pgid>` of a terminal job does)."""
        self.tree()
        os.killpg(self.proc.pid, signal.SIGKILL)

    def kill_providers(self) -> list[int]:
        """SIGKILL the dynamic-provider processes of the run; returns their pids."""
        killed = [pid for pid, cmd in self.tree().items() if PROVIDER_MARK in cmd]
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        return killed

    def interrupt(self) -> None:
        """One SIGINT to the CLI, as Ctrl-C in a terminal delivers it (plugins are in other groups)."""
        self.tree()
        os.kill(self.proc.pid, signal.SIGINT)

    def leftovers(self) -> dict[int, str]:
        """Processes of the run still running."""
        if self.proc.poll() is None:
            self.tree()
        return alive(self.seen)

    def cleanup(self) -> None:
        """Kill whatever of the run is still running (a test never leaves a process behind)."""
        if self.proc.poll() is None:
            self.kill_tree()
        for pid in alive(self.seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.wait(60)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        deadline = time.monotonic() + 10  # a killed process takes a moment to be gone
        while alive(self.seen) and time.monotonic() < deadline:
            time.sleep(0.05)


def is_write(method: str, path: str) -> bool:
    """A Dataverse write: POST/PATCH/PUT/DELETE, except `$batch` (our client batches GETs only)."""
    return method in WRITE_METHODS and not path.endswith("/$batch")


class AtWrite:
    """WSGI middleware on the in-process sandbox: once Dataverse has applied the first write of organization
    `org` that matches `method` and `pattern` (status 2xx), run `action()` before its answer is sent back.

    `writes` lists (method, path) of the organization's applied writes in order, up to the targeted one.
    """

    def __init__(self, sandbox: Any, org: str, method: str, pattern: str, action: Callable[[], Any]) -> None:
        self.server = sandbox._sandbox._server  # werkzeug's server calls `server.app` for every request
        self.prefix = f"/orgs/{org}/api/data/"
        self.method, self.pattern, self.action = method, re.compile(pattern), action
        self.lock = threading.Lock()
        self.writes: list[tuple[str, str]] = []
        self.hit: tuple[str, str] | None = None

    def __enter__(self) -> AtWrite:
        self.app = self.server.app
        self.server.app = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.app = self.app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        status: list[int] = []

        def capture(line: str, headers: list, exc_info: Any = None) -> Any:
            status.append(int(line.split()[0]))
            return start_response(line, headers, exc_info)

        body = self.app(environ, capture)  # handled and logged; nothing is written to the socket yet
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path.startswith(self.prefix) and is_write(method, path) and status and 200 <= status[0] < 300:
            fire = False
            with self.lock:
                if self.hit is None:
                    self.writes.append((method, path))
                    if method == self.method and self.pattern.search(path):
                        self.hit = (method, path)
                        fire = True
            if fire:
                self.action()
        return body
