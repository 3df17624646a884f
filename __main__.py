"""Entry point of the lead-destination Pulumi program: one LeadDestination per stack.

Reads and validates the `lead-destination:*` stack config, builds the component tree and exports
the values Partner Center asks for (`pulumi stack output --show-secrets partnerCenter`).
"""

import os
import signal
import sys
import threading
from types import FrameType

# Interrupted = 128 + SIGINT, the shell's convention for a process ended by Ctrl-C.
INTERRUPTED = 128 + signal.SIGINT


def _end_quietly_on_sigint(signum: int, frame: FrameType | None) -> None:
    """The engine's last word to the program: exit now, print nothing.

    The program receives SIGINT only from the engine closing the language host (Pulumi sends SIGINT to the
    plugin's process group, then SIGKILL after 5 s: pulumi/pulumi#19603, CLI 3.172+; a terminal's Ctrl-C reaches the CLI
    alone, as plugins run in process groups of their own). By then the engine has cancelled or finished the
    deployment and reads nothing more from the program, which owns no state (the providers make the
    changes, the engine records them). Python's default handler would raise KeyboardInterrupt wherever the
    main thread is: inside Pulumi's `pulumi-language-python-exec` (`executor.shutdown(wait=True)` joining
    the threads of RPCs the engine no longer answers) it prints a traceback. `os._exit` skips that unwinding
    and the joins, so the process is gone at once and no orphan outlives the CLI.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, RuntimeError):  # closed pipe, closed file, reentrant flush
            pass
    os._exit(INTERRUPTED)


# First, before the imports: the sooner it is in place, the shorter the window in which a SIGINT still ends
# in a traceback. Before this line, the process runs Pulumi's exec script, which handles no SIGINT (README,
# "When a run is interrupted"); `threading`: importing this file from a test thread must not fail.
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _end_quietly_on_sigint)

import pulumi  # noqa: E402

from components import cancellation  # noqa: E402
from components.lead_destination import run  # noqa: E402
from components.settings import ConfigError  # noqa: E402

cancellation.install()  # before the first resource: a cancelled update ends in one line, not a traceback

# Pulumi's language hosts read this exit code as "the program showed the user an error already": the CLI
# then adds no "an unhandled error occurred" line and no traceback (pulumi-language-python-exec uses it).
ERROR_ALREADY_SHOWN = 32

try:
    run()
except ConfigError as error:
    # One message listing every problem: logged once, exit code 1 from `pulumi preview` and `pulumi up` alike.
    pulumi.log.error(str(error))
    sys.exit(ERROR_ALREADY_SHOWN)
