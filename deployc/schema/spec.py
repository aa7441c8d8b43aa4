"""The deploy.yaml model. It mirrors the file exactly; `deployc.compiler.plan` lowers it into the resolved plan."""
from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, create_model, field_validator, model_validator

from deployc.conventions import DEFAULT_LATENCY_BUCKETS
from deployc.schema.base import CrossFieldErrors, Name, RelPath, SpecModel
from deployc.schema.capture import Monitoring, capture_problems
from deployc.schema.passes import PassItem, optimize_problems
from deployc.schema.signing import Signing
from deployc.schema.slo import (
    SLO,
    InputDriftSLO,
    LatencySLO,
    input_drift_problems,
    latency_threshold_problems,
    slo_name,
)
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
    task: Literal["classification", "binary", "multilabel", "regression"] = Field(
        "classification", description="What the prediction output holds: classification (one class of several, "
        "argmax), binary (a sigmoid probability of class 1), multilabel (a sigmoid per label), regression.")
    prediction: str | None = Field(None, min_length=1, max_length=128, description="The output the gates, the "
                                   "report and the stability SLO judge, by name (default: the first output).")
    threshold: float | None = Field(None, gt=0, lt=1, description="binary and multilabel: the probability from "
                                    "which a row (a label) counts as positive (default 0.5).")
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


ArrayKey = Annotated[str, Field(min_length=1, max_length=128)]


def _array_keys(value: Any) -> Any:
    """`x`: one array key, or {input name: array key}; checked whole here, so a mistake reads as one message
    rather than one per branch of the union."""
    def key(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= 128

    if isinstance(value, dict):
        if not value or len(value) > 64:
            raise ValueError("map 1 to 64 model inputs to array keys")
        bad = [k for k, v in value.items() if not (key(k) and key(v))]
        if bad:
            raise ValueError(f"input {bad[0]!r}: input names and array keys are strings of 1 to 128 characters")
    elif not key(value):
        raise ValueError("x is an array key (a string), or a mapping of each model input's name to its array key")
    return value


class DataSet(SpecModel):
    path: RelPath = Field(..., description="A .npz file.")
    x: Annotated[ArrayKey | Annotated[dict[ArrayKey, ArrayKey], Field(min_length=1, max_length=64)],
                 BeforeValidator(_array_keys)] = Field(
        "x", description="Key of the inputs array; for a model of several inputs, a mapping of each input's name "
        "to its array's key (`{input_ids: ids, attention_mask: mask}`).")
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
    max_relative_error: float | None = Field(None, ge=0, description="Relative L2 error of the prediction "
                                             "output: ||artifact - reference|| / ||reference||.")
    max_auc_drop: float | None = Field(None, ge=0, le=1, description="binary: reference ROC AUC minus artifact "
                                       "ROC AUC on data.eval's labels.")
    max_r2_drop: float | None = Field(None, ge=0, description="regression: reference R² minus artifact R² on "
                                      "data.eval's labels.")
    max_size_mb: float | None = Field(None, gt=0, description="Artifact size on disk.")
    max_latency_p99_ms: float | None = Field(None, gt=0, description="Batch-1 p99 latency on this machine.")
    min_attribution_agreement: float | None = Field(
        None, ge=0, le=1, description="Needs `explain:`. The smallest of three agreements between the artifact's "
        "attributions and the original model's on the explained rows: rank correlation and top-k overlap of global "
        "feature importance, and mean per-row correlation (docs/explain.md).")


ExplainMethod = Literal["integrated-gradients", "kernel-shap", "occlusion"]


class ExplainServe(SpecModel):
    enabled: bool = Field(True, description="Serve `POST /v2/models/{name}/explain` from the bundle.")
    max_rows: int = Field(8, ge=1, le=1024, description="Most rows one explain request may hold (400 beyond).")


class Explain(SpecModel):
    method: ExplainMethod = Field(..., description="integrated-gradients (float inputs; exact TensorFlow gradients "
                                  "for the original Keras or SavedModel model), kernel-shap (the shap library's "
                                  "KernelExplainer; any model, any input dtype) or occlusion (each feature set to "
                                  "the baseline in turn; any model).")
    sample: int = Field(64, ge=1, le=4096, description="Explain the first N rows of data.eval.")
    examples: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1, 2], max_length=16,
        description="Rows of the sample whose attributions report.json records one by one.")
    baseline: Literal["zeros", "mean"] | float = Field(
        "zeros", description="The input the attributions are measured from: zeros, the per-element mean of the "
        "sample (integer inputs: the most frequent value), or one number for every element.")
    steps: int = Field(32, ge=2, le=512, description="integrated-gradients: points on the path from the baseline.")
    samples: int = Field(256, ge=16, le=20000, description="kernel-shap: model evaluations per explained row.")
    top_k: int = Field(5, ge=1, le=100, description="Features compared by the top-k overlap (and shown first).")
    images: dict[Annotated[str, Field(min_length=1, max_length=128)],
                 Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]] = Field(
        default_factory=dict, max_length=16,
        description="Inputs to draw as heatmaps in report.html, as [height, width] of one row's elements.")
    serve: ExplainServe = Field(default_factory=ExplainServe)

    @field_validator("baseline")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("a number baseline must be finite")
        return v


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
    explain: Explain | None = Field(None, description="Explain the original model and every artifact on data.eval, "
                                    "gate how far optimization may change the explanation, serve explanations.")
    signing: Signing | None = Field(None, description="Sign the build in the OpenSSF model-signing format and "
                                    "have its servers verify it (docs/provenance.md).")
    targets: Targets = Field(default_factory=Targets)
    slos: list[SLO] = Field(default_factory=list, max_length=64)
    monitoring: Monitoring | None = Field(None, description="What the served model records about its traffic: "
                                          "`capture` (masked request and response samples).")

    @model_validator(mode="after")
    def _cross_checks(self) -> DeploySpec:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        fmt = resolved_format(self.model)
        problems.extend(optimize_problems(self, fmt))  # each pass's rules (deployc.schema.passes)
        gates = self.gates
        if self.data.eval is None:
            for g in EVAL_GATES:
                if getattr(gates, g) is not None:
                    problems.append((("gates", g), f"{g} is measured on data.eval, which is not set"))
        elif self.data.eval.y is None:
            problems += [(("gates", g), f"{g} needs labels: set data.eval.y") for g in LABEL_GATES
                         if getattr(gates, g) is not None]
        problems.extend(_task_problems(self))
        problems.extend(_explain_problems(self))
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
            if isinstance(s, LatencySLO | InputDriftSLO) and not served_by:
                problems.append((("slos", i), f"a{'n' if s.kind[0] in 'ai' else ''} {s.kind} SLO needs a target "
                                 f"that runs `deployc serve` ({', '.join(serving_targets())})"))
        problems.extend(latency_threshold_problems(self.slos, DEFAULT_LATENCY_BUCKETS))
        problems.extend(input_drift_problems(self.slos, self.data.eval is not None))
        problems.extend(capture_problems(self))  # deployc.schema.capture
        if problems:
            raise CrossFieldErrors(problems)
        return self


# the gates measured on data.eval, those of them that need its labels, and the tasks each one judges
EVAL_GATES = ("max_accuracy_drop", "min_agreement", "max_abs_error", "max_relative_error", "max_auc_drop",
              "max_r2_drop")
LABEL_GATES = ("max_accuracy_drop", "max_auc_drop", "max_r2_drop")
CLASS_TASKS = ("classification", "binary", "multilabel")
GATE_TASKS = {"max_accuracy_drop": CLASS_TASKS, "min_agreement": CLASS_TASKS, "max_auc_drop": ("binary",),
              "max_r2_drop": ("regression",)}
_INSTEAD = {"classification": "min_agreement or max_accuracy_drop", "binary": "max_auc_drop, max_accuracy_drop or "
            "min_agreement", "multilabel": "min_agreement or max_accuracy_drop",
            "regression": "max_abs_error, max_relative_error or max_r2_drop"}


def _task_problems(spec: DeploySpec) -> list[tuple[tuple[str | int, ...], str]]:
    """Gates and SLOs must judge what the model's task predicts: classes for the class tasks, numbers for
    regression; one predicted class a row for the stability SLO; a threshold only for sigmoid outputs."""
    task = spec.model.task
    found: list[tuple[tuple[str | int, ...], str]] = [
        (("gates", g), f"{g} does not apply to model.task {task}: use {_INSTEAD[task]}")
        for g, tasks in GATE_TASKS.items() if getattr(spec.gates, g) is not None and task not in tasks]
    if task in ("regression", "multilabel"):
        why = "no classes" if task == "regression" else "a row has several labels, not one class"
        found += [(("slos", i, "kind"), f"a stability SLO watches the share of each predicted class, and model.task "
                   f"is {task} ({why})") for i, s in enumerate(spec.slos) if s.kind == "stability"]
    if spec.model.threshold is not None and task not in ("binary", "multilabel"):
        found.append((("model", "threshold"), f"a threshold applies to binary and multilabel models, and model.task "
                      f"is {task}"))
    return found


def _explain_problems(spec: DeploySpec) -> list[tuple[tuple[str | int, ...], str]]:
    """`explain:` reads data.eval; the attribution gate needs `explain:`; recorded examples lie in the sample."""
    ex = spec.explain
    found: list[tuple[tuple[str | int, ...], str]] = []
    if ex is None:
        if spec.gates.min_attribution_agreement is not None:
            found.append((("gates", "min_attribution_agreement"), "compares explanations: set `explain:` "
                          "(docs/explain.md)"))
        return found
    if spec.data.eval is None:
        found.append((("explain",), "explanations are computed on data.eval, which is not set"))
    found += [(("explain", "examples", i), f"row {r} is outside the sample of {ex.sample} rows")
              for i, r in enumerate(ex.examples) if r >= ex.sample]
    if spec.model.task == "multilabel":
        found.append((("explain",), "explanations follow one predicted class or value a row, and model.task is "
                      "multilabel"))
    return found


def resolved_format(model: ModelSpec) -> str:
    return model.resolved_format()
