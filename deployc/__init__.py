"""deployc: compile a deploy.yaml into verified model artifacts, serving configs and SLO monitoring."""
from __future__ import annotations

__version__ = "0.1.0"
