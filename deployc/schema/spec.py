"""The deploy.yaml model. It mirrors the file exactly; `deployc.compiler.plan` lowers it into the resolved plan."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from deployc.conventions import DEFAULT_LATENCY_BUCKETS
from deployc.schema.base import CrossFieldErrors, Name, RelPath, SpecModel
from deployc.schema.passes import PassItem, optimize_problems
from deployc.schema.slo import SLO, LatencySLO, latency_threshold_problems, slo_name
from deployc.targets import configured, get_target, serving_targets, target_class, target_names

API_VERSION = "deployc/v1"
__all__ = ["API_VERSION", "CrossFieldErrors", "DeploySpec", "Targets", "resolved_format"]
DType = Literal["float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool"]


class TensorSpec(SpecModel):
    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")
    dtype: DType = "float32"
    shape: list[int] = Field(..., min_length=1, max_length=8,
                             description="-1 for a free axis (the first axis is the batch axis).")

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in v):
            raise ValueError("dimensions are positive integers, or -1 for a free axis")
        return v


class ModelSpec(SpecModel):
    path: RelPath = Field(..., description=".keras / .h5 file, SavedModel folder, or .onnx file.")
    format: Literal["auto", "keras", "savedmodel", "onnx"] = Field("auto", description="auto: from the path.")
    inputs: list[TensorSpec] | None = Field(None, min_length=1, description="Needed where the model does not say.")
    labels: RelPath | None = Field(None, description="Text file, one class name per line, in output order.")
    task: Literal["classification", "regression"] = Field("classification")
    allow_python_code: bool = Field(False, description="Load the Keras model with safe mode off, so Lambda layers "
                                    "(Python code stored in the file) run. Loading then executes that code: only "
                                    "for files whose source you trust.")

    def resolved_format(self) -> str:
        """`format`, with auto resolved from the path's suffix."""
        if self.format != "auto":
            return self.format
        p = self.path.lower()
        if p.endswith(".onnx"):
            return "onnx"
        if p.endswith((".keras", ".h5", ".hdf5")):
            return "keras"
        return "savedmodel"


class DataSet(SpecModel):
    path: RelPath = Field(..., description="A .npz file.")
    x: str = Field("x", description="Key of the inputs array.")
    y: str | None = Field(None, description="Key of the labels array (class indices).")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows.")


class DataSpec(SpecModel):
    eval: DataSet | None = Field(None, description="Verification and measurement data.")
    calibration: DataSet | None = Field(None, description="Representative inputs for static int8.")
    train: DataSet | None = Field(None, description="Fine-tuning data for prune and distill (needs y).")


class Gates(SpecModel):
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="Reference accuracy minus artifact "
                                            "accuracy, as a fraction (0.01 = one point).")
    min_agreement: float | None = Field(None, ge=0, le=1, description="Share of eval rows whose top-1 class "
                                        "matches the reference model.")
    max_abs_error: float | None = Field(None, ge=0, description="Largest absolute output difference.")
    max_size_mb: float | None = Field(None, gt=0, description="Artifact size on disk.")
    max_latency_p99_ms: float | None = Field(None, gt=0, description="Batch-1 p99 latency on this machine.")


class Measure(SpecModel):
    threads: int = Field(1, ge=1, le=256, description="Intra-op threads for latency measurements.")
    batch_size: int = Field(64, ge=1, le=65536, description="Batch size of the throughput measurement.")
    min_seconds: float = Field(0.5, gt=0, le=600, description="Least time spent timing each artifact.")


class TargetsBase(SpecModel):
    # `targets:`: one optional field per registered target (deployc.targets), added by `_targets_model`.
    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: Any) -> Any:
        # `local:` with nothing under it asks for the target with its defaults.
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    if TYPE_CHECKING:  # each field holds its target's config model; targets read them as `Target.config(spec)`
        def __getattr__(self, name: str) -> Any: ...


def _targets_model() -> type[TargetsBase]:
    """`targets:` from the registry: each target's config model under its name, described by the target."""
    fields: dict[str, Any] = {}
    for name in target_names():
        cls = target_class(name)
        fields[name] = (cls.config_model | None, Field(None, description=cls.description))
    return create_model("Targets", __base__=TargetsBase, __module__=__name__, **fields)


if TYPE_CHECKING:
    Targets = TargetsBase
else:
    Targets = _targets_model()


class DeploySpec(SpecModel):
    apiVersion: Literal["deployc/v1"] = Field(..., description="Spec format version.")
    name: Name = Field(..., description="Used in resource names and the output folder.")
    version: str = Field("0.0.0", pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
    description: str | None = Field(None, max_length=2000)
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    optimize: list[PassItem] = Field(default_factory=list, max_length=16,
                                     description="Passes, applied in the order written.")
    gates: Gates = Field(default_factory=Gates)
    measure: Measure = Field(default_factory=Measure)
    targets: Targets = Field(default_factory=Targets)
    slos: list[SLO] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _cross_checks(self) -> DeploySpec:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        fmt = resolved_format(self.model)
        problems.extend(optimize_problems(self, fmt))  # each pass's rules (deployc.schema.passes)
        gates = self.gates
        if self.data.eval is None:
            for g in ("max_accuracy_drop", "min_agreement", "max_abs_error"):
                if getattr(gates, g) is not None:
                    problems.append((("gates", g), f"{g} is measured on data.eval, which is not set"))
        if gates.max_accuracy_drop is not None and self.data.eval is not None and self.data.eval.y is None:
            problems.append((("gates", "max_accuracy_drop"), "accuracy needs labels: set data.eval.y"))
        problems.extend(_task_problems(self))
        targets = configured(self)
        for target in targets:  # each target's own rules (names derived from `name`, inputs it needs)
            problems.extend(get_target(target).check(self))
        served_by = [t for t in targets if get_target(t).serves_metrics(getattr(self.targets, t))]
        names = Counter(slo_name(s) for s in self.slos)
        for i, s in enumerate(self.slos):
            if names[slo_name(s)] > 1:
                problems.append((("slos", i, "name"), f"SLO name {slo_name(s)!r} is used more than once"))
            if s.kind == "stability" and self.data.eval is None:
                problems.append((("slos", i, "kind"), "stability compares with predictions on data.eval: set it"))
            if isinstance(s, LatencySLO) and not served_by:
                problems.append((("slos", i), "a latency SLO needs a target that runs `deployc serve` "
                                 f"({', '.join(serving_targets())})"))
        problems.extend(latency_threshold_problems(self.slos, DEFAULT_LATENCY_BUCKETS))
        if problems:
            raise CrossFieldErrors(problems)
        return self


def _task_problems(spec: DeploySpec) -> list[tuple[tuple[str | int, ...], str]]:
    """Gates and SLOs that judge predicted classes cannot apply to a regression model."""
    if spec.model.task != "regression":
        return []
    found: list[tuple[tuple[str | int, ...], str]] = [
        (("gates", g), f"{g} compares predicted classes, and model.task is regression: use max_abs_error")
        for g in ("max_accuracy_drop", "min_agreement") if getattr(spec.gates, g) is not None]
    found += [(("slos", i, "kind"), "a stability SLO watches the share of each predicted class, and model.task is "
               "regression (no classes)") for i, s in enumerate(spec.slos) if s.kind == "stability"]
    return found


def resolved_format(model: ModelSpec) -> str:
    return model.resolved_format()
