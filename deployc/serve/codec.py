"""Request decoding and response encoding for the Open Inference Protocol (KServe v2) and SageMaker formats.

Every client mistake raises `ClientError` with the status and a message that names the tensor and the problem;
the app turns it into `{"error": ...}`. numpy parses `data` lists; orjson (when installed) does the JSON.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from deployc.serve.config import DATATYPES, TensorSpec

try:  # orjson is several times faster than json for number lists; optional
    import orjson

    def loads(body: bytes) -> Any:
        return orjson.loads(body)

    def dumps(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # a dtype orjson cannot write (e.g. float16): fall back to lists
            return orjson.dumps(_plain(obj))
except ImportError:  # pragma: no cover - exercised only without orjson
    def loads(body: bytes) -> Any:
        return json.loads(body)

    def dumps(obj: Any) -> bytes:
        return json.dumps(_plain(obj), separators=(",", ":")).encode()


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


class ClientError(Exception):
    """A 4xx answer: the request, not the server, is at fault."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # extra response headers (e.g. Accept-Encoding on a 415)


class NonFiniteInput(ClientError):
    """A 400 for NaN or infinite input values; the server still counts them (input monitoring, docs/serving.md)."""

    def __init__(self, message: str, input_name: str, arr: np.ndarray):
        super().__init__(400, message)
        self.input_name = input_name
        self.size = int(arr.size)
        with np.errstate(invalid="ignore"):
            self.count = int(arr.size - np.count_nonzero(np.isfinite(arr)))


_DTYPE_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}
# The binary tensor extension's element encodings: little-endian, whatever the host. BYTES elements have no fixed
# size (each is a 4-byte little-endian length, then the bytes); BF16 is a datatype numpy has no dtype for.
WIRE_DTYPES: dict[str, np.dtype] = {k: np.dtype(v).newbyteorder("<") for k, v in DATATYPES.items()}
ELEMENT_SIZES: dict[str, int] = {**{k: d.itemsize for k, d in WIRE_DTYPES.items()}, "BF16": 2}
HEADER_LENGTH = "inference-header-content-length"  # request and response header of the binary extension
OCTET_STREAM = "application/octet-stream"  # Triton's Content-Type for responses with binary outputs


def v2_datatype(arr: np.ndarray) -> str:
    return _DTYPE_TO_V2.get(arr.dtype, "BYTES")


def parse_json(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ClientError(400, f"malformed JSON body: {str(e).splitlines()[0]}") from None


def to_array(data: Any, spec: TensorSpec, what: str, shape: list[Any] | None = None) -> np.ndarray:
    """Turn a JSON value (nested or flat list) into the model's dtype, checking kind, range, finiteness, shape."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise ClientError(400, f"{what}: data is not a rectangular array of numbers") from None
    want = np.dtype(DATATYPES[spec.datatype])
    kind = arr.dtype.kind
    if want.kind == "b":
        _check_bools(arr, spec, what)
    elif arr.size and (kind not in "iuf" or (kind == "f" and want.kind in "iu" and not _integral(arr, spec, what))):
        expected = "integers" if want.kind in "iu" and kind in "iuf" else "numbers"
        raise ClientError(400, f"{what}: data must be {expected} for datatype {spec.datatype}")
    if want.kind in "iu" and arr.size:
        info = np.iinfo(want)
        if arr.min() < info.min or arr.max() > info.max:
            raise ClientError(400, f"{what}: a value is out of range for datatype {spec.datatype}")
    arr = arr.astype(want, copy=False)
    if want.kind == "f" and not np.isfinite(arr).all():
        raise NonFiniteInput(f"{what}: data contains a non-finite number (NaN or Infinity, or too large for "
                             f"{spec.datatype})", spec.name, arr)
    if shape is not None:
        shape = check_shape_list(shape, what)
        if math.prod(shape) != arr.size:
            raise ClientError(400, f"{what}: shape {shape} needs {math.prod(shape)} values, data has {arr.size}")
        arr = arr.reshape(shape)
    check_shape(arr, spec, what)
    return arr


# The largest integer a JSON number with a fraction or an exponent (a float64) carries exactly: past it, `2e18`
# may not be the id the client meant.
EXACT_FLOAT_INT = 2 ** 53


def _integral(arr: np.ndarray, spec: TensorSpec, what: str) -> bool:
    """Whether floats given for an integer input are whole numbers (`3.0` is 3), exactly representable."""
    if not np.isfinite(arr).all():
        raise NonFiniteInput(f"{what}: data contains a non-finite number; datatype {spec.datatype} takes integers",
                             spec.name, arr)
    if np.abs(arr).max() > EXACT_FLOAT_INT:
        raise ClientError(400, f"{what}: a number written with a fraction or exponent is past 2**53, where it is not "
                               f"exact; write the integers of datatype {spec.datatype} as JSON integers")
    return bool((arr == np.trunc(arr)).all())


def _check_bools(arr: np.ndarray, spec: TensorSpec, what: str) -> None:
    """BOOL takes true/false or the integers 0 and 1."""
    kind = arr.dtype.kind
    if arr.size and (kind not in "biu" or (kind in "iu" and (arr.min() < 0 or arr.max() > 1))):
        raise ClientError(400, f"{what}: data must be booleans (true/false or 0/1) for datatype {spec.datatype}")


def check_shape_list(shape: Any, what: str) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in shape):
        raise ClientError(400, f"{what}: shape must be a list of non-negative integers")
    return shape


def check_shape(arr: np.ndarray, spec: TensorSpec, what: str) -> None:
    want = list(spec.shape)
    if arr.ndim != len(want) or any(w != -1 and w != g for w, g in zip(want, arr.shape, strict=True)):
        raise ClientError(400, f"{what}: shape {list(arr.shape)} does not match the model's {want} (-1: any size)")
    if spec.batched and arr.shape[0] == 0:
        raise ClientError(400, f"{what}: the batch is empty")


def rows_of(feed: dict[str, np.ndarray], specs: tuple[TensorSpec, ...]) -> int:
    """Rows on the batch axis, which all inputs must agree on (1 for models without a batch axis)."""
    if not all(s.batched for s in specs):
        return 1
    rows = {a.shape[0] for a in feed.values()}
    if len(rows) != 1:
        raise ClientError(400, f"inputs disagree on the batch size (first axis): {sorted(rows)}")
    return rows.pop()


def decode_v2(req: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
              raw: memoryview | None = None) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """An inference request body -> (feed, requested output names or None for all).

    `raw` is what follows the JSON header of a binary-extension request (`split_binary`): inputs with
    `parameters.binary_data_size` take their bytes from it, in input order, and it must be used up exactly.
    """
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ClientError(400, 'the body must be a JSON object with an "inputs" list')
    specs = {s.name: s for s in inputs}
    feed: dict[str, np.ndarray] = {}
    cursor = 0
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict):
            raise ClientError(400, f"inputs[{i}]: expected an object with name, shape, datatype, data")
        name = t.get("name")
        if not isinstance(name, str) or name not in specs:  # a JSON object or list here is unhashable
            raise ClientError(400, f"inputs[{i}]: unknown input name {name!r}; the model takes {sorted(specs)}")
        if name in feed:
            raise ClientError(400, f"input {name!r} is given twice")
        size = _binary_size(t, name)
        if size is None:
            feed[name] = _json_input(t, specs[name], name)
        else:
            feed[name] = _binary_input(t, specs[name], name, _take(raw, cursor, size, name))
            cursor += size
    if raw is not None and cursor != len(raw):
        raise ClientError(400, f"{len(raw) - cursor} bytes follow the last binary input (the binary_data_size "
                               "values do not add up to the body after the JSON header)")
    missing = sorted(set(specs) - set(feed))
    if missing:
        raise ClientError(400, f"missing input(s) {missing}")
    return feed, _wanted_outputs(req, outputs)


def _json_input(t: dict[str, Any], spec: TensorSpec, name: str) -> np.ndarray:
    for key in ("shape", "datatype", "data"):
        if key not in t:
            raise ClientError(400, f"input {name!r}: {key!r} is missing")
    _check_datatype(t["datatype"], spec, name)
    return to_array(t["data"], spec, f"input {name!r}", t["shape"])


def _check_datatype(datatype: Any, spec: TensorSpec, name: str) -> None:
    if datatype != spec.datatype:
        raise ClientError(400, f"input {name!r}: datatype {datatype!r} does not match the model's {spec.datatype}")


def _wanted_outputs(req: dict[str, Any], outputs: tuple[TensorSpec, ...]) -> list[str] | None:
    if req.get("outputs") is None:
        return None
    names = {s.name for s in outputs}
    if not isinstance(req["outputs"], list) or not all(isinstance(o, dict) for o in req["outputs"]):
        raise ClientError(400, '"outputs" must be a list of objects with a "name"')
    wanted = [o.get("name") for o in req["outputs"]]
    bad = [n for n in wanted if not isinstance(n, str) or n not in names]
    if bad:
        raise ClientError(400, f"unknown output name(s) {bad}; the model gives {sorted(names)}")
    return wanted


def decode_instances(req: dict[str, Any], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """SageMaker's (TF Serving's row format) `{"instances": [...]}`: one row per instance; an object keyed by
    input name per instance for models with several inputs."""
    inst = req["instances"]
    if not isinstance(inst, list) or not inst:
        raise ClientError(400, '"instances" must be a non-empty list')
    if all(isinstance(x, dict) for x in inst):
        names = {s.name for s in inputs}
        for i, x in enumerate(inst):
            unknown = [k for k in x if k not in names]
            if unknown:
                raise ClientError(400, f"instances[{i}]: unknown input(s) {sorted(unknown)}; the model takes "
                                       f"{sorted(names)}")
        return {s.name: to_array([_field(x, s.name, i) for i, x in enumerate(inst)], s,
                                 f"instances: input {s.name!r}") for s in inputs}
    if len(inputs) != 1:
        raise ClientError(400, f"this model takes several inputs {[s.name for s in inputs]}: send each instance "
                               'as an object keyed by input name, or {"inputs": {name: rows, ...}}')
    return {inputs[0].name: to_array(inst, inputs[0], "instances")}


def decode_columns(cols: dict[str, Any], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """TF Serving's columnar format `{"inputs": {name: rows, ...}}`: each input's whole batch under its name."""
    names = sorted(s.name for s in inputs)
    unknown = sorted(k for k in cols if k not in names)
    missing = sorted(n for n in names if n not in cols)
    if unknown or missing:
        parts = ([f"unknown input(s) {unknown}"] if unknown else []) + ([f"missing input(s) {missing}"]
                                                                        if missing else [])
        raise ClientError(400, f'"inputs": {", ".join(parts)}; the model takes {names}')
    return {s.name: to_array(cols[s.name], s, f"inputs: input {s.name!r}") for s in inputs}


def _field(x: dict[str, Any], name: str, i: int) -> Any:
    if name not in x:
        raise ClientError(400, f"instances[{i}]: input {name!r} is missing")
    return x[name]


# --- the binary tensor extension (HTTP): raw little-endian tensors after a JSON header ---

def split_binary(body: bytes, header: str | None) -> tuple[bytes, memoryview | None]:
    """(JSON header, the bytes after it) from `Inference-Header-Content-Length`; (body, None) without it."""
    if header is None:
        return body, None
    value = header.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise ClientError(400, f"invalid Inference-Header-Content-Length {header[:40]!r}: expected the byte length "
                               "of the JSON header")
    n = int(value)
    if n > len(body):
        raise ClientError(400, f"Inference-Header-Content-Length {n} is larger than the body ({len(body)} bytes)")
    return body[:n], memoryview(body)[n:]


def _binary_size(t: dict[str, Any], name: str) -> int | None:
    params = t.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise ClientError(400, f"input {name!r}: parameters must be an object")
    size = params.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ClientError(400, f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if "data" in t:
        raise ClientError(400, f"input {name!r}: give either data or binary_data_size, not both")
    return size


def _take(raw: memoryview | None, cursor: int, size: int, name: str) -> memoryview:
    if raw is None:
        raise ClientError(400, f"input {name!r}: binary_data_size needs the Inference-Header-Content-Length header "
                               "(the length of the JSON part of the body)")
    if size > len(raw) - cursor:
        raise ClientError(400, f"input {name!r}: binary_data_size {size} runs past the end of the body "
                               f"({len(raw) - cursor} bytes left)")
    return raw[cursor:cursor + size]


def _binary_input(t: dict[str, Any], spec: TensorSpec, name: str, buf: memoryview) -> np.ndarray:
    """An input's raw bytes -> array, without copying them: sizes checked exactly, then dtype, values, shape."""
    what = f"input {name!r}"
    for key in ("shape", "datatype"):
        if key not in t:
            raise ClientError(400, f"{what}: {key!r} is missing")
    shape, datatype = check_shape_list(t["shape"], what), t["datatype"]
    count = math.prod(shape)
    if datatype == "BYTES":  # checks the framing, so a malformed tensor is named as such
        decode_bytes(buf, count, what)
    elif datatype not in ELEMENT_SIZES:
        raise ClientError(400, f"{what}: unknown datatype {datatype!r}")
    elif count * ELEMENT_SIZES[datatype] != len(buf):
        raise ClientError(400, f"{what}: binary_data_size {len(buf)} does not match shape {shape} of {datatype} "
                               f"({count} x {ELEMENT_SIZES[datatype]} = {count * ELEMENT_SIZES[datatype]} bytes)")
    _check_datatype(datatype, spec, name)
    arr = np.frombuffer(buf, dtype=WIRE_DTYPES[datatype]).reshape(shape)
    if datatype == "BOOL" and arr.size and np.frombuffer(buf, dtype=np.uint8).max() > 1:
        raise ClientError(400, f"{what}: BOOL elements must be the bytes 0 or 1")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise NonFiniteInput(f"{what}: data contains a non-finite number (NaN or Infinity)", spec.name, arr)
    check_shape(arr, spec, what)
    return arr


def decode_bytes(buf: memoryview | bytes, count: int, what: str) -> np.ndarray:
    """`count` BYTES elements (each a 4-byte little-endian length, then the bytes) -> an object array of bytes.
    The framing must use `buf` exactly: no element may run past its end, and nothing may follow the last."""
    buf = memoryview(buf)
    n = len(buf)
    if count * 4 > n:  # checked before allocating: a hostile shape cannot make a huge array
        raise ClientError(400, f"{what}: {n} bytes cannot hold {count} BYTES elements (4-byte length each)")
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if n - pos < 4:
            raise ClientError(400, f"{what}: BYTES element {i} is truncated (its 4-byte length is missing)")
        size = int.from_bytes(buf[pos:pos + 4], "little")
        pos += 4
        if size > n - pos:
            raise ClientError(400, f"{what}: BYTES element {i} declares {size} bytes but {n - pos} are left")
        out[i] = bytes(buf[pos:pos + size])
        pos += size
    if pos != n:
        raise ClientError(400, f"{what}: {n - pos} bytes follow the last of its {count} BYTES elements")
    return out


def encode_bytes(arr: np.ndarray) -> bytes:
    """BYTES elements (bytes, or str as UTF-8) in the binary extension's framing, row-major."""
    parts = []
    for e in arr.ravel():
        b = e if isinstance(e, bytes) else str(e).encode()
        parts += [len(b).to_bytes(4, "little"), b]
    return b"".join(parts)


def binary_outputs(req: dict[str, Any], chosen: list[str]) -> set[str]:
    """The outputs to send as raw bytes: an output's `parameters.binary_data`, else the request's
    `parameters.binary_data_output` (false when absent)."""
    params = req.get("parameters")
    default = False
    if params is not None:
        if not isinstance(params, dict):
            raise ClientError(400, "parameters must be an object")
        default = _flag(params, "binary_data_output", "parameters")
    per_output = {}
    for o in req.get("outputs") or ():
        p = o.get("parameters")
        if p is None:
            continue
        if not isinstance(p, dict):
            raise ClientError(400, f"output {o['name']!r}: parameters must be an object")
        if p.get("class_count"):
            raise ClientError(400, f"output {o['name']!r}: class_count (the classification extension) is not "
                                   "supported; ask for the output's values")
        if p.get("binary_data") is not None:
            per_output[o["name"]] = _flag(p, "binary_data", f"output {o['name']!r}")
    return {n for n in chosen if per_output.get(n, default)}


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ClientError(400, f"{where}: {key} must be true or false, got {value!r}")
    return value


def raw_bytes(arr: np.ndarray) -> bytes | memoryview:
    """An output's bytes for the binary extension: little-endian, row-major, copied only when they are not."""
    if arr.dtype.kind in "OSU":
        return encode_bytes(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # a 1-d view: also for empty arrays. numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12
    return memoryview(np.ascontiguousarray(arr).reshape(-1)).cast("B")  # type: ignore[arg-type]
