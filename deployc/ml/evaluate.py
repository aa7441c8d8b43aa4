"""Running models on eval data and measuring them: agreement with the reference, accuracy, size, latency."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import measure


def onnx_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"{path.name}: onnxruntime cannot load it ({exc})") from None


def _feed_dtype(session: Any) -> Any:
    kind = session.get_inputs()[0].type  # e.g. "tensor(float)"
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int64)": np.int64,
            "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(kind, np.float32)


def predict_onnx(path: Path, x: np.ndarray, batch_size: int = 256, threads: int = 1) -> np.ndarray:
    sess = onnx_session(path, threads)
    inp = sess.get_inputs()[0]
    if len(sess.get_inputs()) != 1:
        raise InputError(f"{path.name}: evaluation supports single-input models only")
    x = np.asarray(x, dtype=_feed_dtype(sess))
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch_size
    outs = [sess.run(None, {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)]
    return np.concatenate(outs).astype(np.float32)


def predict_keras(path: Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    from deployc.ml.convert import load_keras

    model = load_keras(path)
    return np.asarray(model.predict(np.asarray(x, dtype=np.float32), batch_size=batch_size, verbose=0),
                      dtype=np.float32)


def predict(path: Path, fmt: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    if fmt == "onnx":
        return predict_onnx(path, x, batch_size)
    if fmt == "keras":
        return predict_keras(path, x, batch_size)
    if fmt == "tflite":
        from deployc.ml.tflite import predict_tflite  # provided by the tflite target

        return np.asarray(predict_tflite(path, x), dtype=np.float32)
    raise InputError(f"cannot run a {fmt} model for evaluation")


def compare(reference: np.ndarray, pred: np.ndarray, y: np.ndarray | None, task: str) -> dict[str, Any]:
    """Figures of `pred` against the reference model's outputs (and labels, when given)."""
    if reference.shape != pred.shape:
        raise InputError(f"output shape {pred.shape} differs from the reference model's {reference.shape}")
    bad = int(pred.size - np.count_nonzero(np.isfinite(pred)))
    out: dict[str, Any] = {"rows": int(len(pred))}
    if bad:  # no figure stands for such outputs: the gates that need one fail as "not measured"
        out["non_finite_outputs"] = bad
        out["max_abs_error"] = None
    else:
        out["max_abs_error"] = round(float(np.max(np.abs(reference - pred))), 8) if len(pred) else 0.0
    if task == "classification" and pred.ndim == 2 and pred.shape[1] > 1:
        top = pred.argmax(axis=1)
        out["agreement"] = None if bad else round(float(np.mean(top == reference.argmax(axis=1))), 6)
        if y is not None:
            out["accuracy"] = None if bad else round(float(np.mean(top == np.asarray(y).reshape(-1))), 6)
    return out


def class_distribution(pred: np.ndarray) -> list[float]:
    """Share of rows predicted as each class (the stability SLO's reference)."""
    counts = np.bincount(pred.argmax(axis=1), minlength=pred.shape[1]).astype(np.float64)
    return [float(c) for c in counts / max(1.0, counts.sum())]


def sizes(path: Path) -> dict[str, int]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    raw = b"".join(p.read_bytes() for p in files)
    return {"size_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def measure_onnx(path: Path, x: np.ndarray, threads: int = 1, batch_size: int = 64,
                 min_seconds: float = 0.5) -> dict[str, Any]:
    """Batch-1 latency p50/p99 (deployc.ml.measure's definition) and throughput at `batch_size` over half of
    `min_seconds`, on this machine."""
    sess = onnx_session(path, threads)
    name = sess.get_inputs()[0].name
    x = np.asarray(x, dtype=_feed_dtype(sess))
    one = x[:1]
    lat = measure.measure_latency(lambda: sess.run(None, {name: one}), min_seconds=min_seconds)
    batch = np.resize(x, (batch_size,) + x.shape[1:]).astype(x.dtype)
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0:
        batch = batch[:fixed]
    rows_s = measure.measure_throughput(lambda: sess.run(None, {name: batch}), len(batch),
                                        min_seconds=min_seconds / 2)
    return {**lat.figures(), "throughput_rows_s": round(rows_s, 1), "threads": threads,
            "batch_size": int(len(batch))}
