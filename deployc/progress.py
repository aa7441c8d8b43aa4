"""How a build reports while it runs: log lines, and tasks (training epochs, calibration batches, a conversion
of unknown length) that a terminal shows as live progress bars and a CI log as a few plain lines.

Steps reach it through their context (`StepContext.progress`, `PassInput.progress`):

    with ctx.progress.task("fine-tuning", total=epochs, unit="epoch") as task:
        ...
        task.advance(status=f"loss {loss:.4g}")

A `Progress` is also a plain `log` callable (`progress("message")`), so every API that takes `log` takes one;
`as_progress` turns any such callable into a `LineProgress`. Library code that a step calls without passing it a
reporter finds the running step's in `current()`. Reporting never touches what a build writes.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichBars
    from rich.progress import TaskID

Log = Callable[[str], None]
PLAIN_LINES = 4  # at most this many plain lines per task of known length (at each quarter), plus one a minute
PLAIN_EVERY_S = 60.0


class Task:
    """One running part of a step. This base class reports nothing (quiet builds)."""

    def advance(self, n: int = 1, status: str = "") -> None:
        """`n` more units done; `status` (e.g. the last epoch's loss) is shown beside the count."""

    def status(self, status: str) -> None:
        """Say what the task is doing now, without advancing it."""

    def __enter__(self) -> Task:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


class Progress:
    """Where a build reports. This base class drops everything (`deployc build -q`, `--format json`)."""

    def __call__(self, message: str) -> None:
        self.log(message)

    def log(self, message: str) -> None:
        """One line that stays in the output."""

    def task(self, label: str, total: int | None = None, *, unit: str = "", announce: bool = True,
             prefix: str = "") -> Task:
        """A task of `total` units (None: of unknown length, shown with its elapsed time). `announce`: say
        `label` as a plain line when a task of unknown length starts. `prefix` leads its plain lines (the step
        it belongs to)."""
        return Task()

    def prefixed(self, prefix: str) -> Progress:
        """The same reporter with `prefix` before each line (a step's name, a spec's path)."""
        return _Prefixed(self, prefix)


_CURRENT: ContextVar[Progress | None] = ContextVar("deployc_progress", default=None)


def current() -> Progress:
    """The running step's reporter (lines prefixed with the step), or a silent one outside a build."""
    return _CURRENT.get() or Progress()


@contextmanager
def reporting(progress: Progress) -> Iterator[None]:
    """Make `progress` what `current()` returns while the block runs (a step)."""
    token = _CURRENT.set(progress)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def as_progress(log: Log | None) -> Progress:
    """`log` as a Progress: itself when it is one; a plain callable reports tasks as a few lines through it."""
    if isinstance(log, Progress):
        return log
    return Progress() if log is None else LineProgress(log)


class _Prefixed(Progress):
    def __init__(self, parent: Progress, prefix: str):
        self.parent, self.prefix = parent, prefix

    def log(self, message: str) -> None:
        self.parent.log(self.prefix + message)

    def task(self, label: str, total: int | None = None, *, unit: str = "", announce: bool = True,
             prefix: str = "") -> Task:
        return self.parent.task(label, total, unit=unit, announce=announce, prefix=self.prefix + prefix)


class LineProgress(Progress):
    """Plain lines through `emit`: CI logs, pipes, parallel builds. A task of known length says its count at
    each quarter (and at least once a minute); one of unknown length says its label when it starts."""

    def __init__(self, emit: Log):
        self.emit = emit

    def log(self, message: str) -> None:
        self.emit(message)

    def task(self, label: str, total: int | None = None, *, unit: str = "", announce: bool = True,
             prefix: str = "") -> Task:
        return _LineTask(self.emit, prefix, label, total, unit, announce)


class _LineTask(Task):
    def __init__(self, emit: Log, prefix: str, label: str, total: int | None, unit: str, announce: bool):
        self.emit, self.prefix, self.label, self.total, self.unit = emit, prefix, label, total, unit
        self.announce = announce
        self.done = 0
        self.last = time.monotonic()

    def __enter__(self) -> Task:
        if self.total is None and self.announce:
            self.emit(self.prefix + self.label)
        self.last = time.monotonic()
        return self

    def advance(self, n: int = 1, status: str = "") -> None:
        before, self.done = self.done, self.done + n
        if not self.total:
            return
        now = time.monotonic()
        quarter = (min(self.done, self.total) * PLAIN_LINES) // self.total > (before * PLAIN_LINES) // self.total
        if quarter or now - self.last >= PLAIN_EVERY_S:
            self.last = now
            count = f"{self.unit} {min(self.done, self.total)}/{self.total}".strip()
            self.emit(f"{self.prefix}{self.label}: {count}" + (f" {status}" if status else ""))


class RichProgress(Progress):
    """A terminal: lines printed as they come, and below them a live bar for the innermost running task (a
    step's own task, of unknown length, gives way to the bar of its training or calibration while that runs).
    The bars are erased when the last task ends; the lines stay."""

    def __init__(self, console: Console):
        self.console = console
        self._bars: RichBars | None = None
        self._open: list[TaskID] = []

    def log(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[dim]deployc[/dim] {escape(message)}")

    def task(self, label: str, total: int | None = None, *, unit: str = "", announce: bool = True,
             prefix: str = "") -> Task:
        return _RichTask(self, f"{prefix.strip()} {label}".strip(), total, unit)

    def _start(self, description: str, total: int | None, count: str) -> TaskID:
        if self._bars is None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=20),
                                  TextColumn("{task.fields[count]}"), TextColumn("[dim]{task.fields[status]}"),
                                  TimeElapsedColumn(), console=self.console, transient=True,
                                  redirect_stdout=False, redirect_stderr=False)
            self._bars.start()
        if self._open:
            self._bars.update(self._open[-1], visible=False)
        task = self._bars.add_task(description, total=total, count=count, status="")
        self._open.append(task)
        return task

    def _update(self, task: TaskID, **fields: Any) -> None:
        if self._bars is not None:
            self._bars.update(task, **fields)

    def _end(self, task: TaskID) -> None:
        if self._bars is None:
            return
        self._bars.remove_task(task)
        self._open.remove(task)
        if self._open:
            self._bars.update(self._open[-1], visible=True)
        else:
            self._bars.stop()
            self._bars = None


class _RichTask(Task):
    def __init__(self, owner: RichProgress, description: str, total: int | None, unit: str):
        self.owner, self.description, self.total, self.unit = owner, description, total, unit
        self.done = 0
        self.id: TaskID | None = None

    def _count(self) -> str:
        if self.total is None:
            return ""
        return f"{min(self.done, self.total)}/{self.total}" + (f" {plural(self.unit)}" if self.unit else "")

    def __enter__(self) -> Task:
        self.id = self.owner._start(self.description, self.total, self._count())
        return self

    def advance(self, n: int = 1, status: str = "") -> None:
        self.done += n
        if self.id is not None:
            self.owner._update(self.id, completed=min(self.done, self.total or self.done), count=self._count(),
                               **({"status": status} if status else {}))

    def status(self, status: str) -> None:
        if self.id is not None:
            self.owner._update(self.id, status=status)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.id is not None:
            self.owner._end(self.id)
            self.id = None


PLURALS = {"batch": "batches"}


def plural(unit: str) -> str:
    return PLURALS.get(unit, unit + "s")
