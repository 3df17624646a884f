"""Where a `pulumi` run's time goes, for `make bench`: the phases of one run read from the CLI's own debug
log (`-v=9 --logtostderr`, one JSON line per event with a nanosecond timestamp), and the CPU seconds of
every process under this one, by kind (CLI, language host, `pip list`, program, provider), sampled from
/proc. Both are Linux- and Pulumi-version-specific instruments; they measure, they never decide anything.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import resource
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- CPU seconds by process kind ------------------------------------------------------------------
CLI, LANGHOST, PIP, PROGRAM, PROVIDER, OTHER = ("CLI (pulumi)", "language host", "language host's `pip list`",
                                               "program (python)", "provider (python -m pulumi.dynamic)", "other")
FLEET = "fleet (python -m fleet: Automation API driver + inline programs)"
KINDS = (CLI, LANGHOST, PIP, PROGRAM, PROVIDER, FLEET, OTHER)
WHOSE = {CLI: "Pulumi", LANGHOST: "Pulumi", PIP: "Pulumi", PROGRAM: "ours + Pulumi SDK",
         PROVIDER: "ours + Pulumi SDK", FLEET: "ours + Pulumi SDK", OTHER: "-"}
_TICK = os.sysconf("SC_CLK_TCK")


def kind_of(argv: list[str]) -> str:
    """The kind of a process of a Pulumi run, from its command line."""
    if not argv:
        return OTHER
    base = os.path.basename(argv[0])
    text = " ".join(argv[1:4])
    if base == "pulumi":
        return CLI
    if base == "pulumi-language-python":
        return LANGHOST
    if base == "pulumi-resource-pulumi-python" or "pulumi.dynamic" in text:
        return PROVIDER
    if "pulumi-language-python-exec" in text:
        return PROGRAM
    if "-m pip" in text:
        return PIP
    if "-m fleet" in text:
        return FLEET
    if base.startswith("python") and "--version" in text:
        return LANGHOST
    return OTHER


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("latin-1")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return []


class CpuSampler:
    """CPU seconds of every descendant of this process, by kind, while the `with` block runs: /proc read every
    `interval` s (the last interval of a short process can be missed, so the per-kind sum is a lower bound;
    `exact_children` is the kernel's own total of the children reaped meanwhile, for comparison), plus this
    process's own CPU (`self_seconds`: the in-process sandbox and the Automation API driver)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._tree: dict[int, str] = {}  # descendant pid -> kind
        self._cpu: dict[int, float] = {}
        self._foreign: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self.processes: Counter[str] = Counter()
        self.self_seconds = self.exact_children = 0.0

    def __enter__(self) -> CpuSampler:
        self._self0 = resource.getrusage(resource.RUSAGE_SELF)
        self._children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        ru_self, ru_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.self_seconds = (ru_self.ru_utime + ru_self.ru_stime) - (self._self0.ru_utime + self._self0.ru_stime)
        self.exact_children = (ru_children.ru_utime + ru_children.ru_stime) - (
            self._children0.ru_utime + self._children0.ru_stime)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        me = os.getpid()
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        changed = True
        while changed:  # a child can be listed before its parent joins the tree
            changed = False
            for pid in pids:
                if pid in self._tree or pid in self._foreign or pid == me:
                    continue
                stat = _stat(pid)
                if stat is None:
                    self._foreign.add(pid)
                    continue
                if stat[0] == me or stat[0] in self._tree:
                    kind = kind_of(_argv(pid))
                    self._tree[pid] = kind
                    self.processes[kind] += 1
                    changed = True
        for pid in pids:
            if pid in self._tree and (stat := _stat(pid)) is not None:
                self._cpu[pid] = max(self._cpu.get(pid, 0.0), stat[1])

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for pid, seconds in self._cpu.items():
            out[self._tree[pid]] += seconds
        return dict(out)


# --- phases of one run from the CLI's debug log ----------------------------------------------------
LOG_FLAGS = ("-v=9", "--logtostderr", "--logflow")
_CALL = re.compile(r"^Provider\[(0x[0-9a-f]+)\]\.(Check|Diff|Create|Read|Update|Delete|Configure)\((.*?)\) "
                   r"(executing|success|failed|unimplemented)")


def _when(stamp: str) -> float:
    """Epoch seconds of the log's RFC 3339 nanosecond timestamp."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp() + float("0." + (frac or "0"))


def log_events(stderr: str) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every JSON log line of the CLI's stderr."""
    events = []
    for line in stderr.splitlines():
        if not line.startswith('{"time"'):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        events.append((_when(entry["time"]), str(entry.get("msg", ""))))
    events.sort(key=lambda e: e[0])
    return events


@dataclass
class Phases:
    """One run's milestones (seconds since its launch, in order), provider calls and checkpoint writes."""

    wall: float
    milestones: list[tuple[str, float, str]] = field(default_factory=list)  # (label, seconds, whose)
    calls: dict[str, list[float]] = field(default_factory=dict)  # op -> durations
    provider_starts: list[float] = field(default_factory=list)
    checkpoint_writes: list[float] = field(default_factory=list)


def phases(stderr: str, launched: float, wall: float) -> Phases:
    """The milestones of a `pulumi up|preview` run from its `-v=9 --logtostderr --logflow` stderr."""
    events = log_events(stderr)
    out = Phases(wall)
    if not events:
        return out

    def first(pattern: str, after: float = 0.0) -> float | None:
        return next((t for t, m in events if t >= after and m.startswith(pattern)), None)

    marks: list[tuple[str, float | None, str]] = [
        ("CLI process up (first log line)", events[0][0], "Pulumi"),
        ("language host asked for the project's metadata (About)", first("langhost[python].About() success"), "Pulumi"),
        ("update started (backend, stack, config, secrets)", first("*** Starting"), "Pulumi"),
    ]
    gather = first("gatherPackagesFromProgram(): gathering")
    marks.append(("plugins listed (2nd language host + `pip list` of the venv)",
                  first("gatherPackagesFromSnapshot(): gathering", gather or 0.0), "Pulumi"))
    run = first("langhost[python].Run(")
    marks.append(("program launched (language host Run)", run, "Pulumi"))
    marks.append(("program: interpreter + Pulumi SDK imported (Stack registered)",
                  first("registering resource: ty=pulumi:pulumi:Stack", run or 0.0), "Pulumi SDK"))
    marks.append(("program: components built, first dynamic resource declared",
                  first("registering resource: ty=pulumi-python:dynamic", run or 0.0), "ours"))
    marks.append(("program: every resource declared (RPCs completed)", first("RPCs successfully completed"), "ours"))
    marks.append(("first provider process ready (python + SDK + grpc)",
                  next((t for t, m in events if re.match(r"^Provider\[0x[0-9a-f]+\]\.GetPluginInfo\(\) executing", m)),
                       None), "Pulumi"))
    answered = [t for t, m in events if (c := _CALL.match(m)) and c.group(4) != "executing"]
    marks.append(("last provider call answered", answered[-1] if answered else None, "ours (requests included)"))
    done = [t for t, m in events if m.startswith("*** ") and "complete" in m]
    marks.append(("update complete", done[-1] if done else None, "Pulumi + ours"))
    marks.append(("CLI exited", launched + wall, "Pulumi"))
    known = sorted(((t, label, whose) for label, t, whose in marks if t is not None), key=lambda m: m[0])
    out.milestones = [(label, t - launched, whose) for t, label, whose in known]

    pending: dict[tuple[str, str, str], float] = {}
    launching: float | None = None
    last_mutation: float | None = None
    for t, m in events:
        if m.startswith("newPlugin(): Launching plugin 'pulumi-python (resource)'"):
            launching = t
        elif launching is not None and re.match(r"^Provider\[0x[0-9a-f]+\]\.GetPluginInfo\(\) executing", m):
            out.provider_starts.append(t - launching)
            launching = None
        elif m.startswith("SnapshotManager") or m.startswith("Appended new state snapshot"):
            last_mutation = t
        elif m.startswith("Saved stack") and last_mutation is not None:
            out.checkpoint_writes.append(t - last_mutation)
            last_mutation = None
        elif match := _CALL.match(m):
            key = (match.group(1), match.group(2), match.group(3))
            if match.group(4) == "executing":
                pending[key] = t
            elif key in pending:
                out.calls.setdefault(key[1].lower(), []).append(t - pending.pop(key))
    return out


def phase_rows(label: str, ph: Phases) -> list[tuple[str, str, str]]:
    """Rows for the bench table: each milestone with the step from the previous one, then aggregates."""
    rows = []
    previous = 0.0
    for name, at, whose in ph.milestones:
        rows.append((f"  {label} +{at:5.2f}s {name}", f"{at - previous:+.2f}s", whose))
        previous = at
    if ph.provider_starts:
        rows.append((f"  {label} provider process start (launch → first RPC)",
                     " + ".join(f"{s:.2f}s" for s in ph.provider_starts), "Pulumi (python + SDK + grpc)"))
    for op in ("configure", "check", "diff", "create", "read", "update", "delete"):
        durations = ph.calls.get(op)
        if durations:
            rows.append((f"  {label} provider {op} calls", f"{len(durations)}× Σ {sum(durations):.2f}s, "
                         f"first {durations[0]:.2f}s, max {max(durations):.2f}s",
                         "ours (requests included)" if op != "configure" else "ours"))
    if ph.checkpoint_writes:
        rows.append((f"  {label} checkpoint writes (file backend)",
                     f"{len(ph.checkpoint_writes)}× Σ {sum(ph.checkpoint_writes):.2f}s", "Pulumi"))
    return rows


def cpu_rows(label: str, sampler: CpuSampler, runs: int = 1) -> list[tuple[str, str, str]]:
    """CPU seconds by process kind (per run when `runs` > 1)."""
    per = " per stack" if runs > 1 else ""
    kinds = sampler.by_kind()
    rows = []
    for kind in KINDS:
        seconds = kinds.get(kind, 0.0)
        if seconds or sampler.processes.get(kind):
            rows.append((f"  {label} CPU{per}: {kind}", f"{seconds / runs:.2f}s ({sampler.processes.get(kind, 0)} "
                         f"process(es))", WHOSE[kind]))
    sampled = sum(kinds.values())
    rows.append((f"  {label} CPU{per}: all children sampled / kernel total", f"{sampled / runs:.2f}s / "
                 f"{sampler.exact_children / runs:.2f}s", "(sampling at 10 Hz misses the tail of short processes)"))
    rows.append((f"  {label} CPU{per}: this process (sandbox + Automation API driver)",
                 f"{sampler.self_seconds / runs:.2f}s", "bench + sandbox"))
    return rows


# --- the floor: an empty Python program ------------------------------------------------------------
def empty_program(root: Path, venv: Path, env: Mapping[str, str]) -> tuple[Path, dict[str, str]]:
    """A project whose program only imports pulumi, with one stack `floor`, on the same CLI and venv."""
    from tools.offline_env import pulumi_env

    project = root / "empty"
    project.mkdir(parents=True, exist_ok=True)
    (project / ".venv").symlink_to(venv)
    (project / "Pulumi.yaml").write_text("name: empty-floor\nruntime:\n  name: python\n  options:\n"
                                         "    virtualenv: .venv\n")
    (project / "__main__.py").write_text("import pulumi  # noqa: F401 - the floor: the SDK and nothing else\n")
    run_env = pulumi_env(project, home=root / "empty-home", backend=root / "empty-state", base=env)
    subprocess.run(["pulumi", "stack", "init", "floor", "--non-interactive"], cwd=project, env=run_env,
                   check=True, capture_output=True, text=True)
    return project, run_env


def timed(argv: list[str], cwd: Path, env: Mapping[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(launch epoch, wall seconds, result) of one command."""
    launched, started = time.time(), time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=dict(env), capture_output=True, text=True, check=False)
    return launched, time.monotonic() - started, done
