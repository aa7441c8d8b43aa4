"""Example benchmark: the optimization passes on the three bundled application examples, against fp32 ONNX Runtime
in the same run.

Rows: recsys (user/item ids + dense features, sigmoid `click`, judged by ROC AUC): quantize int8-dynamic and
int8-static. nlp (a Transformer on input_ids + attention_mask, 4 topics): int8-dynamic and int8-static. cv (a
MobileNet-style CNN: BatchNorm, depthwise-separable blocks, ReLU6, a residual Add): int8-static, and structured
pruning of 50% of the filters with fine-tuning (the prune pass, then conversion to ONNX).

    PYTHONPATH=. python bench/examples.py [--only nlp-bench,cv:prune] [--min-seconds 1] [--rounds 3] [--json out.json]

Each example's model and data come from its own examples/<name>/train.py, run with `main(out, **knobs)`, and the
data sets from its deploy.yaml (data.<set>.path and the x mapping of inputs to npz keys). The shipped examples
are deliberately tiny (tests train them in seconds): at 0.02-0.2 ms per batch-1 call the op overhead, not the
arithmetic, sets the latency and int8 kernels cannot win. So nlp and cv are measured twice: at the shipped size
(`nlp`, `cv`) and at a larger bench size whose calls compute enough for quantization and pruning to pay:
`nlp-bench` is dim 384, ff 1536 (main(dim=, ff=); seq 32 as shipped; about 2.7 ms per fp32 call), `cv-bench`
width 8 on 32x32 images (main(width=, size=); about 0.6 ms), each trained in 2-3 minutes on 2 cores. Trained
models are cached under bench/models.py's cache_dir() (`examples/`), keyed by the train.py source and the knobs,
so reruns only time (a first full run takes about 10 minutes, a rerun about 5).

Per row: size ratio vs the fp32 ONNX file, batch-1 p50 speed-up vs fp32 (1 intra-op thread; fp32 and the candidate
are timed in alternating rounds and the medians compared, so background load hits both), agreement with fp32 (the
thresholded class for binary, argmax otherwise), the drop of the judged metric (accuracy points, or AUC for
binary), and the target with ok/MISS. Targets are printed beside the figures, never asserted. `--only` takes
model names (`nlp` is both nlp sizes, `nlp-bench` only the larger), row names (`int8-static`, `prune`), or
model:row.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.machine import cpu_info  # noqa: E402
from bench.models import cache_dir  # noqa: E402
from bench.optimize import check, p50_ms  # noqa: E402  (one timing and one target rule for both benches)

EXAMPLES = ROOT / "examples"
CACHE_VERSION = 1  # bump when the cached layout changes (train.py sources and knobs are hashed anyway)


@dataclass(frozen=True)
class Variant:
    """One trained model of an example: `knobs` are keyword arguments of examples/<example>/train.py's main()."""

    name: str
    example: str
    knobs: dict[str, Any] = field(default_factory=dict)
    size: str = "shipped"  # what the note column says about the model's size


VARIANTS = {v.name: v for v in (
    Variant("recsys", "recsys", {}, "shipped"),
    Variant("nlp", "nlp", {}, "shipped: dim 32, ff 64, seq 32"),
    Variant("nlp-bench", "nlp", {"dim": 384, "ff": 1536}, "bench: dim 384, ff 1536, seq 32"),
    Variant("cv", "cv", {}, "shipped: width 1, 16x16"),
    Variant("cv-bench", "cv", {"width": 8, "size": 32, "epochs": 12}, "bench: width 8, 32x32"),
)}


@dataclass(frozen=True)
class ExampleModel:
    """A trained example as the passes see it: the Keras source, its fp32 ONNX file, the spec's task and the data
    sets by model input name."""

    name: str
    variant: Variant
    keras_path: Path
    onnx_path: Path
    task: str
    prediction: str | None
    threshold: float
    x_train: Any
    y_train: np.ndarray
    x_eval: Any
    y_eval: np.ndarray
    x_calib: Any

    @property
    def metric(self) -> str:
        return "auc" if self.task == "binary" else "accuracy"


# --- training + cache -----------------------------------------------------------------------------------------
def _digest(v: Variant) -> str:
    """What a trained folder depends on: the example's train.py and deploy.yaml, and the knobs."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{json.dumps(v.knobs, sort_keys=True)}\0".encode())
    for f in ("train.py", "deploy.yaml"):
        h.update((EXAMPLES / v.example / f).read_bytes())
    return h.hexdigest()[:12]


def _onnx_file(folder: Path) -> Path:
    """The fp32 ONNX conversion of the folder's model.keras, converted again when deployc/ml/convert.py changes."""
    from deployc.ml.convert import keras_to_onnx

    digest = hashlib.sha256((ROOT / "deployc" / "ml" / "convert.py").read_bytes()).hexdigest()[:8]
    path = folder / f"model.{digest}.onnx"
    if not path.exists():
        for old in folder.glob("model.*.onnx"):
            old.unlink()
        tmp = folder / "model.partial.onnx"
        keras_to_onnx(folder / "model.keras", tmp)
        tmp.rename(path)
    return path


def _train(v: Variant, out: Path, log: Callable[[str], None]) -> None:
    """examples/<example>/train.py's main(out, **knobs) in this process, beside a copy of its deploy.yaml."""
    spec = importlib.util.spec_from_file_location(f"_bench_example_{v.example}", EXAMPLES / v.example / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log(f"training {v.name} ({v.size})...")
    t0 = time.perf_counter()
    module.main(out, **v.knobs)
    log(f"{v.name}: trained in {time.perf_counter() - t0:.0f} s")
    shutil.copyfile(EXAMPLES / v.example / "deploy.yaml", out / "deploy.yaml")


def _dataset(folder: Path, ds: Any) -> tuple[Any, np.ndarray | None]:
    """(x, y) of a spec data set: {input name: array} by the x mapping (one array for a plain key)."""
    with np.load(folder / ds.path, allow_pickle=False) as npz:
        x = {name: npz[key] for name, key in ds.x.items()} if isinstance(ds.x, dict) else npz[ds.x]
        y = npz[ds.y] if ds.y else None
    return x, y


def load(name: str, log: Callable[[str], None] = print) -> ExampleModel:
    """The trained variant `name`, from the cache when present (training and conversion happen once)."""
    from deployc.api import validate

    v = VARIANTS[name]
    folder = cache_dir() / "examples" / f"{name}-{_digest(v)}"
    if not (folder / "deploy.yaml").exists():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _train(v, tmp, log)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    spec = validate(folder / "deploy.yaml")
    data = spec.data
    x_train, y_train = _dataset(folder, data.train)
    x_eval, y_eval = _dataset(folder, data.eval)
    x_calib, _ = _dataset(folder, data.calibration)
    assert y_train is not None and y_eval is not None
    return ExampleModel(name, v, folder / spec.model.path, _onnx_file(folder), spec.model.task,
                        spec.model.prediction, spec.model.threshold or 0.5, x_train, y_train, x_eval, y_eval,
                        x_calib)


# --- rows -----------------------------------------------------------------------------------------------------
# builds the candidate model; returns its path, or (path, extra columns such as a note)
RowFn = Callable[[ExampleModel, Path], "Path | tuple[Path, dict[str, Any]]"]
ROWS: list[tuple[str, str, RowFn]] = []
# (model, row name) -> {figure: (op, bound)}; checked and printed, not asserted. The shipped sizes carry the same
# targets as the bench sizes: their misses on speed are the point of measuring both.
RECSYS_TARGET = {"size_ratio": ("<=", 0.3), "auc_drop": ("<=", 0.005)}
NLP_TARGET = {"speedup": (">=", 2.0), "accuracy_drop_pts": ("<=", 1.0)}
CV_QUANT_TARGET = {"speedup": (">=", 1.5), "accuracy_drop_pts": ("<=", 1.0)}
CV_PRUNE_TARGET = {"speedup": (">=", 1.5), "accuracy_drop_pts": ("<=", 2.0)}
TARGETS: dict[tuple[str, str], dict[str, tuple[str, float]]] = {
    **{("recsys", f"quantize:{mode}"): RECSYS_TARGET for mode in ("int8-dynamic", "int8-static")},
    **{(m, f"quantize:{mode}"): NLP_TARGET for m in ("nlp", "nlp-bench") for mode in ("int8-dynamic", "int8-static")},
    **{(m, f"quantize:{r}"): CV_QUANT_TARGET for m in ("cv", "cv-bench") for r in ("int8-static", "int8-static-u8")},
    **{(m, "prune:structured-50"): CV_PRUNE_TARGET for m in ("cv", "cv-bench")},
}
PRUNE_SETTINGS = {  # per model: 50% of the filters removed, then fine-tuned on data.train
    "cv": {"sparsity": 0.5, "structured": True, "epochs": 30, "learning_rate": 3e-3},  # 6 epochs at 1e-3: -4.4 pts
    "cv-bench": {"sparsity": 0.5, "structured": True, "epochs": 6, "learning_rate": 1e-3},
}


def row(model: str, name: str) -> Callable[[RowFn], RowFn]:
    def register(fn: RowFn) -> RowFn:
        ROWS.append((model, name, fn))
        return fn

    return register


def _data(m: ExampleModel) -> Callable[[str], tuple[Any, Any]]:
    sets = {"calibration": (m.x_calib, None), "eval": (m.x_eval, m.y_eval), "train": (m.x_train, m.y_train)}
    return lambda split: sets[split]


def _quantize(mode: str, **settings: Any) -> RowFn:
    def build(m: ExampleModel, out: Path) -> Path:
        from deployc.passes.base import PassInput
        from deployc.passes.quantize import QuantizePass
        from deployc.schema.passes import QuantizeConfig

        inp = PassInput(model=m.onnx_path, out_dir=out, config=QuantizeConfig(mode=mode, **settings),
                        data=_data(m), evaluate=lambda _: {}, gates=None, log=lambda s: None)
        return QuantizePass().apply(inp).model

    return build


def _prune(m: ExampleModel, out: Path) -> tuple[Path, dict[str, Any]]:
    """The prune pass (structured) on the Keras source with fine-tuning, then converted to fp32 ONNX for timing."""
    from deployc.ml.convert import keras_to_onnx
    from deployc.passes import get_pass
    from deployc.passes.base import PassInput

    p, settings = get_pass("prune"), PRUNE_SETTINGS[m.name]
    res = p.apply(PassInput(model=m.keras_path, out_dir=out, config=p.config_model(**settings), data=_data(m),
                            evaluate=lambda _: {}, gates=None, log=lambda s: None))
    onnx_path = out / "model.onnx"
    keras_to_onnx(res.model, onnx_path)
    d = res.details
    return onnx_path, {"note": f"params {d['params_before']} -> {d['params_after']}, fine-tuned "
                               f"{settings['epochs']} epochs at lr {settings['learning_rate']:g}"}


for _model in ("recsys", "nlp", "nlp-bench"):
    for _mode in ("int8-dynamic", "int8-static"):
        row(_model, f"quantize:{_mode}")(_quantize(_mode))
for _model in ("cv", "cv-bench"):
    row(_model, "quantize:int8-static")(_quantize("int8-static"))
    row(_model, "quantize:int8-static-u8")(_quantize("int8-static", activation_type="uint8"))
for _model in ("recsys", "nlp", "nlp-bench", "cv", "cv-bench"):
    row(_model, "quantize:openvino-int8")(_quantize("openvino-int8"))
    row(_model, "prune:structured-50")(_prune)


# --- measurement ----------------------------------------------------------------------------------------------
def _figures(m: ExampleModel, ref: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    from deployc.ml.evaluate import compare

    return compare(ref, pred, m.y_eval, m.task, m.threshold)


def measure_row(m: ExampleModel, name: str, fn: RowFn, work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    from deployc.ml.evaluate import predict_onnx, sizes

    t0 = time.perf_counter()
    built = fn(m, work / f"{m.name}-{name.replace(':', '-')}")
    cand, extra = built if isinstance(built, tuple) else (built, {})
    build_s = time.perf_counter() - t0
    ref = predict_onnx(m.onnx_path, m.x_eval, output=m.prediction)
    pred = predict_onnx(cand, m.x_eval, output=m.prediction)
    base_ms, cand_ms = [], []
    for _ in range(rounds):  # alternate, so load on the shared machine hits both alike
        base_ms.append(p50_ms(m.onnx_path, m.x_eval, seconds))
        cand_ms.append(p50_ms(cand, m.x_eval, seconds))
    fp32, got = _figures(m, ref, ref), _figures(m, ref, pred)
    out: dict[str, Any] = {
        "model": m.name, "row": name,
        "size_ratio": round(sizes(cand)["size_bytes"] / sizes(m.onnx_path)["size_bytes"], 4),
        "gzip_ratio": round(sizes(cand)["gzip_bytes"] / sizes(m.onnx_path)["gzip_bytes"], 4),
        "speedup": round(statistics.median(base_ms) / statistics.median(cand_ms), 2),
        "agreement": got["agreement"], "metric": m.metric, "fp32_metric": fp32[m.metric], m.metric: got[m.metric],
        "fp32_p50_ms": round(statistics.median(base_ms), 4), "p50_ms": round(statistics.median(cand_ms), 4),
        "fp32_size_bytes": sizes(m.onnx_path)["size_bytes"], "size_bytes": sizes(cand)["size_bytes"],
        "build_s": round(build_s, 1), "note": m.variant.size, **extra}
    if "note" in extra:
        out["note"] = f"{m.variant.size}; {extra['note']}"
    if m.metric == "auc":
        out["auc_drop"] = round(fp32["auc"] - got["auc"], 4)
    else:
        out["accuracy_drop_pts"] = round(100 * (fp32["accuracy"] - got["accuracy"]), 2)
    out["target"] = check(out, TARGETS.get((m.name, name), {}))
    return out


def selected(only: str | None) -> list[tuple[str, str, RowFn]]:
    """`--only nlp,cv-bench:prune,int8-static`: a model (an example's name covers its sizes), a pass/mode, or
    model:mode."""
    if not only:
        return ROWS
    keys = [k.strip() for k in only.split(",") if k.strip()]

    def is_model(model: str, key: str) -> bool:
        return key == model or VARIANTS[model].example == key

    def hit(model: str, name: str, key: str) -> bool:
        head, _, tail = key.partition(":")
        if tail and any(is_model(v, head) for v in VARIANTS):
            return is_model(model, head) and tail in name
        return is_model(model, key) or key in name

    return [r for r in ROWS if any(hit(r[0], r[1], k) for k in keys)]


# --- output ---------------------------------------------------------------------------------------------------
COLUMNS = ("model", "row", "size_ratio", "gzip_ratio", "speedup", "agreement", "metric", "drop", "fp32_p50_ms",
           "p50_ms", "target", "note")


def _cell(r: dict[str, Any], column: str) -> str:
    if column == "metric":
        return f"{r['metric']} {r['fp32_metric']:.4f}"  # the fp32 model's; the drop column is the candidate's
    if column == "drop":
        return f"{r['auc_drop']:.4f} auc" if "auc_drop" in r else f"{r['accuracy_drop_pts']:.2f} pts"
    return str(r[column])


def table(rows: list[dict[str, Any]]) -> str:
    cells = [COLUMNS] + [tuple(_cell(r, c) for c in COLUMNS) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() for c in cells)


def machine_line() -> str:
    """The CPU (lscpu's model name where it names one) with the flags that change ONNX Runtime's int8 kernels."""
    import onnxruntime

    line = cpu_info()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name:")), "")
    except (OSError, subprocess.SubprocessError):
        name = ""
    if name and not line.startswith(name):
        line = f"{name} ({line})"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"CPU: {line}; load average {load}; onnxruntime {onnxruntime.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated: model names, pass/mode names, or model:mode")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="timing per round per model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    todo = selected(args.only)
    print(machine_line(), flush=True)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deployc-bench-examples-") as tmp:
        models: dict[str, ExampleModel] = {}
        for model, name, fn in todo:
            m = models.get(model) or models.setdefault(model, load(model, log=lambda s: print(s, flush=True)))
            res = measure_row(m, name, fn, Path(tmp), args.min_seconds, args.rounds)
            print(json.dumps(res, sort_keys=True), flush=True)
            results.append(res)
    print()
    print(machine_line())
    print(table(results))
    print(f"({len(results)} rows in {time.perf_counter() - t0:.0f} s; {args.rounds} rounds of {args.min_seconds} s "
          "per model per row)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
