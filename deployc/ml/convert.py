"""Model loading and conversion to ONNX. tensorflow / tf2onnx / onnx are imported inside the functions."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deployc.errors import InputError
from deployc.ml.quiet import quiet_tensorflow as quiet_tensorflow  # the steps that run TF models import it here
from deployc.trust import KERAS_SAFE_MODE

OPSET = 17
ONNX_DATATYPES = {  # onnx.TensorProto enum -> Open Inference Protocol datatype
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
    11: "FP64", 12: "UINT32", 13: "UINT64", 8: "BYTES",
}


def load_keras(path: Path) -> Any:
    """Load a .keras/.h5 model, in safe mode (no Lambda bytecode, no arbitrary objects) unless the spec opted out."""
    quiet_tensorflow()
    import keras

    try:
        return keras.models.load_model(path, safe_mode=KERAS_SAFE_MODE.get(), compile=False)
    except Exception as exc:  # keras raises many types for bad files; all are input errors here
        text = str(exc)
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise InputError("model.path: the model holds Python code (a Lambda layer or a custom object), which "
                             "deployc refuses to load (Keras safe mode); rebuild it from built-in layers, or set "
                             "model.allow_python_code: true if you trust the file") from None
        raise InputError(f"model.path: cannot load the Keras model ({type(exc).__name__}: "
                         f"{text.splitlines()[0] if text else ''})") from None


def keras_to_onnx(src: Path, dst: Path, inputs: list[Any] | None = None) -> dict[str, Any]:
    """Convert a Keras 3 model through a tf.function (tf2onnx's from_keras does not accept Keras 3)."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.backend.clear_session()  # layer names (and so ONNX node names) must not depend on earlier loads
    model = load_keras(src)
    signature = _signature(tf, model, inputs)
    call = _caller(model, signature)
    fn = tf.function(call, input_signature=signature)
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=signature, opset=OPSET)
    except Exception as exc:
        raise InputError(f"{src.name}: conversion to ONNX failed ({type(exc).__name__}: {exc})") from None
    return _finish(proto, dst, names=output_names(model))


def _caller(model: Any, signature: list[Any]) -> Any:
    """model(...) on the signature's tensors: one tensor, or the inputs by name where the signature names the
    model's inputs (the order of `model.inputs` in the spec need not be the model's), else in order."""
    from deployc.ml import feeds

    names = [s.name for s in signature]
    own = [str(getattr(t, "name", "")).split(":")[0] for t in model.inputs]
    by_name = sorted(names) == sorted(own)

    def call(*args: Any) -> Any:
        if by_name:
            return model(feeds.for_keras(model, dict(zip(names, args, strict=True))), training=False)
        return model(args[0] if len(args) == 1 else list(args), training=False)

    return call


def output_names(model: Any) -> list[str]:
    """The artifact's output names: `output` for one output; the model's own output names for several (so
    model.prediction can name one), output_0, output_1, ... where those are not unique valid names."""
    n = len(model.outputs)
    if n == 1:
        return ["output"]
    own = [str(x) for x in (getattr(model, "output_names", None) or [])]
    return _valid_names(own) if len(own) == n else [f"output_{i}" for i in range(n)]


def _valid_names(names: list[str]) -> list[str]:
    """`names` where they are unique tensor names, else output_0, output_1, ..."""
    if len(set(names)) == len(names) and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}", x) for x in names):
        return names
    return [f"output_{i}" for i in range(len(names))]


SIGNATURE = "serving_default"


def export_saved_model(src: Path, dst: Path, inputs: list[Any] | None = None,
                       order: list[str] | None = None) -> Path:
    """A SavedModel with one signature, serving_default: the model's inputs by name -> {"output": ...} (or the
    model's output names), named like the ONNX artifact's outputs. Used by the tflite and tfserving targets.
    `order`, when given, receives the output names in the model's order (a signature's outputs are a dict)."""
    import contextlib
    import io

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.backend.clear_session()
    model = load_keras(src)
    signature = _signature(tf, model, inputs)
    call, names = _caller(model, signature), output_names(model)
    if order is not None:
        order[:] = names

    def serve(*args: Any) -> dict[str, Any]:
        out = call(*args)
        if isinstance(out, dict):
            out = [out[k] for k in model.output_names]
        if isinstance(out, (list, tuple)):
            return dict(zip(names, out, strict=True))
        return {"output": out}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=signature)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # write_out prints the endpoints
            archive.write_out(str(dst), verbose=False)
    except Exception as exc:
        raise InputError(f"{src.name}: export as a SavedModel failed ({type(exc).__name__}: {exc})") from None
    return dst


def savedmodel_to_onnx(src: Path, dst: Path) -> dict[str, Any]:
    """Convert a SavedModel folder's serving_default signature."""
    quiet_tensorflow()
    import tensorflow as tf
    import tf2onnx

    try:
        loaded = tf.saved_model.load(str(src))
        fn = loaded.signatures["serving_default"]
    except Exception as exc:
        raise InputError(f"{src.name}: cannot load the SavedModel's serving_default signature ({exc})") from None
    _, kwargs = fn.structured_input_signature
    signature = [tf.TensorSpec(s.shape, s.dtype, name=k) for k, s in sorted(kwargs.items())]

    def call(*args: Any) -> Any:
        out = fn(**{s.name: a for s, a in zip(signature, args, strict=True)})
        return [out[k] for k in sorted(out)]

    proto, _ = tf2onnx.convert.from_function(tf.function(call, input_signature=signature), input_signature=signature,
                                             opset=OPSET)
    keys = sorted(fn.structured_outputs)
    return _finish(proto, dst, names=["output"] if len(keys) == 1 else _valid_names(keys))


def copy_onnx(src: Path, dst: Path) -> dict[str, Any]:
    """Check an ONNX input (external data must stay beside it) and store it normalized."""
    import onnx

    try:
        proto = onnx.load(str(src), load_external_data=False)
        for t in _external_tensors(proto):
            loc = dict((e.key, e.value) for e in t.external_data).get("location", "")
            target = (src.parent / loc).resolve()
            if not target.is_relative_to(src.parent.resolve()):
                raise InputError(f"{src.name}: external data location {loc!r} leaves the model's folder")
        proto = onnx.load(str(src))
        onnx.checker.check_model(proto)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{src.name}: not a valid ONNX model ({exc})") from None
    return _finish(proto, dst, rename=False)


def _external_tensors(proto: Any) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


def _signature(tf: Any, model: Any, inputs: list[Any] | None) -> list[Any]:
    if inputs:
        return [tf.TensorSpec([None if d == -1 else d for d in t.shape], getattr(tf, t.dtype), name=t.name)
                for t in inputs]
    out = []
    for i, t in enumerate(model.inputs):
        name = (getattr(t, "name", "") or f"input_{i}").split(":")[0]
        out.append(tf.TensorSpec(t.shape, t.dtype, name=name))
    return out


def _finish(proto: Any, dst: Path, rename: bool = True, names: list[str] | None = None) -> dict[str, Any]:
    import onnx

    if rename:
        outs = list(proto.graph.output)
        if names is None or len(names) != len(outs):
            names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
        for out, new in zip(outs, names, strict=True):
            _rename_value(proto.graph, out.name, new)
    proto.producer_name = "deployc"
    proto.producer_version = ""
    proto.doc_string = ""
    proto.graph.doc_string = ""
    _stable_dim_names(proto.graph)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dst))
    inputs, outputs = onnx_io(dst)
    return {"inputs": inputs, "outputs": outputs, "opset": max(o.version for o in proto.opset_import),
            "ir_version": proto.ir_version}


def _stable_dim_names(graph: Any) -> None:
    """tf2onnx names free axes after a process-wide counter (unk__7); rename them in order of appearance."""
    names: dict[str, str] = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                if dim.dim_param not in names:
                    names[dim.dim_param] = "batch" if axis == 0 and not names else f"dim{len(names)}"
                dim.dim_param = names[dim.dim_param]


def _rename_value(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, n in enumerate(node.input):
            if n == old:
                node.input[i] = new
        for i, n in enumerate(node.output):
            if n == old:
                node.output[i] = new
    for vi in list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def onnx_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX model as [{name, datatype, shape}] (-1 for a free axis)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}

    def info(vi: Any) -> dict[str, Any]:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        return {"name": vi.name, "datatype": ONNX_DATATYPES.get(tt.elem_type, "BYTES"), "shape": shape}

    return ([info(v) for v in proto.graph.input if v.name not in initializers],
            [info(v) for v in proto.graph.output])
