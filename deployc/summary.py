"""The table after a build of several specs: one row a spec (status, steps run and from cache, gates, wall time),
for a terminal and as Markdown (a pull-request comment, `$GITHUB_STEP_SUMMARY`), and the exit code of the whole
build: the worst of the specs'.

It reads `deployc.api.SpecBuild` and nothing else; a figure a result does not carry is shown as `-`.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployc.errors import EXIT_EXTERNAL, EXIT_GATE, EXIT_INVALID, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from deployc.api import SpecBuild

SKIPPED = "Skipped"  # SpecBuild.error of a spec that `--fail-fast` never started
STATUS = {EXIT_OK: "ok", EXIT_INVALID: "invalid", EXIT_USAGE: "usage error", EXIT_GATE: "gate failed",
          EXIT_EXTERNAL: "external error"}
HEADERS = ("spec", "name", "status", "steps run", "from cache", "gates passed", "gates failed", "time")


@dataclass(frozen=True)
class Row:
    """One spec of the table; None where its result does not say."""

    spec: str
    name: str
    status: str
    exit_code: int
    steps_run: int | None
    steps_cached: int | None
    gates_passed: int | None
    gates_failed: int | None
    seconds: float | None
    message: str = ""  # the first line of the error that stopped it

    def cells(self) -> tuple[str, ...]:
        return (self.spec, self.name, self.status, _count(self.steps_run), _count(self.steps_cached),
                _count(self.gates_passed), _count(self.gates_failed), _duration(self.seconds))


@dataclass(frozen=True)
class Summary:
    rows: tuple[Row, ...]
    seconds: float | None = None  # the whole build's wall time, when the caller measured it

    @property
    def exit_code(self) -> int:
        return worst(r.exit_code for r in self.rows)

    def counts(self) -> str:
        """`3 specs: 2 ok, 1 gate failed`, in the order the statuses first appear."""
        tally = Counter(r.status for r in self.rows)
        parts = ", ".join(f"{n} {status}" for status, n in tally.items())
        total = f"{len(self.rows)} spec{'s' if len(self.rows) != 1 else ''}"
        took = f" in {_duration(self.seconds)}" if self.seconds is not None else ""
        return f"{total}{took}: {parts}" if parts else f"{total}{took}"

    def text(self) -> str:
        """Aligned plain text for a terminal or a CI log: numbers right-aligned, then the counts."""
        table = [HEADERS, *(r.cells() for r in self.rows)]
        widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
        numeric = {i for i in range(3, len(HEADERS))}
        lines = ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                           for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                 for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([*lines, "", self.counts()]) + "\n"

    def markdown(self, title: str = "deployc build") -> str:
        """A GitHub-flavoured Markdown table, then each failure's first message in a collapsed list."""
        out = [f"### {_escape(title)}", "", self.counts(), "",
               "| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" if i < 3 else "---:"
                                                                for i in range(len(HEADERS))) + "|"]
        for r in self.rows:
            cells = [_escape(c) for c in r.cells()]
            cells[0] = f"`{_code(r.spec)}`"
            cells[2] = f"**{cells[2]}**" if r.exit_code != EXIT_OK else cells[2]
            out.append("| " + " | ".join(cells) + " |")
        failed = [r for r in self.rows if r.message]
        if failed:
            out += ["", "<details><summary>why</summary>", ""]
            out += [f"- `{_code(r.spec)}` ({r.status}): {_escape(r.message)}" for r in failed]
            out += ["", "</details>"]
        return "\n".join(out) + "\n"


def summarize(results: Sequence[SpecBuild], seconds: float | None = None) -> Summary:
    """The summary of `build_many`'s results, in their order; `seconds`: the whole build's wall time."""
    return Summary(tuple(row(r) for r in results), seconds)


def row(result: SpecBuild) -> Row:
    built: Any = result.result
    cached: dict[str, bool] | None = getattr(built, "cached", None)
    if cached is None:
        cached = getattr(result, "cached", None)  # a failed build's steps, where SpecBuild carries them
    checks = getattr(built, "gates", None)
    if checks is None:
        checks = getattr(result, "gates", None)
    return Row(spec=_label(result.spec), name=result.name, status=status(result), exit_code=result.exit_code,
               steps_run=None if cached is None else sum(1 for hit in cached.values() if not hit),
               steps_cached=None if cached is None else sum(1 for hit in cached.values() if hit),
               gates_passed=None if checks is None else sum(1 for ch in checks if ch.passed),
               gates_failed=None if checks is None else sum(1 for ch in checks if not ch.passed),
               seconds=getattr(result, "seconds", None),
               message=result.messages[0] if result.messages and result.error != SKIPPED else "")


def status(result: SpecBuild) -> str:
    if result.error == SKIPPED:
        return "skipped"
    clean = getattr(result.result, "clean", None)
    if clean is False:  # a `--check` that found differences
        return "out of date"
    return STATUS.get(result.exit_code, f"exit {result.exit_code}")


def worst(codes: Iterable[int]) -> int:
    """The exit code of several specs: the highest of theirs, as the codes are ordered by how much is wrong
    (1 invalid < 3 a gate failed < 4 an external service failed); 0 for none."""
    return max(codes, default=EXIT_OK)


def append_markdown(summary: Summary, path: Path, title: str = "deployc build") -> None:
    """Append the Markdown table to `path`: GitHub Actions shows `$GITHUB_STEP_SUMMARY` on the run's page, and
    every step of a job appends to the same file."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(summary.markdown(title) + "\n")


def _label(spec: Path) -> str:
    """As the build's own files name a spec (deployc.api.spec_label): relative to the working folder when inside."""
    rel = os.path.relpath(spec)
    return Path(rel).as_posix() if not rel.startswith("..") else str(spec)


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _escape(text: str) -> str:
    """Markdown cells: a `|` would end the cell, a line break the row, `<` open an HTML tag."""
    return _code(text).replace("<", "&lt;")


def _code(text: str) -> str:
    """Text inside a code span of a table cell: only `|` (GitHub ends the cell at it even there), line breaks and
    backticks need care."""
    return text.replace("|", "\\|").replace("`", "'").replace("\r", " ").replace("\n", " ")
