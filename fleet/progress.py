"""Progress of a fleet command: a live display on a terminal (one line per running stack with what it
is doing, a tally, finished stacks scrolling above), plain lines otherwise (one per finished stack)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO

from fleet.report import FAILED, StackResult, counts, line

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Progress:
    """Plain lines: `start` prints what will run, `finished` one line per stack."""

    def __init__(self, verb: str, names: list[str], stream: TextIO | None = None) -> None:
        self.verb = verb
        self.names = names
        self.stream = stream or sys.stdout
        self.width = min(max((len(n) for n in names), default=0), 40)
        self.done: list[StackResult] = []
        self._lock = threading.Lock()

    def start(self, parallel: int, note: str = "") -> None:
        self._print(f"fleet {self.verb}: {len(self.names)} stack(s), {parallel} at a time{note}")

    def started(self, name: str) -> None:
        pass

    def activity(self, name: str, text: str) -> None:
        pass

    def finished(self, result: StackResult) -> None:
        with self._lock:
            self.done.append(result)
            self._print(f"[{len(self.done):>{len(str(len(self.names)))}}/{len(self.names)}] {line(result, self.width)}")

    def close(self) -> None:
        pass

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class LiveProgress(Progress):
    """Redraws, five times a second, the running stacks and a tally under the finished lines."""

    def __init__(self, verb: str, names: list[str], stream: TextIO | None = None) -> None:
        super().__init__(verb, names, stream)
        self.running: dict[str, tuple[float, str]] = {}
        self._drawn = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-progress", daemon=True)
        self._tick = 0

    def start(self, parallel: int, note: str = "") -> None:
        super().start(parallel, note)
        self._thread.start()

    def started(self, name: str) -> None:
        with self._lock:
            self.running[name] = (time.monotonic(), "starting")

    def activity(self, name: str, text: str) -> None:
        with self._lock:
            if name in self.running:
                self.running[name] = (self.running[name][0], text)

    def finished(self, result: StackResult) -> None:
        with self._lock:
            self.running.pop(result.name, None)
            self.done.append(result)
            self._erase()
            self.stream.write(f"[{len(self.done)}/{len(self.names)}] {line(result, self.width)}\n")
            self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            self._erase()
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                self._tick += 1
                self._erase()
                self._draw()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        columns = shutil.get_terminal_size((100, 20)).columns
        rows = shutil.get_terminal_size((100, 20)).lines
        now = time.monotonic()
        spin = SPINNER[self._tick % len(SPINNER)]
        lines = []
        for name, (since, text) in sorted(self.running.items(), key=lambda kv: kv[1][0])[: max(1, rows - 3)]:
            lines.append(f"  {spin} {name.ljust(self.width)}  {now - since:5.0f}s  {text}"[:columns - 1])
        tally = counts(self.done)
        summary = (f"{len(self.done)}/{len(self.names)} done · {len(self.running)} running · "
                   f"{tally['in-sync']} in sync · {tally['drifted']} drifted · {tally['changed']} changed · "
                   f"{tally[FAILED]} failed")
        lines.append(summary[:columns - 1])
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)


def progress_for(verb: str, names: list[str], stream: TextIO | None = None) -> Progress:
    stream = stream or sys.stdout
    live = stream.isatty() and not _dumb_terminal()
    return (LiveProgress if live else Progress)(verb, names, stream)


def _dumb_terminal() -> bool:
    import os

    return os.environ.get("TERM", "") in ("", "dumb") or bool(os.environ.get("CI"))
