"""Typed results of the core steps, read by the compiler instead of string keys into their JSON.

A step returns JSON (`StepOutput.result`, cached as it is); these classes are its typed view. `from_json` reads a
result, `to_json` gives back the same JSON (every key kept, so the cache's bytes do not change):

- `ModelResult`: a step that leaves a model (source, convert, an optimization pass): the file, its format and,
  for ONNX, the named inputs and outputs;
- `ReferenceResult`: the original model on data.eval (its figures, and its predicted-class shares);
- `ArtifactEvaluation`: an evaluate step or a target's verify step: the artifact, its figures, and whether it
  ships (the plan's gated steps: not part of the JSON).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from deployc.compiler.steps import CONVERT, REFERENCE, SOURCE
from deployc.targets.base import TensorInfo

if TYPE_CHECKING:
    from deployc.compiler.plan import Plan
    from deployc.compiler.steps import StepOutput

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_MODEL_KEYS = ("model", "format", "inputs", "outputs", "opset", "details")


def _tensors(rows: list[dict[str, Any]] | None) -> tuple[TensorInfo, ...] | None:
    if rows is None:
        return None
    return tuple(TensorInfo(t["name"], t["datatype"], tuple(t["shape"])) for t in rows)


def _rest(data: Mapping[str, Any], known: tuple[str, ...]) -> Mapping[str, Any]:
    """The keys a class does not type, kept for the round trip."""
    return MappingProxyType({k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class ModelResult:
    model: str  # the model file or folder, relative to the step's output folder
    format: str  # keras, savedmodel or onnx
    inputs: tuple[TensorInfo, ...] | None = None  # recorded by the steps that write ONNX (source, convert)
    outputs: tuple[TensorInfo, ...] | None = None
    opset: int | None = None  # convert: the ONNX opset
    details: Mapping[str, Any] | None = None  # an optimization pass: what it did and measured
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # any other key of the JSON

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelResult:
        return cls(model=data["model"], format=data["format"], inputs=_tensors(data.get("inputs")),
                   outputs=_tensors(data.get("outputs")), opset=data.get("opset"), details=data.get("details"),
                   extra=_rest(data, _MODEL_KEYS))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"model": self.model, "format": self.format}
        if self.inputs is not None:
            doc["inputs"] = [t.to_json() for t in self.inputs]
        if self.outputs is not None:
            doc["outputs"] = [t.to_json() for t in self.outputs]
        if self.opset is not None:
            doc["opset"] = self.opset
        if self.details is not None:
            doc["details"] = dict(self.details)
        return {**doc, **self.extra}


@dataclass(frozen=True)
class ReferenceResult:
    evaluation: Mapping[str, Any]  # the original model's figures on data.eval (rows, accuracy, ...)
    distribution: tuple[float, ...] | None = None  # predicted-class shares (classification)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceResult:
        dist = data.get("distribution")
        return cls(evaluation=data["evaluation"], distribution=None if dist is None else tuple(dist))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"evaluation": dict(self.evaluation)}
        if self.distribution is not None:
            doc["distribution"] = list(self.distribution)
        return doc


@dataclass(frozen=True)
class ArtifactEvaluation:
    artifact: str  # e.g. onnx-fp32, quantize-int8-dynamic, tflite
    evaluation: Mapping[str, Any]  # its figures against the reference (accuracy, agreement, size, latency, ...)
    shipped: bool = False  # the plan gates it (not part of the step's JSON)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # a target's own keys (mode, warnings, ...)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, shipped: bool = False) -> ArtifactEvaluation:
        return cls(artifact=data["artifact"], evaluation=data["evaluation"], shipped=shipped,
                   extra=_rest(data, ("artifact", "evaluation")))

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "evaluation": dict(self.evaluation), **self.extra}


def model_io(outputs: Mapping[str, StepOutput]) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """The shipped model's named inputs and outputs, as the conversion (or, for ONNX input, the source) found."""
    for sid in (CONVERT, SOURCE):
        if sid in outputs:
            found = ModelResult.from_json(outputs[sid].result)
            if found.inputs is not None and found.outputs is not None:
                return found.inputs, found.outputs
    raise AssertionError("the plan has no step that records the model's inputs and outputs")


def reference(outputs: Mapping[str, StepOutput]) -> ReferenceResult | None:
    """The reference step's result; None when data.eval is not set."""
    out = outputs.get(REFERENCE)
    return ReferenceResult.from_json(out.result) if out is not None else None


def evaluations(plan: Plan, outputs: Mapping[str, StepOutput]) -> list[tuple[str, ArtifactEvaluation]]:
    """(step id, evaluation) of every evaluated artifact, in plan order; `shipped` set for the gated ones."""
    return [(sid, ArtifactEvaluation.from_json(outputs[sid].result, shipped=sid in plan.shipped))
            for sid in plan.evaluations]
