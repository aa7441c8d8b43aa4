"""Step `profile:inputs`: what input monitoring compares live traffic with, from data.eval.

For each numeric model input, the finite range of its values (the server counts values outside it); for the
watched features (the input-drift SLO's `features`, else the explanation's most important ones, else those of
largest variance), bin edges at data.eval's quantiles and the share of rows in each bin. serving.json carries the
result as `input_monitor`; the input-drift SLO's rules carry the shares (docs/monitoring.md).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from deployc.compiler.steps import EXPLAIN, PROFILE, StepContext
from deployc.errors import SpecFieldError
from deployc.ml import feeds

__all__ = ["PROFILE", "run"]


def run(ctx: StepContext, model_step: str, features: list[str] | None, top_k: int, bins: int,
        where: tuple[str | int, ...]) -> dict[str, Any]:
    """`features`: the names the spec gives (at `where`), or None to choose `top_k` of them."""
    from deployc.compiler.explaining import model_path, onnx_predictor
    from deployc.ml.explain import feature_list

    _, names, dtypes = onnx_predictor(model_path(ctx.deps[model_step]), ctx.resolved.prediction)
    x, _ = ctx.data("eval")
    feed = feeds.feed(x, names, dtypes, "the model")
    rows = feeds.rows(feed)
    flat = {n: np.asarray(a).reshape(rows, -1) for n, a in feed.items()}
    ranges: dict[str, Any] = {}
    for n, a in flat.items():
        if a.dtype.kind not in "iuf" or not a.size:
            continue
        good = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        if good.size:
            ranges[n] = {"min": float(good.min()), "max": float(good.max())}
    all_features = feature_list([(n, tuple(feed[n].shape[1:])) for n in names])
    by_name = {f.name: f for f in all_features}
    if features is not None:
        unknown = [f for f in features if f not in by_name]
        if unknown:
            shown = ", ".join(f.name for f in all_features[:3])
            raise SpecFieldError(where, f"no feature named {unknown[0]!r}: features are `input[i]`, i the flat index "
                                 f"of an element of one row (e.g. {shown})")
        chosen = [by_name[f] for f in features]
    else:
        chosen = [all_features[i] for i in _ranked(ctx, flat, all_features)[:top_k]]
    watched = []
    for f in chosen:
        col = flat[f.input][:, f.index].astype(np.float64)
        col = col[np.isfinite(col)]
        if not col.size:
            continue
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1]))
        edges = edges[edges > col.min()]  # no bin below data.eval's smallest value (out of range is counted apart)
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        watched.append({"name": f.name, "input": f.input, "index": f.index, "edges": [float(e) for e in edges],
                        "reference": [float(c) for c in counts / counts.sum()]})
    return {"input_monitor": {"inputs": ranges, "features": watched}, "rows": rows}


def _ranked(ctx: StepContext, flat: dict[str, np.ndarray], features: list[Any]) -> list[int]:
    """Feature positions, most important first: by the explanation's global importance where there is one, else
    by variance on data.eval (ties: in feature order)."""
    if EXPLAIN in ctx.deps:
        importance = np.asarray(ctx.deps[EXPLAIN].result["summary"]["global"], dtype=np.float64)
    else:
        importance = np.array([float(np.nanvar(flat[f.input][:, f.index].astype(np.float64))) for f in features])
    return [int(i) for i in np.argsort(-importance, kind="stable")]

