"""Feature attributions: why a model gives its answer, one number per input feature (docs/explain.md).

A *feature* is one element of one row of one input, named `input[i]` (i: the flat C-order index in the row); the
features are the inputs in model input order, each input's elements in order. Each method explains the output
column `targets[n]` of row n against one baseline row b. What they cost, in model rows per explained row
(F features, of which k differ from the baseline; a feature at the baseline gets 0 without a model call):

- integrated-gradients: (x - b) times the mean gradient on the `steps` midpoints of the straight path from b to x
  (Sundararajan et al., 2017); attributions sum to f(x) - f(b) up to the discretisation error. With `gradient`
  (exact TensorFlow gradients of the original model, keras_gradient) that is `steps` gradient rows; without it
  (ONNX, TFLite artifacts), central differences: 2 x k x `steps` model rows (at most 2 x F x steps). Float inputs
  only: an integer input (ids) has no path to follow.
- kernel-shap: Shapley values estimated by the shap library's KernelExplainer, the baseline as its only
  background row: about `samples` model rows. Integer inputs keep their dtype (a feature is x's value or b's).
- occlusion: f(x) - f(x with the feature set to b's value): k + 1 model rows (at most F + 1).

Model rows of many explained rows and features go to the model together, in calls of at most CHUNK_ROWS rows.
Every method is deterministic: the same model, rows and settings give the same attributions.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("integrated-gradients", "kernel-shap", "occlusion")
Predict = Callable[[dict[str, np.ndarray]], np.ndarray]  # feed -> prediction output [N, C] (C=1: binary/regression)
Gradient = Callable[[dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]  # (feed, targets[N]) -> per input
# d out[n, targets[n]] / d input, in the input's shape
CHUNK_ROWS = 8192  # most model rows per predict or gradient call ...
CHUNK_VALUES = 1 << 22  # ... and most feature values per call (32 MiB of float64), for inputs of many features
GROUP_TRIPLES = 1 << 20  # numeric integrated gradients: (row, step, feature) derivatives planned at once
GRADIENT_ROWS = 256  # keras_gradient: rows per GradientTape pass (bounds TensorFlow's memory)
SIGNIFICANT = 6  # digits of the numbers summary() records


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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown explanation method {self.method!r} (known: {', '.join(METHODS)})")
        if self.steps < 1 or self.samples < 1:
            raise ValueError(f"steps and samples must be at least 1 (got {self.steps} and {self.samples})")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed {self.seed} is outside 0..2**32-1")


def feature_list(inputs: Sequence[tuple[str, tuple[int, ...]]]) -> list[Feature]:
    """The features of inputs given as (name, per-row shape), in input order, each input's elements in order."""
    return [Feature(f"{name}[{i}]", name, i) for name, shape in inputs for i in range(math.prod(shape))]


def baseline_rows(x: Mapping[str, np.ndarray], how: str | float) -> dict[str, np.ndarray]:
    """One baseline row per input, shape (1, *row), in the input's dtype: zeros; the per-element mean over the rows
    of x (integer and boolean inputs: the most frequent value, the smallest on a tie); or one number (rounded for
    integer inputs)."""
    if isinstance(how, str) and how not in ("zeros", "mean"):
        raise ValueError(f"baseline: expected 'zeros', 'mean' or a number, not {how!r}")
    found = {}
    for name, a in x.items():
        a = np.asarray(a)
        shape, whole = (1, *a.shape[1:]), a.dtype.kind in "iub"
        if how == "zeros":
            row = np.zeros(shape, dtype=a.dtype)
        elif how == "mean":
            if not len(a):
                raise ValueError(f"baseline mean: input {name!r} has no rows")
            row = _modes(a) if whole else a.mean(axis=0, dtype=np.float64, keepdims=True)
        else:
            row = np.full(shape, _whole(float(how), a.dtype, name) if whole else float(how))
        found[name] = np.asarray(row).reshape(shape).astype(a.dtype)
    return found


def _whole(value: float, dtype: np.dtype[Any], name: str) -> int:
    """`value` as an element of the integer or boolean input `name`, or why it cannot be one."""
    lo, hi = (0, 1) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    if not math.isfinite(value) or not lo <= round(value) <= hi:
        raise ValueError(f"baseline {value:g} is no value of input {name!r} ({dtype}: {lo}..{hi})")
    return round(value)


def _modes(a: np.ndarray) -> np.ndarray:
    """The most frequent value of each element over the rows (the smallest of equally frequent ones)."""
    flat = a.reshape(len(a), -1)
    modes = []
    for j in range(flat.shape[1]):
        values, counts = np.unique(flat[:, j], return_counts=True)
        modes.append(values[int(np.argmax(counts))])
    return np.asarray(modes, dtype=a.dtype)


class _Flat:
    """The inputs as one [rows, features] float64 matrix, and back to a feed (each input's shape and dtype)."""

    def __init__(self, x: Mapping[str, np.ndarray]):
        if not x:
            raise ValueError("no inputs to explain")
        self.names = list(x)
        self.shapes = {n: tuple(np.shape(a)[1:]) for n, a in x.items()}
        self.dtypes = {n: np.asarray(a).dtype for n, a in x.items()}
        self.sizes = [math.prod(self.shapes[n]) for n in self.names]
        self.rows = len(next(iter(x.values())))
        if any(len(a) != self.rows for a in x.values()):
            raise ValueError(f"the inputs have different numbers of rows: {({n: len(a) for n, a in x.items()})}")

    def matrix(self, x: Mapping[str, np.ndarray], rows: int, what: str) -> np.ndarray:
        parts = []
        for n, size in zip(self.names, self.sizes, strict=True):
            if n not in x:
                raise ValueError(f"{what} has no input {n!r} (it has: {', '.join(x)})")
            a = np.asarray(x[n])
            if a.size != rows * size:
                raise ValueError(f"{what}: input {n!r} has shape {a.shape}, expected {rows} x {self.shapes[n]}")
            parts.append(a.astype(np.float64).reshape(rows, size))
        return np.concatenate(parts, axis=1)

    def feed(self, m: np.ndarray) -> dict[str, np.ndarray]:
        out, at = {}, 0
        for n, size in zip(self.names, self.sizes, strict=True):
            part = m[:, at:at + size].reshape((len(m), *self.shapes[n]))
            dt = self.dtypes[n]
            out[n] = (np.round(part) if dt.kind in "iub" else part).astype(dt)
            at += size
        return out


def _chunk(features: int) -> int:
    """Model rows per call: CHUNK_ROWS, fewer for inputs of many features."""
    return max(1, min(CHUNK_ROWS, CHUNK_VALUES // max(1, features)))


def _column(predict: Predict, flat: _Flat, m: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """predict(m)[r, targets[r]] for the rows r of the feature matrix m (one call: m is one chunk)."""
    pred = np.asarray(predict(flat.feed(m)), dtype=np.float64)
    if len(pred) != len(m):
        raise ValueError(f"the model answered {len(pred)} rows for {len(m)}")
    pred = pred.reshape(len(m), -1)
    if len(targets) and int(targets.max()) >= pred.shape[1]:
        raise ValueError(f"target column {int(targets.max())} is outside the prediction output's "
                         f"{pred.shape[1]} column(s)")
    return pred[np.arange(len(m)), targets]


def explain(predict: Predict, x: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray],
            settings: Settings, targets: np.ndarray, gradient: Gradient | None = None) -> np.ndarray:
    """Attributions [rows, features] (float64) of each feature to predict(x)[n, targets[n]], `x` in the model's
    input order (the order of the features)."""
    flat = _Flat(x)
    xm = flat.matrix(x, flat.rows, "the rows")
    bm = flat.matrix(baseline, 1, "the baseline")[0]
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    if len(targets) != len(xm) or (len(targets) and int(targets.min()) < 0):
        raise ValueError(f"expected one target column (>= 0) per row: {len(targets)} targets for {len(xm)} rows")
    if settings.method == "integrated-gradients":
        ints = [n for n in flat.names if flat.dtypes[n].kind != "f"]
        if ints:
            raise ValueError(f"integrated-gradients follows the gradient along a path, and input(s) "
                             f"{', '.join(repr(n) for n in ints)} hold {flat.dtypes[ints[0]]} values (ids, "
                             "counts) with no path between them: use kernel-shap or occlusion")
    if not len(xm):
        return np.zeros(xm.shape)
    if settings.method == "integrated-gradients":
        if gradient is not None:
            return _ig_gradient(gradient, flat, xm, bm, targets, settings.steps)
        return _ig_numeric(predict, flat, xm, bm, targets, settings.steps)
    if settings.method == "occlusion":
        return _occlusion(predict, flat, xm, bm, targets)
    return _kernel_shap(predict, flat, xm, bm, targets, settings)


def _alphas(steps: int) -> np.ndarray:
    return (np.arange(steps, dtype=np.float64) + 0.5) / steps  # midpoint rule


def _ig_gradient(gradient: Gradient, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray,
                 steps: int) -> np.ndarray:
    delta, alphas = xm - bm, _alphas(steps)
    row_of = np.repeat(np.arange(len(xm)), steps)  # one gradient row per (row, step)
    step_of = np.tile(np.arange(steps), len(xm))
    total = np.zeros_like(xm)
    per = _chunk(xm.shape[1])
    for a in range(0, len(row_of), per):
        r, s = row_of[a:a + per], step_of[a:a + per]
        grads = gradient(flat.feed(bm + alphas[s, None] * delta[r]), targets[r])
        np.add.at(total, r, flat.matrix(grads, len(r), "the gradient"))
    return delta * total / steps


def _step(delta: np.ndarray, steps: int) -> np.ndarray:
    """Central-difference step per feature: 1e-3 x max(1, |x - b|), and at least half a path step, so that a model
    whose output moves in stairs (quantized activations) is differentiated across stairs, not on one tread."""
    size = np.abs(delta)
    return np.maximum(1e-3 * np.maximum(1.0, size), size / (2 * steps))


def _groups(counts: np.ndarray, limit: int) -> Iterator[np.ndarray]:
    """Consecutive row indices whose counts sum to at most `limit` (a larger row alone)."""
    start, total = 0, 0
    for r, c in enumerate(counts.tolist()):
        if r > start and total + c > limit:
            yield np.arange(start, r)
            start, total = r, 0
        total += c
    if start < len(counts):
        yield np.arange(start, len(counts))


def _ig_numeric(predict: Predict, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray,
                steps: int) -> np.ndarray:
    """Integrated gradients with the gradient of each feature that differs from the baseline by central
    differences at each path point: two model rows per (row, step, feature)."""
    delta, alphas = xm - bm, _alphas(steps)
    active = delta != 0
    total = np.zeros_like(xm)
    pairs = max(1, _chunk(xm.shape[1]) // 2)
    for rows in _groups(active.sum(axis=1) * steps, GROUP_TRIPLES):
        rr, ff = np.nonzero(active[rows])
        row_of, feat_of = np.repeat(rows[rr], steps), np.repeat(ff, steps)
        step_of = np.tile(np.arange(steps), len(rr))
        h_of = _step(delta[row_of, feat_of], steps)
        grad = np.empty(len(row_of))
        for a in range(0, len(row_of), pairs):
            r, f, h = row_of[a:a + pairs], feat_of[a:a + pairs], h_of[a:a + pairs]
            m = np.repeat(bm + alphas[step_of[a:a + pairs], None] * delta[r], 2, axis=0)  # +h, -h rows in turn
            i = np.arange(len(r))
            m[2 * i, f] += h
            m[2 * i + 1, f] -= h
            v = _column(predict, flat, m, np.repeat(targets[r], 2))
            grad[a:a + pairs] = (v[0::2] - v[1::2]) / (2 * h)
        np.add.at(total, (row_of, feat_of), grad)
    return delta * total / steps


def _occlusion(predict: Predict, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray) -> np.ndarray:
    active = xm != bm
    counts = 1 + active.sum(axis=1)  # each row itself, then the row with one differing feature occluded
    row_of = np.repeat(np.arange(len(xm)), counts)
    first = np.cumsum(counts) - counts
    occluded = np.ones(len(row_of), dtype=bool)
    occluded[first] = False
    rr, ff = np.nonzero(active)  # row-major, as the occluded model rows are laid out
    feat_of = np.full(len(row_of), -1)
    feat_of[occluded] = ff
    values = np.empty(len(row_of))
    per = _chunk(xm.shape[1])
    for a in range(0, len(row_of), per):
        r, f = row_of[a:a + per], feat_of[a:a + per]
        m = xm[r]
        i = np.flatnonzero(f >= 0)
        m[i, f[i]] = bm[f[i]]
        values[a:a + per] = _column(predict, flat, m, targets[r])
    out = np.zeros_like(xm)
    out[rr, ff] = values[first][rr] - values[occluded]
    return out


def _kernel_shap(predict: Predict, flat: _Flat, xm: np.ndarray, bm: np.ndarray, targets: np.ndarray,
                 settings: Settings) -> np.ndarray:
    """KernelExplainer per row, one explainer per target column. l1_reg=False: every feature that differs from
    the baseline gets its weighted least-squares value (shap's default keeps 10 features). numpy's global RNG,
    which shap samples coalitions with, is seeded before each row and restored afterwards."""
    with _quiet():
        import shap  # imported here: only this method needs it

    n_features = xm.shape[1]
    out = np.zeros_like(xm)
    state = np.random.get_state()
    try:
        for t in np.unique(targets).tolist():
            def f(m: np.ndarray, t: int = t) -> np.ndarray:
                m = np.asarray(m, dtype=np.float64).reshape(-1, n_features)
                per = _chunk(n_features)
                return np.concatenate([_column(predict, flat, m[a:a + per], np.full(len(m[a:a + per]), t))
                                       for a in range(0, len(m), per)])

            with _quiet():
                explainer = shap.KernelExplainer(f, bm[None, :])
                for r in np.flatnonzero(targets == t):
                    np.random.seed(settings.seed)
                    values = explainer.shap_values(xm[r:r + 1], nsamples=settings.samples, silent=True,
                                                   l1_reg=False)
                    out[r] = np.asarray(values, dtype=np.float64).reshape(n_features)
    finally:
        np.random.set_state(state)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """shap's log lines and warnings (singular regressions, deprecations) kept out of build logs."""
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
    """Exact gradients of the original model's prediction output (column targets[n] of row n) by TensorFlow, for
    integrated gradients of a Keras (`fmt` "keras") or SavedModel ("savedmodel") model. A feed of one array
    feeds the model's one input whatever its name; gradients come back under the feed's names."""
    from deployc.ml import feeds
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    if fmt == "keras":
        names, dtypes, call = _keras_call(model_path, output)
    elif fmt == "savedmodel":
        names, dtypes, call = _savedmodel_call(model_path, output)
    else:
        raise ValueError(f"exact gradients need a Keras or SavedModel model, not {fmt!r}")

    def tape(fed: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        tensors = {k: tf.constant(v) for k, v in fed.items()}
        watched = [k for k, v in fed.items() if v.dtype.kind == "f"]
        with tf.GradientTape() as t:
            for k in watched:
                t.watch(tensors[k])
            out = tf.reshape(call(tensors), (len(targets), -1))
            picked = tf.gather(out, tf.constant(targets), axis=1, batch_dims=1)
        grads = t.gradient(picked, [tensors[k] for k in watched],
                           unconnected_gradients=tf.UnconnectedGradients.ZERO) if watched else []
        found = {k: np.zeros(v.shape) for k, v in fed.items()}
        found.update({k: np.asarray(g, dtype=np.float64) for k, g in zip(watched, grads, strict=True)})
        return found

    def gradient(x: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        keys = list(x)
        fed = feeds.feed(x[keys[0]] if len(keys) == 1 else x, names, dtypes, model_path.name)
        targets = np.asarray(targets).astype(np.int64).reshape(-1)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
        for i in range(0, len(targets), GRADIENT_ROWS):
            got = tape({k: v[i:i + GRADIENT_ROWS] for k, v in fed.items()}, targets[i:i + GRADIENT_ROWS])
            for k in names:
                parts[k].append(got[k])
        grads = {k: np.concatenate(v) if v else np.zeros(fed[k].shape) for k, v in parts.items()}
        if len(keys) == 1:
            return {keys[0]: grads[names[0]]}
        return {k: grads[k] for k in keys if k in grads}

    return gradient


Call = Callable[[dict[str, Any]], Any]  # {input name: tensor} -> the prediction output tensor


def _keras_call(path: Path, output: str | None) -> tuple[list[str], list[Any], Call]:
    """The Keras model as deployc.ml.evaluate runs it (load_keras: safe mode unless the spec opted out; inputs
    by name in the model's structure; the prediction output by name), kept as tensors for the tape."""
    from deployc.ml import feeds
    from deployc.ml.convert import load_keras

    model = load_keras(path)
    names = [str(getattr(t, "name", "")).split(":")[0] for t in model.inputs]
    dtypes = [getattr(t, "dtype", "float32") for t in model.inputs]
    out_names = list(getattr(model, "output_names", None) or [])

    def call(fed: dict[str, Any]) -> Any:
        out = model(feeds.for_keras(model, fed), training=False)
        order = out_names
        if isinstance(out, dict):  # in the model's output order, as evaluate.keras_output picks it
            order = order if sorted(order) == sorted(out) else list(out)
            out = [out[n] for n in order]
        if not isinstance(out, (list, tuple)):
            if output is not None and order and output not in order:
                feeds.output_index(order, output, "the Keras model")  # raises: no output of that name
            return out
        return out[feeds.output_index(order or [str(i) for i in range(len(out))], output, "the Keras model")]

    return names, dtypes, call


def _savedmodel_call(path: Path, output: str | None) -> tuple[list[str], list[Any], Call]:
    """The SavedModel's serving_default signature, as deployc.compiler.ops runs it."""
    import tensorflow as tf

    from deployc.ml import feeds

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    _, kwargs = fn.structured_input_signature
    names = sorted(kwargs)

    def call(fed: dict[str, Any], _keep: Any = loaded) -> Any:  # _keep: the signature's variables live with it
        outs = fn(**fed)
        keys = sorted(outs)
        return outs[keys[feeds.output_index(keys, output, "the SavedModel")]]

    return names, [kwargs[n].dtype.as_numpy_dtype for n in names], call


def _round(v: float) -> float:
    """`v` to SIGNIFICANT digits (a stable JSON number); non-finite values, which JSON cannot hold, as 0."""
    if not math.isfinite(v) or v == 0:
        return 0.0
    return float(f"{v:.{SIGNIFICANT}g}")


def _floats(v: np.ndarray) -> list[float]:
    return [_round(float(a)) for a in v]


def summary(attr: np.ndarray, targets: np.ndarray, features: Sequence[Feature], classes: int,
            examples: Sequence[int]) -> dict[str, Any]:
    """What report.json records of one model's attributions: global importance (mean |attribution|), the mean
    signed attribution over the rows of each target class (the heatmaps), the rows `examples` one by one, and the
    ten most important features (ties: the earlier feature first); numbers to 6 significant digits."""
    attr = np.asarray(attr, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    if attr.ndim != 2 or attr.shape[1] != len(features) or len(targets) != len(attr):
        raise ValueError(f"attributions of shape {attr.shape} for {len(targets)} targets and {len(features)} "
                         "features")
    attr = np.where(np.isfinite(attr), attr, 0.0)
    n, f = attr.shape
    glob = np.abs(attr).mean(axis=0) if n else np.zeros(f)
    per_class = [_floats(attr[targets == c].mean(axis=0) if np.any(targets == c) else np.zeros(f))
                 for c in range(classes)]
    bad = [i for i in examples if not 0 <= i < n]
    if bad:
        raise ValueError(f"example row(s) {bad} outside the {n} explained rows")
    order = np.argsort(-glob, kind="stable")[:10]
    return {"global": _floats(glob), "per_class": per_class,
            "examples": [{"row": int(i), "target": int(targets[i]), "attributions": _floats(attr[i])}
                         for i in examples],
            "top": [{"feature": features[i].name, "importance": _round(float(glob[i]))} for i in order]}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing the mean of their positions (Spearman's convention)."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return np.asarray((first + (counts - 1) / 2.0)[inverse.reshape(-1)], dtype=np.float64)


def _correlation(a: np.ndarray, b: np.ndarray, constant: float) -> float:
    """Pearson correlation of two vectors: `constant` where both are constant, 0 where one is, 0 for non-finite
    values."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if na == 0 or nb == 0:
        return constant if na == nb else 0.0
    return float(np.clip((a * b).sum() / (na * nb), -1.0, 1.0))


def _row_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of one row's attributions; a constant row (a row at the baseline: all zeros) agrees
    only with an equal one."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # (ptp of a non-finite row is NaN: not constant)
        return 1.0 if np.ptp(a) == np.ptp(b) == 0 and np.allclose(a, b, rtol=1e-6, atol=1e-12) else 0.0
    return _correlation(a, b, 0.0)


def agreement(ref: np.ndarray, art: np.ndarray, top_k: int) -> dict[str, float]:
    """How far an artifact's attributions agree with the original's, on the same rows and targets: the Spearman
    correlation of global importance (both constant: 1), the share of the original's top_k features among the
    artifact's, the mean per-row Pearson correlation, and the smallest of the three; non-finite values count as
    disagreement, so every figure is a number in [-1, 1]."""
    ref, art = np.asarray(ref, dtype=np.float64), np.asarray(art, dtype=np.float64)
    if ref.shape != art.shape or ref.ndim != 2:
        raise ValueError(f"attributions of shape {art.shape} against the reference's {ref.shape}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    g_ref, g_art = (np.abs(a).mean(axis=0) if len(a) else np.zeros(a.shape[1]) for a in (ref, art))
    finite = bool(np.all(np.isfinite(g_ref)) and np.all(np.isfinite(g_art)))
    rank = _correlation(_ranks(g_ref), _ranks(g_art), 1.0) if finite else 0.0
    k = max(1, min(top_k, len(g_ref)))
    top_ref, top_art = (set(np.argsort(-g, kind="stable")[:k].tolist()) for g in (g_ref, g_art))
    overlap = (len(top_ref & top_art) / k if len(g_ref) else 1.0) if finite else 0.0
    rows = float(np.mean([_row_correlation(r, a) for r, a in zip(ref, art, strict=True)])) if len(ref) else 1.0
    figures = {"attribution_rank_correlation": round(rank, 6), "attribution_top_k_overlap": round(overlap, 6),
               "attribution_example_correlation": round(rows, 6)}
    figures["attribution_agreement"] = min(figures.values())
    return figures
