"""Optimization passes by name: the built-ins, then the `deployc.passes` entry points of installed plugins.

A plugin distribution registers a `Pass` subclass in its metadata:

    [project.entry-points."deployc.passes"]
    stamp = "deployc_stamp:StampPass"

Loading a pass imports only its module (pass modules import heavy libraries inside `apply`).
"""
from __future__ import annotations

from functools import cache

from deployc.passes.base import DATA_SETS, FORMATS, Pass
from deployc.plugins import PASSES_GROUP, Entry, PluginError, entries
from deployc.schema.base import SpecModel

BUILTINS: tuple[tuple[str, str], ...] = (
    ("quantize", "deployc.passes.quantize:QuantizePass"),
    ("prune", "deployc.passes.prune:PrunePass"),
    ("distill", "deployc.passes.distill:DistillPass"),
)


def pass_entries() -> dict[str, Entry]:
    """Every registered pass: built-ins first, then plugins sorted by name."""
    return entries(PASSES_GROUP, BUILTINS)


@cache
def pass_class(name: str) -> type[Pass]:
    """The class registered as `name`, checked against the pass interface."""
    entry = pass_entries()[name]
    cls = entry.load()
    where = f"{entry.group_label()} pass {name!r} ({entry.ref}, from {entry.distribution} {entry.version})"
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise PluginError(f"{where} is not a subclass of deployc.passes.base.Pass")
    if not name.isidentifier():
        raise PluginError(f"{where}: a pass name is a Python identifier (it is a key of deploy.yaml's optimize items)")
    if getattr(cls, "name", None) != name:
        raise PluginError(f"{where} has name {getattr(cls, 'name', None)!r}; it is registered as {name!r}")
    config = getattr(cls, "config_model", None)
    if not (isinstance(config, type) and issubclass(config, SpecModel)):
        raise PluginError(f"{where}: config_model is not a subclass of deployc.schema.base.SpecModel")
    formats = (getattr(cls, "input_format", None), getattr(cls, "output_format", None))
    if formats[0] not in FORMATS or formats[0] != formats[1]:
        raise PluginError(f"{where}: input_format and output_format are one of {', '.join(FORMATS)}, and the same "
                          f"(got {formats[0]!r} -> {formats[1]!r})")
    unknown = sorted((set(cls.data_needed) | set(cls.data_optional)) - set(DATA_SETS))
    if unknown:
        raise PluginError(f"{where} declares data sets {', '.join(unknown)}; deploy.yaml has {', '.join(DATA_SETS)}")
    return cls


def get_pass(name: str) -> Pass:
    return pass_class(name)()


__all__ = ["BUILTINS", "Pass", "get_pass", "pass_class", "pass_entries"]
