"""Feature attributions: why a model gives its answer, one number per input feature (docs/explain.md).

A *feature* is one element of one row of one input, named `input[i]` (i: the flat C-order index in the row). Each
method explains the output column `targets[n]` of row n against a baseline row:

- integrated-gradients: (x - b) times the mean gradient on `steps` midpoints of the straight path from b to x
  (Sundararajan et al., 2017). Attributions sum to f(x) - f(b) up to the discretisation error. With `gradient`
  (exact TensorFlow gradients of the original model) that is `steps` gradient rows per row; without it (ONNX,
  TFLite artifacts), central differences: 2 x (features that differ from the baseline) x steps model rows.
- kernel-shap: Shapley values estimated by the shap library's KernelExplainer, the baseline as its background;
  `samples` model rows per row. Integer inputs (ids) stay integers.
- occlusion: f(x) - f(x with one feature set to the baseline); features + 1 model rows per row.

Every method is deterministic: the same model, rows and settings give the same attributions.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("integrated-gradients", "kernel-shap", "occlusion")
Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]  # feed -> prediction output [N, C]
Gradient = Callable[[Mapping[str, np.ndarray], np.ndarray], Mapping[str, np.ndarray]]
CHUNK_ROWS = 8192  # model rows per call
SIGNIFICANT = 6


@dataclass(frozen=True)
class Feature:
    name: str
    input: str
    index: int


@dataclass(frozen=True)
class Settings:
    method: str
    steps: int = 32
    samples: int = 256
    seed: int = 0


def feature_list(inputs: Sequence[tuple[str, tuple[int, ...]]]) -> list[Feature]:
    """The features of inputs given as (name, per-row shape), in input order, each input's elements in order."""
    return [Feature(f"{name}[{i}]", name, i) for name, shape in inputs for i in range(int(np.prod(shape)))]


def baseline_rows(x: Mapping[str, np.ndarray], how: str | float) -> dict[str, np.ndarray]:
    """One baseline row per input, shape (1, *row), in the input's dtype: zeros, the per-element mean (integer
    inputs: the most frequent value of each element), or one number."""
    found = {}
    for name, a in x.items():
        a = np.asarray(a)
        if how == "zeros":
            row = np.zeros((1, *a.shape[1:]), dtype=a.dtype)
        elif how == "mean":
            if a.dtype.kind in "iub":
                flat = a.reshape(len(a), -1)
                modes = [_mode(flat[:, j]) for j in range(flat.shape[1])]
                row = np.asarray(modes, dtype=a.dtype).reshape((1, *a.shape[1:]))
            else:
                row = a.astype(np.float64).mean(axis=0, keepdims=True).astype(a.dtype)
        else:
            value = float(how)
            row = np.full((1, *a.shape[1:]), round(value) if a.dtype.kind in "iub" else value, dtype=a.dtype)
        found[name] = row
    return found


def _mode(col: np.ndarray) -> Any:
    values, counts = np.unique(col, return_counts=True)
    return values[int(np.argmax(counts))]  # the smallest of the most frequent values


class _Flat:
    """The inputs as one [N, F] float64 matrix of features, and back."""

    def __init__(self, x: Mapping[str, np.ndarray]):
        self.names = list(x)
        self.shapes = {n: tuple(np.asarray(a).shape[1:]) for n, a in x.items()}
        self.dtypes = {n: np.asarray(a).dtype for n, a in x.items()}
        self.sizes = [int(np.prod(self.shapes[n])) for n in self.names]

    def flat(self, x: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = len(next(iter(x.values())))
        return np.concatenate([np.asarray(x[n], dtype=np.float64).reshape(rows, -1) for n in self.names], axis=1)

    def feed(self, m: np.ndarray) -> dict[str, np.ndarray]:
        out, at = {}, 0
        for n, size in zip(self.names, self.sizes, strict=True):
            part = m[:, at:at + size].reshape((len(m), *self.shapes[n]))
            dt = self.dtypes[n]
            out[n] = (np.round(part) if dt.kind in "iub" else part).astype(dt)
            at += size
        return out


def _column(predict: Predict, flat: _Flat, m: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """predict(m)[r, targets[r]] for every row r of the feature matrix m, in chunks."""
    out = np.empty(len(m), dtype=np.float64)
    for i in range(0, len(m), CHUNK_ROWS):
        pred = np.asarray(predict(flat.feed(m[i:i + CHUNK_ROWS])), dtype=np.float64)
        pred = pred.reshape(len(pred), -1)
        out[i:i + CHUNK_ROWS] = pred[np.arange(len(pred)), targets[i:i + CHUNK_ROWS]]
    return out


def explain(predict: Predict, x: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray],
            settings: Settings, targets: np.ndarray, gradient: Gradient | None = None) -> np.ndarray:
    """Attributions [rows, features] (float64) of each feature to predict(x)[n, targets[n]]."""
    if settings.method not in METHODS:
        raise ValueError(f"unknown explanation method {settings.method!r} (known: {', '.join(METHODS)})")
    flat = _Flat(x)
    xm, bm = flat.flat(x), flat.flat(baseline)[0]
    targets = np.asarray(targets, dtype=np.int64)
    if settings.method == "integrated-gradients":
        ints = [n for n in flat.names if flat.dtypes[n].kind not in "f"]
        if ints:
            raise ValueError(f"integrated-gradients follows gradients, and input(s) {', '.join(ints)} hold "
                             "integers: use kernel-shap or occlusion")
        if gradient is not None:
            return _ig_exact(gradient, flat, xm, bm, targets, settings.steps)
        return _ig_numeric(predict, flat, xm, bm, targets, settings.steps)
    if settings.method == "occlusion":
        return _occlusion(predict, flat, xm, bm, targets)
    return _kernel_shap(predict, flat, xm, bm, targets, settings)


def _alphas(steps: int) -> np.ndarray:
    return (np.arange(steps, dtype=np.float64) + 0.5) / steps  # midpoint rule


def _ig_exact(gradient: Gradient, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray,
              steps: int) -> np.ndarray:
    alphas = _alphas(steps)
    out = np.zeros_like(xm)
    per = max(1, CHUNK_ROWS // steps)
    for i in range(0, len(xm), per):
        rows = xm[i:i + per]
        path = bm + alphas[None, :, None] * (rows - bm)[:, None, :]  # [r, steps, F]
        path = path.reshape(-1, xm.shape[1])
        t = np.repeat(targets[i:i + per], steps)
        grads = gradient(flat.feed(path), t)
        g = flat.flat({n: np.asarray(grads[n]) for n in flat.names}).reshape(len(rows), steps, -1)
        out[i:i + per] = (rows - bm) * g.mean(axis=1)
    return out


def _ig_numeric(predict: Predict, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray,
                steps: int) -> np.ndarray:
    """Central differences along the path: step h = |x - b| / (2 steps), half a path step, so a model whose
    output moves in small stairs (quantized inputs) is differentiated across the stairs, not on one tread."""
    alphas = _alphas(steps)
    out = np.zeros_like(xm)
    for r in range(len(xm)):
        delta = xm[r] - bm
        active = np.flatnonzero(delta != 0)  # a feature at the baseline has attribution 0
        if not active.size:
            continue
        h = np.maximum(np.abs(delta[active]) / (2 * steps), 1e-6)
        path = bm + alphas[:, None] * delta[None, :]  # [steps, F]
        k = len(active)
        m = np.repeat(path[:, None, :], 2 * k, axis=1)  # [steps, 2k, F]
        idx = np.arange(k)
        m[:, idx, active] += h
        m[:, k + idx, active] -= h
        vals = _column(predict, flat, m.reshape(-1, xm.shape[1]), np.full(steps * 2 * k, targets[r]))
        vals = vals.reshape(steps, 2 * k)
        grad = (vals[:, :k] - vals[:, k:]) / (2 * h)
        out[r, active] = delta[active] * grad.mean(axis=0)
    return out


def _occlusion(predict: Predict, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray) -> np.ndarray:
    n, f = xm.shape
    out = np.zeros_like(xm)
    per = max(1, CHUNK_ROWS // (f + 1))
    for i in range(0, n, per):
        rows = xm[i:i + per]
        m = np.repeat(rows[:, None, :], f + 1, axis=1)  # [r, F + 1, F]: the row, then one feature occluded each
        j = np.arange(f)
        m[:, 1 + j, j] = bm[j]
        vals = _column(predict, flat, m.reshape(-1, f), np.repeat(targets[i:i + per], f + 1)).reshape(len(rows), -1)
        out[i:i + per] = vals[:, :1] - vals[:, 1:]
    return out


def _kernel_shap(predict: Predict, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray,
                 settings: Settings) -> np.ndarray:
    import shap  # imported here: only this method needs it

    out = np.zeros_like(xm)
    for t in np.unique(targets):
        rows = np.flatnonzero(targets == t)

        def f(m: np.ndarray, t: int = int(t)) -> np.ndarray:
            return _column(predict, flat, np.asarray(m, dtype=np.float64), np.full(len(m), t))

        with _quiet():
            explainer = shap.KernelExplainer(f, bm[None, :])
            for r in rows:
                np.random.seed(settings.seed)  # KernelExplainer samples coalitions with numpy's global RNG
                values = explainer.shap_values(xm[r:r + 1], nsamples=settings.samples, silent=True)
                out[r] = np.asarray(values, dtype=np.float64).reshape(-1)[:xm.shape[1]]
    return out


@contextlib.contextmanager
def _quiet() -> Any:
    log = logging.getLogger("shap")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def keras_gradient(model_path: Path, fmt: str, output: str | None) -> Gradient:
    """Exact gradients of the original model's prediction output, column targets[n] of row n, by TensorFlow."""
    from deployc.ml import feeds
    from deployc.ml.convert import load_keras, quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    if fmt == "savedmodel":
        fn = tf.saved_model.load(str(model_path)).signatures["serving_default"]
        _, kwargs = fn.structured_input_signature
        names = sorted(kwargs)

        def call(fed: dict[str, Any]) -> Any:
            outs = fn(**fed)
            keys = sorted(outs)
            return outs[keys[feeds.output_index(keys, output, "the SavedModel")]]
        dtypes = [kwargs[n].dtype.as_numpy_dtype for n in names]
    else:
        from deployc.ml.evaluate import keras_output

        model = load_keras(model_path)
        names = [str(getattr(t, "name", "")).split(":")[0] for t in model.inputs]
        dtypes = [getattr(t, "dtype", "float32") for t in model.inputs]

        def call(fed: dict[str, Any]) -> Any:
            out = model(feeds.for_keras(model, fed), training=False)
            if isinstance(out, dict):
                order = list(getattr(model, "output_names", None) or out)
                out = [out[n] for n in order]
            if isinstance(out, (list, tuple)):
                order = list(getattr(model, "output_names", None) or [str(i) for i in range(len(out))])
                out = out[feeds.output_index(order, output, "the Keras model")]
            return out
        del keras_output

    def gradient(x: Mapping[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        fed_np = feeds.feed(dict(x) if len(x) > 1 else next(iter(x.values())), names, dtypes, "the model")
        fed = {n: tf.convert_to_tensor(a) for n, a in fed_np.items()}
        with tf.GradientTape() as tape:
            for v in fed.values():
                tape.watch(v)
            out = tf.reshape(call(fed), (len(targets), -1))
            picked = tf.gather(out, tf.constant(targets, dtype=tf.int64), axis=1, batch_dims=1)
        grads = tape.gradient(picked, list(fed.values()))
        return {n: (np.zeros(fed_np[n].shape) if g is None else g.numpy()).astype(np.float64)
                for n, g in zip(fed, grads, strict=True)}

    return gradient


def _round(v: float) -> float:
    if v == 0 or not math.isfinite(v):
        return 0.0 if not math.isfinite(v) else float(v)
    return float(f"{v:.{SIGNIFICANT}g}")


def summary(attr: np.ndarray, targets: np.ndarray, features: Sequence[Feature], classes: int,
            examples: Sequence[int]) -> dict[str, Any]:
    """Global importance (mean |attribution|), mean signed attribution per predicted class, the recorded rows,
    and the ten most important features; numbers to 6 significant digits."""
    attr = np.asarray(attr, dtype=np.float64)
    glob = np.abs(attr).mean(axis=0) if len(attr) else np.zeros(len(features))
    per_class = []
    for c in range(classes):
        rows = attr[targets == c]
        per_class.append([_round(v) for v in (rows.mean(axis=0) if len(rows) else np.zeros(len(features)))])
    order = np.argsort(-glob, kind="stable")[:10]
    return {"global": [_round(v) for v in glob], "per_class": per_class,
            "examples": [{"row": int(i), "target": int(targets[i]), "attributions": [_round(v) for v in attr[i]]}
                         for i in examples if i < len(attr)],
            "top": [{"feature": features[i].name, "importance": _round(glob[i])} for i in order]}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(len(v), dtype=np.float64)
    values, inverse = np.unique(v, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return np.asarray((sums / counts)[inverse], dtype=np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0  # two constant vectors agree; a constant and a varying one do not
    return float(np.clip((a * b).sum() / (na * nb), -1.0, 1.0))


def agreement(ref: np.ndarray, art: np.ndarray, top_k: int) -> dict[str, float]:
    """How far the artifact's attributions agree with the original's (docs/explain.md): the rank correlation and
    the top-k overlap of global importance, the mean per-row correlation, and the smallest of the three."""
    ref, art = np.asarray(ref, dtype=np.float64), np.asarray(art, dtype=np.float64)
    if ref.shape != art.shape:
        raise ValueError(f"attributions of shape {art.shape} against the reference's {ref.shape}")
    g_ref, g_art = np.abs(ref).mean(axis=0), np.abs(art).mean(axis=0)
    rank = _pearson(_ranks(g_ref), _ranks(g_art))
    k = max(1, min(top_k, len(g_ref)))
    top_ref = set(np.argsort(-g_ref, kind="stable")[:k].tolist())
    top_art = set(np.argsort(-g_art, kind="stable")[:k].tolist())
    overlap = len(top_ref & top_art) / k
    rows = float(np.mean([_pearson(r, a) for r, a in zip(ref, art, strict=True)])) if len(ref) else 1.0
    figures = {"attribution_rank_correlation": round(rank, 6), "attribution_top_k_overlap": round(overlap, 6),
               "attribution_example_correlation": round(rows, 6)}
    figures["attribution_agreement"] = min(figures.values())
    return figures
