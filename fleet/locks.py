"""Stack locks: who holds a stack another run refused, whether that holder is gone, and the recovery.

A self-managed backend (file, Azure Blob, S3) locks a stack for an update by writing
`.pulumi/locks/<org>/<project>/<stack>/<id>.json`; a second `up`/`refresh`/`destroy` is refused with
(pulumi/pulumi pkg/backend/diy/lock.go, `checkForLock`, CLI v3.274.1):

    the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the
    lock file with `pulumi cancel`.
      azblob://state/.pulumi/locks/organization/lead-destination/contoso/<id>.json: created by root@ci-7 (pid 4242) at 2026-12-05T09:10:00Z

Pulumi Cloud refuses with `[409] Conflict: Another update is currently in progress.` and names no owner.
The lock is taken by writing then listing (not atomically): two runs that start the same stack at the same
moment can each see the other's lock and both give up; `contended` tells that case apart so the runner
can try once more.

A run killed mid-update leaves its lock behind, and a pending create for each resource it was creating.
The recovery is the README's: `pulumi cancel`, `pulumi refresh --clear-pending-creates`, `pulumi up`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

DIY_LOCKED = "the stack is currently locked by"
CLOUD_LOCKED = "[409] Conflict: Another update is currently in progress."
_LOCK_LINE = re.compile(r"^\s*(?P<url>\S+): created by (?P<user>.*)@(?P<host>[^@\s]*) "
                        r"\(pid (?P<pid>-?\d+)\) at (?P<at>\S+)\s*$", re.M)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Lock:
    """One lock as Pulumi reports it (`owner` is Pulumi's `user@host (pid N)`); all None for Pulumi Cloud."""

    url: str | None = None
    user: str | None = None
    host: str | None = None
    pid: int | None = None
    since: dt.datetime | None = None

    @property
    def owner(self) -> str:
        if self.host is None:
            return "another update (Pulumi Cloud names no owner)"
        return f"{self.user}@{self.host} (pid {self.pid})"

    def age(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        if self.since is None:
            return None
        return (now or dt.datetime.now(dt.UTC)) - self.since

    def holder_alive(self) -> bool | None:
        """Whether the locking process still runs: known only on the machine that took the lock."""
        if self.host is None or self.pid is None or self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: it exists
        return not _exited(self.pid)

    def to_json(self) -> dict[str, Any]:
        alive = self.holder_alive()
        return {"owner": self.owner, "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
                "url": self.url, "holder_alive": alive}


def _exited(pid: int) -> bool:
    """Whether a process a signal still finds has in fact exited: a zombie (state Z in /proc/PID/stat, killed
    and not yet reaped by its parent; an orphan waits for PID 1, which can take a moment) or gone since.
    Without procfs the signal check is all there is (not exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return os.path.isdir("/proc")  # gone since the signal check (or no procfs at all: say running)
    except (OSError, IndexError):
        return False


def refusal_locks(text: str) -> list[Lock] | None:
    """The locks a refused update names, or None when `text` is not a lock refusal."""
    if CLOUD_LOCKED in text:
        return [Lock()]
    if DIY_LOCKED not in text:
        return None
    locks = []
    for match in _LOCK_LINE.finditer(text):
        try:
            since = dt.datetime.fromisoformat(match["at"]).astimezone(dt.UTC)
        except ValueError:
            since = None
        locks.append(Lock(match["url"], match["user"], match["host"], int(match["pid"]), since))
    return locks or [Lock(host="?", user="?")]


def contended(locks: list[Lock], attempt_started: dt.datetime, slack: dt.timedelta = dt.timedelta(seconds=2)) -> bool:
    """Every lock was taken after our attempt began (to the second: Pulumi writes whole seconds): another
    run reached the stack at the same moment, and both may have given up."""
    return bool(locks) and all(lk.since is not None and lk.since >= attempt_started - slack for lk in locks)


def parse_age(text: str) -> dt.timedelta:
    """`30m`, `2h`, `90s`, `1d` as a timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r}: use a number and a unit s, m, h or d (e.g. 30m)")
    return dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def describe_duration(span: dt.timedelta) -> str:
    seconds = max(0, int(span.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def describe_age(age: dt.timedelta | None) -> str:
    return "age unknown" if age is None else f"{describe_duration(age)} ago"


def pending_creates(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the resources a checkpoint (`pulumi stack export`) has pending creates for."""
    deployment = checkpoint.get("deployment") or {}
    return sorted(str(op.get("resource", {}).get("urn", "?")).rsplit("::", 1)[-1]
                  for op in deployment.get("pending_operations") or [] if op.get("type") == "creating")


def recovery_commands(stack: str, pending: list[str]) -> list[str]:
    """The README's recovery of a stack a dead run left locked, as commands to paste."""
    steps = [f"pulumi cancel --stack {stack} --yes"]
    if pending:
        steps.append(f"pulumi refresh --stack {stack} --clear-pending-creates --yes --skip-preview")
    steps.append(f"pulumi up --stack {stack}")
    return steps
