"""The base every spec model derives from: strict, frozen, documented."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class SpecModel(BaseModel):
    """Mirrors a deploy.yaml mapping exactly: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
