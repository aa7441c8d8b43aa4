"""ONNX quantization recipes: int8 dynamic, int8 static (QDQ, S8S8) and float16, on top of ONNX Runtime's tools.

Each function writes one model and returns JSON-able details of what it did. onnxruntime and onnx are imported
inside the functions so that modules which only describe passes stay cheap to import.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import feeds

if TYPE_CHECKING:
    from deployc.progress import Progress, Task

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 32
PREPROCESS_STEPS = ("full", "skip_symbolic_shape", "none")  # quant_pre_process attempts, in order
DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def name_nodes(model: Any) -> Any:
    """Give unnamed nodes stable names: the quantizers' node filters match by name."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
    return model


def nodes_of_types(model: Any, op_types: Iterable[str]) -> list[str]:
    wanted = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in wanted]


def edge_nodes(model: Any) -> list[str]:
    """The first Conv, the last MatMul/Gemm and whatever follows it (Softmax): the layers int8 hurts most
    (raw input pixels; the output head, whose probabilities int8 would round to steps of 1/256)."""
    nodes = list(model.graph.node)  # ONNX keeps nodes in topological order
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = max((i for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Gemm")), default=len(nodes))
    return ([first] if first else []) + [n.name for n in nodes[last:]]


def softmax_nodes(model: Any) -> list[str]:
    """Every Softmax and the node that computes its input: attention scores masked with -1e38 (Keras
    MultiHeadAttention) span a range in which int8 has no step left for the real scores."""
    producers = {out: n.name for n in model.graph.node for out in n.output}
    found: list[str] = []
    for n in model.graph.node:
        if n.op_type == "Softmax":
            found += [n.name] + [producers[i] for i in n.input if i in producers]
    return found


def preprocess(src: Path, dst: Path, log: Callable[[str], None] = print,
               runner: Callable[..., None] | None = None) -> dict[str, Any]:
    """quant_pre_process (shape inference + graph optimization) with fallbacks, recorded in the result.

    Symbolic shape inference fails on some exported graphs; then it is retried without it, and as a last
    resort the model is quantized without pre-processing (still valid, sometimes less accurate or slower).
    """
    if runner is None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        runner = quant_pre_process
    errors: list[str] = []
    for step in PREPROCESS_STEPS:
        if step == "none":
            shutil.copyfile(src, dst)
            break
        try:
            # onnxruntime's symbolic shape inference, when it fails, leaves sym_shape_infer_temp.onnx and its
            # external data in the working directory: run it in the output's folder (a temporary one)
            with contextlib.chdir(dst.resolve().parent):
                runner(str(src.resolve()), str(dst.resolve()), skip_symbolic_shape=(step == "skip_symbolic_shape"))
            break
        except Exception as exc:  # the shape-inference code raises many types
            errors.append(f"{step}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            log(f"quant_pre_process ({step}) failed; falling back")
    return {"preprocess": step, "preprocess_errors": errors}


class ArrayReader:
    """A CalibrationDataReader over {input name: array}, in fixed-size batches, in order (deterministic). Every
    input is fed; integer inputs (token and item ids) pass through as they are, since only float tensors are
    calibrated. `task`, when given, advances with each batch the calibrator reads."""

    def __init__(self, feed: dict[str, np.ndarray], batch: int, task: Task | None = None):
        self.feed, self.batch, self.task = feed, batch, task
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def batches(self) -> int:
        return -(-feeds.rows(self.feed) // self.batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            n = feeds.rows(self.feed)
            self._it = iter([{k: v[i:i + self.batch] for k, v in self.feed.items()} for i in range(0, n, self.batch)])
        out = next(self._it, None)
        if self.task is not None:
            if out is not None:
                self.task.advance()
            else:
                self.task.status("computing the ranges, quantizing")
        return out

    def rewind(self) -> None:
        self._it = None


def calibration_batch(rows: int) -> int:
    """The largest batch <= CALIBRATION_BATCH that divides `rows`: ONNX Runtime's histogram calibrators
    stack per-batch outputs and fail on a short last batch."""
    return next(b for b in range(min(rows, CALIBRATION_BATCH), 0, -1) if rows % b == 0)


def _input_spec(model: Any) -> tuple[list[str], list[Any], int | None]:
    """The graph's input names and numpy dtypes, and the batch size when the first input fixes it."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    dims = inputs[0].type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return ([i.name for i in inputs], [helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in inputs],
            fixed)


@contextlib.contextmanager
def _root_warnings_off() -> Iterator[None]:
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_dynamic_onnx(src: Path, dst: Path, *, per_channel: bool = False, reduce_range: bool = False,
                          exclude_ops: Iterable[str] = (), exclude_nodes: Iterable[str] = ()) -> dict[str, Any]:
    """int8 weights, activations quantized at run time: for MatMul-heavy models (MLPs, transformers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = name_nodes(_load(src))
    excluded = sorted(set(nodes_of_types(model, exclude_ops)) | set(exclude_nodes))
    with _root_warnings_off():  # "consider pre-processing": advice for static quantization, not this mode
        quantize_dynamic(model, str(dst), per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         extra_options={"MatMulConstBOnly": True})
    return {"weight_type": "int8", "per_channel": per_channel, "reduce_range": reduce_range,
            "excluded_nodes": excluded, **graph_summary(dst)}


def quantize_static_onnx(src: Path, dst: Path, calibration: feeds.Inputs, *, method: str = "percentile",
                         per_channel: bool = True, reduce_range: bool = False, exclude_ops: Iterable[str] = (),
                         exclude_nodes: Iterable[str] = (), keep_edges_float: bool = False,
                         percentile: float = 99.999, keep_softmax_float: bool = False,
                         activation_type: str = "int8",
                         log: Callable[[str], None] = print,
                         preprocess_runner: Callable[..., None] | None = None,
                         progress: Progress | None = None) -> dict[str, Any]:
    """QDQ, int8 activations and weights (S8S8), ranges calibrated on `calibration` rows. The calibration
    batches are reported to `progress` (default: the running step's)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from deployc.progress import current

    if method not in CALIBRATION_METHODS:
        raise InputError(f"calibration_method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    rows = feeds.rows(calibration)
    if rows == 0:
        raise InputError("int8-static needs calibration rows (data.calibration is empty)")
    with tempfile.TemporaryDirectory(prefix="deployc-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        details = preprocess(src, pre, log, preprocess_runner)
        model = name_nodes(_load(pre))
        names, dtypes, fixed = _input_spec(model)
        excluded = sorted(set(nodes_of_types(model, exclude_ops)) | set(exclude_nodes)
                          | set(edge_nodes(model) if keep_edges_float else ())
                          | set(softmax_nodes(model) if keep_softmax_float else ()))
        batch = fixed or calibration_batch(rows)
        reader = ArrayReader(feeds.feed(calibration, names, dtypes, "the model"), batch)
        extra: dict[str, Any] = {"CalibPercentile": percentile} if method == "percentile" else {}
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[method]
        named = Path(tmp) / "named.onnx"
        import onnx

        onnx.save(model, str(named))
        with (progress or current()).task("calibrating", total=reader.batches(), unit="batch") as task:
            reader.task = task
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(str(named), str(dst), reader, quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, reduce_range=reduce_range,
                                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                                calibrate_method=calibrate, extra_options=extra)
    details.update({"format": "QDQ", "activation_type": activation_type, "weight_type": "int8",
                    "per_channel": per_channel,
                    "reduce_range": reduce_range, "calibration_method": method,
                    "calibration_rows": int(rows), "calibration_batch": batch,
                    "keep_edges_float": keep_edges_float, "keep_softmax_float": keep_softmax_float,
                    "excluded_nodes": excluded})
    if method == "percentile":
        details["percentile"] = percentile
    details.update(graph_summary(dst))
    return details


def float16_onnx(src: Path, dst: Path, *, exclude_ops: Iterable[str] = ()) -> dict[str, Any]:
    """FP16 weights and compute, FP32 inputs/outputs kept so callers feed the same arrays."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(exclude_ops))
    model = convert_float_to_float16(_load(src), keep_io_types=True, op_block_list=blocked)
    onnx.save(model, str(dst))
    return {"keep_io_types": True, "blocked_ops": sorted(set(exclude_ops)), **graph_summary(dst)}


def graph_summary(path: Path) -> dict[str, Any]:
    """Initializer data types (by element count) and quantization op counts: what the model really holds."""
    model = _load(path)
    elems: Counter[str] = Counter()
    for t in model.graph.initializer:
        elems[DTYPE_NAMES.get(t.data_type, str(t.data_type))] += int(np.prod(t.dims)) if t.dims else 1
    ops = Counter(n.op_type for n in model.graph.node)
    quant_ops = {k: v for k, v in sorted(ops.items()) if "Quant" in k or "Integer" in k}
    return {"initializer_elements": dict(sorted(elems.items())), "quant_ops": quant_ops}
