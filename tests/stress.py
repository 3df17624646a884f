"""`make test-stress`: the tests that wait on processes, signals, locks and the sandbox, several times in a row,
beside a CPU hog on every core, so that a race shows up here rather than in someone's `make test`.

    python tests/stress.py [--runs N] [--hogs N] [TESTS ...] [-- PYTEST ARGS ...]

Each run is one `pytest -n 2` over the selection; the hogs (one busy Python process per core) start before the
first run and stop with the last (and on their own at a deadline, or when this process is gone). Prints one
line per run and a summary; exits 1 when any run had a failure or an error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SELECTION = ["tests/test_interruptions.py", "tests/test_locks.py", "tests/test_engine_faults.py", "tests/test_fleet.py",
             "tests/test_fleet_azblob.py", "tests/test_harness_interrupt.py"]
HOG_SECONDS_PER_RUN = 3600  # a hog ends by itself at the latest runs x this (or when this process is gone)
HOG = """
import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


def counts(junit: Path) -> dict[str, int]:
    """passed/failed/errors/skipped of one run's JUnit XML report."""
    if not junit.exists():
        return {"passed": 0, "failed": 0, "errors": 1, "skipped": 0}
    suites = ET.parse(junit).getroot()
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites.iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    failed, errors, skipped = totals["failures"], totals["errors"], totals["skipped"]
    return {"passed": totals["tests"] - failed - errors - skipped, "failed": failed, "errors": errors,
            "skipped": skipped}


def main(argv: list[str]) -> int:
    cut = argv.index("--") if "--" in argv else len(argv)
    own, pytest_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=int(os.environ.get("STRESS_RUNS", 5)))
    parser.add_argument("--hogs", type=int, default=int(os.environ.get("STRESS_HOGS", os.cpu_count() or 2)))
    parser.add_argument("tests", nargs="*", default=(os.environ.get("STRESS_TESTS") or " ".join(SELECTION)).split())
    args = parser.parse_args(own)
    if not any(a == "-m" or a.startswith("-m") for a in pytest_args):
        pytest_args = ["-m", "not long", *pytest_args]  # the races, not make test-long's 20-stack story
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(args.runs * HOG_SECONDS_PER_RUN)])
            for _ in range(args.hogs)]
    results: list[dict[str, int]] = []
    started = time.monotonic()
    print(f"test-stress: {args.runs} run(s) of {' '.join(args.tests)} beside {args.hogs} CPU hog(s) "
          f"on {os.cpu_count()} core(s)", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="test-stress-") as tmp:
            for run in range(1, args.runs + 1):
                junit = Path(tmp) / f"run-{run}.xml"
                began = time.monotonic()
                done = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "worksteal", "-q",
                                       "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args, *args.tests],
                                      cwd=REPO, check=False)
                got = counts(junit)
                if done.returncode != 0 and not (got["failed"] or got["errors"]):
                    got["errors"] += 1  # pytest itself failed (nothing collected, an internal error, ...)
                results.append(got)
                print(f"test-stress: run {run}/{args.runs}: {got['passed']} passed, {got['failed']} failed, "
                      f"{got['errors']} errors, {got['skipped']} skipped in {time.monotonic() - began:.0f} s",
                      flush=True)
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(30)
    total = {key: sum(r[key] for r in results) for key in ("passed", "failed", "errors", "skipped")}
    print(f"test-stress: {len(results)} run(s) in {time.monotonic() - started:.0f} s: {total['passed']} passed, "
          f"{total['failed']} failed, {total['errors']} errors, {total['skipped']} skipped")
    return 1 if total["failed"] or total["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
