"""The kill helper of the interruption tests (tests/harness/interrupt.py) against real processes: a stand-in for
the CLI whose plugin, in a process group of its own as Pulumi starts plugins, keeps spawning children into new
groups of their own while the helper kills. Every process is found (by the CLI's session) and gone when
`kill_tree` returns."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

from tests.harness.interrupt import CliRun, session

# The "CLI" starts a "plugin" in a new process group; the plugin spawns a child in a new group every few
# milliseconds, each of which sleeps: some are always being born while the helper kills. Both print to the
# CLI's output (the plugin inherits it), which is how the test knows the spawning has begun.
CLI = textwrap.dedent("""
    import subprocess, sys, time
    SPAWNER = '''
    import subprocess, sys, time
    for n in range(100_000):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
        if n == 3:
            print("spawning", flush=True)
        time.sleep(0.005)
    '''
    subprocess.Popen([sys.executable, "-c", SPAWNER], process_group=0)
    print("started", flush=True)
    time.sleep(600)
""")


class StandIn:
    """What CliRun needs of a stack: `popen`, the way Stack.popen starts the CLI (a session of its own)."""

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CLI], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)


def test_kill_tree_kills_every_process_of_the_run_even_those_spawned_while_it_kills() -> None:
    run = CliRun(StandIn())
    try:
        assert run.wait_for("spawning", 60), run.output
        assert run.kill_tree() == {}, "nothing of the run survives the kill"
        assert session(run.sid) == {}, "no process is left in the run's session"
        assert run.proc.returncode == -9
        assert run.gone(1) == {}
    finally:
        run.cleanup()
