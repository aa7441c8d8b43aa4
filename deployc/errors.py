"""The error hierarchy. Each class maps to one documented exit code; the CLI prints, never traces, these."""
from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INVALID = 1  # invalid spec or input
EXIT_USAGE = 2  # command-line usage error
EXIT_GATE = 3  # a verification gate failed
EXIT_EXTERNAL = 4  # an external service failed


class DeploycError(Exception):
    """Base of every error deployc reports to a user (never with a traceback)."""

    exit_code = EXIT_INVALID

    def lines(self) -> list[str]:
        return [str(self)]


@dataclass(frozen=True)
class Problem:
    """One located problem in a spec: rendered as `file:line:col: field.path: message`."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(DeploycError):
    """deploy.yaml is unreadable or invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class InputError(DeploycError):
    """An input other than the spec (model, data, bundle) is unusable."""


class SpecFieldError(InputError):
    """A problem with one spec field that only a build step can find (a measured figure, a model's shape); the
    API turns it into a SpecError at that field's position in deploy.yaml."""

    def __init__(self, loc: tuple[str | int, ...], message: str):
        self.loc = loc
        self.message = message
        super().__init__(message)


class UsageError(DeploycError):
    exit_code = EXIT_USAGE


class GateError(DeploycError):
    """A verification gate failed; `table` is the human-readable gate table."""

    exit_code = EXIT_GATE

    def __init__(self, message: str, table: str = ""):
        self.table = table
        super().__init__(message)

    def lines(self) -> list[str]:
        return [str(self)] + ([self.table] if self.table else [])


class DeployError(DeploycError):
    """An external service (AWS, a registry) failed."""

    exit_code = EXIT_EXTERNAL


def describe_os_error(exc: OSError) -> str:
    """An OS error as `path: reason` (both paths for a rename), without Python's `[Errno N]` prefix."""
    reason = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def input_error(exc: OSError, what: str = "") -> InputError:
    """The InputError for an OS error met while reading or writing `what` (a read-only folder, a full disk...)."""
    text = describe_os_error(exc)
    return InputError(f"{what}: {text}" if what else text)
