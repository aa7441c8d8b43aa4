"""Built-in optimization passes, registered by name. Modules are imported only when a pass runs."""
from __future__ import annotations

from importlib import import_module

from deployc.passes.base import Pass

REGISTRY: dict[str, str] = {
    "quantize": "deployc.passes.quantize:QuantizePass",
    "prune": "deployc.passes.prune:PrunePass",
    "distill": "deployc.passes.distill:DistillPass",
}


def get_pass(name: str) -> Pass:
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(import_module(module), attr)()
