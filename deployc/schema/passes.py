"""The `optimize:` list: each item is a one-key mapping naming the pass (`- quantize: {mode: int8-dynamic}`)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from deployc.schema.base import RelPath, SpecModel

QuantizeMode = Literal["int8-dynamic", "int8-static", "float16", "auto"]
QuantizeCandidate = Literal["int8-dynamic", "int8-static", "float16"]


def _all_candidates() -> list[QuantizeCandidate]:
    return ["int8-dynamic", "int8-static", "float16"]


class QuantizeConfig(SpecModel):
    mode: QuantizeMode = Field("int8-dynamic", description="int8-dynamic (MatMul-heavy models), int8-static "
                               "(CNNs; needs data.calibration), float16, or auto (try candidates, keep the best "
                               "that passes the gates).")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "percentile", description="How int8-static picks activation ranges from data.calibration.")
    per_channel: bool = Field(True, description="Per-channel weight scales for int8-static.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs with AVX2/AVX512 but no VNNI.")
    percentile: float = Field(99.999, gt=90.0, le=100.0, description="With calibration_method percentile: the "
                              "share of calibration values (in percent) each activation range covers.")
    keep_edges_float: bool = Field(True, description="int8-static: leave the first Conv and the output head "
                                   "(last MatMul/Gemm and what follows it) in float: the layers int8 hurts most.")
    exclude_ops: list[str] = Field(default_factory=list, description="ONNX op types left in float (e.g. Softmax).")
    candidates: list[QuantizeCandidate] = Field(
        default_factory=_all_candidates,
        description="Modes `auto` tries, in order of preference when two tie.")


class PruneConfig(SpecModel):
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="Unstructured: share of the weights of each Dense/Conv "
                            "kernel set to zero (biases kept). Structured: share of the units/filters removed from "
                            "each Dense/Conv layer but the output one.")
    structured: bool = Field(False, description="Remove whole Dense units / Conv2D filters and rebuild a smaller "
                             "model (faster on CPU) instead of zeroing single weights (smaller when compressed).")
    epochs: int = Field(2, ge=0, le=1000, description="Fine-tuning epochs on data.train; unstructured sparsity "
                        "ramps up over the first 3/4 of the steps. 0 prunes at once without fine-tuning.")
    batch_size: int = Field(32, ge=1, le=65536, description="Fine-tuning batch size.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate for fine-tuning.")


class DistillConfig(SpecModel):
    student: RelPath | None = Field(None, description="A Keras model file for the student (same input shape and "
                                    "number of classes as the teacher), trained from the weights it holds; default: "
                                    "the teacher's architecture shrunk by `width`, freshly initialized.")
    width: float = Field(0.5, gt=0.0, le=1.0, description="Width factor for the generated student: Dense units and "
                         "Conv filters are multiplied by it, except the output layer's.")
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature of the distillation term.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the distillation loss (KL at the temperature, "
                         "times T^2) vs the label cross-entropy (1 - alpha).")
    epochs: int = Field(10, ge=1, le=1000, description="Student training epochs on data.train.")
    batch_size: int = Field(64, ge=1, le=65536, description="Student training batch size.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate for the student.")


class _PassStep(SpecModel):
    @model_validator(mode="before")
    @classmethod
    def _none_means_defaults(cls, value: Any) -> Any:
        # `- quantize:` (no mapping) means "the defaults".
        if isinstance(value, dict) and len(value) == 1:
            key, inner = next(iter(value.items()))
            if inner is None:
                return {key: {}}
        return value


class QuantizeStep(_PassStep):
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)


class PruneStep(_PassStep):
    prune: PruneConfig = Field(default_factory=PruneConfig)


class DistillStep(_PassStep):
    distill: DistillConfig = Field(default_factory=DistillConfig)


PASS_STEP_MODELS: dict[str, type[SpecModel]] = {"quantize": QuantizeStep, "prune": PruneStep, "distill": DistillStep}
KERAS_PASSES = ("distill", "prune")  # run on the Keras model, before conversion
ONNX_PASSES = ("quantize",)  # run on the ONNX model


def _pass_tag(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in PASS_STEP_MODELS else None
    if isinstance(value, SpecModel):
        return next(iter(type(value).model_fields))
    return None


PassItem = Annotated[
    Annotated[QuantizeStep, Tag("quantize")]
    | Annotated[PruneStep, Tag("prune")]
    | Annotated[DistillStep, Tag("distill")],
    Discriminator(_pass_tag, custom_error_type="pass", custom_error_message=(
        "each optimize item is one of `quantize:`, `prune:`, `distill:` with its settings"),
        custom_error_context={}),
]


def pass_name(item: SpecModel) -> str:
    return next(iter(type(item).model_fields))


def pass_config(item: SpecModel) -> SpecModel:
    return getattr(item, pass_name(item))
