"""The external data files an ONNX model names, read from its protobuf wire format without importing onnx.

`deployc validate` and `plan` need them (containment check, step keys) and must stay fast, and `import onnx`
alone costs most of a second. Only the fields that can hold tensors are walked, as onnx's own
`external_data_helper` does: graph initializers (also sparse ones) and node attributes, through subgraphs.
"""
from __future__ import annotations

from collections.abc import Iterator

# field numbers from onnx.proto
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_EXTERNAL = 1
_MAX_DEPTH = 64


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError(f"truncated or overlong varint at byte {pos}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message; length-delimited values as memoryviews (no copies)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise WireError(f"truncated fixed-width field at byte {pos}")
            pos += size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise WireError(f"field {number} runs past the end of its message (byte {pos})")
            yield number, wire, buf[pos:pos + size]
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire} at byte {pos}")


def _tensor_location(buf: memoryview) -> str | None:
    external, location = False, None
    for number, wire, value in fields(buf):
        if number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = {n: v for n, w, v in fields(value) if isinstance(v, memoryview)}
            if bytes(entry.get(1, b"")) == b"location":
                location = bytes(entry.get(2, b"")).decode("utf-8", "replace")
    return location if external else None


def _sparse(buf: memoryview) -> Iterator[memoryview]:
    for number, _, value in fields(buf):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and isinstance(value, memoryview):
            yield value


def _graph_tensors(buf: memoryview, depth: int) -> Iterator[memoryview]:
    if depth > _MAX_DEPTH:
        raise WireError("subgraphs nested too deeply")
    for number, _, value in fields(buf):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_INITIALIZER:
            yield value
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(value)
        elif number == _GRAPH_NODE:
            for n, _, attr in fields(value):
                if n == _NODE_ATTRIBUTE and isinstance(attr, memoryview):
                    yield from _attribute_tensors(attr, depth)


def _attribute_tensors(buf: memoryview, depth: int) -> Iterator[memoryview]:
    for number, _, value in fields(buf):
        if not isinstance(value, memoryview):
            continue
        if number in (_ATTR_T, _ATTR_TENSORS):
            yield value
        elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
            yield from _sparse(value)
        elif number in (_ATTR_G, _ATTR_GRAPHS):
            yield from _graph_tensors(value, depth + 1)


def external_locations(model: bytes) -> list[str]:
    """Every external data `location` the model's tensors name, in order, once each."""
    out: list[str] = []
    graphs = [v for n, _, v in fields(memoryview(model)) if n == _MODEL_GRAPH and isinstance(v, memoryview)]
    if not graphs:
        raise WireError("it holds no graph")
    for graph in graphs:
        for tensor in _graph_tensors(graph, 0):
            loc = _tensor_location(tensor)
            if loc is not None and loc not in out:
                out.append(loc)
    return out


# graph inputs and outputs (ValueInfoProto -> TypeProto.tensor_type -> elem_type, shape.dim)
_GRAPH_INPUT, _GRAPH_OUTPUT, _TENSOR_NAME = 11, 12, 8
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_ELEM, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE = 1, 2, 1, 1, 2, 1, 1
WireTensor = tuple[str, int, tuple[int, ...]]  # (name, onnx.TensorProto element type, shape with -1 for free)


def _sub(buf: memoryview, number: int) -> memoryview:
    """The last length-delimited field `number` of a message (protobuf merges repeats; empty when absent)."""
    found = memoryview(b"")
    for n, _, value in fields(buf):
        if n == number and isinstance(value, memoryview):
            found = value
    return found


def _value_info(buf: memoryview) -> WireTensor:
    name = bytes(_sub(buf, _VALUE_NAME)).decode("utf-8", "replace")
    tensor = _sub(_sub(buf, _VALUE_TYPE), _TYPE_TENSOR)
    elem = next((v for n, w, v in fields(tensor) if n == _TENSOR_ELEM and isinstance(v, int)), 0)
    dims = []
    for n, _, dim in fields(_sub(tensor, _TENSOR_SHAPE)):
        if n == _SHAPE_DIM and isinstance(dim, memoryview):
            value = next((v for k, w, v in fields(dim) if k == _DIM_VALUE and isinstance(v, int)), 0)
            dims.append(value if value > 0 else -1)
    return name, elem, tuple(dims)


def graph_io(model: bytes) -> tuple[list[WireTensor], list[WireTensor]]:
    """The model's inputs (initializers left out, as onnx lists them too) and outputs, as `onnx_io` reads them
    with onnx (deployc.ml.convert), without importing it."""
    graph = _sub(memoryview(model), _MODEL_GRAPH)
    if not len(graph):
        raise WireError("it holds no graph")
    initializers = {bytes(_sub(v, _TENSOR_NAME)).decode("utf-8", "replace")
                    for n, _, v in fields(graph) if n == _GRAPH_INITIALIZER and isinstance(v, memoryview)}
    ins = [_value_info(v) for n, _, v in fields(graph) if n == _GRAPH_INPUT and isinstance(v, memoryview)]
    outs = [_value_info(v) for n, _, v in fields(graph) if n == _GRAPH_OUTPUT and isinstance(v, memoryview)]
    return [t for t in ins if t[0] not in initializers], outs
