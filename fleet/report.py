"""What a fleet command found, per stack: the result records, the JSON and Markdown reports, the plain
lines printed when no terminal is attached, and the one-line reason of a failure.

JSON (`--json PATH`): `{"stacks": [{"name", "status", "changes": [{"resource", "type", "properties"}],
"error", "duration_s"}]}` with `status` one of in-sync, drifted, changed, locked, failed; `fleet status` adds
`flags` and `details` to each stack, `fleet doctor` adds `flags` and `checks` (`{"name", "status", "detail",
"advice"}`, status one of ok, warn, fail, skipped); a locked stack (another run holds it) has `lock` (owner,
since, …) and `pending` (the resources its checkpoint has pending creates for).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IN_SYNC, DRIFTED, CHANGED, FAILED = "in-sync", "drifted", "changed", "failed"
LOCKED = "locked"  # another run holds the stack's lock: not ours to update now, not a failure of ours
STATUSES = (IN_SYNC, DRIFTED, CHANGED, LOCKED, FAILED)
# Failed first, then what needs a look, then the rest: the order of the Markdown table.
_ORDER = {FAILED: 0, LOCKED: 1, DRIFTED: 2, CHANGED: 3, IN_SYNC: 4}
_ICON = {FAILED: "❌", LOCKED: "🔒", DRIFTED: "⚠️", CHANGED: "✅", IN_SYNC: "✅"}
MAX_ERROR = 400


@dataclass
class Change:
    """One resource a run changed or would change: `op` (create, update, replace, delete, import, or
    `drift` when a refresh found it changed and nothing else is planned) and the properties involved;
    `(deleted)` when a refresh found the object gone."""

    resource: str
    type: str
    op: str
    properties: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"resource": self.resource, "type": self.type, "properties": list(self.properties)}

    def describe(self) -> str:
        props = f": {', '.join(self.properties)}" if self.properties else ""
        return f"{self.op} {self.resource}{props}"


# What one `fleet doctor` check found.
OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
_CHECK_ICON = {OK: "✅", WARN: "⚠️", FAIL: "❌", SKIPPED: "➖"}


@dataclass
class Check:
    """One preflight check of a stack: `name` (e.g. system-administrator), its status, what it found, and
    what to do when it is not ok."""

    name: str
    status: str
    detail: str
    advice: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "advice": self.advice}

    def describe(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass
class StackResult:
    name: str
    status: str
    changes: list[Change] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    log: Path | None = None
    flags: list[str] | None = None  # fleet status only
    details: dict[str, Any] | None = None  # fleet status only
    checks: list[Check] | None = None  # fleet doctor only
    lock: dict[str, Any] | None = None  # the lock that refused the run, or that fleet removed (recovered)
    pending: list[str] | None = None  # resources with pending creates, when a lock is involved

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status,
                                "changes": [c.to_json() for c in self.changes], "error": self.error,
                                "duration_s": round(self.duration_s, 1)}
        if self.flags is not None:
            data["flags"] = list(self.flags)
        if self.details is not None:
            data["details"] = dict(self.details)
        if self.checks is not None:
            data["checks"] = [c.to_json() for c in self.checks]
        if self.lock is not None:
            data["lock"] = dict(self.lock)
        if self.pending is not None:
            data["pending"] = list(self.pending)
        return data

    def summary(self) -> str:
        """What to print after the status: the reason, the flags, or the changes."""
        if self.error:
            return self.error
        if self.flags:
            return "; ".join(self.flags)
        return "; ".join(c.describe() for c in self.changes)


def counts(results: Iterable[StackResult]) -> dict[str, int]:
    tally = dict.fromkeys(STATUSES, 0)
    for result in results:
        tally[result.status] = tally.get(result.status, 0) + 1
    return tally


def headline(verb: str, results: Sequence[StackResult], seconds: float) -> str:
    tally = counts(results)
    parts = [f"{tally[s]} {_label(s)}" for s in (FAILED, LOCKED, DRIFTED, CHANGED, IN_SYNC) if tally[s]]
    return f"fleet {verb}: {len(results)} stack(s) in {_duration(seconds)} — {', '.join(parts) or 'nothing to do'}"


def _label(status: str) -> str:
    return {IN_SYNC: "in sync", DRIFTED: "drifted", CHANGED: "changed", LOCKED: "locked by another run",
            FAILED: "failed"}[status]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def line(result: StackResult, width: int = 0) -> str:
    """The plain line of one finished stack."""
    text = f"{result.name.ljust(width)}  {result.status:<8} {result.duration_s:6.1f}s"
    detail = result.summary()
    if detail:
        text += f"  {detail}"
    if result.status == FAILED and result.log:
        text += f"  (log: {result.log})"
    return text


def write_json(path: Path, results: Sequence[StackResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stacks": [r.to_json() for r in results]}, indent=2) + "\n")


def _cell(text: str) -> str:
    """Markdown table cell: no pipes, no raw HTML, no line breaks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def _short_type(type_token: str) -> str:
    return type_token.rsplit(":", 1)[-1]


def markdown(verb: str, results: Sequence[StackResult], seconds: float, log_dir: Path | None = None) -> str:
    """A report for a CI job summary ($GITHUB_STEP_SUMMARY): headline, a table of what needs a look,
    the stacks with nothing to report folded away."""
    out = [f"### {_cell(headline(verb, results, seconds))}", ""]
    if log_dir is not None:
        out += [f"Logs of each stack: `{_cell(str(log_dir))}`", ""]
    noteworthy = sorted((r for r in results if r.status != IN_SYNC or r.flags),
                        key=lambda r: (_ORDER.get(r.status, 9), r.name))
    quiet = sorted(r.name for r in results if r.status == IN_SYNC and not r.flags)
    if noteworthy:
        out += ["| Stack | Status | Details | Time |", "| --- | --- | --- | --- |"]
        for r in noteworthy:
            if r.error:
                detail = _cell(r.error)
            elif r.flags:
                detail = "<br>".join(_cell(f) for f in r.flags)
            else:
                detail = "<br>".join(
                    f"{c.op} `{_cell(c.resource)}` ({_cell(_short_type(c.type))})"
                    + (f": {_cell(', '.join(c.properties))}" if c.properties else "") for c in r.changes)
            if r.lock and r.lock.get("recovered"):
                detail = f"recovered: removed the stale lock of {_cell(str(r.lock.get('owner')))}" + (
                    f"<br>{detail}" if detail else "")
            out.append(f"| `{_cell(r.name)}` | {_ICON.get(r.status, '')} {r.status} | {detail} | {r.duration_s:.1f} s |")
        out.append("")
    return "\n".join(out + _folded(quiet, "in sync"))


def _folded(names: Sequence[str], label: str) -> list[str]:
    """The stacks with nothing to report, folded away under `<count> <label>`."""
    if not names:
        return []
    return [f"<details><summary>{len(names)} {label}</summary>", "", ", ".join(f"`{_cell(n)}`" for n in names), "",
            "</details>", ""]


def status_markdown(results: Sequence[StackResult], seconds: float, days: int) -> str:
    """`fleet status` as a table: credential, expiry, next rotation, last validation, offer."""
    flagged = sum(1 for r in results if r.flags)
    failed = sum(1 for r in results if r.status == FAILED)
    out = [f"### fleet status: {len(results)} stack(s), {flagged} flagged (within {days} days), {failed} failed",
           "", "| Stack | Credential | Expires | Next rotation | Last validated | Offer lead destination | Flags |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (not r.flags and r.status != FAILED, r.name)):
        d = r.details or {}
        flags = (r.error or "—") if r.status == FAILED else "<br>".join(_cell(f) for f in r.flags or []) or "—"
        out.append(
            f"| `{_cell(r.name)}` | {_cell(str(d.get('credential') or '—'))} | {_cell(str(d.get('expires_on') or '—'))} "
            f"| {_cell(str(d.get('rotates_on') or '—'))} | {_cell(str(d.get('validated_at') or '—'))} "
            f"| {_cell(str(d.get('offer') or '—'))} | {_cell(flags) if r.status == FAILED else flags} |")
    out.append("")
    return "\n".join(out)


def doctor_headline(results: Sequence[StackResult], seconds: float) -> str:
    tally = counts(results)
    parts = [f"{tally[FAILED]} failed"] if tally[FAILED] else []
    parts += [f"{tally[DRIFTED]} with warnings"] if tally[DRIFTED] else []
    parts += [f"{tally[IN_SYNC]} ready"] if tally[IN_SYNC] else []
    return f"fleet doctor: {len(results)} stack(s) in {_duration(seconds)} — {', '.join(parts) or 'nothing checked'}"


def doctor_markdown(results: Sequence[StackResult], seconds: float, check_names: Sequence[str]) -> str:
    """`fleet doctor` for a CI job summary: a table of the stacks that need a look (one column per check),
    what each failed or warning check found and what to do, the ready stacks folded away."""
    out = [f"### {_cell(doctor_headline(results, seconds))}", ""]
    noteworthy = sorted((r for r in results if r.status != IN_SYNC), key=lambda r: (_ORDER.get(r.status, 9), r.name))
    ready = sorted(r.name for r in results if r.status == IN_SYNC)
    if noteworthy:
        out += ["| Stack | Status | " + " | ".join(check_names) + " |",
                "| --- | --- | " + " | ".join("---" for _ in check_names) + " |"]
        for r in noteworthy:
            by_name = {c.name: c for c in r.checks or []}
            cells = [_CHECK_ICON.get(by_name[n].status, "") if n in by_name else "—" for n in check_names]
            out.append(f"| `{_cell(r.name)}` | {_ICON.get(r.status, '')} {r.status} | " + " | ".join(cells) + " |")
        out.append("")
        for r in noteworthy:
            out.append(f"**`{_cell(r.name)}`**" + (f": {_cell(r.error)}" if not r.checks and r.error else ""))
            out.append("")
            for c in r.checks or []:
                if c.status in (FAIL, WARN):
                    advice = f" — *what to do:* {_cell(c.advice)}" if c.advice else ""
                    out.append(f"- {_CHECK_ICON[c.status]} **{_cell(c.name)}**: {_cell(c.detail)}{advice}")
            out.append("")
    return "\n".join(out + _folded(ready, "ready"))


# --- one-line reasons ---------------------------------------------------------------------------
_GENERIC = re.compile(r"^(preview failed|update failed|refresh failed|destroy failed"
                      r"|an unhandled error occurred: program exited with non-zero exit code: \d+)\.?$", re.I)
_EXCEPTION_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*: ")


def one_line(message: str) -> str:
    """A diagnostic as one line: the final exception line of a traceback (class path dropped), else the
    message's lines joined; at most MAX_ERROR characters."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if any("Traceback (most recent call last)" in ln for ln in lines):
        text = _EXCEPTION_PREFIX.sub("", lines[-1], count=1)
    else:
        text = " ".join(ln.lstrip("-• ").strip() if i else ln for i, ln in enumerate(lines))
        if text.startswith("error: "):
            text = text[len("error: "):]
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def failure_reason(diagnostics: Sequence[tuple[str | None, str]], cli_text: str, exit_code: int | None) -> str:
    """Why a run failed: the first error a resource reported (named), else the first specific error
    of the program or engine, else the CLI's first `error:` line."""
    specific = [(urn, one_line(msg)) for urn, msg in diagnostics if not _GENERIC.match(one_line(msg))]
    specific = [(urn, text) for urn, text in specific if text]
    with_urn = [(urn, text) for urn, text in specific if urn]
    if with_urn:
        urn, text = with_urn[0]
        return f"{urn.rsplit('::', 1)[-1]}: {text}"
    if specific:
        return specific[0][1]
    for raw in cli_text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("error:") and not _GENERIC.match(stripped[6:].strip()):
            return one_line(stripped)
    return f"pulumi exited with code {exit_code if exit_code is not None else '?'} (see the log)"
