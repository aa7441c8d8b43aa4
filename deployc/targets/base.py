"""The target interface. A target turns the built artifacts into one deployable bundle folder.

Adding a target touches one module here, one template folder and one line of `deployc.targets.REGISTRY`.
Emitters are pure: they return `{relative_path: bytes}` and never touch the filesystem; the writer does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deployc.schema.base import SpecModel
from deployc.schema.spec import DeploySpec


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output, in the Open Inference Protocol's datatype names (FP32, INT64, ...)."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a free axis

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class EmitContext:
    """Everything an emitter may read. Built once by the compiler after every step has run."""

    spec: DeploySpec
    spec_file: str  # the spec's path as the user gave it, for generated-file headers
    onnx_model: Path  # the final ONNX artifact (after every pass), in the cache
    onnx_sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    labels: tuple[str, ...] | None
    reference_distribution: tuple[float, ...] | None  # predicted-class shares of the reference model on data.eval
    latency_buckets: tuple[float, ...]  # the server's request-duration buckets (SLO thresholds included)
    step_outputs: dict[str, Path] = field(default_factory=dict)  # step id -> its cached output folder
    step_results: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id -> its JSON result
    files: dict[str, bytes] = field(default_factory=dict)  # what other emitters produced before this one


class Target:
    """Base of every target: a name, its config model under `targets.<name>`, extra steps, and `emit`."""

    name: ClassVar[str]
    config_model: ClassVar[type[SpecModel]]
    #: names of other targets whose files this one reads from EmitContext.files (emitted first)
    after: ClassVar[tuple[str, ...]] = ()

    def config(self, spec: DeploySpec) -> Any:
        return getattr(spec.targets, self.name)

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None) -> list[Any]:
        """Extra cached steps this target needs (conversion, verification). Default: none."""
        return []

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        raise NotImplementedError
