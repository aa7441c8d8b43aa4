"""A tiny digits model and spec for the tflite tests, trained once per process (fixed seeds)."""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from deployc.compiler.steps import StepContext, StepOutput
from deployc.schema.spec import DeploySpec


@lru_cache(maxsize=1)
def digits_dir() -> Path:
    """A folder with model.keras (64 -> 256 -> 10 softmax), eval.npz, calib.npz and labels.txt."""
    from sklearn.datasets import load_digits

    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import keras

    root = Path(tempfile.mkdtemp(prefix="deployc-tflite-test-"))
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,), name="pixels"), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:1200], y[:1200], epochs=8, batch_size=32, verbose=0)
    model.save(root / "model.keras")
    np.savez(root / "eval.npz", x=x[1200:], y=y[1200:])
    np.savez(root / "calib.npz", x=x[:300])
    (root / "labels.txt").write_text("".join(f"digit-{i}\n" for i in range(10)))
    ref = np.asarray(model.predict(x[1200:], verbose=0), dtype=np.float32)
    (root / "reference").mkdir()
    np.save(root / "reference" / "predictions.npy", ref, allow_pickle=False)
    return root


def spec(tflite: dict[str, Any] | None = None, gates: dict[str, Any] | None = None, **extra: Any) -> DeploySpec:
    doc = {"apiVersion": "deployc/v1", "name": "digits", "version": "1.0.0",
           "model": {"path": "model.keras", "labels": "labels.txt"},
           "data": {"eval": {"path": "eval.npz", "y": "y"}, "calibration": {"path": "calib.npz"}},
           "gates": gates or {}, "measure": {"min_seconds": 0.05},
           "targets": {"tflite": tflite or {}}, **extra}
    return DeploySpec.model_validate(doc)


def reference_output() -> StepOutput:
    from deployc.ml.evaluate import compare

    root = digits_dir()
    ref = np.load(root / "reference" / "predictions.npy")
    y = np.load(root / "eval.npz")["y"]
    figures = compare(ref, ref, y, "classification")
    return StepOutput(root / "reference", {"evaluation": {"rows": figures["rows"], "accuracy": figures["accuracy"]}})


def step_context(s: DeploySpec, out_dir: Path, deps: dict[str, StepOutput]) -> StepContext:
    out_dir.mkdir(parents=True, exist_ok=True)
    from deployc.compiler.resolved import resolve

    return StepContext(out_dir=out_dir, deps=deps, resolved=resolve(s, digits_dir()), log=lambda _msg: None)


def keras_output() -> StepOutput:
    return StepOutput(digits_dir(), {"model": "model.keras", "format": "keras"})
