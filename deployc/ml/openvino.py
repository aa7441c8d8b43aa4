"""OpenVINO artifacts: the ONNX model converted by OpenVINO's converter and quantized by NNCF (post-training int8),
and the session that runs them with onnxruntime's interface, so every part of deployc that runs a model (the
verification, the measurement, the explanations, the batch-invariance check, `deployc serve`) runs them alike.

An artifact is a folder: `model.xml` (the graph) and `model.bin` (the weights); the two files are the whole
artifact. Static input shapes are baked into the graph itself. A static batch axis of 1 (quantize
`openvino-int8-batch1`, OpenVINO's recommended latency set-up: its CPU kernels skip shape inference and
reallocation on static shapes) makes the session run a multi-row call a row at a time, so the verification, which
runs data.eval through the same session, checks the one path that serves. The session compiles one model: a row's
answer never depends on which copy of the model ran it.

Neither library reports usage from deployc's process: OpenVINO's converter and NNCF send telemetry through the
`openvino_telemetry` package (NNCF without asking: it writes a client id under ~/intel and sends events on every
quantization), which `no_telemetry` blocks before either is imported; both fall back to their own stubs.

The session pins the inference precision to f32: OpenVINO's CPU plugin otherwise computes the model's float parts
in bf16 on CPUs that have bf16 instructions, and the answers verified on one machine would change on another.
openvino and nncf are imported inside the functions (`deployc[openvino]` serves, `deployc[build]` builds).
"""
from __future__ import annotations

import contextlib
import io
import queue
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import feeds

XML, BIN = "model.xml", "model.bin"
ATTENTION_SEARCH = 32  # nodes visited back from a Softmax looking for the attention scores' MatMul
# onnxruntime's type strings by OpenVINO element type name (what `session.get_inputs()[i].type` says)
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
          "i32": "tensor(int32)", "i16": "tensor(int16)", "i8": "tensor(int8)", "u8": "tensor(uint8)",
          "u16": "tensor(uint16)", "u32": "tensor(uint32)", "u64": "tensor(uint64)", "boolean": "tensor(bool)"}


def no_telemetry() -> None:
    """Make `import openvino_telemetry` fail in this process (a None entry in sys.modules), so that OpenVINO's
    converter and NNCF use their telemetry stubs: nothing is written under ~/intel, nothing is sent."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]


def is_artifact(path: Path) -> bool:
    """True for an OpenVINO artifact: a folder holding model.xml, or a model.xml file itself."""
    return (path.is_dir() and (path / XML).is_file()) or path.suffix == ".xml"


def xml_of(path: Path) -> Path:
    return path / XML if path.is_dir() else path


@dataclass(frozen=True)
class Port:
    """One input or output as onnxruntime's NodeArg shows it: name, type string, shape (str for a free axis)."""

    name: str
    type: str
    shape: list[int | str]


def _port(p: Any, i: int, kind: str) -> Port:
    names = p.get_names()
    name = p.get_any_name() if names else f"{kind}_{i}"
    shape: list[int | str] = [d.get_length() if d.is_static else f"d{k}" for k, d in enumerate(p.get_partial_shape())]
    return Port(name, _TYPES.get(p.get_element_type().get_type_name(), "tensor(float)"), shape)


def settings_of(path: Path) -> dict[str, Any]:
    """What serving.json records of an artifact, read from model.xml alone: the input shapes (-1: a free axis)
    and the static batch size (None: the batch axis is free)."""
    no_telemetry()
    import openvino as ov

    model = ov.Core().read_model(str(xml_of(path)))
    shapes = {p.name: [d if isinstance(d, int) else -1 for d in p.shape]
              for p in (_port(q, i, "input") for i, q in enumerate(model.inputs))}
    first = next(iter(shapes.values()), [-1])
    return {"input_shapes": shapes, "static_batch": first[0] if first and first[0] > 0 else None}


class OpenVINOSession:
    """An OpenVINO compiled model behind onnxruntime's InferenceSession interface: `get_inputs()`,
    `get_outputs()` and `run(output_names, feed)`. `run` is thread-safe (an infer request per concurrent call,
    kept in a pool); OpenVINO releases the GIL while it computes."""

    def __init__(self, path: Path, threads: int = 1, streams: int = 1):
        no_telemetry()
        import openvino as ov

        xml = xml_of(path)
        if not xml.is_file() or not xml.with_suffix(".bin").is_file():
            raise InputError(f"{xml}: an OpenVINO artifact needs {xml.name} and {xml.with_suffix('.bin').name}")
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        try:
            self._compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{xml}: OpenVINO cannot load the model ({first})") from None
        self._inputs = [_port(p, i, "input") for i, p in enumerate(self._compiled.inputs)]
        self._outputs = [_port(p, i, "output") for i, p in enumerate(self._compiled.outputs)]
        self._output_index = {p.name: k for k, p in enumerate(self._outputs)}  # run() looks names up per call
        self._all_outputs = list(range(len(self._outputs)))
        batch_axis = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else None
        self.fixed_batch = batch_axis if isinstance(batch_axis, int) else None  # a declared static batch size
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tensor = ov.Tensor

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    @contextlib.contextmanager
    def _request(self) -> Iterator[Any]:
        try:
            req = self._pool.get_nowait()
        except queue.Empty:
            req = self._compiled.create_infer_request()
        try:
            yield req
        finally:
            self._pool.put(req)

    def _infer(self, arrays: list[np.ndarray], wanted: list[int]) -> list[np.ndarray]:
        # zero-copy for writeable contiguous arrays (the list keeps them alive until `infer` returns); OpenVINO
        # refuses to share a read-only buffer (a request body decoded in place), which it copies
        contiguous = [np.ascontiguousarray(a) for a in arrays]
        with self._request() as req:
            for i, a in enumerate(contiguous):
                req.set_input_tensor(i, self._tensor(a, shared_memory=a.flags.writeable))
            req.infer()
            return [np.array(req.get_output_tensor(k).data, copy=True) for k in wanted]

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray], *_: Any) -> list[np.ndarray]:
        wanted = [self._output_index[n] for n in output_names] if output_names else self._all_outputs
        arrays = [np.asarray(feed[p.name]) for p in self._inputs]
        n = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
        if self.fixed_batch == 1 and n != 1:  # a static batch of 1: a row at a time
            parts = [self._infer([a[i:i + 1] for a in arrays], wanted) for i in range(n)]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(wanted))]
        return self._infer(arrays, wanted)


def has_attention(onnx_path: Path) -> bool:
    """A Softmax fed by a MatMul of two activations (attention scores): where NNCF's transformer preset applies."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                           for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type != "Softmax":
            continue
        # breadth first back through scaling, masking (a select written as mask * scores + (1 - mask) * -1e9)
        # and casts to the scores' MatMul; a softmax head over a Dense layer has a MatMul of a weight instead
        todo, seen = deque(n.input), set[int]()
        while todo and len(seen) < ATTENTION_SEARCH:
            src = producer.get(todo.popleft())
            if src is None or id(src) in seen:
                continue
            seen.add(id(src))
            if src.op_type in ("MatMul", "Einsum") and not any(i in consts for i in src.input):
                return True
            todo.extend(i for i in src.input if i not in consts)
    return False


def convert_and_quantize(src: Path, dst: Path, calibration: feeds.Inputs, *, preset: str = "performance",
                         model_type: str = "auto", subset_size: int = 300, fast_bias_correction: bool = True,
                         batch1: bool = False, shapes: Mapping[str, Sequence[int]] | None = None,
                         compress_to_fp16: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write `src` (ONNX) as an int8 OpenVINO artifact folder `dst`: converted by openvino.convert_model, quantized
    by nncf.quantize on `calibration` rows, saved as model.xml + model.bin. Details say what ran."""
    no_telemetry()
    import nncf
    import openvino as ov

    rows = feeds.rows(calibration)
    if rows == 0:
        raise InputError("openvino-int8 needs calibration rows (data.calibration is empty)")
    transformer = model_type == "transformer" or (model_type == "auto" and has_attention(src))
    # NNCF draws its progress bars on stdout (its log records are silenced with the other libraries', around
    # every build step: deployc.ml.quiet); the build prints its own progress
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            model = ov.convert_model(str(src))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"openvino.convert_model cannot convert the ONNX model ({first})") from None
        if shapes:
            known = {p.get_any_name(): p for p in model.inputs}
            unknown = sorted(set(shapes) - set(known))
            if unknown:
                raise InputError(f"openvino.shapes names {', '.join(unknown)}; the model's inputs are "
                                 f"{', '.join(known)}")
            model.reshape({known[k]: list(v) for k, v in shapes.items()})
        if batch1:  # the batch axis of every input fixed to 1, the other axes as they are
            model.reshape({p: [1, *list(p.get_partial_shape())[1:]] for p in model.inputs})
        ins = [p.get_any_name() for p in model.inputs]
        dtypes = [np.dtype(p.get_element_type().to_dtype()) for p in model.inputs]
        fed = feeds.feed(calibration, ins, dtypes, "the model")
        items = [{k: v[i:i + 1] for k, v in fed.items()} for i in range(rows)]
        dataset = nncf.Dataset(items, lambda item: [item[k] for k in ins])
        kwargs: dict[str, Any] = {
            "preset": nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            "subset_size": min(subset_size, len(items)), "fast_bias_correction": fast_bias_correction}
        if transformer:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        quantized = nncf.quantize(model, dataset, **kwargs)
    dst.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(dst / XML), compress_to_fp16=compress_to_fp16)
    quantizers = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    log(f"openvino-int8: {quantizers} quantizers, {'transformer' if transformer else 'default'} model type")
    return {"runtime": "openvino", "openvino": ov.get_version().split("-")[0], "nncf": nncf.__version__,
            "preset": preset, "model_type": "transformer" if transformer else "default",
            "calibration_rows": int(min(subset_size, rows)), "fast_bias_correction": fast_bias_correction,
            "static_batch": 1 if batch1 else None, "shapes": {k: list(v) for k, v in (shapes or {}).items()},
            "compress_to_fp16": compress_to_fp16, "quant_ops": {"FakeQuantize": quantizers}}

