"""The target interface. A target turns the built artifacts into one deployable bundle folder.

A target is one module (`deployc/targets/<name>.py`, or a plugin's module registered under the `deployc.targets`
entry point group), one template folder and one documentation page. Its class says everything deployc needs:
the name of its `targets.<name>` mapping, the config model and description of that mapping, the rules that need
only the spec (`check`, reported by `deployc validate` with file:line:col), whether it serves deployc's metrics,
the extra cached steps it plans, the targets it emits after, and `emit`.

Emitters are pure: they return `{relative_path: bytes}` and never touch the filesystem; the writer does. They read
the EmitContext only, never another emitter's output.

Modules that define targets keep their top-level imports light (no TensorFlow, onnx or boto3), and import the
spec model for annotations only: the schema builds `Targets` from the registry while `deployc.schema.spec` loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deployc.schema.base import Located, SpecModel

if TYPE_CHECKING:
    from deployc.compiler.resolved import Resolved
    from deployc.compiler.steps import Step
    from deployc.monitoring.resolved import Monitoring
    from deployc.schema.spec import DeploySpec
    from deployc.targets.invariance import BatchingDecision


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
    onnx_model: Path  # the final artifact (after every pass), in the cache: model.onnx, or for model_format
    # "openvino" the folder holding model.xml and model.bin
    onnx_sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    labels: tuple[str, ...] | None
    reference_distribution: tuple[float, ...] | None  # predicted-class shares of the reference model on data.eval
    latency_buckets: tuple[float, ...]  # the server's request-duration buckets (SLO thresholds included)
    step_outputs: dict[str, Path] = field(default_factory=dict)  # step id -> its cached output folder
    step_results: dict[str, dict[str, Any]] = field(default_factory=dict)  # step id -> its JSON result
    monitoring: Monitoring | None = None  # the resolved SLO monitoring (None without SLOs), built from the spec
    resolved: Resolved | None = None  # the spec lowered by the compiler (deployc.compiler.resolved), defaults filled
    model_format: str = "onnx"  # what onnx_model is: "onnx", or "openvino" (quantize openvino-int8)


class Target:
    """Base of every target: a name, its config model under `targets.<name>`, checks, extra steps, and `emit`."""

    name: ClassVar[str]
    config_model: ClassVar[type[SpecModel]]
    #: the `targets.<name>` field's description in the JSON Schema
    description: ClassVar[str]
    #: True when the target can run `deployc serve`, whose metrics the SLO rules read (see `serves_metrics`)
    serves: ClassVar[bool] = False
    #: names of other targets this one is emitted after (a topological order; a cycle is refused)
    after: ClassVar[tuple[str, ...]] = ()
    #: the kinds of shipped artifact (EmitContext.model_format) the target can take: "onnx" (model.onnx) and
    #: "openvino" (an OpenVINO model, which `deployc serve` runs). A target that loads the ONNX file with a
    #: runtime of its own keeps the default.
    model_formats: ClassVar[tuple[str, ...]] = ("onnx",)

    def config(self, spec: DeploySpec) -> Any:
        return getattr(spec.targets, self.name)

    def config_or_default(self, spec: DeploySpec) -> Any:
        """`targets.<name>` as set, or its config model's defaults when the spec leaves it unset (a target that
        other targets' files follow, such as `local`'s serving settings)."""
        cfg = self.config(spec)
        return cfg if cfg is not None else self.config_model()

    def serves_metrics(self, cfg: Any) -> bool:
        """Whether this configuration runs `deployc serve` (and so exports the metrics SLOs are computed from)."""
        return self.serves

    def formats(self, cfg: Any) -> tuple[str, ...]:
        """The artifact kinds this configuration can take (see `model_formats`)."""
        return self.model_formats

    def check(self, spec: DeploySpec) -> list[Located]:
        """Problems found in the spec alone, as (location from the spec's root, message); called by the spec's
        cross-field check when `targets.<name>` is set. Default: the names derived from the spec's name."""
        cfg: SpecModel = self.config(spec)
        return cfg.spec_name_problems(spec.name)

    def steps(self, spec: DeploySpec, spec_dir: Path, final_model_step: str, keras_model_step: str | None
              ) -> list[Step]:
        """Extra cached steps this target needs (conversion, verification). Default: none."""
        return []

    def batching(self, spec: DeploySpec, step_results: dict[str, dict[str, Any]]) -> BatchingDecision | None:
        """How this target's own model server (not `deployc serve`, which the build reports once for every
        serving.json) merges concurrent requests, for report.json and report.md. Default: nothing to report."""
        return None

    def emit(self, ctx: EmitContext) -> dict[str, bytes]:
        raise NotImplementedError
