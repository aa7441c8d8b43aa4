"""Built-in and third-party extensions, found by name: the `deployc.targets` and `deployc.passes` entry points.

A plugin distribution registers its classes in its own metadata, e.g. in its pyproject.toml:

    [project.entry-points."deployc.targets"]
    echo = "deployc_echo:EchoTarget"

Built-ins are listed here by module path (nothing is imported until a unit is used, so `deployc validate`
stays free of TensorFlow). A plugin may not take a built-in's name. The distribution's name and version are
recorded with each plugin (`Entry.version`), so cached steps of a plugin rebuild when it is upgraded.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import import_module, metadata
from typing import Any

from deployc import __version__
from deployc.errors import DeploycError

TARGETS_GROUP = "deployc.targets"
PASSES_GROUP = "deployc.passes"


@dataclass(frozen=True)
class Entry:
    """Where one unit lives: `module:attribute`, and the distribution that provides it."""

    name: str
    ref: str
    distribution: str = "deployc"
    version: str = __version__

    @property
    def builtin(self) -> bool:
        return self.distribution == "deployc"

    def load(self) -> Any:
        module, _, attr = self.ref.partition(":")
        try:
            obj = import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise PluginError(f"{self.group_label()} {self.name!r} ({self.ref}, from {self.distribution} "
                              f"{self.version}) cannot be loaded: {e}") from e
        return obj

    def group_label(self) -> str:
        return "plugin" if not self.builtin else "built-in"


class PluginError(DeploycError):
    """A plugin's entry point cannot be loaded or does not declare what its kind needs (exit 1, no traceback)."""


@cache
def entries(group: str, builtins: tuple[tuple[str, str], ...]) -> dict[str, Entry]:
    """The built-ins (in their order), then the plugins of `group` (sorted by name). A plugin that reuses a
    built-in's name, or one that two distributions register, is refused with a PluginError naming both."""
    found: dict[str, Entry] = {name: Entry(name, ref) for name, ref in builtins}
    plugins: dict[str, Entry] = {}
    for ep in metadata.entry_points(group=group):
        dist = ep.dist
        entry = Entry(ep.name, ep.value, dist.name if dist else "unknown", dist.version if dist else "unknown")
        if ep.name in found:
            if found[ep.name].ref == entry.ref:  # deployc's own metadata listing a built-in
                continue
            raise PluginError(f"{entry.distribution} {entry.version} registers {group} entry point {ep.name!r}, "
                              "the name of a built-in")
        if ep.name in plugins and plugins[ep.name].ref != entry.ref:
            other = plugins[ep.name]
            raise PluginError(f"{group} entry point {ep.name!r} is registered by both {other.distribution} and "
                              f"{entry.distribution}")
        plugins[ep.name] = entry
    return {**found, **dict(sorted(plugins.items()))}
