"""The program hosted in the fleet's own process (`--program-host inline`) instead of a language host and a
Python interpreter per stack.

Pulumi's Automation API runs an inline program through a gRPC language server in the calling process
(`pulumi/automation/_server.py`) and hands its address to the CLI (`--client=127.0.0.1:PORT`): the CLI
then starts no `pulumi-language-python` (no `pip list` of the venv, no second interpreter importing the
SDK and the program per stack). Each `Run` executes in a copy of the caller's context
(`contextvars.copy_context()`), and the SDK keeps its per-run settings, config and root resource in
context variables, so several stacks' programs run at once in one process without sharing them. The
engine still starts the dynamic providers' processes, as under the CLI: the resources, their inputs and
their pickled `__provider` are those the plain CLI records (tests/test_fleet_inline.py compares them).

What the program depends on besides the SDK's context, made per run here:
- the project directory: `load_settings()` resolves relative paths against the current directory, which
  the CLI sets to the project for its program; one process cannot `chdir` per stack, so the program is
  given the project directory instead;
- `components.cancellation.install()`: a process-wide, idempotent, stateless patch of the SDK, the same
  in every run;
- `__main__.py`'s SIGINT handler: not installed (it ends the process); the fleet's own Ctrl-C handling
  applies, and the CLI processes still get the terminal's SIGINT and cancel as under the plain CLI;
- the SDK's `serialize_provider` (pulumi/dynamic/dynamic.py, SDK 3.272.0), run for every dynamic resource
  declared: it swaps the module-global `pickle.Pickler` for the pure-Python `pickle._Pickler` and back, and
  wraps `pickle._Pickler._batch_setitems` in one more sorting layer on every call without undoing it. A
  program process makes a handful of calls and ends; a process hosting every stack's program stacks one
  layer per dynamic resource until pickling a provider exceeds the recursion limit (RecursionError at
  the 490th call for ApplicationUserProvider under Python 3.13: ~100 stacks of 5 dynamic resources),
  and two programs serializing at once can leave `pickle.Pickler` swapped for good.
  `install()` runs it under a lock and puts `pickle._Pickler` and `pickle.Pickler` back after each call, so
  every call pickles as the first call of a fresh program does (the same bytes as under the CLI).
"""

from __future__ import annotations

import contextvars
import importlib
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
from pulumi.automation import _server, _stack

# by module path: `pulumi.dynamic` re-exports names of its module `dynamic`
_dynamic = importlib.import_module("pulumi.dynamic.dynamic")
_PICKLER_PATCHED = ("_batch_setitems", "save_dict")  # what serialize_provider sets on pickle._Pickler
_SERIALIZING = threading.Lock()

PROGRAM_FILES = ("__main__.py", "components", "dynamics_provider")


class _Shown:
    """The one error message the program showed this run (the `ConfigError` of `__main__.py`)."""

    def __init__(self) -> None:
        self.message: str | None = None


_SHOWN: contextvars.ContextVar[_Shown | None] = contextvars.ContextVar("fleet_inline_shown", default=None)


class _LanguageServer(_server.LanguageServer):
    """The SDK's inline language server, answering "error already shown" the way the CLI's language host
    does for `__main__.py`'s exit code 32 (`RunResponse.bail`): the engine then adds no "an unhandled
    error occurred" line after the program's own message (pkg/resource/deploy/program_source.go)."""

    def Run(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
        shown = _Shown()
        token = _SHOWN.set(shown)  # seen by the program: the SDK's Run copies this context
        try:
            result = super().Run(request, context)
        finally:
            _SHOWN.reset(token)
        if shown.message is not None and result.error == shown.message:
            result.error = ""
            result.bail = True
        return result


def _serialized_alone(original: Callable[[Any], str]) -> Callable[[Any], str]:
    def serialize_provider(provider: Any) -> str:
        with _SERIALIZING:
            module_pickler = pickle.Pickler
            saved = {name: pickle._Pickler.__dict__[name] for name in _PICKLER_PATCHED}  # type: ignore[attr-defined]
            try:
                return original(provider)
            finally:
                for name, value in saved.items():
                    setattr(pickle._Pickler, name, value)  # type: ignore[attr-defined]
                pickle.Pickler = module_pickler  # type: ignore[misc]

    serialize_provider.__wrapped__ = original  # type: ignore[attr-defined]
    return serialize_provider


def install() -> None:
    """Make the process fit to host programs (idempotent; each change only over the SDK's own function or
    class): the Automation API starts `_LanguageServer` for inline programs, and dynamic resources serialize
    their provider through `_serialized_alone` (the module docstring says why). Process-wide changes: the
    fleet is the only driver of the Automation API and the only host of programs in its process."""
    if _stack.LanguageServer is _server.LanguageServer:
        _stack.LanguageServer = _LanguageServer  # type: ignore[misc]
    guard_provider_serialization()


def guard_provider_serialization() -> None:
    """The SDK's `serialize_provider` made safe for a process that declares many dynamic resources, from
    many threads (`_serialized_alone`; idempotent): a fleet hosting programs, a test worker."""
    with _SERIALIZING:
        original = getattr(_dynamic, "serialize_provider")  # noqa: B009 - a module attribute mypy cannot see
        if not hasattr(original, "__wrapped__"):
            setattr(_dynamic, "serialize_provider", _serialized_alone(original))  # noqa: B010


def lead_destination_program(project_dir: Path) -> Callable[[], None]:
    """What `__main__.py` runs, for the project in `project_dir`: `components.lead_destination.run` with its
    settings read from the running stack's config, a `ConfigError` shown as one error message and the stack
    failed with that message (no traceback)."""
    from components import cancellation
    from components.lead_destination import run
    from components.settings import ConfigError, load_settings

    def program() -> None:
        cancellation.install()  # before the first resource, as in __main__.py
        try:
            run(load_settings(project_dir))
        except ConfigError as error:
            shown = _SHOWN.get()
            if shown is not None:
                shown.message = str(error)
            # The server logs a RunError's text once as an error diagnostic (pulumi.log.error, as
            # __main__.py does) and `_LanguageServer` turns the result into "error already shown".
            raise pulumi.RunError(str(error)) from None

    return program


def hosts_project(project_dir: Path) -> bool:
    """Whether the project in `project_dir` runs this very program (its `__main__.py`, `components` and
    `dynamics_provider` are the files this process imported): only then may its program run inline."""
    import components

    own = Path(components.__file__).resolve().parent.parent
    project = project_dir.resolve()
    return all((project / name).exists() and (project / name).resolve() == (own / name).resolve()
               for name in PROGRAM_FILES)


INLINE, PROCESS = "inline", "process"
HOSTS = (INLINE, PROCESS)


def choose(project_dir: Path, host: str) -> tuple[Callable[[], None] | None, str]:
    """(the program to host in this process or None for a process per stack, a note saying which runs)."""
    if host == PROCESS:
        return None, "programs: a process per stack"
    if not hosts_project(project_dir):
        return None, ("programs: a process per stack (the project's program is not the one this fleet "
                      "imports, so it cannot run inline)")
    install()
    return lead_destination_program(project_dir), "programs: inline in this process"
