"""Optimization benchmark: each pass/mode on three local models, against fp32 ONNX Runtime in the same run.

Rows: quantize (int8-dynamic, int8-static, float16, auto) on the MLP, CNN and Transformer; prune (unstructured
and structured 50%) and distill (width 0.5) on the MLP and CNN. The `tflite` target has its own sibling,
bench/tflite.py.

    PYTHONPATH=. python bench/optimize.py [--only cnn,mlp:int8-dynamic] [--min-seconds 1] [--json out.json]

Per row: size ratio vs the fp32 ONNX file, batch-1 p50 speed-up vs fp32 (1 intra-op thread; fp32 and the
candidate are timed in alternating rounds and the median of each is compared, so background load hits both),
top-1 agreement with fp32 and accuracy drop in points. A row is one function registered with @row(model, name);
another pass adds its rows the same way. Targets are printed beside the figures, never asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.models import MODELS, BenchModel, load  # noqa: E402

# builds the candidate model; returns its path, or (path, extra columns such as a note)
RowFn = Callable[[BenchModel, Path], "Path | tuple[Path, dict[str, Any]]"]
AUTO_GATES = {"min_agreement": 0.99, "max_accuracy_drop": 0.01}  # what the auto rows require
ROWS: list[tuple[str, str, RowFn]] = []
# (model, row name) -> {figure: (op, bound)}; checked and printed, not asserted
TARGETS: dict[tuple[str, str], dict[str, tuple[str, float]]] = {
    ("mlp", "quantize:int8-dynamic"): {"size_ratio": ("<=", 0.27), "speedup": (">=", 2.0),
                                       "agreement": (">=", 0.99)},
    ("transformer", "quantize:int8-dynamic"): {"size_ratio": ("<=", 0.27), "speedup": (">=", 2.0),
                                               "agreement": (">=", 0.99)},
    ("cnn", "quantize:int8-static"): {"speedup": (">=", 2.0), "accuracy_drop_pts": ("<=", 1.0)},
    **{(m, "quantize:float16"): {"size_ratio": ("<=", 0.52)} for m in MODELS},
}


def row(model: str, name: str) -> Callable[[RowFn], RowFn]:
    def register(fn: RowFn) -> RowFn:
        ROWS.append((model, name, fn))
        return fn

    return register


def _quantize(mode: str) -> RowFn:
    def build(m: BenchModel, out: Path) -> Path | tuple[Path, dict[str, Any]]:
        from deployc.passes.base import PassInput
        from deployc.passes.quantize import QuantizePass
        from deployc.schema.passes import QuantizeConfig

        def data(split: str) -> tuple[Any, Any]:
            return {"calibration": (m.x_calib, None), "eval": (m.x_eval, m.y_eval),
                    "train": (m.x_train, m.y_train)}[split]

        inp = PassInput(model=m.onnx_path, out_dir=out, config=QuantizeConfig(mode=mode), data=data,
                        evaluate=lambda p: _evaluate(m, p), gates=None, log=lambda s: None)
        res = QuantizePass().apply(inp)
        return (res.model, {"note": f"chose {res.details['chosen']}"}) if mode == "auto" else res.model

    return build


def _evaluate(m: BenchModel, path: Path) -> dict[str, Any]:
    """What the build's evaluation gives a pass (figures vs the fp32 model), with AUTO_GATES applied."""
    import numpy as np

    from deployc.ml.evaluate import compare, measure_onnx, predict_onnx, sizes

    ref = predict_onnx(m.onnx_path, m.x_eval)
    figures = compare(ref, predict_onnx(path, m.x_eval), m.y_eval, "classification")
    figures.update(sizes(path), **measure_onnx(path, m.x_eval, min_seconds=0.3))
    drop = float(np.mean(ref.argmax(1) == m.y_eval)) - figures["accuracy"]
    figures["gate_failures"] = (
        [f"agreement {figures['agreement']} < {AUTO_GATES['min_agreement']}"]
        if figures["agreement"] < AUTO_GATES["min_agreement"] else []) + (
        [f"accuracy drop {drop:.4f} > {AUTO_GATES['max_accuracy_drop']}"]
        if drop > AUTO_GATES["max_accuracy_drop"] else [])
    return figures


for _model in MODELS:
    for _mode in ("int8-dynamic", "int8-static", "float16", "auto"):
        row(_model, f"quantize:{_mode}")(_quantize(_mode))


def _keras_pass(name: str, settings: dict[str, Any]) -> RowFn:
    """A Keras pass (prune, distill) on the model's Keras source, then converted to fp32 ONNX for timing."""

    def build(m: BenchModel, out: Path) -> Path:
        from deployc.ml.convert import keras_to_onnx
        from deployc.passes import get_pass
        from deployc.passes.base import PassInput

        def data(split: str) -> tuple[Any, Any]:
            return {"eval": (m.x_eval, m.y_eval), "train": (m.x_train, m.y_train)}[split]

        p = get_pass(name)
        res = p.apply(PassInput(model=m.keras_path, out_dir=out, config=p.config_model(**settings), data=data,
                                evaluate=lambda _: {}, gates=None, log=lambda s: None))
        onnx_path = out / "model.onnx"
        keras_to_onnx(res.model, onnx_path)
        return onnx_path

    return build


KERAS_ROWS = {  # row name -> (pass, settings per model)
    "prune:unstructured-50": ("prune", {"mlp": {"sparsity": 0.5, "epochs": 2}, "cnn": {"sparsity": 0.5, "epochs": 2}}),
    "prune:structured-50": ("prune", {"mlp": {"sparsity": 0.5, "structured": True, "epochs": 4},
                                      "cnn": {"sparsity": 0.5, "structured": True, "epochs": 4}}),
    "distill:width-0.5": ("distill", {"mlp": {"width": 0.5, "epochs": 30, "learning_rate": 1e-3},
                                      "cnn": {"width": 0.5, "epochs": 80, "learning_rate": 2e-3}}),
}
for _row_name, (_pass, _per_model) in KERAS_ROWS.items():
    for _model, _settings in _per_model.items():
        row(_model, _row_name)(_keras_pass(_pass, _settings))
TARGETS.update({(m, "prune:structured-50"): {"speedup": (">=", 1.5), "accuracy_drop_pts": ("<=", 1.0)}
                for m in ("mlp", "cnn")})
TARGETS.update({(m, "distill:width-0.5"): {"speedup": (">=", 1.5), "accuracy_drop_pts": ("<=", 2.0)}
                for m in ("mlp", "cnn")})


def p50_ms(path: Path, x: Any, seconds: float) -> float:
    """Batch-1 p50 of an ONNX model with one intra-op thread, over `seconds`."""
    from deployc.ml.evaluate import measure_onnx

    return float(measure_onnx(path, x, threads=1, min_seconds=seconds)["latency_p50_ms"])


def measure_row(m: BenchModel, name: str, fn: RowFn, work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    import numpy as np

    from deployc.ml.evaluate import predict_onnx, sizes

    t0 = time.perf_counter()
    built = fn(m, work / name.replace(":", "-"))
    cand, extra = built if isinstance(built, tuple) else (built, {})
    build_s = time.perf_counter() - t0
    ref, pred = predict_onnx(m.onnx_path, m.x_eval), predict_onnx(cand, m.x_eval)
    base_ms, cand_ms = [], []
    for _ in range(rounds):  # alternate, so load on the shared machine hits both alike
        base_ms.append(p50_ms(m.onnx_path, m.x_eval, seconds))
        cand_ms.append(p50_ms(cand, m.x_eval, seconds))
    acc_ref = float(np.mean(ref.argmax(1) == m.y_eval))
    acc = float(np.mean(pred.argmax(1) == m.y_eval))
    out = {"model": m.name, "row": name,
           "size_ratio": round(sizes(cand)["size_bytes"] / sizes(m.onnx_path)["size_bytes"], 4),
           "gzip_ratio": round(sizes(cand)["gzip_bytes"] / sizes(m.onnx_path)["gzip_bytes"], 4),
           "speedup": round(statistics.median(base_ms) / statistics.median(cand_ms), 2),
           "agreement": round(float(np.mean(ref.argmax(1) == pred.argmax(1))), 4),
           "accuracy": round(acc, 4), "accuracy_drop_pts": round(100 * (acc_ref - acc), 2),
           "fp32_p50_ms": round(statistics.median(base_ms), 4), "p50_ms": round(statistics.median(cand_ms), 4),
           "build_s": round(build_s, 1), "note": "", **extra}
    out["target"] = check(out, TARGETS.get((m.name, name), {}))
    return out


def check(figures: dict[str, Any], target: dict[str, tuple[str, float]]) -> str:
    if not target:
        return "-"
    missed = [f"{k}{op}{bound}" for k, (op, bound) in target.items()
              if not (figures[k] <= bound if op == "<=" else figures[k] >= bound)]
    return "ok" if not missed else "MISS " + ",".join(missed)


def selected(only: str | None) -> list[tuple[str, str, RowFn]]:
    """`--only cnn,mlp:int8-dynamic,float16`: a model, a pass/mode, or model:mode."""
    if not only:
        return ROWS
    keys = [k.strip() for k in only.split(",") if k.strip()]

    def hit(model: str, name: str, key: str) -> bool:
        if ":" in key and key.split(":", 1)[0] in MODELS:
            want_model, want = key.split(":", 1)
            return model == want_model and want in name
        return key == model or key in name

    return [r for r in ROWS if any(hit(r[0], r[1], k) for k in keys)]


COLUMNS = ("model", "row", "size_ratio", "gzip_ratio", "speedup", "agreement", "accuracy_drop_pts", "fp32_p50_ms",
           "p50_ms", "target", "note")


def table(rows: list[dict[str, Any]]) -> str:
    cells = [COLUMNS] + [tuple(str(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) for c in cells)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated: model names, pass/mode names, or model:mode")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="timing per round per model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    todo = selected(args.only)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deployc-bench-opt-") as tmp:
        models: dict[str, BenchModel] = {}
        for model, name, fn in todo:
            m = models.get(model) or models.setdefault(model, load(model, log=lambda s: print(s, flush=True)))
            res = measure_row(m, name, fn, Path(tmp), args.min_seconds, args.rounds)
            print(json.dumps(res, sort_keys=True), flush=True)
            results.append(res)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
