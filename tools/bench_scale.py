"""`make bench-scale`: how the fleet's cost grows with the number of stacks, on a file backend and on Azure Blob.

The fleet grows to each size in turn (default 50, 200, 500; `SIZES=20,50` or `--sizes` to change them), all
stacks of one project in one backend, each pointed at its own sandbox organization. At each size, through
`python -m fleet` exactly as a partner runs it: `fleet add --from` the stacks that bring the fleet to that size,
then `fleet preview` of every stack (warm: the first size runs it once before, unmeasured), then `fleet
status` of every stack. It prints the time per stack of each command at each size and the ratio of the largest size to
the smallest (design.md: within 1.2 from 50 to 500 stacks), and, for the commands that run once per fleet,
where their time goes as the fleet grows (stack listing).

The stacks are created, not deployed: a deployed stack's preview adds its refresh reads, a cost per stack that
does not depend on the fleet's size (`make bench` measures it).

Backends (`BACKEND` or `--backend`): `both` (the default) measures the file backend at the sizes, then
`azblob` (Azurite, the Azure Blob emulator, through tools/azurite.py, with `LATENCY_MS`/`--latency-ms`, default
20 ms, added to every storage request: a storage account across a network) at the sizes up to 200
(`AZBLOB_SIZES`/`--azblob-sizes` to choose), and prints the time per stack of both side by side; `file` or
`azblob` measures one.

Timing figures depend on what else the machine runs: ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sandbox.solution_zip import build_solution_zip
from sandbox.testing import start_sandbox
from tools.azurite import Azurite, AzuriteError
from tools.bench import Project, dev_config
from tools.offline_env import REPO

COMMAND = "make bench-scale   (= .venv/bin/python -m tools.bench_scale --sizes 50,200,500 --backend both)"
DEFAULT_SIZES = (50, 200, 500)
AZBLOB_MAX_DEFAULT = 200  # azblob's default sizes: the file backend's up to this one
DEFAULT_LATENCY_MS = 20.0
TARGET_RATIO = 1.2
VERBS = ("add", "preview", "status")


def sizes_from(text: str) -> list[int]:
    """`50,200,500` -> [50, 200, 500] (ascending, positive, no repeats)."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SystemExit(f"bench-scale: sizes must be numbers separated by commas, not {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise SystemExit("bench-scale: give at least one size, each at least 1")
    return sizes


def backend_env(kind: str, tmp: Path, latency_ms: float) -> tuple[dict[str, str], Azurite | None]:
    """(environment for the fleet's Pulumi, Azurite handle to stop or None) for the chosen backend."""
    if kind == "file":
        return {}, None
    handle = Azurite.start(tmp / "azurite", latency_ms=latency_ms)
    return dict(handle.env), handle


class Fleet:
    """`python -m fleet` in one project with the offline Pulumi environment (plus the backend's)."""

    def __init__(self, project: Project, extra_env: Mapping[str, str], parallel: int, tmp: Path) -> None:
        self.project, self.parallel, self.tmp = project, parallel, tmp
        self.env = {**project.env, **extra_env}

    def run(self, verb: str, *args: str) -> tuple[float, float, dict[str, Any], subprocess.CompletedProcess]:
        """(wall seconds, CPU seconds of the whole process tree, JSON report by stack, result) of one fleet
        command. The CPU figure barely moves with other load on the machine; the wall figure does."""
        report = self.tmp / f"{verb}-{time.monotonic_ns()}.json"
        argv = [sys.executable, "-m", "fleet", verb, *args, "-C", str(self.project.dir), "--json", str(report)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(argv, env=self.env, cwd=REPO, text=True, capture_output=True, check=False)
        seconds = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        results: dict[str, Any] = {}
        if report.is_file():
            data = json.loads(report.read_text())
            items = data.get("stacks", data) if isinstance(data, dict) else data
            results = {str(r.get("name")): r for r in items if isinstance(r, dict)}
        return seconds, cpu, results, done


def inventory(path: Path, rows: Sequence[tuple[str, str]], config: Mapping[str, Any]) -> Path:
    """A YAML inventory: the shared settings as `defaults`, each stack with its own organization."""
    defaults = {k: v for k, v in config.items() if k != "instanceUrl"}
    path.write_text(yaml.safe_dump({"defaults": defaults,
                                    "stacks": [{"name": n, "instanceUrl": url} for n, url in rows]}))
    return path


class Measured:
    """One backend's figures: seconds per stack by command and size (wall and CPU), the whole `stack ls`
    by size, and what went wrong."""

    def __init__(self, backend: str, sizes: list[int], label: str) -> None:
        self.backend, self.sizes, self.label = backend, sizes, label
        self.wall: dict[str, dict[int, float]] = {verb: {} for verb in VERBS}
        self.cpu: dict[str, dict[int, float]] = {verb: {} for verb in VERBS}
        self.listing: dict[int, float] = {}
        self.notes: list[str] = []
        self.seconds = 0.0


def measure(backend: str, sizes: list[int], parallel: int, latency_ms: float, tmp: Path) -> Measured:
    """Grow one fleet on `backend` to each of `sizes`, measuring add, warm preview and status at each."""
    label = backend if backend == "file" else f"azblob (Azurite, +{latency_ms:g} ms per storage request)"
    got = Measured(backend, sizes, label)
    started = time.monotonic()
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"{label}: sizes {', '.join(map(str, sizes))}", flush=True)
    zip_path = tmp / "solution.zip"
    zip_path.write_bytes(build_solution_zip("1.0.0.0"))
    try:
        extra, handle = backend_env(backend, tmp, latency_ms)
    except AzuriteError as error:
        got.notes.append(f"{backend}: {error}")
        return got
    try:
        with start_sandbox(state_dir=tmp / "sandbox", port=0) as sb:
            project = Project(tmp / "fleet")
            fleet = Fleet(project, extra, parallel, tmp)
            config, secrets = dev_config(sb.info, sb.info["instance_url"], zip_path)
            have = 0
            for size in sizes:
                names = [f"customer-{i:04d}" for i in range(have, size)]
                rows = [(n, sb.control.add_org(f"scale{i:04d}")) for i, n in zip(range(have, size), names, strict=True)]
                path = inventory(tmp / f"inventory-{size}.yaml", rows, {**config, **secrets})
                seconds, used, results, done = fleet.run("add", "--from", str(path), "-p", str(parallel))
                created = sum(1 for r in results.values() if r.get("status") == "changed")
                if done.returncode != 0 or created != len(rows):
                    got.notes.append(f"{backend}: fleet add to {size}: {created} of {len(rows)} created (exit "
                                     f"{done.returncode}): {done.stderr.strip()[-300:] or done.stdout.strip()[-300:]}")
                got.wall["add"][size], got.cpu["add"][size] = seconds / max(len(rows), 1), used / max(len(rows), 1)
                have = size
                if size == sizes[0]:  # warm-up: the first run compiles and caches what every later run reuses
                    fleet.run("preview", "-p", str(parallel))
                for command in ("preview", "status"):
                    seconds, used, results, done = fleet.run(command, "-p", str(parallel))
                    failed = [n for n, r in results.items() if r.get("status") == "failed"]
                    if failed or len(results) != size:
                        got.notes.append(f"{backend}: fleet {command} at {size}: {len(results)} results, "
                                         f"{len(failed)} failed ({', '.join(failed[:3])}) exit {done.returncode}")
                    got.wall[command][size], got.cpu[command][size] = seconds / size, used / size
                listing = time.monotonic()
                subprocess.run(["pulumi", "stack", "ls", "--json", "--non-interactive"], cwd=project.dir,
                               env=fleet.env, capture_output=True, check=False)
                got.listing[size] = time.monotonic() - listing
                print(f"  size {size}: per stack, wall (CPU): " + ", ".join(
                    f"{verb} {got.wall[verb][size]:.2f}s ({got.cpu[verb][size]:.2f}s)" for verb in VERBS)
                    + f" ({time.monotonic() - started:.0f}s so far)", flush=True)
    finally:
        if handle is not None:
            handle.stop()
    got.seconds = time.monotonic() - started
    return got


_LABELS = (("add", "fleet add (the stacks added)"), ("preview", "fleet preview (warm)"), ("status", "fleet status"))


def print_growth(got: Measured) -> None:
    """One backend's table: seconds per stack at each size and the ratio largest/smallest against the target."""
    sizes = [n for n in got.sizes if n in got.wall["status"]]
    print(f"\n{got.label}: {got.seconds:.0f}s")
    if not sizes:
        return
    low, high = sizes[0], sizes[-1]
    head = "".join(f"{f'at {n}':>10}" for n in sizes)
    for table, title in ((got.wall, "wall seconds per stack"), (got.cpu, "CPU seconds per stack (all processes)")):
        print(f"{title:<40}{head}{f'ratio {high}/{low}':>14}  target")
        for verb, label in _LABELS:
            values = table[verb]
            ratio = values[high] / values[low] if values.get(low) else float("nan")
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            cells = "".join(f"{values[n]:>10.2f}" for n in sizes)
            print(f"  {label:<38}{cells}{ratio:>14.2f}  ≤ {TARGET_RATIO} ({verdict})" if high != low else
                  f"  {label:<38}{cells}")
    print(f"{'wall seconds: pulumi stack ls (whole)':<40}" + "".join(f"{got.listing.get(n, 0):>10.2f}" for n in sizes)
          + "  (once per fleet command)")


def print_side_by_side(file: Measured, azblob: Measured) -> None:
    """Wall and CPU seconds per stack of each command on both backends at the sizes both measured."""
    sizes = [n for n in file.sizes if n in file.wall["status"] and n in azblob.wall["status"]]
    if not sizes:
        return
    print(f"\nper stack, file vs {azblob.label}: wall s (CPU s)")
    print(f"  {'':<30}" + "".join(f"{f'file at {n}':>18}{f'azblob at {n}':>18}{'x':>7}" for n in sizes))
    for verb, label in _LABELS:
        cells = ""
        for n in sizes:
            f, a = file.wall[verb][n], azblob.wall[verb][n]
            cells += (f"{f'{f:.2f} ({file.cpu[verb][n]:.2f})':>18}{f'{a:.2f} ({azblob.cpu[verb][n]:.2f})':>18}"
                      f"{a / f if f else float('nan'):>7.2f}")
        print(f"  {label:<30}{cells}")
    print(f"  {'pulumi stack ls (whole), wall':<30}" + "".join(
        f"{file.listing[n]:>18.2f}{azblob.listing[n]:>18.2f}"
        f"{azblob.listing[n] / file.listing[n] if file.listing[n] else float('nan'):>7.2f}" for n in sizes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=os.environ.get("SIZES") or ",".join(map(str, DEFAULT_SIZES)),
                        help="fleet sizes, ascending, comma-separated (default: $SIZES or 50,200,500)")
    parser.add_argument("--backend", choices=("both", "file", "azblob"), default=os.environ.get("BACKEND") or "both")
    parser.add_argument("--azblob-sizes", default=os.environ.get("AZBLOB_SIZES") or None,
                        help=f"azblob's sizes with --backend both (default: $AZBLOB_SIZES or the sizes up to "
                             f"{AZBLOB_MAX_DEFAULT})")
    parser.add_argument("--latency-ms", type=float, default=float(os.environ.get("LATENCY_MS") or DEFAULT_LATENCY_MS),
                        help=f"added to each Azurite storage request (default: $LATENCY_MS or {DEFAULT_LATENCY_MS:g})")
    parser.add_argument("--parallel", type=int, default=4, help="stacks at a time (fleet -p)")
    args = parser.parse_args(argv)
    sizes = sizes_from(args.sizes)
    if args.azblob_sizes:
        azblob_sizes = sizes_from(args.azblob_sizes)
    elif args.backend == "both":
        azblob_sizes = [n for n in sizes if n <= AZBLOB_MAX_DEFAULT] or sizes[:1]
    else:
        azblob_sizes = sizes
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = time.monotonic()
    runs: dict[str, Measured] = {}
    for backend in (("file", "azblob") if args.backend == "both" else (args.backend,)):
        runs[backend] = measure(backend, sizes if backend == "file" else azblob_sizes, args.parallel,
                                args.latency_ms, tmp / backend)
    print(f"\ncommand: {COMMAND}   (backend {args.backend}, {args.parallel} stacks at a time, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, {time.monotonic() - started:.0f}s in all)")
    for got in runs.values():
        print_growth(got)
    if "file" in runs and "azblob" in runs:
        print_side_by_side(runs["file"], runs["azblob"])
    notes = [note for got in runs.values() for note in got.notes]
    for note in notes:
        print(f"note: {note}")
    return 1 if notes else 0


if __name__ == "__main__":
    raise SystemExit(main())
