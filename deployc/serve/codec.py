"""Request decoding and response encoding for the Open Inference Protocol (KServe v2) and SageMaker formats.

Every client mistake raises `ClientError` with the status and a message that names the tensor and the problem;
the app turns it into `{"error": ...}`. numpy parses `data` lists; orjson (when installed) does the JSON.
"""
from __future__ import annotations

import io
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

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


_DTYPE_TO_V2 = {np.dtype(v): k for k, v in DATATYPES.items()}


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
    if arr.size and (kind not in "biuf" or (kind == "b") != (want.kind == "b")):
        expected = "booleans" if want.kind == "b" else "numbers"
        raise ClientError(400, f"{what}: data must be {expected} for datatype {spec.datatype}")
    if want.kind in "iu" and kind == "f":
        raise ClientError(400, f"{what}: data must be integers for datatype {spec.datatype}")
    if want.kind in "iu" and arr.size:
        info = np.iinfo(want)
        if arr.min() < info.min or arr.max() > info.max:
            raise ClientError(400, f"{what}: a value is out of range for datatype {spec.datatype}")
    arr = arr.astype(want, copy=False)
    if want.kind == "f" and not np.isfinite(arr).all():
        raise ClientError(400, f"{what}: data contains a non-finite number (NaN or Infinity, or too large for "
                               f"{spec.datatype})")
    if shape is not None:
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise ClientError(400, f"{what}: shape must be a list of non-negative integers")
        if math.prod(shape) != arr.size:
            raise ClientError(400, f"{what}: shape {shape} needs {math.prod(shape)} values, data has {arr.size}")
        arr = arr.reshape(shape)
    check_shape(arr, spec, what)
    return arr


def check_shape(arr: np.ndarray, spec: TensorSpec, what: str) -> None:
    want = list(spec.shape)
    if arr.ndim != len(want) or any(w != -1 and w != g for w, g in zip(want, arr.shape)):
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


def decode_v2(req: Any, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
              ) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """An inference request body -> (feed, requested output names or None for all)."""
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise ClientError(400, 'the body must be a JSON object with an "inputs" list')
    specs = {s.name: s for s in inputs}
    feed: dict[str, np.ndarray] = {}
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict):
            raise ClientError(400, f"inputs[{i}]: expected an object with name, shape, datatype, data")
        name = t.get("name")
        if not isinstance(name, str) or name not in specs:  # a JSON object or list here is unhashable
            raise ClientError(400, f"inputs[{i}]: unknown input name {name!r}; the model takes {sorted(specs)}")
        if name in feed:
            raise ClientError(400, f"input {name!r} is given twice")
        for key in ("shape", "datatype", "data"):
            if key not in t:
                raise ClientError(400, f"input {name!r}: {key!r} is missing")
        if t["datatype"] != specs[name].datatype:
            raise ClientError(400, f"input {name!r}: datatype {t['datatype']!r} does not match the model's "
                                   f"{specs[name].datatype}")
        feed[name] = to_array(t["data"], specs[name], f"input {name!r}", t["shape"])
    missing = sorted(set(specs) - set(feed))
    if missing:
        raise ClientError(400, f"missing input(s) {missing}")
    wanted = None
    if req.get("outputs") is not None:
        names = {s.name for s in outputs}
        if not isinstance(req["outputs"], list) or not all(isinstance(o, dict) for o in req["outputs"]):
            raise ClientError(400, '"outputs" must be a list of objects with a "name"')
        wanted = [o.get("name") for o in req["outputs"]]
        bad = [n for n in wanted if not isinstance(n, str) or n not in names]
        if bad:
            raise ClientError(400, f"unknown output name(s) {bad}; the model gives {sorted(names)}")
    return feed, wanted


def decode_instances(req: dict[str, Any], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """SageMaker's `{"instances": [...]}`: one row per instance; a dict per instance for multi-input models."""
    inst = req["instances"]
    if not isinstance(inst, list) or not inst:
        raise ClientError(400, '"instances" must be a non-empty list')
    if all(isinstance(x, dict) for x in inst):
        return {s.name: to_array([_field(x, s.name, i) for i, x in enumerate(inst)], s, f"instances.{s.name}")
                for s in inputs}
    if len(inputs) != 1:
        raise ClientError(400, f"this model takes several inputs {[s.name for s in inputs]}: send each instance "
                               "as an object keyed by input name")
    return {inputs[0].name: to_array(inst, inputs[0], "instances")}


def _field(x: dict[str, Any], name: str, i: int) -> Any:
    if name not in x:
        raise ClientError(400, f"instances[{i}]: input {name!r} is missing")
    return x[name]


def decode_npy(body: bytes, inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    if len(inputs) != 1:
        raise ClientError(400, "application/x-npy bodies are only accepted for single-input models")
    spec = inputs[0]
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception:  # numpy raises ValueError/EOFError/OSError for bad files
        raise ClientError(400, "the body is not a valid .npy array") from None
    if not isinstance(arr, np.ndarray):
        raise ClientError(400, "the body is not a single .npy array")
    want = np.dtype(DATATYPES[spec.datatype])
    if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, want, casting="same_kind"):
        raise ClientError(400, f"npy dtype {arr.dtype} cannot be used for datatype {spec.datatype}")
    return {spec.name: to_array(arr, spec, "npy body")}


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
