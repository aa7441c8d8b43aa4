"""The resolved model: the validated spec lowered once, every default filled, for everything after planning.

`deployc.schema` mirrors deploy.yaml as written; the plan, the steps, the gates, the report and the emitters read
this instead: the model's named inputs and outputs as far as the spec and the model file tell before the build,
the data sets as model-input -> array mappings, the gates and measurement settings, the passes in order with
their registry entries, and the configured targets in emit order. Building it imports no heavy library (an ONNX
model's inputs and outputs are read from its protobuf wire format, deployc/compiler/onnx_refs.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from deployc.errors import InputError

if TYPE_CHECKING:
    from deployc.passes.base import Pass
    from deployc.plugins import Entry
    from deployc.schema.spec import DeploySpec, Explain
    from deployc.targets.local import LocalConfig

# onnx.TensorProto element types -> the spec's dtype names (`model.inputs[].dtype`), and those -> the Open
# Inference Protocol's datatype names, which serving.json and the emitters write
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}
OIP_DATATYPES = {"float32": "FP32", "uint8": "UINT8", "int8": "INT8", "uint16": "UINT16", "int16": "INT16",
                 "int32": "INT32", "int64": "INT64", "string": "BYTES", "bool": "BOOL", "float16": "FP16",
                 "float64": "FP64", "uint32": "UINT32", "uint64": "UINT64"}
ANY_INPUT = "*"  # the key of a data set's array when the model's single input is not named before the build


@dataclass(frozen=True)
class Tensor:
    """One named model input or output."""

    name: str
    dtype: str  # the spec's dtype names: float32, int64, ...
    shape: tuple[int, ...]  # -1 for a free axis; the first axis is the batch axis

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol's name of the dtype (FP32, INT64, ...)."""
        return OIP_DATATYPES.get(self.dtype, "BYTES")

    def to_json(self) -> dict[str, Any]:
        """As `model.inputs[]` writes it."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ArrayRef:
    """One array of a .npz file."""

    file: Path  # the .npz file, absolute
    key: str  # the array's key in it
    limit: int | None  # only its first rows, when set


@dataclass(frozen=True)
class DataSet:
    """`data.<which>`: the array each model input reads, and the labels."""

    which: str  # eval, calibration or train
    path: str  # the .npz file as the spec names it (relative to the spec's folder)
    inputs: Mapping[str, ArrayRef]  # model input name (or ANY_INPUT) -> its array
    labels: ArrayRef | None  # labels (data.<which>.y), when set: class indices, 0/1, or target values
    mapped: bool = False  # the spec maps input names to keys (`x: {name: key}`), rather than naming one key

    @property
    def x(self) -> ArrayRef:
        return next(iter(self.inputs.values()))

    def params(self) -> dict[str, Any]:
        """The data set as the spec's mapping, defaults filled: what the keys of the steps that read it hash."""
        x: Any = {n: a.key for n, a in self.inputs.items()} if self.mapped else self.x.key
        return {"path": self.path, "x": x, "y": self.labels.key if self.labels else None, "limit": self.x.limit}


@dataclass(frozen=True)
class GateLimits:
    """`gates:`; a limit left unset is not checked. The fields follow deployc.schema.spec.Gates, in its order."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    max_abs_error: float | None = None
    max_relative_error: float | None = None
    max_auc_drop: float | None = None
    max_r2_drop: float | None = None
    max_size_mb: float | None = None
    max_latency_p99_ms: float | None = None
    min_attribution_agreement: float | None = None

    def limits(self) -> tuple[tuple[str, float], ...]:
        """(gate, limit) of each gate the spec sets, in field order."""
        return tuple((f.name, float(v)) for f in fields(self) if (v := getattr(self, f.name)) is not None)

    def to_json(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Measurement:
    """`measure:`, defaults filled."""

    threads: int
    batch_size: int
    min_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"threads": self.threads, "batch_size": self.batch_size, "min_seconds": self.min_seconds}


@dataclass(frozen=True)
class PassUse:
    """One item of `optimize:`, with the pass that runs it."""

    index: int
    name: str
    config: Any  # the pass's config model, defaults filled
    impl: Pass = field(compare=False)  # the registered class's instance (stateless)
    entry: Entry  # where the pass comes from (a plugin's distribution and version)

    @property
    def step_id(self) -> str:
        return f"optimize[{self.index}].{self.name}"


@dataclass(frozen=True)
class TargetUse:
    """One configured target."""

    name: str
    config: Any  # its config model (`targets.<name>`), defaults filled
    entry: Entry


@dataclass(frozen=True)
class Resolved:
    """The spec, lowered: what the build reads, every default filled."""

    name: str
    version: str
    spec_dir: Path
    model_path: Path  # the model file or folder, absolute
    model_file: str  # the same, as the spec names it
    format: str  # keras, savedmodel or onnx (`auto` resolved)
    task: str  # classification, binary, multilabel or regression
    prediction: str | None  # the output the gates judge (`model.prediction`); None: the first output
    threshold: float  # binary and multilabel: the probability from which a row (a label) is positive
    allow_python_code: bool
    inputs: tuple[Tensor, ...]  # as the spec or the model file names them; empty when only the build finds them
    outputs: tuple[Tensor, ...]  # from an ONNX file; empty for Keras and SavedModel models (found by convert)
    declared_inputs: tuple[Tensor, ...]  # `model.inputs` as the spec writes it (the Keras conversion uses them)
    labels: Path | None  # the class-names file, absolute
    data: Mapping[str, DataSet]  # set data sets only, in the order eval, calibration, train
    gates: GateLimits
    measure: Measurement
    passes: tuple[PassUse, ...]  # in the spec's order
    targets: tuple[TargetUse, ...]  # the configured targets, in emit order
    local: LocalConfig  # targets.local, or its defaults: the settings of every serving.json
    explain: Explain | None = None  # `explain:` as the spec writes it, defaults filled

    def explain_params(self) -> dict[str, Any] | None:
        """What decides an explanation (the keys of the steps that compute or compare them); None without one."""
        if self.explain is None:
            return None
        return self.explain.model_dump(mode="json", exclude={"serve", "images"})

    def judged(self) -> dict[str, Any]:
        """What decides an artifact's figures: the task, the prediction output, the threshold (step keys)."""
        return {"task": self.task, "prediction": self.prediction, "threshold": self.threshold}

    def data_set(self, which: str) -> DataSet | None:
        return self.data.get(which)

    def data_params(self, *which: str) -> dict[str, Any]:
        """{which: params} of the data sets among `which` that the spec sets (what step keys hash)."""
        return {w: self.data[w].params() for w in which if w in self.data}

    def data_files(self, *which: str) -> tuple[Path, ...]:
        return tuple(self.data[w].x.file for w in which if w in self.data)

    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)


def resolve(spec: DeploySpec, spec_dir: Path) -> Resolved:
    """Lower the validated `spec` (its files relative to `spec_dir`) into the resolved model."""
    from deployc.targets import get_target

    fmt = spec.model.resolved_format()
    model_path = spec_dir / spec.model.path
    declared = tuple(Tensor(t.name, t.dtype, tuple(t.shape)) for t in spec.model.inputs or ())
    inputs, outputs = _io(declared, model_path, fmt)
    m = spec.measure
    return Resolved(
        name=spec.name, version=spec.version, spec_dir=spec_dir, model_path=model_path, model_file=spec.model.path,
        format=fmt, task=spec.model.task, prediction=spec.model.prediction,
        threshold=spec.model.threshold if spec.model.threshold is not None else 0.5,
        allow_python_code=spec.model.allow_python_code, inputs=inputs,
        outputs=outputs, declared_inputs=declared,
        labels=spec_dir / spec.model.labels if spec.model.labels else None,
        data=MappingProxyType(_data(spec, spec_dir, inputs)),
        gates=GateLimits(**spec.gates.model_dump()),
        measure=Measurement(threads=m.threads, batch_size=m.batch_size, min_seconds=m.min_seconds),
        passes=_passes(spec), targets=_targets(spec), local=get_target("local").config_or_default(spec),
        explain=spec.explain)


def model_inputs(spec: DeploySpec, spec_dir: Path) -> tuple[Tensor, ...]:
    """The model's inputs as the build will see them (the spec's `model.inputs`, else the model file's header);
    empty when neither says. For validation: no TensorFlow, no onnx."""
    declared = tuple(Tensor(t.name, t.dtype, tuple(t.shape)) for t in spec.model.inputs or ())
    try:
        return _io(declared, spec_dir / spec.model.path, spec.model.resolved_format())[0]
    except InputError:  # an unreadable ONNX file: onnx_problem reports it
        return declared


def _io(declared: tuple[Tensor, ...], model_path: Path, fmt: str
        ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """An ONNX file names its inputs and outputs; a Keras model's inputs are the spec's `model.inputs`, else
    those of its `.keras` file's functional config; its outputs come with the conversion."""
    try:
        st = model_path.stat()
    except OSError:  # validation refuses a missing model; a step context built by hand may name none
        return declared, ()
    if fmt == "onnx":
        return onnx_file_io(model_path.resolve(), st.st_mtime_ns, st.st_size)
    if declared or fmt != "keras" or model_path.suffix != ".keras":
        return declared, ()
    return keras_file_inputs(model_path.resolve(), st.st_mtime_ns, st.st_size), ()


@lru_cache(maxsize=16)
def keras_file_inputs(path: Path, mtime_ns: int, size: int) -> tuple[Tensor, ...]:
    """The input layers of a `.keras` archive's functional model, from its config.json (no Keras import). Empty
    when the archive does not say plainly (a Sequential or subclassed model, a config it cannot read)."""
    from deployc.compiler.inputs import keras_archive_config

    config = keras_archive_config(path)
    try:
        if config.get("class_name") != "Functional":
            return ()
        layers = {layer["name"]: layer["config"] for layer in config["config"]["layers"]
                  if layer.get("class_name") == "InputLayer"}
        found = []
        for name, *_ in _input_refs(config["config"]["input_layers"]):
            cfg = layers[name]
            dtype = cfg.get("dtype", "float32")
            if not isinstance(dtype, str):
                return ()
            found.append(Tensor(name, dtype, tuple(-1 if d is None else int(d) for d in cfg["batch_shape"])))
        return tuple(found)
    except (AttributeError, KeyError, TypeError, ValueError):
        return ()


def _input_refs(refs: Any) -> list[list[Any]]:
    """`input_layers` is one [name, node, tensor] reference, a list of them, or a mapping of them (a model called
    with a dict of inputs)."""
    if isinstance(refs, dict):
        return list(refs.values())
    return [refs] if refs and isinstance(refs[0], str) else list(refs)


@lru_cache(maxsize=16)
def onnx_file_io(path: Path, mtime_ns: int, size: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """An ONNX file's inputs and outputs (cached by the file's identity: validation and planning both ask)."""
    from deployc.compiler.inputs import read_bytes
    from deployc.compiler.onnx_refs import WireError, graph_io

    try:
        ins, outs = graph_io(read_bytes(path))
    except WireError as exc:
        raise InputError(f"{path.name}: not a valid ONNX model ({exc})") from None
    return (tuple(Tensor(n, ONNX_DTYPES.get(e, "string"), s) for n, e, s in ins),
            tuple(Tensor(n, ONNX_DTYPES.get(e, "string"), s) for n, e, s in outs))


def _data(spec: DeploySpec, spec_dir: Path, inputs: tuple[Tensor, ...]) -> dict[str, DataSet]:
    from deployc.passes.base import DATA_SETS

    name = inputs[0].name if len(inputs) == 1 else ANY_INPUT
    found: dict[str, DataSet] = {}
    for which in DATA_SETS:
        ds = getattr(spec.data, which)
        if ds is None:
            continue
        file = spec_dir / ds.path
        labels = ArrayRef(file, ds.y, ds.limit) if ds.y is not None else None
        keys = ds.x if isinstance(ds.x, dict) else {name: ds.x}
        found[which] = DataSet(which, ds.path, MappingProxyType({n: ArrayRef(file, k, ds.limit)
                                                                 for n, k in keys.items()}),
                               labels, mapped=isinstance(ds.x, dict))
    return found


def _passes(spec: DeploySpec) -> tuple[PassUse, ...]:
    from deployc.passes import get_pass, pass_entries
    from deployc.schema.passes import pass_config, pass_name

    entries = pass_entries()
    uses = []
    for i, item in enumerate(spec.optimize):
        impl = get_pass(pass_name(item))
        uses.append(PassUse(i, pass_name(item), impl.settle(spec, i, pass_config(item)), impl,
                            entries[pass_name(item)]))
    return tuple(uses)


def _targets(spec: DeploySpec) -> tuple[TargetUse, ...]:
    from deployc.targets import configured, emit_order, registry

    found = registry()
    return tuple(TargetUse(n, getattr(spec.targets, n), found[n]) for n in emit_order(configured(spec)))
