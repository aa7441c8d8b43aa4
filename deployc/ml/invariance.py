"""Batch invariance: does a row's output depend on the other rows it is batched with?

Dynamic batching merges concurrent requests into one `session.run`. That is only safe when a row's answer does
not depend on its companions. An int8-dynamic model breaks this: `DynamicQuantizeLinear` computes its activation
scale over the whole batch, so one client's large values coarsen every other client's quantization. Fixed-scale
models (fp32, float16, int8-static) differ between batch sizes only by floating-point reduction order (~1e-7).

`measure` runs each eval row alone (batch 1), then inside mixed batches: with other eval rows (consecutive and
shuffled) and with hostile rows (other eval rows scaled by +-1000, extreme but finite), and compares. A model is
invariant when the largest difference is within `RELATIVE_TOLERANCE` of the output scale and no top-1 class
changes. Where nothing can be run (no eval data), `unmeasured` lets the graph decide: a model holding a
batch-dependent operator is not invariant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# max abs diff / max |output| at batch 1. Measured on the digits model: fp32 0, float16 2.4e-7, int8-static 0;
# int8-dynamic 6e-3 next to ordinary rows, 0.9 next to hostile ones. 1e-5 leaves fp32 reduction order room.
RELATIVE_TOLERANCE = 1e-5
HOSTILE_SCALE = 1000.0
MIX_BATCH = 16  # rows per mixed batch (half eval rows, half hostile rows in the hostile runs)
MAX_ROWS = 512  # eval rows measured at most (the first ones), to keep the step in the seconds
SEED = 0
BATCH_DEPENDENT_OPS = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM")


def scan(model: Path) -> list[str]:
    """Operators in the graph (subgraphs included) whose result depends on the whole batch, sorted. An OpenVINO
    artifact has none: NNCF's int8 is static (FakeQuantize with calibrated ranges)."""
    import onnx

    from deployc.ml import openvino

    if openvino.is_artifact(model):
        return []
    found: set[str] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            if node.op_type in BATCH_DEPENDENT_OPS:
                found.add(node.op_type)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(onnx.load(str(model), load_external_data=False).graph)
    return sorted(found)


def unmeasured(model: Path, why: str) -> dict[str, Any]:
    """The graph's verdict where nothing can be run: invariant unless it holds a batch-dependent operator."""
    ops = scan(model)
    return {"measured": False, "not_measured": why, "batchable": None, "invariant": not ops,
            "batch_dependent_ops": ops, "rows": 0, "max_abs_diff": None, "relative_diff": None,
            "changed_predictions": None, "relative_tolerance": RELATIVE_TOLERANCE}


def _run(sess: Any, feed: dict[str, Any]) -> list[Any]:
    import numpy as np

    return [np.asarray(o, dtype=np.float64) for o in sess.run(None, feed)]


def _hostile(x: Any) -> Any:
    """Other rows scaled by +-HOSTILE_SCALE, clipped to stay finite in the input's dtype."""
    import numpy as np

    lim = float(np.finfo(x.dtype).max) / 16
    return np.clip(np.concatenate([x, -x]).astype(np.float64) * HOSTILE_SCALE, -lim, lim).astype(x.dtype)


def _companions(a: Any) -> Any:
    """Hostile companion rows of one input: float inputs scaled by +-HOSTILE_SCALE; integer inputs (ids) cannot
    be scaled, so their rows come forward and reversed (as many rows either way)."""
    import numpy as np

    return _hostile(a) if np.issubdtype(a.dtype, np.floating) else np.concatenate([a, a[::-1]])


def _batches(x: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """(companions, row indices, batch): the indexed eval rows come first in each batch, companions after."""
    import numpy as np

    from deployc.ml import feeds

    n = feeds.rows(x)
    perm = np.random.default_rng(SEED).permutation(n)
    out = [("eval", np.arange(i, min(i + MIX_BATCH, n)), None) for i in range(0, n, MIX_BATCH)]
    out += [("eval", perm[i:i + MIX_BATCH], None) for i in range(0, n, MIX_BATCH)]
    half = MIX_BATCH // 2
    hostile: list[tuple[str, Any, Any]] = []
    for i in range(0, n, half):
        idx = np.arange(i, min(i + half, n))
        others = np.roll(np.arange(n), -(i + half))[: max(1, half // 2)]
        hostile.append(("hostile", idx, {k: _companions(a[others]) for k, a in x.items()}))
    return [(kind, idx, {k: a[idx] if extra is None else np.concatenate([a[idx], extra[k]]) for k, a in x.items()})
            for kind, idx, extra in out + hostile]


def _compare(alone: list[Any], idx: Any, outs: list[Any], classify: bool, acc: dict[str, Any]) -> None:
    import numpy as np

    for k, (ref, got) in enumerate(zip(alone, outs, strict=True)):
        part = got[: len(idx)]
        bad = ~np.isfinite(part)
        acc["non_finite"] += int(bad.sum())
        diff = np.abs(np.where(bad, 0.0, part) - ref[idx])
        acc["max_abs_diff"] = max(acc["max_abs_diff"], float(diff.max()) if diff.size else 0.0)
        if k == 0 and classify:
            acc["changed"].update(int(i) for i in idx[part.argmax(axis=1) != ref[idx].argmax(axis=1)])


def _figures(acc: dict[str, Any], scale: float, classify: bool) -> dict[str, Any]:
    """JSON figures of one accumulator, rounded so that they read (and cache) the same on every rebuild."""
    return {"max_abs_diff": float(f"{acc['max_abs_diff']:.4g}"),
            "relative_diff": float(f"{acc['max_abs_diff'] / scale:.4g}"),
            "changed_predictions": len(acc["changed"]) if classify else None,
            "non_finite_outputs": acc["non_finite"]}


def measure(model: Path, x: Any, task: str) -> dict[str, Any]:
    """Figures of the model's batch (in)variance on eval rows `x` (one array, or {input name: array}).

    `changed_predictions` counts the eval rows whose top-1 class changed in at least one mixed batch (None when
    the task is not classification); `by_companions` splits the figures by what the rows were batched with.
    """
    import numpy as np

    from deployc.ml import feeds
    from deployc.ml.evaluate import model_session, session_feed

    sess = model_session(model)
    result: dict[str, Any] = {"measured": True, "batchable": True, "batch_dependent_ops": scan(model),
                              "relative_tolerance": RELATIVE_TOLERANCE, "hostile_scale": HOSTILE_SCALE}
    if any(not (isinstance(i.shape[0], str) or i.shape[0] in (None, -1)) for i in sess.get_inputs()):
        return {**result, "measured": False, "batchable": False}
    feed = feeds.take(session_feed(sess, x, model.name), slice(0, MAX_ROWS))
    assert isinstance(feed, dict)
    n = feeds.rows(feed)
    singles = [_run(sess, {k: a[i:i + 1] for k, a in feed.items()}) for i in range(n)]
    alone = [np.concatenate([s[k] for s in singles]) for k in range(len(singles[0]))]
    classify = task == "classification" and alone[0].ndim == 2 and alone[0].shape[1] > 1
    accs: dict[str, dict[str, Any]] = {kind: {"max_abs_diff": 0.0, "non_finite": 0, "changed": set()}
                                       for kind in ("eval", "hostile")}
    batches = _batches(feed)
    for kind, idx, batch in batches:
        outs = _run(sess, batch)
        if any(o.shape[:1] != (feeds.rows(batch),) for o in outs):  # an output that does not follow the batch axis
            return {**result, "measured": False, "batchable": False}
        _compare(alone, idx, outs, classify, accs[kind])
    scale = max((float(np.max(np.abs(a))) for a in alone if a.size), default=0.0) or 1.0
    total = {"max_abs_diff": max(a["max_abs_diff"] for a in accs.values()),
             "non_finite": sum(a["non_finite"] for a in accs.values()),
             "changed": set().union(*(a["changed"] for a in accs.values()))}
    figures = _figures(total, scale, classify)
    invariant = (total["max_abs_diff"] / scale <= RELATIVE_TOLERANCE and not total["changed"]
                 and not total["non_finite"])
    return {**result, "invariant": invariant, "rows": int(n), "mixed_batches": len(batches),
            "output_scale": float(f"{scale:.6g}"), **figures,
            "by_companions": {kind: _figures(a, scale, classify) for kind, a in accs.items()}}
