"""pydantic models of deploy.yaml; `DeploySpec` is the root. Nothing here is about one target: each target's
config model lives in its module (deployc/targets/<name>.py), and `deployc.schema.spec` builds `targets:` from the
target registry.

`DeploySpec` and `API_VERSION` are loaded on first use: `deployc.schema.spec` builds the `optimize:` items from
the pass registry, whose modules import `deployc.schema.base`, so importing the package must not import `spec`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployc.schema.spec import API_VERSION, DeploySpec

__all__ = ["API_VERSION", "DeploySpec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deployc.schema import spec

        return getattr(spec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
