"""The optimization-pass interface. A pass takes one model artifact and returns a new one.

A pass is one class, and its metadata is what the rest of deployc reads about it:
- `name` and `config_model`: the `optimize:` key and the pydantic model of its settings (the JSON Schema and the
  spec's validation are built from them);
- `input_format` / `output_format` ("keras" or "onnx"): where the plan puts it. Keras-format passes run on the
  Keras model before its conversion to ONNX, ONNX-format passes after it; a spec must list them in that order;
- `libs` (or `libs_for(config)`): the distributions whose versions enter the step's cache key;
- `data_needed` (or `data_needed_for(config)`) and `data_optional`: the data sets the step reads, so hashes. A
  needed set the spec does not set is an error `check` reports. Needing `eval` means the pass compares models
  with the reference on data.eval (`PassInput.evaluate`): its step then depends on the reference step and hashes
  the gates and measurement settings;
- `check(spec, index)`: the pass's own rules on the whole spec, as located problems;
- `apply`: the work. It runs as a plan step (cached by content hash), writes the new model into `out_dir` and
  returns what it did and measured, for the report.

Pass modules stay light at import time (validation builds the schema from them): TensorFlow, ONNX and NumPy are
imported inside `apply`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from deployc.progress import Progress, as_progress
from deployc.schema.base import Located, SpecModel

if TYPE_CHECKING:
    from deployc.schema.spec import DeploySpec

Format = Literal["keras", "onnx"]
FORMATS: tuple[Format, ...] = ("keras", "onnx")
FORMAT_LABELS: dict[str, str] = {"keras": "Keras", "onnx": "ONNX"}
DATA_SETS = ("eval", "calibration", "train")  # the fields of `data:`


@dataclass(frozen=True)
class PassInput:
    model: Path  # the input model (a .keras file or a .onnx file)
    out_dir: Path  # write the new model here
    config: Any  # the pass's config model instance (e.g. QuantizeConfig)
    data: Callable[[str], tuple[Any, Any]]  # data("train") -> (x, y); raises ValueError if not in the spec
    evaluate: Callable[[Path], dict[str, Any]]  # figures of a candidate ONNX model vs the reference on data.eval
    gates: Any  # deployc.schema.spec.Gates
    log: Callable[[str], None] = print  # a line in the build's output (a `deployc.progress.Progress` in builds)
    spec_dir: Path | None = None  # the folder of deploy.yaml (paths in the pass config are relative to it)

    @property
    def progress(self) -> Progress:
        """Where the pass reports its long parts (epochs, calibration batches): `progress.task(...)`."""
        return as_progress(self.log)


@dataclass(frozen=True)
class PassResult:
    model: Path  # the new model, inside out_dir
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able, shown in report.json / report.md
    format: str | None = None  # what `model` is, when not the pass's output_format: "openvino" (a folder with
    # model.xml and model.bin, run by OpenVINO); only the last item of `optimize:` may return one


class Pass:
    name: ClassVar[str]
    config_model: ClassVar[type[SpecModel]]
    input_format: ClassVar[Format]
    output_format: ClassVar[Format]
    libs: ClassVar[tuple[str, ...]] = ()
    data_needed: ClassVar[tuple[str, ...]] = ()  # of DATA_SETS: what every run reads
    data_optional: ClassVar[tuple[str, ...]] = ()  # read (and hashed) when the spec sets them

    def data_needed_for(self, config: Any) -> tuple[str, ...]:
        """The data sets a run with `config` needs; a pass whose needs depend on its settings overrides this."""
        return self.data_needed

    def libs_for(self, config: Any) -> tuple[str, ...]:
        """The distributions whose versions enter a run's key with `config`; a pass whose libraries depend on
        its settings overrides this."""
        return self.libs

    def input_files(self, config: Any) -> tuple[str, ...]:
        """Files the settings name (relative to the folder of deploy.yaml): read by the pass, so hashed."""
        return ()

    def variant(self, config: Any) -> str | None:
        """A short name for the settings (e.g. the quantize mode), shown in step descriptions and artifact names."""
        return None

    def describe(self, config: Any) -> str:
        variant = self.variant(config)
        return f"{self.name} the {FORMAT_LABELS[self.input_format]} model" + (f" ({variant})" if variant else "")

    def config_in(self, spec: DeploySpec, index: int) -> Any:
        """The settings of this pass at `spec.optimize[index]`."""
        return getattr(spec.optimize[index], self.name)

    def settle(self, spec: DeploySpec, index: int, config: Any) -> Any:
        """The settings the build runs, from those at `spec.optimize[index]`: a pass whose defaults depend on the
        rest of the spec fills them here (the step's key hashes the result). Default: `config` as it is."""
        return config

    def check(self, spec: DeploySpec, index: int) -> list[Located]:
        """Problems of `spec.optimize[index]` (this pass) with the rest of the spec, located from the spec's root.

        By default: each needed data set must be set."""
        config = self.config_in(spec, index)
        return [(("optimize", index, self.name), f"{self.name} needs data.{which}, which is not set")
                for which in self.data_needed_for(config) if getattr(spec.data, which) is None]

    def apply(self, inp: PassInput) -> PassResult:
        raise NotImplementedError
