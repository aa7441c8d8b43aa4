"""Optimization benchmark: each pass/mode on three local models, against fp32 ONNX Runtime in the same run.

Rows: quantize (int8-dynamic, int8-static, float16, auto) on the MLP, CNN and Transformer; prune (unstructured
and structured 50%) and distill (width 0.5) on the MLP and CNN. The `tflite` target has its own sibling,
bench/tflite.py.

    PYTHONPATH=. python bench/optimize.py [--only cnn,mlp:int8-dynamic] [--min-seconds 1] [--json out.json]

Per row: size ratio vs the fp32 ONNX file, batch-1 p50 speed-up vs fp32 (1 intra-op thread; fp32 and the
candidate are timed in alternating rounds and the median of each is compared, so background load hits both),
batch-64 throughput speed-up, top-1 agreement with fp32 and accuracy drop in points. A row is one function
registered with @row(model, name); another pass adds its rows the same way. Targets are printed beside the
figures, never asserted.

`--peers` adds the peers' own recipes on the same models: Microsoft Olive (bench/peers/olive) and OpenVINO with
NNCF (bench/peers/openvino), each run in a virtual environment of its own (bench/venvs.py), each writing its
artifacts, which this process then measures exactly like deployc's (ONNX files in onnxruntime, OpenVINO models
in OpenVINO, through deployc.ml.evaluate). The last table sets `quantize:auto` against the fastest peer artifact
that meets the same gates (agreement >= 0.99, accuracy drop <= 1 point), the two timed head to head in
alternating rounds (`head_to_head`: the peer's p50 over auto's; >= 0.97 counts as a tie or a win).
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

from bench.machine import cpu_info  # noqa: E402
from bench.models import MODELS, BenchModel, load  # noqa: E402
from bench.venvs import PEERS, ensure_venv  # noqa: E402

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
    # the best peer's batch-1 speed-up on an Intel Xeon (AMX): OpenVINO+NNCF, ORT static per-tensor, deployc's own
    ("transformer", "quantize:auto"): {"speedup": (">=", 2.8), "accuracy_drop_pts": ("<=", 1.0)},
    ("mlp", "quantize:auto"): {"speedup": (">=", 3.9), "accuracy_drop_pts": ("<=", 1.0)},
    ("cnn", "quantize:auto"): {"speedup": (">=", 3.1), "accuracy_drop_pts": ("<=", 1.0)},
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
        if mode != "auto":
            return res.model
        return res.model, {"note": f"chose {res.details['chosen']} ({res.details['runtime']})"}

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
    for _mode in ("int8-dynamic", "int8-static", "int8-static-per-tensor", "float16", "openvino-int8",
                  "openvino-int8-batch1", "auto"):
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
    """Batch-1 p50 of an artifact with one intra-op thread, over `seconds` (bench/examples.py's timing too)."""
    return timed(path, x, seconds)[0]


def timed(path: Path, x: Any, seconds: float) -> tuple[float, float]:
    """(batch-1 p50 ms, batch-64 rows/s) of an artifact with one intra-op thread, over `seconds`."""
    from deployc.ml.evaluate import measure_onnx

    f = measure_onnx(path, x, threads=1, batch_size=64, min_seconds=seconds)
    return float(f["latency_p50_ms"]), float(f["throughput_rows_s"])


def measure_row(m: BenchModel, name: str, fn: RowFn, work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    import numpy as np

    from deployc.ml.evaluate import predict_onnx, sizes

    t0 = time.perf_counter()
    built = fn(m, work / m.name / name.replace(":", "-"))
    cand, extra = built if isinstance(built, tuple) else (built, {})
    build_s = time.perf_counter() - t0
    ref, pred = predict_onnx(m.onnx_path, m.x_eval), predict_onnx(cand, m.x_eval)
    base_ms, cand_ms, base_tp, cand_tp = [], [], [], []
    for _ in range(rounds):  # alternate, so load on the shared machine hits both alike
        for path, ms, tp in ((m.onnx_path, base_ms, base_tp), (cand, cand_ms, cand_tp)):
            p50, rows_s = timed(path, m.x_eval, seconds)
            ms.append(p50)
            tp.append(rows_s)
    acc_ref = float(np.mean(ref.argmax(1) == m.y_eval))
    acc = float(np.mean(pred.argmax(1) == m.y_eval))
    out = {"model": m.name, "row": name,
           "size_ratio": round(sizes(cand)["size_bytes"] / sizes(m.onnx_path)["size_bytes"], 4),
           "gzip_ratio": round(sizes(cand)["gzip_bytes"] / sizes(m.onnx_path)["gzip_bytes"], 4),
           "speedup": round(statistics.median(base_ms) / statistics.median(cand_ms), 2),
           "b64_speedup": round(statistics.median(cand_tp) / statistics.median(base_tp), 2),
           "agreement": round(float(np.mean(ref.argmax(1) == pred.argmax(1))), 4),
           "accuracy": round(acc, 4), "accuracy_drop_pts": round(100 * (acc_ref - acc), 2),
           "fp32_p50_ms": round(statistics.median(base_ms), 4), "p50_ms": round(statistics.median(cand_ms), 4),
           "build_s": round(build_s, 1), "note": "", **extra, "path": str(cand)}
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


COLUMNS = ("model", "row", "size_ratio", "gzip_ratio", "speedup", "b64_speedup", "agreement", "accuracy_drop_pts",
           "fp32_p50_ms", "p50_ms", "target", "note")


def table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    cells = [columns] + [tuple(str(r.get(c, "")) for c in columns) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) for c in cells)


# --- peers: their own recipes, in their own venvs, measured here ---------------------------------------------
PEER_PACKAGES = {"olive": ["olive-ai", "onnxruntime"], "openvino": ["openvino", "nncf"]}
SPEED_NOISE = 0.03  # p50s within 3% of each other are a tie on this shared machine


def peer_rows(m: BenchModel, work: Path, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Each peer's artifacts for model `m`, measured like deployc's rows; a peer that fails is one row saying why."""
    import subprocess

    import numpy as np

    data = work / f"{m.name}-peer-data.npz"
    np.savez(data, x_calib=m.x_calib, x_eval=m.x_eval, y_eval=m.y_eval)
    rows: list[dict[str, Any]] = []
    for peer, packages in PEER_PACKAGES.items():
        python, info = ensure_venv(peer, packages)
        if python is None:
            rows.append({"model": m.name, "row": f"peer:{peer}", "note": f"skipped: {info}"})
            continue
        out = work / "peers" / peer / m.name
        proc = subprocess.run([str(python), str(PEERS / peer / "optimize.py"), "--onnx", str(m.onnx_path),
                               "--data", str(data), "--kind", m.name, "--out", str(out)],
                              capture_output=True, text=True, timeout=3600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            rows.append({"model": m.name, "row": f"peer:{peer}", "note": f"failed (exit {proc.returncode}): {tail}"})
            continue
        doc = json.loads(lines[-1])
        for art in doc["artifacts"]:
            def built(_: BenchModel, __: Path, path: str = art["path"],
                      note: str = f"{doc['version']}: {art['recipe']}") -> tuple[Path, dict[str, Any]]:
                return Path(path), {"note": note}

            rows.append(measure_row(m, f"peer:{doc['peer']}:{art['name']}", built, work, seconds, rounds))
        rows += [{"model": m.name, "row": f"peer:{doc['peer']}:{f['name']}", "note": f"failed: {f['error']}"[:160]}
                 for f in doc.get("failed", [])]
    return rows


def meets_gates(r: dict[str, Any]) -> bool:
    return ("speedup" in r and r["agreement"] >= AUTO_GATES["min_agreement"]
            and r["accuracy_drop_pts"] <= 100 * AUTO_GATES["max_accuracy_drop"])


def versus(rows: list[dict[str, Any]], models: dict[str, BenchModel], seconds: float, rounds: int
           ) -> list[dict[str, Any]]:
    """Per model: deployc's auto row against the fastest peer artifact that meets the same gates, timed head to
    head (the two artifacts in alternating rounds, so a slower moment of the machine hits both)."""
    found = []
    for model, m in models.items():
        auto = next((r for r in rows if r["model"] == model and r["row"] == "quantize:auto"), None)
        peers = [r for r in rows if r["model"] == model and r["row"].startswith("peer:") and meets_gates(r)]
        if auto is None or not peers:
            continue
        best = max(peers, key=lambda r: r["speedup"])
        auto_ms, peer_ms = [], []
        for _ in range(2 * rounds):
            auto_ms.append(p50_ms(Path(auto["path"]), m.x_eval, seconds))
            peer_ms.append(p50_ms(Path(best["path"]), m.x_eval, seconds))
        ratio = statistics.median(peer_ms) / statistics.median(auto_ms)
        faster = ratio >= 1 - SPEED_NOISE
        verdict = ("ok" if faster and auto["accuracy_drop_pts"] <= best["accuracy_drop_pts"] else
                   "MISS speed" if not faster else "MISS accuracy")
        found.append({"model": model, "deployc_auto": auto["note"], "auto_speedup": auto["speedup"],
                      "auto_drop_pts": auto["accuracy_drop_pts"], "best_peer": best["row"].removeprefix("peer:"),
                      "peer_speedup": best["speedup"], "peer_drop_pts": best["accuracy_drop_pts"],
                      "auto_p50_ms": round(statistics.median(auto_ms), 4),
                      "peer_p50_ms": round(statistics.median(peer_ms), 4), "head_to_head": f"{ratio:.3f}x",
                      "verdict": verdict})
    return found


VERSUS = ("model", "deployc_auto", "auto_speedup", "auto_drop_pts", "best_peer", "peer_speedup", "peer_drop_pts",
          "auto_p50_ms", "peer_p50_ms", "head_to_head", "verdict")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated: model names, pass/mode names, or model:mode")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="timing per round per model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--peers", action="store_true", help="also run Olive's and OpenVINO/NNCF's own recipes on the "
                    "models of the selected rows (their venvs are made on first use)")
    args = ap.parse_args(argv)
    todo = selected(args.only)
    results: list[dict[str, Any]] = []
    print(cpu_info(), flush=True)
    with tempfile.TemporaryDirectory(prefix="deployc-bench-opt-") as tmp:
        models: dict[str, BenchModel] = {}
        for model, name, fn in todo:
            m = models.get(model) or models.setdefault(model, load(model, log=lambda s: print(s, flush=True)))
            res = measure_row(m, name, fn, Path(tmp), args.min_seconds, args.rounds)
            print(json.dumps(res, sort_keys=True), flush=True)
            results.append(res)
        head_to_head: list[dict[str, Any]] = []
        if args.peers:
            for m in models.values():
                for res in peer_rows(m, Path(tmp), args.min_seconds, args.rounds):
                    print(json.dumps(res, sort_keys=True), flush=True)
                    results.append(res)
            head_to_head = versus(results, models, args.min_seconds, args.rounds)
    print()
    print(cpu_info())
    print(table(results))
    if head_to_head:
        print()
        print(table(head_to_head, VERSUS))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_info(), "rows": results, "versus": head_to_head}, indent=1,
                                        sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
