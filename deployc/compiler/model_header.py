"""What a model file says about itself before any framework loads it: its inputs (names, dtypes, shapes), its
outputs with the op that produces each, and whether it holds convolutions or int8 ops. No TensorFlow, Keras or
onnx: a `.keras` archive's config.json, an ONNX graph and a SavedModel's `saved_model.pb`, both read as protobuf
wire data (deployc/compiler/onnx_refs.py). `deployc init` guesses a spec from it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.compiler.onnx_refs import WireError, fields
from deployc.compiler.resolved import ONNX_DTYPES, Tensor
from deployc.errors import InputError

CONV = re.compile(r"conv", re.IGNORECASE)  # Conv2D, DepthwiseConv2D, SeparableConv2D; Conv, QLinearConv; Conv2D
QUANTIZED_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
                 "QLinearMatMul", "QGemm"}


@dataclass(frozen=True)
class Output:
    """One model output, as far as the file tells: its columns and the op (activation) that produces it."""

    name: str
    columns: int | None
    activation: str | None  # softmax, sigmoid, linear, another op's name; None when the file does not say


@dataclass(frozen=True)
class ModelInfo:
    format: str  # keras, onnx or savedmodel
    inputs: tuple[Tensor, ...]
    outputs: tuple[Output, ...]  # the prediction output (the build's default: the first) first
    conv: bool  # it holds convolutions
    quantized: bool  # it holds int8 ops (an ONNX file quantized before)


def read_model(path: Path) -> ModelInfo:
    """What the model file says about itself, without TensorFlow, Keras or onnx."""
    try:
        if path.is_dir():
            return _savedmodel(path)
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return _onnx(path)
        if suffix == ".keras":
            return _keras(path)
        if suffix in (".h5", ".hdf5"):
            raise InputError(f"{path}: an HDF5 Keras file, which deployc cannot read without TensorFlow; save "
                             "the model as .keras (model.save('model.keras')) and use that")
    except (WireError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise InputError(f"{path}: cannot read the model ({type(exc).__name__}: {exc})") from None
    raise InputError(f"{path}: not a model deployc reads (a .keras file, a SavedModel folder or a .onnx file)")


def _keras(path: Path) -> ModelInfo:
    import zipfile

    from deployc.compiler.inputs import KERAS_CONFIG_MAX_BYTES, open_regular

    try:
        with open_regular(path) as f, zipfile.ZipFile(f) as z:
            info = z.getinfo("config.json")
            if info.file_size > KERAS_CONFIG_MAX_BYTES:
                raise InputError(f"{path}: config.json is over {KERAS_CONFIG_MAX_BYTES} bytes")
            config = json.loads(z.read(info))
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not a .keras archive (not a zip file)") from None
    except KeyError:
        raise InputError(f"{path}: not a Keras 3 archive (no config.json)") from None
    except ValueError as exc:
        raise InputError(f"{path}: config.json is not JSON ({exc})") from None
    kind, inner = config.get("class_name"), config.get("config") or {}
    layers = inner.get("layers") or []
    if kind == "Sequential" and layers:
        first = layers[0]["config"] if layers[0].get("class_name") == "InputLayer" else {}
        shape = first.get("batch_shape") or inner.get("build_input_shape")
        inputs = [Tensor(str(first.get("name", "input")), _keras_dtype(first.get("dtype")), _dims(shape))]
        outputs = [_keras_output(str(layers[-1]["config"]["name"]), len(layers) - 1, layers, True)]
    elif kind == "Functional":
        by_name = {str(layer["name"]): layer for layer in layers}
        inputs = []
        for ref in _refs(inner["input_layers"]).values():
            cfg = by_name[ref]["config"]
            inputs.append(Tensor(ref, _keras_dtype(cfg.get("dtype")), _dims(cfg.get("batch_shape"))))
        index = {name: i for i, name in enumerate(by_name)}
        outputs = [_keras_output(out, index[ref], layers, False) for out, ref in _refs(inner["output_layers"]).items()]
    else:
        raise InputError(f"{path}: a {kind or 'custom'} model, whose config does not name its inputs and outputs; "
                         "save a functional or Sequential Keras model")
    return ModelInfo("keras", tuple(inputs), tuple(outputs), _has_conv(layers), False)


def _refs(refs: Any) -> dict[str, str]:
    """{tensor name: layer name} of `input_layers` / `output_layers`: one [layer, node, index] reference, a list,
    or a mapping (a model called with a dict)."""
    if isinstance(refs, dict):
        return {str(k): str(v[0]) for k, v in refs.items()}
    items = [refs] if refs and isinstance(refs[0], str) else list(refs)
    return {str(r[0]): str(r[0]) for r in items}


def _keras_dtype(dtype: Any) -> str:
    if isinstance(dtype, dict):  # a DTypePolicy
        dtype = (dtype.get("config") or {}).get("name")
    return str(dtype) if dtype else "float32"


def _dims(shape: Any) -> tuple[int, ...]:
    """A Keras shape with -1 for None; () when the config does not say."""
    return tuple(-1 if d is None else int(d) for d in shape) if isinstance(shape, list) else ()


_PASS_THROUGH = {"Reshape", "Flatten", "Dropout", "Identity", "ActivityRegularization", "GaussianNoise",
                 "GaussianDropout", "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D"}
_ACTIVATION_LAYERS = {"Softmax": "softmax", "ReLU": "relu", "LeakyReLU": "leaky_relu", "ELU": "elu"}


def _keras_output(name: str, at: int, layers: list[Any], sequential: bool) -> Output:
    """Walk back from the output layer through activation and pass-through layers (Reshape, Dropout) to the
    layer with units; the first activation met is the output's."""
    by_name = {str(layer.get("name", layer["config"].get("name"))): i for i, layer in enumerate(layers)}
    activation: str | None = None
    for _ in range(len(layers)):
        layer = layers[at]
        kind, cfg = layer.get("class_name"), layer.get("config") or {}
        if "activation" in cfg or "units" in cfg:
            activation = activation or _activation(cfg.get("activation"))
            if "units" in cfg:
                return Output(name, int(cfg["units"]), activation)
            if kind != "Activation":  # a convolution, a recurrent layer: no columns to read
                return Output(name, None, activation)
        elif kind in _ACTIVATION_LAYERS:
            activation = activation or _ACTIVATION_LAYERS[kind]
        elif kind not in _PASS_THROUGH:
            return Output(name, None, activation)
        prev = _previous(layer, at, by_name, sequential)
        if prev is None:
            return Output(name, None, activation)
        at = prev
    return Output(name, None, activation)


def _previous(layer: Any, at: int, by_name: dict[str, int], sequential: bool) -> int | None:
    """The one layer feeding `layer` (None: several, or none)."""
    if sequential:
        return at - 1 if at > 0 else None
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) != 1:
        return None
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [keras tensor], "kwargs": {}}
        args = node.get("args") or []
        if len(args) != 1 or not isinstance(args[0], dict):
            return None
        history = (args[0].get("config") or {}).get("keras_history") or [None]
        return by_name.get(str(history[0]))
    if isinstance(node, list) and len(node) == 1:  # Keras 2: [[layer, node, index, kwargs]]
        return by_name.get(str(node[0][0]))
    return None


def _activation(value: Any) -> str:
    if isinstance(value, dict):  # a serialized function or Activation object
        inner = value.get("config")
        value = inner if isinstance(inner, str) else (inner or {}).get("name", value.get("class_name"))
    name = str(value or "linear").lower()
    return {"log_softmax": "softmax", "hard_sigmoid": "sigmoid"}.get(name, name)


def _has_conv(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class_name"), str) and CONV.search(item["class_name"]):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# onnx.proto: ModelProto.graph, GraphProto.node, NodeProto.input / output / op_type
_MODEL_GRAPH, _GRAPH_NODE, _NODE_INPUT, _NODE_OUTPUT, _NODE_OP = 7, 1, 1, 2, 4


def _onnx(path: Path) -> ModelInfo:
    from deployc.compiler.inputs import read_bytes
    from deployc.compiler.onnx_refs import graph_io

    data = read_bytes(path)
    ins, outs = graph_io(data)
    if not ins or not outs:
        raise InputError(f"{path}: the ONNX graph names no {'inputs' if not ins else 'outputs'}")
    producers: dict[str, tuple[str, list[str]]] = {}
    for node in _subs(_sub(memoryview(data), _MODEL_GRAPH), _GRAPH_NODE):
        op, node_inputs = _text(_sub(node, _NODE_OP)), [_text(v) for v in _subs(node, _NODE_INPUT)]
        for o in _subs(node, _NODE_OUTPUT):
            producers[_text(o)] = (op, node_inputs)
    ops = {op for op, _ in producers.values()}

    def producer(name: str) -> str | None:
        for _ in range(len(producers) + 1):
            if name not in producers:
                return None
            op, node_inputs = producers[name]
            if op not in ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout"):
                return op
            if not node_inputs:
                return None
            name = node_inputs[0]
        return None

    inputs = tuple(Tensor(n, ONNX_DTYPES.get(e, "string"), s) for n, e, s in ins)
    outputs = tuple(Output(n, _columns(s), _op_activation(producer(n))) for n, _, s in outs)
    return ModelInfo("onnx", inputs, outputs, any(CONV.search(op) for op in ops), bool(ops & QUANTIZED_OPS))


def _columns(shape: tuple[int, ...]) -> int | None:
    """Columns of a rows x columns (or rows) output; None when the shape does not say."""
    if len(shape) == 1:
        return 1
    return shape[1] if len(shape) == 2 and shape[1] > 0 else None


def _op_activation(op: str | None) -> str | None:
    """A graph op (ONNX or TensorFlow) as the activation the task is guessed from."""
    if op is None:
        return None
    if op in ("Softmax", "LogSoftmax"):
        return "softmax"
    if op == "Sigmoid":
        return "sigmoid"
    return "linear" if op in ("Gemm", "MatMul", "Add", "AddV2", "BiasAdd", "Einsum") else op.lower()


# tensorflow/core/protobuf: SavedModel.meta_graphs; MetaGraphDef.graph_def / signature_def; SignatureDef.inputs /
# outputs (maps: key 1, value 2); TensorInfo.name / dtype / tensor_shape; TensorShapeProto.dim; Dim.size
_META_GRAPHS, _META_GRAPH_DEF, _META_SIGNATURES, _SIG_INPUTS, _SIG_OUTPUTS, _KEY, _VALUE = 2, 2, 5, 1, 2, 1, 2
_INFO_NAME, _INFO_DTYPE, _INFO_SHAPE, _SHAPE_DIM, _DIM_SIZE = 1, 2, 3, 2, 1
# GraphDef.node / library; FunctionDefLibrary.function; FunctionDef.signature (OpDef: name, output_arg) / node_def
# / ret; NodeDef.name / op / input / attr; AttrValue.func (NameAttrList.name)
_GRAPH_NODES, _GRAPH_LIBRARY, _LIBRARY_FUNCTION, _FUNC_SIGNATURE, _FUNC_NODES, _FUNC_RET = 1, 2, 1, 1, 3, 4
_OPDEF_NAME, _OPDEF_OUTPUTS, _ARG_NAME = 1, 3, 1
_NODEDEF_NAME, _NODEDEF_OP, _NODEDEF_INPUT, _NODEDEF_ATTR, _ATTR_FUNC, _FUNC_NAME = 1, 2, 3, 5, 10, 1
_TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 9: "int64",
              10: "bool", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}


def _savedmodel(folder: Path) -> ModelInfo:
    """The serving_default signature of saved_model.pb, and the op behind each output (traced through the calls
    of the function library)."""
    from deployc.compiler.inputs import read_bytes

    pb = folder / "saved_model.pb"
    if not pb.is_file():
        raise InputError(f"{folder}: a folder without saved_model.pb" + (
            " (saved_model.pbtxt, the text format, is not read: save the SavedModel in binary)"
            if (folder / "saved_model.pbtxt").exists() else ", so not a SavedModel folder"))
    root = memoryview(read_bytes(pb))
    for meta in _subs(root, _META_GRAPHS):
        signatures = {_text(_sub(e, _KEY)): _sub(e, _VALUE) for e in _subs(meta, _META_SIGNATURES)}
        if "serving_default" in signatures:
            sig, graph = signatures["serving_default"], _sub(meta, _META_GRAPH_DEF)
            break
    else:
        raise InputError(f"{pb}: no serving_default signature (deployc converts that signature)")

    def tensors(number: int) -> list[tuple[str, str, str, tuple[int, ...]]]:
        found = []
        for entry in _subs(sig, number):
            info = _sub(entry, _VALUE)
            dtype = next((v for n, _, v in fields(info) if n == _INFO_DTYPE and isinstance(v, int)), 0)
            dims = tuple(_signed(next((v for n, _, v in fields(d) if n == _DIM_SIZE and isinstance(v, int)), -1))
                         for d in _subs(_sub(info, _INFO_SHAPE), _SHAPE_DIM))
            found.append((_text(_sub(entry, _KEY)), _text(_sub(info, _INFO_NAME)), _TF_DTYPES.get(dtype, "string"),
                          dims))
        return sorted(found)

    trace = _TFGraph(graph)
    inputs = tuple(Tensor(k, dtype, dims) for k, _, dtype, dims in tensors(_SIG_INPUTS))
    outputs = tuple(Output(k, _columns(dims), _op_activation(trace.producer(name)))
                    for k, name, _, dims in tensors(_SIG_OUTPUTS))
    if not inputs or not outputs:
        raise InputError(f"{pb}: the serving_default signature names no {'inputs' if not inputs else 'outputs'}")
    return ModelInfo("savedmodel", inputs, outputs, any(CONV.search(op) for op in trace.ops()), False)


class _TFGraph:
    """A GraphDef and its function library, read lazily: enough to follow a signature's output tensor through
    Identity nodes and (Stateful)PartitionedCall into the functions to the op that computes it."""

    def __init__(self, graph: memoryview):
        self.top = self._nodes(graph, _GRAPH_NODES)
        self.functions = {_text(_sub(_sub(f, _FUNC_SIGNATURE), _OPDEF_NAME)): f
                          for f in _subs(_sub(graph, _GRAPH_LIBRARY), _LIBRARY_FUNCTION)}

    @staticmethod
    def _nodes(message: memoryview, number: int) -> dict[str, memoryview]:
        return {_text(_sub(n, _NODEDEF_NAME)): n for n in _subs(message, number)}

    def ops(self) -> set[str]:
        nodes = list(self.top.values()) + [n for f in self.functions.values() for n in _subs(f, _FUNC_NODES)]
        return {_text(_sub(n, _NODEDEF_OP)) for n in nodes}

    def producer(self, tensor: str) -> str | None:
        scope, (name, index) = self.top, _ref(tensor)
        for _ in range(256):
            node = scope.get(name)
            if node is None:
                return None
            op = _text(_sub(node, _NODEDEF_OP))
            inputs = [i for i in (_text(v) for v in _subs(node, _NODEDEF_INPUT)) if not i.startswith("^")]
            if op in ("StatefulPartitionedCall", "PartitionedCall"):
                attrs = {_text(_sub(a, _KEY)): _sub(a, _VALUE) for a in _subs(node, _NODEDEF_ATTR)}
                called = _text(_sub(_sub(attrs.get("f", memoryview(b"")), _ATTR_FUNC), _FUNC_NAME))
                function = self.functions.get(called)
                if function is None:
                    return None
                outs = [_text(_sub(a, _ARG_NAME)) for a in _subs(_sub(function, _FUNC_SIGNATURE), _OPDEF_OUTPUTS)]
                rets = {_text(_sub(e, _KEY)): _text(_sub(e, _VALUE)) for e in _subs(function, _FUNC_RET)}
                if index >= len(outs) or outs[index] not in rets:
                    return None
                scope = self._nodes(function, _FUNC_NODES)
                name, index = _ref(rets[outs[index]])
            elif op in ("Identity", "IdentityN", "Reshape", "Squeeze", "ExpandDims", "Cast") and inputs:
                name, index = _ref(inputs[index if op == "IdentityN" and index < len(inputs) else 0])
            else:
                return op
        return None


def _ref(tensor: str) -> tuple[str, int]:
    """A tensor reference as (node, output index): `node:index` in a graph, `node:arg:index` in a function."""
    parts = tensor.split(":")
    return parts[0], int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 0


def _subs(buf: memoryview, number: int) -> list[memoryview]:
    """Every length-delimited field `number` of a protobuf message."""
    return [v for n, _, v in fields(buf) if n == number and isinstance(v, memoryview)]


def _sub(buf: memoryview, number: int) -> memoryview:
    found = _subs(buf, number)
    return found[-1] if found else memoryview(b"")


def _text(buf: memoryview) -> str:
    return bytes(buf).decode("utf-8", "replace")


def _signed(value: int) -> int:
    value = value - (1 << 64) if value >= 1 << 63 else value
    return value if value > 0 else -1
