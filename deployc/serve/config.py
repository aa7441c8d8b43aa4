"""Reads and checks a `local/serving.json` bundle before anything binds a port.

Every problem becomes an `InputError` naming the file and the field, so `deployc serve` fails with one line
instead of a traceback. The result is a frozen, defaults-filled `ServingConfig` the server reads.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deployc import conventions as C
from deployc.errors import InputError
from deployc.serve.capture import CaptureConfig, parse_capture
from deployc.serve.inputs import ExplainConfig, InputMonitor, parse_explain, parse_input_monitor
from deployc.serve.limits import Limits

# serving.json's `task`: what the prediction output holds. "other" is what bundles without a task said.
TASKS = ("classification", "binary", "multilabel", "regression", "other")
DEFAULT_THRESHOLD = 0.5

# Open Inference Protocol datatype -> numpy dtype name (BYTES is not served: models here take numbers).
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a free axis

    @property
    def batched(self) -> bool:
        """True when the first axis is the (free) batch axis, the precondition for dynamic batching."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ServingConfig:
    root: Path  # the folder holding serving.json
    name: str
    version: str
    task: str
    model_path: Path
    model_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] | None
    host: str
    port: int
    workers: int
    max_body_bytes: int
    auth_token_env: str | None
    intra_op_threads: int
    inter_op_threads: int
    batching: bool
    max_batch_size: int
    max_delay_ms: float
    latency_buckets: tuple[float, ...]
    batch_invariant: bool | None = None  # the build's measurement (batching.batch_invariant.invariant); None: unknown
    grpc_port: int | None = None  # the Open Inference Protocol gRPC port; None: off, 0: a free one
    limits: Limits = Limits()  # timeouts, connections, in-flight body bytes (deployc/serve/limits.py)
    prediction: str = ""  # the output the predicted-class counter watches and labels.txt names; "": the first
    threshold: float = DEFAULT_THRESHOLD  # binary: a row is class 1 when its probability is at least this
    explain: ExplainConfig | None = None  # the explain route's method and limits; None: the route answers 404
    input_monitor: InputMonitor | None = None  # input ranges and watched features; None: no input counters
    capture: CaptureConfig | None = None  # masked data capture (deployc/serve/capture.py); None: off
    runtime: str = "onnxruntime"  # what runs the model: onnxruntime (model.onnx) or openvino (model.xml + .bin)

    @property
    def config_path(self) -> Path:
        return self.root / "serving.json"

    @property
    def prediction_index(self) -> int:
        """The prediction output's position in `outputs` (and in every list of outputs the model returns)."""
        names = [t.name for t in self.outputs]
        return names.index(self.prediction) if self.prediction in names else 0


def find_serving_json(bundle: str | Path) -> Path:
    """Accept `build/<name>/`, its `local/` folder, or the serving.json file itself."""
    p = Path(bundle)
    candidates = [p] if p.is_file() else [p / C.LOCAL_CONFIG, p / "serving.json"]
    for c in candidates:
        if c.is_file():
            return c
    if not p.exists():
        raise InputError(f"{p}: no such bundle folder")
    raise InputError(f"{p}: no {C.LOCAL_CONFIG} or serving.json found (is this a `deployc build` output?)")


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """d[key] checked against `kind`; `where` is "file:" for top-level keys, "file: section" otherwise."""
    at = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"
    if key not in d or d[key] is None:
        if default is ...:
            raise InputError(f"{at}: missing")
        return default
    value = d[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise InputError(f"{at}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InputError(f"{at}: expected {names}, got {value!r}")
    return value


def _tensors(raw: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: expected a non-empty list of tensors")
    specs = []
    for i, t in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(t, dict):
            raise InputError(f"{w}: expected an object with name, datatype, shape")
        dt = _get(t, "datatype", str, w)
        if dt not in DATATYPES:
            raise InputError(f"{w}.datatype: {dt!r} is not one of {', '.join(DATATYPES)}")
        shape = _get(t, "shape", list, w)
        if not all(isinstance(s, int) and not isinstance(s, bool) and (s == -1 or s > 0) for s in shape):
            raise InputError(f"{w}.shape: axes must be positive integers or -1, got {shape!r}")
        specs.append(TensorSpec(_get(t, "name", str, w), dt, tuple(shape)))
    return tuple(specs)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(root: Path, rel: str, where: str) -> Path:
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InputError(f"{where}: {rel!r} leaves the bundle folder")
    return target


def _limits(raw: dict[str, Any], where: str) -> Limits:
    """serving.json's `limits` (every key optional; the defaults are Limits')."""
    known = Limits.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected {', '.join(known)}")
    values = {k: _get(raw, k, int if f.type == "int" else (int, float), where, getattr(Limits, k))
              for k, f in known.items()}
    kwargs: dict[str, Any] = {k: v if known[k].type == "int" else float(v) for k, v in values.items()}
    return Limits(**kwargs)


def _read_object(path: Path) -> dict[str, Any]:
    """serving.json as a JSON object of the format version this server reads."""
    w = str(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{w}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{w}: expected a JSON object")
    fv = raw.get("format_version")
    if fv != C.SERVING_CONFIG_VERSION:
        raise InputError(f"{w}: format_version {fv!r} is not supported (expected {C.SERVING_CONFIG_VERSION})")
    return raw


def _bundle_file(entry: dict[str, Any], root: Path, w: str, field: str, what: str, verify_sha256: bool
                 ) -> tuple[Path, str]:
    """The file `entry` (serving.json's `field`: path and sha256) names inside the bundle, and its sha256,
    checked against the file when `verify_sha256`."""
    path = _inside(root, _get(entry, "path", str, f"{w}: {field}"), f"{w}: {field}.path")
    if not path.is_file():
        raise InputError(f"{w}: {field}.path: {path} does not exist")
    sha = _get(entry, "sha256", str, f"{w}: {field}").lower()
    if verify_sha256 and _sha256(path) != sha:
        raise InputError(f"{path}: sha256 does not match serving.json (the {what} changed after the build)")
    return path, sha


def _model_file(model: dict[str, Any], root: Path, w: str, verify_sha256: bool) -> tuple[Path, str]:
    """The model file inside the bundle and its sha256, checked against the file when `verify_sha256`."""
    return _bundle_file(model, root, w, "model", "model", verify_sha256)


RUNTIMES = ("onnxruntime", "openvino")


def _runtime(model: dict[str, Any], root: Path, w: str, verify_sha256: bool) -> str:
    """model.runtime (default onnxruntime); for openvino, the weights file beside model.xml is checked (OpenVINO
    reads it from there) against its sha256."""
    runtime = _get(model, "runtime", str, f"{w}: model", "onnxruntime")
    if runtime not in RUNTIMES:
        raise InputError(f"{w}: model.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        return runtime
    from importlib.util import find_spec

    from deployc.extras import MissingExtra

    if find_spec("openvino") is None:  # the serving image of such a build installs deployc[serve,openvino]
        raise MissingExtra(f"{w}: model.runtime openvino", "openvino", "openvino")
    weights = _get(model, "weights", dict, f"{w}: model")
    model_xml = _inside(root, _get(model, "path", str, f"{w}: model"), f"{w}: model.path")
    path, _ = _bundle_file(weights, root, w, "model.weights", "weights", verify_sha256)
    if path != model_xml.with_suffix(".bin"):
        raise InputError(f"{w}: model.weights.path: OpenVINO reads the weights beside the graph, "
                         f"{model_xml.with_suffix('.bin').name}; got {weights['path']!r}")
    return runtime


def _labels(raw: dict[str, Any], root: Path, w: str) -> tuple[str, ...] | None:
    """The class labels from the file `labels` names (one a line, blank lines skipped); None without one."""
    if raw.get("labels") is None:
        return None
    labels_path = _inside(root, _get(raw, "labels", str, f"{w}:"), f"{w}: labels")
    if not labels_path.is_file():
        raise InputError(f"{w}: labels: {labels_path} does not exist")
    return tuple(x.strip() for x in labels_path.read_text(encoding="utf-8").splitlines() if x.strip())


def _latency_buckets(metrics: dict[str, Any], w: str) -> tuple[float, ...]:
    buckets = _get(metrics, "latency_buckets", list, f"{w}: metrics", list(C.DEFAULT_LATENCY_BUCKETS))
    if not buckets or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0
                              and math.isfinite(b) for b in buckets):
        raise InputError(f"{w}: metrics.latency_buckets: expected positive numbers, got {buckets!r}")
    return tuple(sorted(float(b) for b in buckets))


def _task(raw: dict[str, Any], outputs: tuple[TensorSpec, ...], labels: tuple[str, ...] | None, w: str
          ) -> tuple[str, str, float]:
    """(task, prediction output name, threshold), checked against the outputs and labels.txt."""
    task = _get(raw, "task", str, f"{w}:", "other")
    if task not in TASKS:
        raise InputError(f"{w}: task: {task!r} is not one of {', '.join(TASKS)}")
    names = [t.name for t in outputs]
    prediction = _get(raw, "prediction", str, f"{w}:", names[0])
    if prediction not in names:
        raise InputError(f"{w}: prediction: {prediction!r} is not an output of the model (model.outputs: "
                         f"{', '.join(names)})")
    threshold = float(_get(raw, "threshold", (int, float), f"{w}:", DEFAULT_THRESHOLD))
    if not 0.0 < threshold < 1.0:  # also refuses NaN
        raise InputError(f"{w}: threshold: expected a probability strictly between 0 and 1, got {threshold!r}")
    if task == "binary":
        shape = outputs[names.index(prediction)].shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, -1))):
            raise InputError(f"{w}: prediction: task binary needs one probability a row (shape [-1] or [-1, 1]); "
                             f"{prediction!r} has shape {list(shape)}")
        if labels is not None and len(labels) != 2:
            raise InputError(f"{w}: labels: task binary names 2 classes (class 0, then class 1), the labels file "
                             f"has {len(labels)}")
    return task, prediction, threshold


def _check_ranges(cfg: ServingConfig, w: str) -> None:
    if cfg.max_batch_size < 1 or cfg.max_delay_ms < 0 or cfg.max_body_bytes < 1 or cfg.workers < 1:
        raise InputError(f"{w}: batching.max_batch_size, server.workers and server.max_body_bytes must be >= 1, "
                         "batching.max_delay_ms >= 0")
    if cfg.grpc_port is not None and not 0 <= cfg.grpc_port <= 65535:
        raise InputError(f"{w}: server.grpc_port must be 0..65535 (or null: no gRPC), got {cfg.grpc_port}")
    bad = cfg.limits.problems(cfg.max_body_bytes)
    if bad:
        raise InputError(f"{w}: limits.{bad[0]}")


def load_config(bundle: str | Path, verify_sha256: bool = True) -> ServingConfig:
    """Parse, check and resolve serving.json; verify the model file's sha256 against the config."""
    path = find_serving_json(bundle)
    w = str(path)
    raw = _read_object(path)
    root = path.parent
    model = _get(raw, "model", dict, f"{w}:")
    model_path, sha = _model_file(model, root, w, verify_sha256)
    runtime_name = _runtime(model, root, w, verify_sha256)
    labels = _labels(raw, root, w)
    server = _get(raw, "server", dict, f"{w}:", {})
    runtime = _get(raw, "runtime", dict, f"{w}:", {})
    batching = _get(raw, "batching", dict, f"{w}:", {})
    metrics = _get(raw, "metrics", dict, f"{w}:", {})
    ws, wr, wb = f"{w}: server", f"{w}: runtime", f"{w}: batching"
    latency_buckets = _latency_buckets(metrics, w)
    outputs = _tensors(model.get("outputs"), f"{w}: model.outputs")
    task, prediction, threshold = _task(raw, outputs, labels, w)
    cfg = ServingConfig(
        root=root, name=_get(raw, "name", str, f"{w}:"), version=str(_get(raw, "version", (str, int), f"{w}:")),
        task=task, prediction=prediction, threshold=threshold, model_path=model_path, model_sha256=sha,
        inputs=_tensors(model.get("inputs"), f"{w}: model.inputs"), outputs=outputs, labels=labels,
        host=_get(server, "host", str, ws, "127.0.0.1"), port=_get(server, "port", int, ws, 8080),
        workers=_get(server, "workers", int, ws, 1), max_body_bytes=_get(server, "max_body_bytes", int, ws, 8 << 20),
        auth_token_env=_get(server, "auth_token_env", str, ws, None),
        intra_op_threads=_get(runtime, "intra_op_threads", int, wr, 1),
        inter_op_threads=_get(runtime, "inter_op_threads", int, wr, 1),
        batching=_get(batching, "enabled", bool, wb, True),
        max_batch_size=_get(batching, "max_batch_size", int, wb, 32),
        max_delay_ms=float(_get(batching, "max_delay_ms", (int, float), wb, 2.0)),
        batch_invariant=_get(_get(batching, "batch_invariant", dict, wb, {}), "invariant", bool,
                             f"{wb}.batch_invariant", None),
        latency_buckets=latency_buckets,
        grpc_port=_get(server, "grpc_port", int, ws, None),
        limits=_limits(_get(raw, "limits", dict, f"{w}:", {}), f"{w}: limits"),
        runtime=runtime_name,
    )
    _check_ranges(cfg, w)
    shapes = {t.name: t.shape for t in cfg.inputs}
    extra: dict[str, Any] = {}
    if raw.get("input_monitor") is not None:
        extra["input_monitor"] = parse_input_monitor(raw["input_monitor"], shapes, f"{w}: input_monitor")
    if raw.get("explain") is not None:
        extra["explain"] = parse_explain(raw["explain"], shapes, {t.name: DATATYPES[t.datatype] for t in cfg.inputs},
                                         root, f"{w}: explain")
    if raw.get("capture") is not None:
        extra["capture"] = parse_capture(raw["capture"], [t.name for t in cfg.inputs], [t.name for t in cfg.outputs],
                                         f"{w}: capture")
    return replace(cfg, **extra) if extra else cfg
