"""Running models on eval data and measuring them: agreement with the reference, accuracy, size, latency."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import InputError
from deployc.ml import feeds, measure


def model_session(path: Path, threads: int = 1) -> Any:
    """A session over an artifact with onnxruntime's interface (`get_inputs`, `get_outputs`, `run`): an ONNX file
    runs in onnxruntime, an OpenVINO artifact (a folder holding model.xml) in OpenVINO (deployc.ml.openvino)."""
    from deployc.ml import openvino

    if openvino.is_artifact(path):
        return openvino.OpenVINOSession(path, threads)
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


_ORT_DTYPES = {"tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_,
               "tensor(int16)": np.int16, "tensor(uint16)": np.uint16}


def session_feed(session: Any, x: feeds.Inputs, what: str = "the model") -> dict[str, np.ndarray]:
    """The feed of an onnxruntime session: each input by name, cast to the dtype the model declares."""
    ins = session.get_inputs()
    return feeds.feed(x, [i.name for i in ins], [_ORT_DTYPES.get(i.type, np.float32) for i in ins], what)


def predict_onnx(path: Path, x: feeds.Inputs, batch_size: int = 256, threads: int = 1,
                 output: str | None = None) -> np.ndarray:
    """The prediction output of an ONNX model on every row of `x`, in batches."""
    sess = model_session(path, threads)
    feed = session_feed(sess, x, path.name)
    names = [o.name for o in sess.get_outputs()]
    chosen = [names[feeds.output_index(names, output, path.name)]]
    first = sess.get_inputs()[0].shape[0]
    step = first if isinstance(first, int) and first > 0 else batch_size
    n = feeds.rows(feed)
    outs = [sess.run(chosen, feeds.take(feed, slice(i, i + step)))[0] for i in range(0, n, step)]  # type: ignore[arg-type]
    return np.concatenate(outs).astype(np.float32)


def keras_feed(model: Any, x: feeds.Inputs) -> Any:
    """What `model.predict` takes: the one array, or the arrays by input name (cast to each input's dtype)."""
    names = [str(getattr(t, "name", "")).split(":")[0] for t in model.inputs]
    dtypes = [getattr(t, "dtype", "float32") for t in model.inputs]
    return feeds.for_keras(model, feeds.feed(x, names, dtypes, "the Keras model"))


def keras_output(model: Any, out: Any, output: str | None) -> np.ndarray:
    """The prediction output among what a Keras model returned (one array, a list in output order, a dict)."""
    names = list(getattr(model, "output_names", None) or [])
    if isinstance(out, dict):  # in the model's output order, as the ONNX and TFLite artifacts have them
        names = names if sorted(names) == sorted(out) else list(out)
        out = [out[n] for n in names]
    if not isinstance(out, (list, tuple)):
        if output is not None and names and output not in names:
            feeds.output_index(names, output, "the Keras model")
        return np.asarray(out, dtype=np.float32)
    return np.asarray(out[feeds.output_index(names or [str(i) for i in range(len(out))], output, "the Keras model")],
                      dtype=np.float32)


def predict_keras(path: Path, x: feeds.Inputs, batch_size: int = 256, output: str | None = None) -> np.ndarray:
    from deployc.ml.convert import load_keras

    model = load_keras(path)
    return keras_output(model, model.predict(keras_feed(model, x), batch_size=batch_size, verbose=0), output)


def predict_savedmodel(path: Path, x: Any, output: str | None) -> Any:
    """The prediction output of a SavedModel's serving signature (the source of its ONNX conversion)."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    _, kwargs = fn.structured_input_signature
    names = sorted(kwargs)
    feed = feeds.feed(x, names, [kwargs[n].dtype.as_numpy_dtype for n in names], "the SavedModel")
    outs = fn(**{n: tf.constant(a) for n, a in feed.items()})
    keys = sorted(outs)
    return np.asarray(outs[keys[feeds.output_index(keys, output, "the SavedModel")]], dtype=np.float32)


def predict(path: Path, fmt: str, x: feeds.Inputs, batch_size: int = 256, output: str | None = None) -> np.ndarray:
    if fmt == "onnx":
        return predict_onnx(path, x, batch_size, output=output)
    if fmt == "keras":
        return predict_keras(path, x, batch_size, output=output)
    if fmt == "tflite":
        from deployc.ml.tflite import predict_tflite  # provided by the tflite target

        return np.asarray(predict_tflite(path, x, output=output), dtype=np.float32)
    raise InputError(f"cannot run a {fmt} model for evaluation")


def compare(reference: np.ndarray, pred: np.ndarray, y: np.ndarray | None, task: str,
            threshold: float = 0.5) -> dict[str, Any]:
    """Figures of `pred` against the reference model's outputs (and labels, when given), per the task."""
    if reference.shape != pred.shape:
        raise InputError(f"output shape {pred.shape} differs from the reference model's {reference.shape}")
    bad = int(pred.size - np.count_nonzero(np.isfinite(pred)))
    out: dict[str, Any] = {"rows": int(len(pred))}
    if bad:  # no figure stands for such outputs: the gates that need one fail as "not measured"
        out["non_finite_outputs"] = bad
        out["max_abs_error"] = out["relative_error"] = None
    else:
        diff = (reference - pred).astype(np.float64)
        out["max_abs_error"] = round(float(np.max(np.abs(diff))), 8) if len(pred) else 0.0
        norm = float(np.linalg.norm(reference.astype(np.float64)))
        out["relative_error"] = round(float(np.linalg.norm(diff)) / norm, 8) if norm > 0 else 0.0
    classes = predicted_classes(pred, task, threshold)
    if classes is not None:
        ref_classes = predicted_classes(reference, task, threshold)
        out["agreement"] = None if bad else round(float(np.mean(classes == ref_classes)), 6)
        if y is not None:
            truth = _labels_shaped(y, classes.shape, task) if task == "multilabel" else np.asarray(y).reshape(-1)
            if truth.shape != classes.shape:
                raise InputError(f"data.eval.y: {truth.size} labels for {classes.shape[0]} rows")
            out["accuracy"] = None if bad else round(float(np.mean(classes == truth)), 6)
            if not bad and task in ("classification", "binary"):
                out.update(confusion(truth, classes, pred.shape[1] if task == "classification" else 2))
    if y is not None and task == "binary" and classes is not None:  # one sigmoid column: P(class 1)
        out["auc"] = None if bad else roc_auc(np.asarray(y).reshape(-1), pred.reshape(-1))
    if y is not None and task == "regression":
        out["r2"] = None if bad else r2_score(_labels_shaped(y, pred.shape, "regression"), pred)
    return out


def confusion(truth: np.ndarray, classes: np.ndarray, n: int) -> dict[str, Any]:
    """{"confusion": counts[true class][predicted class]}, or {} where a label is not a class index below n."""
    t = np.asarray(truth)
    if t.size == 0 or not np.all(np.isfinite(t)) or not np.array_equal(t, np.round(t)) or t.min() < 0 \
            or t.max() >= n:
        return {}
    counts = np.bincount(t.astype(np.int64) * n + classes.astype(np.int64), minlength=n * n).reshape(n, n)
    return {"confusion": counts.tolist()}


def _labels_shaped(y: np.ndarray, shape: tuple[int, ...], task: str) -> np.ndarray:
    """data.eval.y in the prediction output's shape, or an error naming the field."""
    y = np.asarray(y, dtype=np.float64)
    if y.size != int(np.prod(shape)):
        raise InputError(f"data.eval.y: the labels have shape {y.shape}, and the model's prediction output "
                         f"{shape}: for model.task {task}, one label per output value")
    return y.reshape(shape)


def predicted_classes(pred: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray | None:
    """The predicted class of each row (a 0/1 decision per label for multilabel); None where the task or the
    output's shape has no classes."""
    if task == "classification" and pred.ndim == 2 and pred.shape[1] > 1:
        return pred.argmax(axis=1)
    if task == "binary" and pred.ndim in (1, 2) and (pred.ndim == 1 or pred.shape[1] == 1):
        return (pred.reshape(-1) >= threshold).astype(np.int64)
    if task == "multilabel" and pred.ndim == 2:
        return (pred >= threshold).astype(np.int64)
    return None


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of `score` for the 0/1 labels `y` (Mann-Whitney, ties counted half); None with one class only."""
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return round(float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 6)


def r2_score(y: np.ndarray, pred: np.ndarray) -> float | None:
    """Coefficient of determination of `pred` for the targets `y` (None when y is constant)."""
    total = float(np.sum((y - y.mean(axis=0)) ** 2))
    if total == 0:
        return None
    return round(1.0 - float(np.sum((y - pred) ** 2)) / total, 6)


def class_distribution(pred: np.ndarray, task: str = "classification", threshold: float = 0.5) -> list[float]:
    """Share of rows predicted as each class (the stability SLO's reference)."""
    classes = predicted_classes(pred, task, threshold)
    n = pred.shape[1] if task == "classification" else 2
    counts = np.bincount(np.asarray(classes).reshape(-1), minlength=n).astype(np.float64)
    return [float(c) for c in counts / max(1.0, counts.sum())]


def sizes(path: Path) -> dict[str, int]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    raw = b"".join(p.read_bytes() for p in files)
    return {"size_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def measure_onnx(path: Path, x: feeds.Inputs, threads: int = 1, batch_size: int = 64,
                 min_seconds: float = 0.5) -> dict[str, Any]:
    """Batch-1 latency p50/p99 (deployc.ml.measure's definition) and throughput at `batch_size` over half of
    `min_seconds`, on this machine."""
    sess = model_session(path, threads)
    feed = session_feed(sess, x, path.name)
    one = feeds.take(feed, slice(0, 1))
    lat = measure.measure_latency(lambda: sess.run(None, one), min_seconds=min_seconds)  # type: ignore[arg-type]
    fixed = sess.get_inputs()[0].shape[0]
    n = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
    batch = feeds.resize(feed, min(n, batch_size))
    rows_s = measure.measure_throughput(lambda: sess.run(None, batch), feeds.rows(batch),  # type: ignore[arg-type]
                                        min_seconds=min_seconds / 2)
    return {**lat.figures(), "throughput_rows_s": round(rows_s, 1), "threads": threads,
            "batch_size": int(feeds.rows(batch))}
