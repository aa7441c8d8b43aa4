"""The optimization-pass interface. A pass takes one model artifact and returns a new one.

Passes run as plan steps (cached by content hash). A pass declares the model format it accepts and produces,
the data it reads and the libraries whose versions feed its cache key. `apply` writes the new model into
`out_dir` and returns what it did and measured, for the report.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from deployc.schema.base import SpecModel


@dataclass(frozen=True)
class PassInput:
    model: Path  # the input model (a .keras file or a .onnx file)
    out_dir: Path  # write the new model here
    config: Any  # the pass's config model instance (e.g. QuantizeConfig)
    data: Callable[[str], tuple[Any, Any]]  # data("train") -> (x, y); raises ValueError if not in the spec
    evaluate: Callable[[Path], dict[str, Any]]  # figures of a candidate ONNX model vs the reference on data.eval
    gates: Any  # deployc.schema.spec.Gates
    log: Callable[[str], None] = print
    spec_dir: Path | None = None  # folder of deploy.yaml: paths in a pass's config are relative to it


@dataclass(frozen=True)
class PassResult:
    model: Path  # the new model, inside out_dir
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able, shown in report.json / report.md


class Pass:
    name: ClassVar[str]
    config_model: ClassVar[type[SpecModel]]
    input_format: ClassVar[str]  # "keras" or "onnx"
    output_format: ClassVar[str]
    libs: ClassVar[tuple[str, ...]] = ()
    data_needed: ClassVar[tuple[str, ...]] = ()  # "train", "calibration", "eval"

    def apply(self, inp: PassInput) -> PassResult:
        raise NotImplementedError
