"""Train the bundled example: a small Keras classifier on scikit-learn's digits (no downloads, fixed seeds).

Writes, next to this file: model.keras, labels.txt and data/{train,eval,calib}.npz. deploy.yaml is committed.
Run: python examples/digits/train.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

HERE = Path(__file__).resolve().parent
SEED = 7


def main(out: Path = HERE, epochs: int = 30) -> None:
    from deployc.ml.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines (absl, oneDNN, CUDA) kept off stderr
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(SEED)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_eval = 360
    x_train, y_train, x_eval, y_eval = x[n_eval:], y[n_eval:], x[:n_eval], y[:n_eval]

    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(512, activation="relu", name="hidden1")(inputs)
    h = keras.layers.Dense(512, activation="relu", name="hidden2")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, outputs, name="digits")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    _, acc = model.evaluate(x_eval, y_eval, verbose=0)

    (out / "data").mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    np.savez(out / "data" / "train.npz", x=x_train, y=y_train)
    np.savez(out / "data" / "eval.npz", x=x_eval, y=y_eval)
    np.savez(out / "data" / "calib.npz", x=x_train[:256])
    (out / "labels.txt").write_text("".join(f"digit-{i}\n" for i in range(10)))
    print(f"trained digits model: eval accuracy {acc:.4f}; wrote {out / 'model.keras'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
