"""TFLite (LiteRT) conversion, inspection, running and measurement.

tensorflow and ai_edge_litert are imported inside the functions: importing this module costs nothing.
Conversion goes through a SavedModel export of the Keras model with one `serving_default` signature (the
model's inputs by name in; "output", or the model's output names when it has several, out: as in the ONNX
artifact), then `TFLiteConverter.from_saved_model`. Keras 3's `from_keras_model` works too, but names the
output `output_0`; `from_concrete_functions` keeps the weights as resource variables (VAR_HANDLE /
READ_VARIABLE ops), which is wrong for a device model.

Every input and output is addressed by its signature name, never by tensor order: the converter's order is its
own (the signature lists the names sorted), not the Keras model's. Integer inputs (token ids, masks, categorical
ids) keep the model's dtype, int32 or int64, in every mode: only float inputs and outputs take `io_type`.
"""
from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import feeds, measure
from deployc.ml.convert import SIGNATURE, export_saved_model
from deployc.ml.quiet import native_stderr_silenced

if TYPE_CHECKING:
    from deployc.progress import Progress
    from deployc.targets.tflite import TFLiteConfig

MODES = ("none", "float16", "dynamic", "int8")
AUTO_ORDER = ("int8", "dynamic", "float16", "none")  # smallest expected first
CALIBRATION_MAX_ROWS = 500
CALIBRATION_MIN_ROWS = 100
_FLEX_RE = re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op")
_TF_OP_RE = re.compile(r"'tf\.([A-Za-z0-9_]+)' op ")
_TENSOR_LIST_MARK = "Lowering tensor list ops is failed"
_NOT_QUANTIZABLE_RE = re.compile(r"'tfl\.([A-Za-z0-9_]+)' op [^\n]*(?:quantiz|int8)", re.IGNORECASE)
_DETAIL_RE = re.compile(r"^\s*tf\.([A-Za-z0-9_]+)\((.*)$", re.MULTILINE)  # "Details:" lines: an op and its types


def io_type(cfg: TFLiteConfig) -> str:
    """The I/O type of int8 models: a microcontroller needs integer I/O, int8 unless uint8 was asked for."""
    if cfg.device == "microcontroller" and cfg.io_type == "float32":
        return "int8"
    return cfg.io_type


def candidate_modes(cfg: TFLiteConfig) -> list[str]:
    """The quantization modes a build tries: one, or every mode for `auto` (int8 only on a microcontroller)."""
    if cfg.device == "microcontroller":
        return ["int8"]
    if cfg.quantization == "auto":
        return list(AUTO_ORDER)
    return [cfg.quantization]


def convert(keras_model: Path, dst: Path, cfg: TFLiteConfig, calibration_x: feeds.Inputs | None, *,
            mode: str | None = None, inputs: list[Any] | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Convert a .keras/.h5 file or a SavedModel folder to `dst`; returns `inspect_model`'s info plus warnings.

    `mode` overrides the config's quantization (needed for `auto`, which tries each mode). `calibration_x` is
    one array (a model of one input) or {input name: array}, as `StepContext.data` gives it. The conversion
    (no progress hook) is reported to `progress` (default: the running step's) as a task of unknown length.
    """
    from deployc.ml.convert import quiet_tensorflow
    from deployc.progress import current

    mode = mode or candidate_modes(cfg)[0]
    if mode not in MODES:
        raise InputError(f"targets.tflite: quantization {mode!r} is not one of {', '.join(MODES)}")
    quiet_tensorflow()
    import tensorflow as tf

    warnings: list[str] = []
    with (tempfile.TemporaryDirectory(prefix="deployc-tflite-") as tmp,
          (progress or current()).task(f"converting to TFLite ({mode})", announce=False)):
        saved = (keras_model if keras_model.is_dir()
                 else export_saved_model(keras_model, Path(tmp) / "saved_model", inputs))
        conv = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=[SIGNATURE])
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS
        if mode != "none":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode in ("dynamic", "int8") and not cfg.per_channel:
            # the converter's only switches for per-tensor scales (convolutions, then dense layers)
            conv._experimental_disable_per_channel = True
            conv._experimental_disable_per_channel_quantization_for_dense_layers = True
        if mode == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            conv.representative_dataset = _representative(calibration_x, _saved_inputs(saved), keras_model.name,
                                                          warnings)
            builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            # applies to float inputs and outputs only: integer ones (ids, masks) keep their own dtype
            kind = io_type(cfg)
            conv.inference_input_type = getattr(tf, kind)
            conv.inference_output_type = getattr(tf, kind)
        allow_select = cfg.allow_select_tf_ops and cfg.device != "microcontroller"
        conv.target_spec.supported_ops = [builtins] + ([tf.lite.OpsSet.SELECT_TF_OPS] if allow_select else [])
        try:
            with contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
                flat = conv.convert()
        except Exception as exc:  # ConverterError and friends: name the ops when the message does
            raise _conversion_error(keras_model.name, mode, str(exc)) from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(flat)
    info = inspect_model(dst)
    if len(info["outputs"]) > 1:  # "the first output" is the reference's: a SavedModel's first by name
        info["outputs"] = (sorted(info["outputs"], key=lambda t: str(t["name"])) if keras_model.is_dir()
                           else _in_model_order(keras_model, info["outputs"]))
    if info["select_tf_ops"]:
        warnings.append("the model uses Select TF ops (" + ", ".join(info["select_tf_ops"]) + "): the device "
                        "runtime must include them (Android: org.tensorflow:tensorflow-lite-select-tf-ops)")
    if cfg.device == "microcontroller":
        _check_microcontroller(info)
    info.update(mode=mode, io_type=io_type(cfg) if mode == "int8" else "float32", warnings=warnings)
    return info


def _saved_inputs(saved: Path) -> dict[str, Any]:
    """{input name: numpy dtype} of the SavedModel's serving_default signature, read from saved_model.pb (the
    names the converter gives the .tflite signature's inputs, and the keys of a representative sample)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((saved / "saved_model.pb").read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{saved.name}: cannot read saved_model.pb ({exc})") from None
    for graph in proto.meta_graphs:
        if SIGNATURE in graph.signature_def:
            ins = graph.signature_def[SIGNATURE].inputs
            return {name: tf.dtypes.as_dtype(ins[name].dtype).as_numpy_dtype for name in sorted(ins)}
    raise InputError(f"{saved.name}: the SavedModel has no {SIGNATURE} signature")


def _representative(x: feeds.Inputs | None, inputs: dict[str, Any], model: str, warnings: list[str]) -> Any:
    """The converter's representative dataset: one row at a time, every input by its signature name, each cast
    to the input's dtype (ids stay integers; the calibrator feeds them through the float model as they are)."""
    if x is None or feeds.rows(x) == 0:
        raise InputError("targets.tflite: int8 needs representative inputs: set data.calibration")
    rows = min(feeds.rows(x), CALIBRATION_MAX_ROWS)
    if rows < CALIBRATION_MIN_ROWS:
        warnings.append(f"int8 calibrated on {rows} rows; {CALIBRATION_MIN_ROWS}-{CALIBRATION_MAX_ROWS} "
                        "representative rows are recommended")
    calib = feeds.feed(feeds.take(x, slice(0, rows)), list(inputs), list(inputs.values()),
                       f"{model} (data.calibration)")
    return lambda: ({name: a[i:i + 1] for name, a in calib.items()} for i in range(rows))


def _in_model_order(src: Path, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outputs in the Keras model's own order (not the converter's), so that "the first output"
    (model.prediction unset) is the reference model's first output."""
    from deployc.ml.convert import load_keras, output_names

    order = {name: i for i, name in enumerate(output_names(load_keras(src)))}
    return sorted(outputs, key=lambda t: order.get(t["name"], len(order)))


def _conversion_error(model: str, mode: str, message: str) -> InputError:
    flex = sorted(set(_FLEX_RE.findall(message)))
    if flex:
        return _flex_error(model, flex, message)
    if _TENSOR_LIST_MARK in message:  # recurrent layers (LSTM, GRU) loop over TensorList ops
        ops = sorted(set(_TF_OP_RE.findall(message))) or ["TensorList ops"]
        return InputError(f"{model}: ops outside the TFLite builtin op set: {', '.join(ops)} (the tensor lists a "
                          "recurrent layer such as LSTM or GRU loops over). Set targets.tflite.allow_select_tf_ops: "
                          "true to keep them as Select TF ops (the device runtime must then include them), or build "
                          "the layer with unroll=True over a fixed sequence length")
    if mode == "int8":
        ops = sorted(set(_NOT_QUANTIZABLE_RE.findall(message)))
        what = f" ({', '.join(ops)})" if ops else ""
        return InputError(f"{model}: full-integer int8 conversion failed: some ops have no int8 kernel{what}. "
                          f"Try quantization: dynamic. Converter said: {_first_error(message)}")
    return InputError(f"{model}: TFLite conversion ({mode}) failed: {_first_error(message)}")


def _flex_error(model: str, flex: list[str], message: str) -> InputError:
    """Name the ops, and say why where the types tell: a builtin that has no int64 kernel (the ids of an
    Embedding or a lookup computed in int64), or a string op (a Hashing or StringLookup layer)."""
    types: dict[str, str] = {}
    for op, rest in _DETAIL_RE.findall(message):
        types[op] = types.get(op, "") + rest
    strings = [op for op in flex if "string" in types.get(op, "")]
    int64 = [op for op in flex if op not in strings and re.search(r"[<x]i64>", types.get(op, ""))]
    shown = ", ".join(op + (" (on strings)" if op in strings else " (on int64)" if op in int64 else "")
                      for op in flex)
    fixes = ["set targets.tflite.allow_select_tf_ops: true to use Select TF ops (the device runtime must then "
             "include them)"]
    if int64:
        fixes.append("cast the int64 values to int32 inside the model before those ops (keras.ops.cast(ids, "
                     "\"int32\")): TFLite's builtins cover fewer ops on int64 than on int32")
    if strings:
        fixes.append("turn the strings into ids before the model (TFLite has no builtin string ops) and feed "
                     "those")
    if not int64 and not strings:
        fixes.append("change the model")
    return InputError(f"{model}: ops outside the TFLite builtin op set: {shown}. Either " + ", or ".join(fixes))


def _first_error(message: str) -> str:
    for line in message.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:300]
    return message.strip().splitlines()[0][:300] if message.strip() else "no message"


def _check_microcontroller(info: dict[str, Any]) -> None:
    bad_io = [f"{t['name']} ({t['dtype']})" for t in info["inputs"] + info["outputs"]
              if t["dtype"] not in ("int8", "uint8")]
    floats = {k: v for k, v in info["tensor_types"].items() if k.startswith("float")}
    if bad_io or floats or info["select_tf_ops"]:
        raise InputError("targets.tflite: device microcontroller needs a full int8 model with int8/uint8 I/O and "
                         f"builtin ops only; got other I/O: {', '.join(bad_io) or 'none'}; float tensors: "
                         f"{floats or 'none'}; Select TF ops: {', '.join(info['select_tf_ops']) or 'none'}")


def _enum_names(cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if k.isupper() and isinstance(v, int)}


def inspect_model(path: Path) -> dict[str, Any]:
    """Ops, tensor types, inputs/outputs (signature names, dtypes, shapes, quantization) read from the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    buf = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(buf, 0)
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    ops: set[str] = set()
    select: set[str] = set()
    for code in model.operatorCodes or []:
        if code.customCode:
            name = code.customCode.decode()
            (select if name.startswith("Flex") else ops).add(name)
        else:
            ops.add(op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN"))
    graph = model.subgraphs[0]
    counts: dict[str, int] = {}
    for t in graph.tensors:
        kind = type_names.get(t.type, "UNKNOWN").lower()
        counts[kind] = counts.get(kind, 0) + 1
    sig_in, sig_out = _signature_names(model)

    def tensor(i: int, names: dict[int, str]) -> dict[str, Any]:
        t = graph.tensors[i]
        q = t.quantization
        quant = None
        if q is not None and q.scale is not None and len(q.scale) == 1:
            quant = {"scale": float(np.float32(q.scale[0])), "zero_point": int(q.zeroPoint[0])}
        shape = t.shapeSignature if t.shapeSignature is not None else t.shape
        return {"name": names.get(i, t.name.decode()), "tensor": t.name.decode(), "index": int(i),
                "dtype": type_names.get(t.type, "UNKNOWN").lower(), "shape": [int(d) for d in shape],
                "quantization": quant}

    return {"ops": sorted(ops), "select_tf_ops": sorted(select), "tensor_types": dict(sorted(counts.items())),
            "inputs": [tensor(i, sig_in) for i in graph.inputs], "outputs": [tensor(i, sig_out) for i in graph.outputs],
            "size_bytes": len(buf)}


def _signature_names(model: Any) -> tuple[dict[int, str], dict[int, str]]:
    for sig in model.signatureDefs or []:
        if sig.signatureKey.decode() == SIGNATURE:
            return ({m.tensorIndex: m.name.decode() for m in sig.inputs},
                    {m.tensorIndex: m.name.decode() for m in sig.outputs})
    return {}, {}


# --- running and measuring -----------------------------------------------------------------------------------

def interpreter(path: Path, threads: int = 1) -> Any:
    """A LiteRT interpreter for `path`. Select TF ops need the Flex delegate, which the pip runtime lacks."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with native_stderr_silenced():
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{path.name}: the LiteRT interpreter cannot load it ({str(exc).splitlines()[0][:200]})"
                         ) from None
    return it


def quantize(x: np.ndarray, dtype: Any, quant: dict[str, Any] | None) -> np.ndarray:
    """Real values -> the tensor's type: q = round(x / scale) + zero_point, clipped to the type's range."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.asarray(x, dtype=dtype)
    if not quant or not quant["scale"]:
        return np.asarray(x).astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(quant["scale"])) + quant["zero_point"]
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, quant: dict[str, Any] | None) -> np.ndarray:
    """The tensor's values -> real values: (q - zero_point) * scale."""
    if np.asarray(q).dtype.kind == "f" or not quant or not quant["scale"]:
        return np.asarray(q, dtype=np.float32)
    return ((np.asarray(q, dtype=np.int32) - quant["zero_point"]) * np.float32(quant["scale"])).astype(np.float32)


def _quant(detail: dict[str, Any]) -> dict[str, Any] | None:
    scale, zero = detail["quantization"]
    return {"scale": float(scale), "zero_point": int(zero)} if scale else None


def signature_io(it: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """({input name: tensor details}, {output name: details}) by the serving_default signature's names (the
    file's only signature, else; the tensor names for a file without signatures)."""
    sigs = it.get_signature_list()
    key = SIGNATURE if SIGNATURE in sigs else next(iter(sigs)) if len(sigs) == 1 else None
    if key is None:
        return ({d["name"]: d for d in it.get_input_details()}, {d["name"]: d for d in it.get_output_details()})
    runner = it.get_signature_runner(key)
    return runner.get_input_details(), runner.get_output_details()


def output_name(it: Any, outputs: dict[str, dict[str, Any]], output: str | None, what: str) -> str:
    """The prediction output's signature name: `output` (model.prediction, by feeds.output_index's rule: a file
    of one output answers any name), else the file's first output (a signature lists them by name)."""
    names = list(outputs)
    if output is None:
        first = it.get_output_details()[0]["index"]
        return next((n for n, d in outputs.items() if d["index"] == first), names[0])
    return names[feeds.output_index(names, output, what)]


def _feed(inputs: dict[str, dict[str, Any]], x: feeds.Inputs, what: str) -> dict[str, np.ndarray]:
    """Each input's array as the tensor takes it: real values quantized with the tensor's own scale and zero
    point (int8/uint8 inputs of a full-integer model), anything else cast to the tensor's dtype (ids stay
    whole numbers: a fraction is an error)."""
    names = list(inputs)
    real = {n: _quant(d) is not None and np.dtype(d["dtype"]).kind in "iu" for n, d in inputs.items()}
    fed = feeds.feed(x, names, [np.float32 if real[n] else inputs[n]["dtype"] for n in names], what)
    for n, a in fed.items():
        want = [int(k) for k in inputs[n].get("shape_signature", inputs[n]["shape"])[1:]]
        if a.ndim != len(want) + 1 or any(k not in (-1, m) for k, m in zip(want, a.shape[1:], strict=True)):
            raise InputError(f"{what}: input {n!r} takes rows shaped {want} (-1: any), the data's are "
                             f"{list(a.shape[1:])}")
    return {n: quantize(a, inputs[n]["dtype"], _quant(inputs[n])) if real[n] else a for n, a in fed.items()}


def _zeros(inputs: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """One row of zeros for every input (latency needs inputs, not meaningful ones; zero is a valid id)."""
    return {n: np.zeros([1, *[1 if k == -1 else int(k) for k in d.get("shape_signature", d["shape"])[1:]]],
                        dtype=np.float32 if _quant(d) else d["dtype"]) for n, d in inputs.items()}


def predict_tflite(path: Path, x: feeds.Inputs, threads: int = 1, batch_size: int = 256,
                   output: str | None = None) -> np.ndarray:
    """The prediction output (`output`: its signature name; None: the first) as float32, on every row of `x`
    (one array, or {input name: array}); every input fed by name, quantized with its tensor's own parameters."""
    it = interpreter(path, threads)
    ins, outs = signature_io(it)
    out = outs[output_name(it, outs, output, path.name)]
    feed = _feed(ins, x, path.name)
    first = next(iter(ins.values()))
    sig = first.get("shape_signature", first["shape"])
    fixed = len(sig) > 0 and sig[0] != -1
    step = int(first["shape"][0]) if fixed else batch_size
    q_out = _quant(out)
    results = []
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(0, feeds.rows(feed), step):
        chunk = {n: a[i:i + step] for n, a in feed.items()}
        n = feeds.rows(chunk)
        if n != step and fixed:  # fixed batch axis: pad the last chunk
            chunk = {k: np.concatenate([a, np.repeat(a[-1:], step - n, axis=0)]) for k, a in chunk.items()}
        if any(shapes.get(k) != a.shape for k, a in chunk.items()):
            for k, a in chunk.items():
                it.resize_tensor_input(ins[k]["index"], list(a.shape), strict=False)
            it.allocate_tensors()
            shapes = {k: a.shape for k, a in chunk.items()}
        for k, a in chunk.items():
            it.set_tensor(ins[k]["index"], a)
        it.invoke()
        results.append(dequantize(it.get_tensor(out["index"]), q_out)[:n])
    return np.concatenate(results).astype(np.float32)


def measure_tflite(path: Path, x: feeds.Inputs | None, threads: int = 1, min_seconds: float = 0.5,
                   output: str | None = None) -> dict[str, Any]:
    """Batch-1 latency p50/p99 of set every input, invoke, read the prediction output (deployc.ml.measure's
    definition), on this machine. `x` None: zeros of each input's shape and dtype."""
    it = interpreter(path, threads)
    ins, outs = signature_io(it)
    out_index = outs[output_name(it, outs, output, path.name)]["index"]
    one = _feed(ins, _zeros(ins) if x is None else feeds.take(x, slice(0, 1)), path.name)
    for k, a in one.items():
        it.resize_tensor_input(ins[k]["index"], list(a.shape), strict=False)
    it.allocate_tensors()
    feed = [(ins[k]["index"], a) for k, a in one.items()]

    def run_one() -> object:
        for index, a in feed:
            it.set_tensor(index, a)
        it.invoke()
        return it.get_tensor(out_index)

    return {**measure.measure_latency(run_one, min_seconds=min_seconds).figures(), "threads": threads}
