"""Interrupting a real `pulumi` run at a chosen Dataverse write, the ways a machine or a person does.

`AtWrite` is WSGI middleware on the in-process sandbox: the first time Dataverse applies a matching write of
one organization (2xx), it runs an action before the answer goes back (the sandbox has logged the write and
werkzeug sends the answer only when the returned body is iterated), so the write is in Dataverse while the
CLI has not seen it succeed: the window in which a crash loses the engine's record of it.

`CliRun` is a CLI started by `Stack.popen` in a session of its own, its output collected as it comes. Pulumi
starts the language host and every provider plugin in process groups of their own (setpgid), so a SIGKILL
of the CLI's group leaves them running as orphans, re-parented away from the CLI; none of them starts a
session, so the CLI's session id finds every process of the run, orphans and processes spawned while a kill
is under way included. `kill_tree` kills the whole session until a pass finds nothing alive, and waits for
every process to exit (a crashed machine or CI runner); `kill_cli_group` kills the CLI's group alone,
`kill_providers` only the dynamic-provider processes (`python -u -m pulumi.dynamic`), `interrupt` sends one
SIGINT to the CLI (Ctrl-C in a terminal: the plugins are in other process groups, so it reaches the CLI
alone), `interrupt_program` sends SIGINT to the language host's process group, as the engine does when it
closes the plugin (pulumi/pulumi#19603). Waits are on events (pidfd readiness, output lines) with deadlines.
"""

from __future__ import annotations

import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")
PROVIDER_MARK = "-m pulumi.dynamic"
LANGUAGE_HOST = "pulumi-language-python"
PROGRAM_MARK = "pulumi-language-python-exec"
KILL_DEADLINE = 30.0  # seconds for a SIGKILLed process to be gone, even on a machine that is very busy


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, process group, session) of `pid`, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_tree(pid: int) -> dict[int, str]:
    """Every process below `pid` (not `pid` itself): pid -> command line."""
    kids: dict[int, list[int]] = {}
    for child in _pids():
        stat = _stat(child)
        if stat is not None:
            kids.setdefault(stat[1], []).append(child)
    found, todo = {}, [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found[child] = cmdline(child)
            todo.append(child)
    return found


def session(sid: int) -> dict[int, str]:
    """Every running process of session `sid` (zombies left out): pid -> command line."""
    members = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and stat[3] == sid and stat[0] != "Z":
            members[pid] = cmdline(pid)
    return members


def alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` still running (same pid and command line, not a zombie)."""
    running = {}
    for pid, cmd in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and cmdline(pid) == cmd:
            running[pid] = cmd
    return running


def wait_gone(processes: dict[int, str], timeout: float) -> dict[int, str]:
    """Wait until every one of `processes` has exited (a pidfd turns readable when its process ends), at most
    `timeout` seconds; returns those still running then."""
    fds: dict[int, int] = {}
    try:
        for pid, cmd in alive(processes).items():
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            if cmdline(pid) == cmd:  # the pid was not reused between the check and the open
                fds[fd] = pid
            else:
                os.close(fd)
        deadline = time.monotonic() + timeout
        waiting = set(fds)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(waiting), [], [], left)
            waiting -= set(ready)
        return alive({fds[fd]: processes[fds[fd]] for fd in waiting})
    finally:
        for fd in fds:
            os.close(fd)


def first_line(stream: Any, timeout: float) -> Any:
    """The next line of a child's output pipe, or an empty one when none comes within `timeout` seconds (a
    child that hangs before printing its address must fail its test, not hang it)."""
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else stream.read(0)  # read(0): an empty str or bytes, as the stream gives


def _kill(pid: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CliRun:
    """A `pulumi` command started in a session of its own, its output read as it comes."""

    def __init__(self, stack: Any, *args: str) -> None:
        self.proc = stack.popen(*args)
        self.sid = self.proc.pid  # start_new_session: the CLI leads its own session
        self.seen: dict[int, str] = {}  # every process of the run noticed so far
        self._chunks: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self._chunks.append(line)
                self._changed.notify_all()
        with self._changed:  # end of output: wake every waiter
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._chunks)

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        """Whether the CLI printed `text` within `timeout` seconds (False at once when its output ended)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in "".join(self._chunks):
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    return text in "".join(self._chunks)
                self._changed.wait(left)
            return True

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def processes(self) -> dict[int, str]:
        """The run's processes running now: the CLI's session (orphans included) and what is below the CLI."""
        current = session(self.sid)
        if self.proc.poll() is None:
            current.update(process_tree(self.proc.pid))
        current.pop(self.proc.pid, None)
        for pid, cmd in current.items():  # a dying process reads an empty command line: keep what it was
            if cmd or pid not in self.seen:
                self.seen[pid] = cmd
        return current

    def kill_tree(self, timeout: float = KILL_DEADLINE) -> dict[int, str]:
        """SIGKILL every process of the run, the CLI first, and the group of each, pass after pass until one
        finds nothing running (a process spawned meanwhile is found by the next), waiting for each pass's
        processes to be gone; returns what still runs after `timeout` seconds (nothing, normally)."""
        deadline = time.monotonic() + timeout
        if self.proc.poll() is None:  # not reaped yet, so its pid and group are still the CLI's
            _kill(self.proc.pid, group=True)  # first: the CLI spawns nothing more
        killed: dict[int, str] = {}
        while found := alive({**self.processes(), **killed}):
            for pid in found:
                stat = _stat(pid)
                if stat is not None and stat[3] == self.sid:  # its group is the run's (never this process's)
                    _kill(stat[2], group=True)
                _kill(pid)
            killed.update(found)
            left = wait_gone(found, max(0.0, deadline - time.monotonic()))
            if left:
                return left
        if self.proc.poll() is None:
            self.proc.wait(max(1.0, deadline - time.monotonic()))
        return {}

    def kill_cli_group(self) -> None:
        """SIGKILL the CLI's process group only (what `kill -9 -<pgid>` of a terminal job does)."""
        self.processes()
        os.killpg(self.proc.pid, signal.SIGKILL)

    def kill_providers(self) -> list[int]:
        """SIGKILL the dynamic-provider processes of the run; returns their pids once they are gone."""
        providers = {pid: cmd for pid, cmd in self.processes().items() if PROVIDER_MARK in cmd}
        for pid in providers:
            _kill(pid)
        left = wait_gone(providers, KILL_DEADLINE)
        assert not left, f"provider processes survived SIGKILL: {left}"
        return sorted(providers)

    def interrupt(self) -> None:
        """One SIGINT to the CLI, as Ctrl-C in a terminal delivers it (plugins are in other groups)."""
        self.processes()
        os.kill(self.proc.pid, signal.SIGINT)

    def interrupt_program(self) -> list[int]:
        """SIGINT to the process group of each language host of the run (the group holds the program), as the
        engine sends it when it closes the plugin; returns the program's pids."""
        running = self.processes()
        hosts = [pid for pid, cmd in running.items() if cmd.split(" ", 1)[0].endswith(LANGUAGE_HOST)]
        programs = [pid for pid, cmd in running.items() if PROGRAM_MARK in cmd]
        for host in hosts:
            try:
                os.killpg(os.getpgid(host), signal.SIGINT)
            except ProcessLookupError:
                pass
        return programs

    def leftovers(self) -> dict[int, str]:
        """Processes of the run still running now."""
        return alive({**self.seen, **self.processes()})

    def gone(self, timeout: float = KILL_DEADLINE) -> dict[int, str]:
        """Wait until every process of the run has exited (at most `timeout` s); returns those still running."""
        if self.proc.poll() is None:
            self.wait(timeout)
        return wait_gone(self.leftovers(), timeout)

    def cleanup(self) -> None:
        """Kill whatever of the run is still running (a test never leaves a process behind)."""
        self.kill_tree()
        self._reader.join(10)


def is_write(method: str, path: str) -> bool:
    """A Dataverse write: POST/PATCH/PUT/DELETE, except `$batch` (our client batches GETs only)."""
    return method in WRITE_METHODS and not path.endswith("/$batch")


class Held:
    """An `AtWrite` action that holds the answer of the write until `release` is set (at most `limit` seconds):
    the run that sent it stays in flight, its lock taken. `reached` is set once the write is held."""

    def __init__(self, limit: float = 300) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self.limit = limit

    def __call__(self) -> None:
        self.reached.set()
        self.release.wait(self.limit)


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
