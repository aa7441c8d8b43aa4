"""TFLite (LiteRT) conversion, inspection, running and measurement.

tensorflow and ai_edge_litert are imported inside the functions: importing this module costs nothing.
Conversion goes through a SavedModel export of the Keras model with one `serving_default` signature whose
output is named "output" (as in the ONNX artifact), then `TFLiteConverter.from_saved_model`. Keras 3's
`from_keras_model` works too, but names the output `output_0`; `from_concrete_functions` keeps the weights as
resource variables (VAR_HANDLE / READ_VARIABLE ops), which is wrong for a device model.
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
from deployc.ml import measure
from deployc.ml.convert import SIGNATURE, export_saved_model
from deployc.ml.quiet import native_stderr_silenced

if TYPE_CHECKING:
    from deployc.targets.tflite import TFLiteConfig

MODES = ("none", "float16", "dynamic", "int8")
AUTO_ORDER = ("int8", "dynamic", "float16", "none")  # smallest expected first
CALIBRATION_MAX_ROWS = 500
CALIBRATION_MIN_ROWS = 100
_FLEX_RE = re.compile(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op")
_TF_OP_RE = re.compile(r"'tf\.([A-Za-z0-9_]+)' op ")
_TENSOR_LIST_MARK = "Lowering tensor list ops is failed"
_NOT_QUANTIZABLE_RE = re.compile(r"'tfl\.([A-Za-z0-9_]+)' op [^\n]*(?:quantiz|int8)", re.IGNORECASE)


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


def convert(keras_model: Path, dst: Path, cfg: TFLiteConfig, calibration_x: np.ndarray | None, *,
            mode: str | None = None, inputs: list[Any] | None = None) -> dict[str, Any]:
    """Convert a .keras/.h5 file or a SavedModel folder to `dst`; returns `inspect_model`'s info plus warnings.

    `mode` overrides the config's quantization (needed for `auto`, which tries each mode).
    """
    from deployc.ml.convert import quiet_tensorflow

    mode = mode or candidate_modes(cfg)[0]
    if mode not in MODES:
        raise InputError(f"targets.tflite: quantization {mode!r} is not one of {', '.join(MODES)}")
    quiet_tensorflow()
    import tensorflow as tf

    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="deployc-tflite-") as tmp:
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
            if calibration_x is None or len(calibration_x) == 0:
                raise InputError("targets.tflite: int8 needs representative inputs: set data.calibration")
            rows = min(len(calibration_x), CALIBRATION_MAX_ROWS)
            if rows < CALIBRATION_MIN_ROWS:
                warnings.append(f"int8 calibrated on {rows} rows; {CALIBRATION_MIN_ROWS}-{CALIBRATION_MAX_ROWS} "
                                "representative rows are recommended")
            calib = np.asarray(calibration_x[:rows], dtype=np.float32)
            conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(rows))
            builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
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
    if info["select_tf_ops"]:
        warnings.append("the model uses Select TF ops (" + ", ".join(info["select_tf_ops"]) + "): the device "
                        "runtime must include them (Android: org.tensorflow:tensorflow-lite-select-tf-ops)")
    if cfg.device == "microcontroller":
        _check_microcontroller(info)
    info.update(mode=mode, io_type=io_type(cfg) if mode == "int8" else "float32", warnings=warnings)
    return info


def _conversion_error(model: str, mode: str, message: str) -> InputError:
    flex = sorted(set(_FLEX_RE.findall(message)))
    if flex:
        return InputError(f"{model}: ops outside the TFLite builtin op set: {', '.join(flex)}. Set "
                          "targets.tflite.allow_select_tf_ops: true to use Select TF ops (the device runtime "
                          "must then include them), or change the model")
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


def _first_error(message: str) -> str:
    for line in message.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:300]
    return message.strip().splitlines()[0][:300] if message.strip() else "no message"


def _check_microcontroller(info: dict[str, Any]) -> None:
    bad_io = [t["name"] for t in info["inputs"] + info["outputs"] if t["dtype"] not in ("int8", "uint8")]
    floats = {k: v for k, v in info["tensor_types"].items() if k.startswith("float")}
    if bad_io or floats or info["select_tf_ops"]:
        raise InputError("targets.tflite: device microcontroller needs a full int8 model with integer I/O and "
                         f"builtin ops only; got float I/O on {bad_io or 'none'}, float tensors {floats or 'none'}")


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


def predict_tflite(path: Path, x: np.ndarray, threads: int = 1, batch_size: int = 256) -> np.ndarray:
    """Outputs of the first output tensor as float32, inputs quantized with the input tensor's own parameters."""
    it = interpreter(path, threads)
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1:
        raise InputError(f"{path.name}: evaluation supports single-input models only")
    inp, out = ins[0], outs[0]
    sig = inp.get("shape_signature", inp["shape"])
    step = batch_size if len(sig) and sig[0] == -1 else int(inp["shape"][0])
    q_in, q_out = _quant(inp), _quant(out)
    x = np.asarray(x)
    results = []
    current = -1
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if n != step and sig[0] != -1:  # fixed batch axis: pad the last chunk
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
        if len(chunk) != current:
            it.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]], strict=False)
            it.allocate_tensors()
            current = len(chunk)
        it.set_tensor(inp["index"], quantize(chunk, inp["dtype"], q_in))
        it.invoke()
        results.append(dequantize(it.get_tensor(out["index"]), q_out)[:n])
    return np.concatenate(results).astype(np.float32)


def measure_tflite(path: Path, x: np.ndarray, threads: int = 1, min_seconds: float = 0.5) -> dict[str, Any]:
    """Batch-1 latency p50/p99 of set input, invoke, read output (deployc.ml.measure's definition), on this
    machine."""
    it = interpreter(path, threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]], strict=False)
    it.allocate_tensors()
    one = quantize(np.asarray(x)[:1], inp["dtype"], _quant(inp))

    def run_one() -> object:
        it.set_tensor(inp["index"], one)
        it.invoke()
        return it.get_tensor(out["index"])

    return {**measure.measure_latency(run_one, min_seconds=min_seconds).figures(), "threads": threads}
