"""Targets, found by name: the built-in table below, then the `deployc.targets` entry points of plugins.

Nothing is imported until a target is used, except by the schema, which reads each target's name, config model
and description to build `targets:` (target modules keep their top-level imports light).
"""
from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from deployc.plugins import TARGETS_GROUP, Entry, PluginError, entries
from deployc.schema.base import SpecModel
from deployc.targets.base import EmitContext, Target, TensorInfo

if TYPE_CHECKING:
    from deployc.compiler.steps import Step
    from deployc.schema.spec import DeploySpec

REGISTRY: dict[str, str] = {
    "local": "deployc.targets.local:LocalTarget",
    "tflite": "deployc.targets.tflite:TFLiteTarget",
    "sagemaker": "deployc.targets.sagemaker:SageMakerTarget",
    "kserve": "deployc.targets.kserve:KServeTarget",
    "tfserving": "deployc.targets.tfserving:TFServingTarget",
    "vertex": "deployc.targets.vertex:VertexTarget",
    "azureml": "deployc.targets.azureml:AzureMLTarget",
    "triton": "deployc.targets.triton:TritonTarget",
}


def registry() -> dict[str, Entry]:
    """Every target deployc knows: built-ins in table order, then plugins sorted by name."""
    return entries(TARGETS_GROUP, tuple(REGISTRY.items()))


@cache
def target_class(name: str) -> type[Target]:
    entry = registry()[name]
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise PluginError(f"{entry.group_label()} target {name!r} ({entry.ref}) is not a deployc.targets.Target")
    if getattr(cls, "name", None) != name:
        raise PluginError(f"target {name!r} ({entry.ref}) declares the name {getattr(cls, 'name', None)!r}")
    for attr in ("config_model", "description"):
        if not hasattr(cls, attr):
            raise PluginError(f"target {name!r} ({entry.ref}) declares no {attr}")
    if not (isinstance(cls.config_model, type) and issubclass(cls.config_model, SpecModel)):
        raise PluginError(f"target {name!r} ({entry.ref}): config_model must derive from "
                          "deployc.schema.base.SpecModel")
    return cls


def get_target(name: str) -> Target:
    return target_class(name)()


def target_names() -> tuple[str, ...]:
    return tuple(registry())


def configured(spec: DeploySpec) -> tuple[str, ...]:
    """The targets the spec sets, in registry order."""
    return tuple(n for n in target_names() if getattr(spec.targets, n, None) is not None)


def serving_targets() -> tuple[str, ...]:
    """Targets that can run `deployc serve` (and so export the metrics SLOs are computed from)."""
    return tuple(n for n in target_names() if target_class(n).serves)


def serves_metrics(spec: DeploySpec) -> bool:
    """True when some target of the spec runs `deployc serve` as configured (it ships a serving.json)."""
    return any(get_target(n).serves_metrics(getattr(spec.targets, n)) for n in configured(spec))


def onnx_only_targets(spec: DeploySpec) -> dict[str, str]:
    """The configured targets that cannot take an OpenVINO artifact, each with why (for the spec's errors)."""
    found = {}
    for n in configured(spec):
        t = get_target(n)
        if "openvino" not in t.formats(getattr(spec.targets, n)):
            found[n] = "loads model.onnx with a runtime of its own"
    return found


def emit_order(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` ordered so that each target comes after the targets it names in `after` (those among `names`);
    ties keep registry order. A cycle is refused."""
    deps = {n: [d for d in target_class(n).after if d in names] for n in names}
    done: list[str] = []
    visiting: list[str] = []

    def visit(n: str) -> None:
        if n in done:
            return
        if n in visiting:
            cycle = " -> ".join(visiting[visiting.index(n):] + [n])
            raise PluginError(f"targets are emitted after each other in a cycle: {cycle}")
        visiting.append(n)
        for d in deps[n]:
            visit(d)
        visiting.pop()
        done.append(n)

    for n in names:
        visit(n)
    return tuple(done)


def target_steps(name: str, spec: DeploySpec, spec_dir: Path, final_model_step: str,
                 keras_model_step: str | None) -> list[Step]:
    """A target's extra steps; a plugin's distribution joins each step's libraries, so its version is part of
    the step's key (an upgraded plugin rebuilds)."""
    steps = get_target(name).steps(spec, spec_dir, final_model_step, keras_model_step)
    entry = registry()[name]
    if entry.builtin:
        return steps
    return [s if entry.distribution in s.libs else replace(s, libs=(*s.libs, entry.distribution)) for s in steps]


__all__ = ["REGISTRY", "EmitContext", "Target", "TensorInfo", "configured", "emit_order", "get_target",
           "onnx_only_targets", "registry", "serves_metrics", "serving_targets", "target_class", "target_names",
           "target_steps"]
