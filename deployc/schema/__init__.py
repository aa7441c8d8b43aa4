"""pydantic models of deploy.yaml; `DeploySpec` is the root."""
from __future__ import annotations

from deployc.schema.spec import API_VERSION, DeploySpec

__all__ = ["API_VERSION", "DeploySpec"]
