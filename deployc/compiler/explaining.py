"""The build's explanations: the original model's on a sample of data.eval (step `explain:reference`), and each
artifact's on the same rows, compared with it (the `min_attribution_agreement` gate). The methods are in
deployc.ml.explain; this module feeds them the models and the rows. docs/explain.md describes both."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deployc.compiler.steps import EXPLAIN, REFERENCE, SOURCE, StepContext
from deployc.ml import feeds

__all__ = ["EXPLAIN", "artifact", "by_position", "onnx_predictor", "reference"]  # EXPLAIN's folder: attributions.npy,
# targets.npy (the explained output column of each row) and baseline.npz
Predict = Callable[[Mapping[str, np.ndarray]], np.ndarray]
CHUNK = 4096  # rows per model call


def model_path(out: Any) -> Path:
    """The model file a model-producing step left in its folder (as deployc.compiler.ops reads it)."""
    return Path(out.dir) / str(out.result["model"])


def settings(ctx: StepContext) -> Any:
    from deployc.ml.explain import Settings

    ex = ctx.resolved.explain
    assert ex is not None  # the step is planned only with `explain:`
    return Settings(method=ex.method, steps=ex.steps, samples=ex.samples, seed=0)


def sample(ctx: StepContext, names: list[str], dtypes: list[Any], what: str) -> dict[str, np.ndarray]:
    """The explained rows of data.eval, by the model's input names, cast to its input dtypes."""
    ex = ctx.resolved.explain
    assert ex is not None
    x, _ = ctx.data("eval")
    return feeds.feed(feeds.take(x, slice(0, ex.sample)), names, dtypes, what)


def targets_of(pred: np.ndarray, task: str) -> np.ndarray:
    """The output column each row's attributions explain: the predicted class, or the one column."""
    if task == "classification" and pred.ndim == 2 and pred.shape[1] > 1:
        return np.asarray(pred.argmax(axis=1), dtype=np.int64)
    return np.zeros(len(pred), dtype=np.int64)


def onnx_predictor(path: Path, output: str | None) -> tuple[Predict, list[str], list[Any]]:
    """A prediction function over one onnxruntime session (input names and dtypes with it)."""
    from deployc.ml.evaluate import _ORT_DTYPES, model_session

    sess = model_session(path, 1)
    ins = sess.get_inputs()
    names = [i.name for i in ins]
    dtypes = [_ORT_DTYPES.get(i.type, np.float32) for i in ins]
    outs = [o.name for o in sess.get_outputs()]
    chosen = [outs[feeds.output_index(outs, output, path.name)]]
    first = ins[0].shape[0]
    fixed = first if isinstance(first, int) and first > 0 else None

    def predict(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        n = feeds.rows(feed)
        step = fixed or CHUNK
        parts = [sess.run(chosen, {k: v[i:i + step] for k, v in feed.items()})[0] for i in range(0, n, step)]
        return _two_d(np.concatenate(parts))

    return predict, names, dtypes


def by_position(run: Callable[[Any], Any], names: list[str]) -> Predict:
    """A Predict over a runtime that takes one bare array for a model of one input (whatever it names it), and
    the arrays by name otherwise (`run`: feed -> prediction output)."""
    def predict(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        x = next(iter(feed.values())) if len(names) == 1 else dict(feed)
        n = feeds.rows(feed)
        return _two_d(np.concatenate([np.asarray(run(feeds.take(x, slice(i, i + CHUNK)))) for i in range(0, n, CHUNK)]))
    return predict


def _two_d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def _keras_predictor(path: Path, fmt: str, output: str | None, single: bool) -> Predict:
    """The original Keras or SavedModel model as a prediction function (loaded once)."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    if fmt == "savedmodel":
        from deployc.ml.evaluate import predict_savedmodel

        def run_saved(feed: Mapping[str, np.ndarray]) -> np.ndarray:
            x = next(iter(feed.values())) if single else dict(feed)
            n = feeds.rows(feed)
            return _two_d(np.concatenate([predict_savedmodel(path, feeds.take(x, slice(i, i + CHUNK)), output)
                                          for i in range(0, n, CHUNK)]))
        return run_saved

    from deployc.ml.convert import load_keras
    from deployc.ml.evaluate import keras_feed, keras_output

    model = load_keras(path)

    def run(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        x = next(iter(feed.values())) if single else dict(feed)
        n = feeds.rows(feed)
        parts = []
        for i in range(0, n, CHUNK):
            part = feeds.take(x, slice(i, i + CHUNK))
            parts.append(keras_output(model, model(keras_feed(model, part), training=False), output))
        return _two_d(np.concatenate(parts))
    return run


def reference(ctx: StepContext, onnx_step: str) -> dict[str, Any]:
    """Step `explain:reference`: the original model's attributions on the sample (exact TensorFlow gradients for
    integrated gradients of a Keras or SavedModel model), the baseline, and their summary."""
    from deployc.ml import explain as E

    r, ex = ctx.resolved, ctx.resolved.explain
    assert ex is not None
    _, names, dtypes = onnx_predictor(model_path(ctx.deps[onnx_step]), r.prediction)
    feed = sample(ctx, names, dtypes, "the model")
    ref_pred = np.load(Path(ctx.deps[REFERENCE].dir) / "predictions.npy", allow_pickle=False)[:ex.sample]
    targets = targets_of(ref_pred, r.task)
    baseline = E.baseline_rows(feed, ex.baseline)
    src = ctx.deps[SOURCE]
    fmt, path = src.result["format"], model_path(src)
    gradient = None
    if fmt == "onnx":
        predict, _, _ = onnx_predictor(path, r.prediction)
    else:
        predict = _keras_predictor(path, fmt, r.prediction, single=len(names) == 1)
        if ex.method == "integrated-gradients":
            gradient = _gradient_by_name(E.keras_gradient(path, fmt, r.prediction), names)
    ctx.log(f"explaining the original model ({ex.method}, {len(targets)} rows)")
    try:
        attr = E.explain(predict, feed, baseline, settings(ctx), targets, gradient)
    except ValueError as exc:
        from deployc.errors import SpecFieldError

        raise SpecFieldError(("explain", "method"), str(exc)) from None
    np.save(ctx.out_dir / "attributions.npy", attr, allow_pickle=False)
    np.save(ctx.out_dir / "targets.npy", targets, allow_pickle=False)
    (ctx.out_dir / "baseline.npz").write_bytes(npz_bytes(baseline))
    features = E.feature_list([(n, tuple(feed[n].shape[1:])) for n in names])
    classes = int(ref_pred.shape[1]) if r.task == "classification" and ref_pred.ndim == 2 else 1
    examples = [i for i in ex.examples if i < len(targets)]
    return {"features": [f.name for f in features], "classes": classes, "rows": len(targets),
            "inputs": [{"name": n, "dtype": np.dtype(d).name, "shape": list(feed[n].shape[1:])}
                       for n, d in zip(names, dtypes, strict=True)],
            "summary": E.summary(attr, targets, features, classes, examples)}


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What np.savez writes (one stored .npy member per array), with fixed member times: the same bytes on every
    build, as the bundle's files must be."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(a), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def _gradient_by_name(inner: Any, names: list[str]) -> Any:
    """A Keras model of one input may name it otherwise than its ONNX conversion: feed it by position."""
    if len(names) != 1:
        return inner

    def grad(feed: Mapping[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        got = inner({feeds.ANY_INPUT: feed[names[0]]}, targets)
        return {names[0]: next(iter(got.values()))}
    return grad


def artifact(ctx: StepContext, predict: Predict, names: list[str] | None = None,
             dtypes: list[Any] | None = None) -> dict[str, Any]:
    """An artifact's attributions on the reference's rows, their summary, and their agreement with the reference.
    `predict` takes the inputs by `names` (default: the reference's, from its ONNX conversion)."""
    from deployc.ml import explain as E

    ex = ctx.resolved.explain
    assert ex is not None
    if names is None or dtypes is None:
        inputs = ctx.deps[EXPLAIN].result["inputs"]
        names, dtypes = [t["name"] for t in inputs], [np.dtype(t["dtype"]) for t in inputs]
    out = Path(ctx.deps[EXPLAIN].dir)
    ref_attr = np.load(out / "attributions.npy", allow_pickle=False)
    targets = np.load(out / "targets.npy", allow_pickle=False)
    with np.load(out / "baseline.npz", allow_pickle=False) as z:
        baseline = {n: z[n].astype(d) for n, d in zip(names, dtypes, strict=True)}
    feed = sample(ctx, names, dtypes, "the artifact")
    attr = E.explain(predict, feed, baseline, settings(ctx), targets)
    res = ctx.deps[EXPLAIN].result
    features = E.feature_list([(n, tuple(feed[n].shape[1:])) for n in names])
    examples = [i for i in ex.examples if i < len(targets)]
    return {"figures": E.agreement(ref_attr, attr, ex.top_k),
            "summary": E.summary(attr, targets, features, int(res["classes"]), examples)}
