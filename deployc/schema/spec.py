"""The deploy.yaml model. It mirrors the file exactly; `deployc.compiler.plan` lowers it into the resolved plan."""
from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployc.conventions import DEFAULT_LATENCY_BUCKETS
from deployc.schema.azureml import AzureMLTarget
from deployc.schema.base import Name, RelPath, SpecModel
from deployc.schema.kserve import KServeTarget
from deployc.schema.local import LocalTarget
from deployc.schema.passes import KERAS_PASSES, PassItem, QuantizeConfig, pass_config, pass_name
from deployc.schema.sagemaker import SageMakerTarget
from deployc.schema.slo import SLO, LatencySLO, latency_threshold_problems, slo_name
from deployc.schema.tflite import TFLiteTarget
from deployc.schema.tfserving import TFServingTarget
from deployc.schema.vertex import VertexTarget

API_VERSION = "deployc/v1"
SERVED_TARGETS = ("local", "sagemaker", "kserve", "vertex", "azureml")  # targets that export the server's metrics
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


class Targets(SpecModel):
    @model_validator(mode="before")
    @classmethod
    def _empty_means_defaults(cls, value: Any) -> Any:
        # `local:` with nothing under it asks for the target with its defaults.
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    local: LocalTarget | None = Field(None, description="A bundle `deployc serve` runs.")
    sagemaker: SageMakerTarget | None = Field(None, description="A SageMaker endpoint.")
    tflite: TFLiteTarget | None = Field(None, description="A LiteRT bundle for devices.")
    kserve: KServeTarget | None = Field(None, description="A KServe InferenceService (Kubernetes).")
    tfserving: TFServingTarget | None = Field(None, description="A versioned SavedModel for TensorFlow Serving.")
    vertex: VertexTarget | None = Field(None, description="A Vertex AI model and endpoint.")
    azureml: AzureMLTarget | None = Field(None, description="An Azure ML managed online endpoint.")


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
        seen_onnx_pass = False
        for i, item in enumerate(self.optimize):
            name, cfg = pass_name(item), pass_config(item)
            loc: tuple[str | int, ...] = ("optimize", i, name)
            if name in KERAS_PASSES:
                if fmt == "onnx":
                    problems.append((loc, f"{name} needs a Keras or SavedModel model; {self.model.path} is ONNX"))
                if seen_onnx_pass:
                    problems.append((loc, f"{name} runs on the Keras model, so it must come before quantize"))
                if self.data.train is None:
                    problems.append((loc, f"{name} fine-tunes on data.train, which is not set"))
                elif self.data.train.y is None:
                    problems.append((loc, f"{name} needs labels: set data.train.y"))
            else:
                seen_onnx_pass = True
                mode = getattr(cfg, "mode", None)
                wants_static = mode == "int8-static" or (
                    mode == "auto" and isinstance(cfg, QuantizeConfig) and "int8-static" in cfg.candidates)
                if wants_static and self.data.calibration is None:
                    problems.append((loc + ("mode",), f"{mode} needs calibration data: set data.calibration"))
                if mode == "auto" and self.data.eval is None:
                    problems.append((loc + ("mode",), "auto picks the best candidate on data.eval, which is not set"))
        gates = self.gates
        if self.data.eval is None:
            for g in ("max_accuracy_drop", "min_agreement", "max_abs_error"):
                if getattr(gates, g) is not None:
                    problems.append((("gates", g), f"{g} is measured on data.eval, which is not set"))
        if gates.max_accuracy_drop is not None and self.data.eval is not None and self.data.eval.y is None:
            problems.append((("gates", "max_accuracy_drop"), "accuracy needs labels: set data.eval.y"))
        tfl = self.targets.tflite
        if tfl is not None:
            if (tfl.quantization == "int8" or tfl.device == "microcontroller") and self.data.calibration is None:
                problems.append((("targets", "tflite", "quantization"), "int8 needs data.calibration"))
            if fmt == "onnx":
                problems.append((("targets", "tflite"), "tflite needs a Keras or SavedModel model, not ONNX"))
        if self.targets.tfserving is not None and fmt == "onnx":
            problems.append((("targets", "tfserving"), "tfserving needs a Keras or SavedModel model, not ONNX"))
        names = Counter(slo_name(s) for s in self.slos)
        for i, s in enumerate(self.slos):
            if names[slo_name(s)] > 1:
                problems.append((("slos", i, "name"), f"SLO name {slo_name(s)!r} is used more than once"))
            if s.kind == "stability" and self.data.eval is None:
                problems.append((("slos", i, "kind"), "stability compares with predictions on data.eval: set it"))
            served_by = [t for t in SERVED_TARGETS if getattr(self.targets, t, None) is not None]
            if self.targets.kserve is not None and self.targets.kserve.runtime != "deployc":
                served_by.remove("kserve")  # KServe's own ONNX runtime does not export deployc's metrics
            if isinstance(s, LatencySLO) and not served_by:
                problems.append((("slos", i), "a latency SLO needs a target that runs `deployc serve` "
                                 f"({', '.join(SERVED_TARGETS)})"))
        problems.extend(latency_threshold_problems(self.slos, DEFAULT_LATENCY_BUCKETS))
        for target in Targets.model_fields:  # platform names derived from `name` (each target's own limits)
            cfg = getattr(self.targets, target)
            if cfg is not None:
                problems.extend(cfg.spec_name_problems(self.name))
        if problems:
            raise CrossFieldErrors(problems)
        return self


class CrossFieldErrors(ValueError):
    """Several located problems found after field validation; the validator turns each into a Problem."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(m for _, m in problems))


def resolved_format(model: ModelSpec) -> str:
    if model.format != "auto":
        return model.format
    p = model.path.lower()
    if p.endswith(".onnx"):
        return "onnx"
    if p.endswith((".keras", ".h5", ".hdf5")):
        return "keras"
    return "savedmodel"
