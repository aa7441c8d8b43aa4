"""Benchmark of the prune and distill passes on two digits models, against the original's fp32 ONNX.

    PYTHONPATH=. python bench/prune_distill.py [--models mlp,cnn] [--out rows.json]

Models are built and trained here with fixed seeds (scikit-learn's bundled digits, 1437 train / 360 held-out
rows): an MLP 64 -> 1024 -> 1024 -> 1024 -> 10 and a CNN on digits upsampled to 32x32 (Conv 32 -> Conv 64 ->
pool -> Conv 128 -> global max pool -> Dense). Each pass runs through its `Pass.apply`, the result is converted to
ONNX and timed in onnxruntime (batch 1, 1 intra-op thread) beside the original, alternating, median of 3.
Functions return row dicts so another script can reuse them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from deployc.ml.convert import keras_to_onnx, quiet_tensorflow  # noqa: E402
from deployc.ml.evaluate import measure_onnx, predict_onnx, sizes  # noqa: E402
from deployc.passes.base import PassInput  # noqa: E402

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
SETTINGS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {  # model -> [(row label, pass, config)]
    "mlp": [("unstructured 50%", "prune", {"sparsity": 0.5, "epochs": 2}),
            ("structured 50%", "prune", {"sparsity": 0.5, "structured": True, "epochs": 4}),
            ("distill width 0.5", "distill", {"width": 0.5, "epochs": 30, "learning_rate": 1e-3})],
    "cnn": [("unstructured 50%", "prune", {"sparsity": 0.5, "epochs": 2}),
            ("structured 50%", "prune", {"sparsity": 0.5, "structured": True, "epochs": 4}),
            ("distill width 0.5", "distill", {"width": 0.5, "epochs": 20, "learning_rate": 2e-3})],
}


def digits_data(image: bool) -> Data:
    """(x_train, y_train, x_test, y_test); images are upsampled 4x (nearest) to 32x32x1."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    if image:
        x = np.kron(x.reshape(-1, 8, 8), np.ones((4, 4), dtype=np.float32))[..., None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1437], y[:1437], x[1437:], y[1437:]


def train_mlp(data: Data, path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    layers: list[Any] = [keras.Input((64,), name="pixels")]
    layers += [keras.layers.Dense(1024, activation="relu", name=f"dense{i}") for i in range(3)]
    layers.append(keras.layers.Dense(10, activation="softmax", name="out"))
    return _train(keras.Sequential(layers, name="mlp"), data, path, epochs=12, lr=1e-3)


def train_cnn(data: Data, path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)  # average pooling stalls near 93% here
    out = keras.layers.Dense(10, activation="softmax", name="out")(x)
    return _train(keras.Model(inp, out, name="cnn"), data, path, epochs=15, lr=2e-3)


def _train(model: Any, data: Data, path: Path, epochs: int, lr: float) -> Path:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    model.fit(data[0], data[1], epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path


def pass_input(model: Path, out_dir: Path, config: Any, data: Data) -> PassInput:
    def get(which: str) -> tuple[np.ndarray, np.ndarray]:
        if which == "train":
            return data[0], data[1]
        if which == "eval":
            return data[2], data[3]
        raise ValueError(f"data.{which} is not set")

    def no_evaluate(path: Path) -> dict[str, Any]:
        raise NotImplementedError

    return PassInput(model=model, out_dir=out_dir, config=config, data=get, evaluate=no_evaluate, gates=None,
                     log=lambda s: None)


def run_pass(name: str, settings: dict[str, Any], model: Path, out_dir: Path, data: Data) -> Any:
    from deployc.passes import get_pass

    p = get_pass(name)
    return p.apply(pass_input(model, out_dir, p.config_model(**settings), data))


def timed_p50(paths: list[Path], x: np.ndarray, rounds: int = 3) -> list[float]:
    """Median over `rounds` of each model's batch-1 p50, measured alternately so that load noise is shared."""
    got: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, p in enumerate(paths):
            got[i].append(measure_onnx(p, x, threads=1, min_seconds=0.5)["latency_p50_ms"])
    return [statistics.median(g) for g in got]


def model_rows(model_name: str, work: Path) -> list[dict[str, Any]]:
    """Train the model, run each setting, and compare every result with the original's fp32 ONNX."""
    quiet_tensorflow()
    data = digits_data(image=model_name == "cnn")
    original = (train_mlp if model_name == "mlp" else train_cnn)(data, work / f"{model_name}.keras")
    base_onnx = work / f"{model_name}.onnx"
    keras_to_onnx(original, base_onnx)
    x_test, y_test = data[2], data[3]
    ref = predict_onnx(base_onnx, x_test)
    base_acc = float(np.mean(ref.argmax(1) == y_test))
    base_size = sizes(base_onnx)
    results = []
    for label, pass_name, settings in SETTINGS[model_name]:
        res = run_pass(pass_name, settings, original, work / f"{model_name}-{pass_name}-{len(results)}", data)
        onnx_path = res.model.with_suffix(".onnx")
        keras_to_onnx(res.model, onnx_path)
        results.append((label, pass_name, settings, res, onnx_path))
    p50 = timed_p50([base_onnx] + [r[4] for r in results], x_test)
    rows = [{"model": model_name, "pass": "original fp32", "size_ratio": 1.0, "gzip_ratio": 1.0, "p50_ms": p50[0],
             "speedup": 1.0, "agreement": 1.0, "accuracy": round(base_acc, 4), "accuracy_drop": 0.0,
             "onnx_bytes": base_size["size_bytes"], "onnx_gzip_bytes": base_size["gzip_bytes"]}]
    for (label, pass_name, settings, res, onnx_path), ms in zip(results, p50[1:]):
        pred = predict_onnx(onnx_path, x_test).argmax(1)
        acc = float(np.mean(pred == y_test))
        sz = sizes(onnx_path)
        rows.append({"model": model_name, "pass": label, "settings": settings,
                     "size_ratio": round(sz["size_bytes"] / base_size["size_bytes"], 3),
                     "gzip_ratio": round(sz["gzip_bytes"] / base_size["gzip_bytes"], 3), "p50_ms": ms,
                     "speedup": round(p50[0] / ms, 2), "agreement": round(float(np.mean(pred == ref.argmax(1))), 4),
                     "accuracy": round(acc, 4), "accuracy_drop": round((base_acc - acc) * 100, 2),
                     "onnx_bytes": sz["size_bytes"], "onnx_gzip_bytes": sz["gzip_bytes"],
                     "details": res.details})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = "| model | pass | size | gzip size | p50 ms | speed-up | agreement | accuracy | drop (points) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['pass']} | {r['size_ratio']:.3f}x | {r['gzip_ratio']:.3f}x | "
                     f"{r['p50_ms']:.4f} | {r['speedup']:.2f}x | {r['agreement']:.4f} | {r['accuracy']:.4f} | "
                     f"{r['accuracy_drop']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--out", type=Path, help="also write the rows (with pass details) as JSON")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += model_rows(name, Path(tmp))
            print(table([r for r in rows if r["model"] == name]), flush=True)
    print("\nAll rows (ratios vs the original's fp32 ONNX; batch 1, 1 thread, onnxruntime CPU):")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
