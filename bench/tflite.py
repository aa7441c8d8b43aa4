"""Benchmark of the tflite target's quantization modes on a digits CNN.

Trains (once, cached in a temp folder) Conv 32 -> Conv 64 -> pool -> Conv 128 -> global pool -> Dense on
scikit-learn's digits upsampled to 32x32, converts it in every mode and prints size, agreement and batch-1
latency against the float32 .tflite and against ONNX Runtime running the fp32 ONNX conversion, all measured in
this run. Targets: dynamic and int8 at most 0.27x the float32 .tflite with at least 98% agreement.

    PYTHONPATH=. python bench/tflite.py [--threads N] [--seconds S]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RECIPE = "digits-cnn-v2"  # change when the model below changes, so the cache is not reused
CACHE = Path(tempfile.gettempdir()) / "deployc-bench-tflite"
SIZE_TARGET, AGREEMENT_TARGET = 0.27, 0.98


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = np.kron(x, np.ones((4, 4), dtype=np.float32))[..., None]  # 8x8 -> 32x32, one channel
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)
    return x_tr, x_te, y_tr, y_te


def model(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> Path:
    """The trained CNN, from the cache when there."""
    path = CACHE / f"{RECIPE}.keras"
    if path.exists():
        return path
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential([
        keras.Input((32, 32, 1), name="image"),
        L.Conv2D(32, 3, strides=2, padding="same", activation="relu"),  # 16x16: cheap, and a wider view
        L.Conv2D(64, 3, padding="same", activation="relu"),
        L.MaxPooling2D(), L.Conv2D(128, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(10, activation="softmax"),
    ])
    m.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    for _ in range(30):
        m.fit(x_tr, y_tr, epochs=1, batch_size=64, verbose=0)
        acc = m.evaluate(x_te, y_te, verbose=0)[1]
        if acc >= 0.97:
            break
    print(f"trained the digits CNN: test accuracy {acc:.4f}")
    CACHE.mkdir(parents=True, exist_ok=True)
    m.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=1.0, help="least time timing each artifact")
    args = ap.parse_args()
    from deployc.ml.convert import keras_to_onnx
    from deployc.ml.evaluate import compare, measure_onnx, predict, sizes
    from deployc.ml.tflite import convert, measure_tflite, predict_tflite
    from deployc.targets.tflite import TFLiteConfig as TFLiteTarget

    x_tr, x_te, y_tr, y_te = data()
    keras_path = model(x_tr, y_tr, x_te, y_te)
    reference = predict(keras_path, "keras", x_te)
    ref_acc = compare(reference, reference, y_te, "classification")["accuracy"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        keras_to_onnx(keras_path, onnx)
        onnx_fig = {**sizes(onnx), **measure_onnx(onnx, x_te, args.threads, min_seconds=args.seconds)}
        for label, mode, io, per_channel in [
                ("none", "none", "float32", True), ("float16", "float16", "float32", True),
                ("dynamic", "dynamic", "float32", True), ("int8", "int8", "int8", True),
                ("int8 per-tensor", "int8", "int8", False)]:
            dst = Path(tmp) / f"{label.replace(' ', '-')}.tflite"
            cfg = TFLiteTarget(quantization=mode, io_type=io, per_channel=per_channel)
            convert(keras_path, dst, cfg, x_tr[:300])
            fig = compare(reference, predict_tflite(dst, x_te, args.threads), y_te, "classification")
            fig.update(sizes(dst))
            fig.update(measure_tflite(dst, x_te, args.threads, args.seconds), mode=label)
            rows.append(fig)
    base = rows[0]
    print(f"digits CNN, {len(x_te)} test rows, reference (Keras) accuracy {ref_acc:.4f}, threads {args.threads}")
    print(f"ONNX Runtime fp32: {onnx_fig['size_bytes']} bytes, p50 {onnx_fig['latency_p50_ms']:.4f} ms, "
          f"p99 {onnx_fig['latency_p99_ms']:.4f} ms")
    head = ("mode", "bytes", "x f32", "gzip", "accuracy", "agree", "max_err", "p50 ms", "p99 ms", "p50 x f32",
            "p50 x ORT")
    table = [head]
    for r in rows:
        table.append((r["mode"], str(r["size_bytes"]), f"{r['size_bytes'] / base['size_bytes']:.3f}",
                      str(r["gzip_bytes"]), f"{r['accuracy']:.4f}", f"{r['agreement']:.4f}",
                      f"{r['max_abs_error']:.4f}", f"{r['latency_p50_ms']:.4f}", f"{r['latency_p99_ms']:.4f}",
                      f"{r['latency_p50_ms'] / base['latency_p50_ms']:.2f}",
                      f"{r['latency_p50_ms'] / onnx_fig['latency_p50_ms']:.2f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    for r in rows:
        if r["mode"] in ("dynamic", "int8", "int8 per-tensor"):
            ratio = r["size_bytes"] / base["size_bytes"]
            ok = ratio <= SIZE_TARGET and r["agreement"] >= AGREEMENT_TARGET
            print(f"target {r['mode']}: size {ratio:.3f}x <= {SIZE_TARGET}x and agreement {r['agreement']:.4f} >= "
                  f"{AGREEMENT_TARGET}: {'met' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
