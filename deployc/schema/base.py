"""The base every spec model derives from: strict, frozen, documented."""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


class SpecModel(BaseModel):
    """Mirrors a deploy.yaml mapping exactly: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def spec_name_problems(self, spec_name: str) -> list[Located]:
        """Problems with the platform names a target derives from the spec's `name`, as (location from the spec's
        root, message). A target whose platform limits the names it builds from `name` overrides this; the
        spec's cross-field check calls it for every target the spec sets."""
        return []


Loc = tuple[str | int, ...]
Located = tuple[Loc, str]


class CrossFieldErrors(ValueError):
    """Several located problems found after field validation; the validator turns each into a Problem."""

    def __init__(self, problems: list[Located]):
        self.problems = problems
        super().__init__("; ".join(m for _, m in problems))


def located(problems: list[Located]) -> ValueError:
    """The error a validator raises for several problems, each at its own place below the field it checks (a
    tag or label key rather than the whole mapping); the validate stage reports each one as file:line:col."""
    return CrossFieldErrors(list(problems))


def name_within(derived: str, limit: int, what: str) -> str | None:
    """Why `derived` (a name a platform builds from the spec's name) is too long for `what`, or None."""
    if len(derived) <= limit:
        return None
    return f"{what} {derived!r} would have {len(derived)} characters; the limit is {limit}"


def show(value: Any) -> str:
    """A value as an error message shows it: repr, shortened past 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=NAME_RE), Field(description="Lower-case letters, digits and '-'.")]
RelPath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024),
    Field(description="A path relative to the folder of deploy.yaml; it may not leave that folder."),
]

_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """'30d' -> 2592000.0. Raises ValueError naming the accepted form."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration: use a number and one of ms, s, m, h, d, w (e.g. 30d, 1h)")
    return int(m.group(1)) * _DURATION_SECONDS[m.group(2)]


def choice(allowed: frozenset[str], what: str, doc: str) -> AfterValidator:
    """For `Annotated[str, choice(...)]`: the field's value must be one of `allowed` (see `one_of`)."""
    return AfterValidator(lambda v: one_of(v, allowed, what, doc))


def one_of(value: str, allowed: frozenset[str], what: str, doc: str) -> str:
    """`value` when it is in `allowed`; else a ValueError naming `what` it should be, with the closest names (or
    the page listing them) as a hint."""
    if value not in allowed:
        close = difflib.get_close_matches(value, sorted(allowed), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" (see {doc})"
        raise ValueError(f"{value!r} is not {what}{hint}")
    return value
