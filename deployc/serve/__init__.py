"""`deployc serve`: the inference server for a build's `local/` bundle (see docs/serving.md).

Nothing heavy is imported here; `deployc.serve.cli.main(argv)` is the entry point.
"""
from __future__ import annotations
