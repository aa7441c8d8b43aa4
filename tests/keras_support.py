"""Tiny deterministic Keras models on scikit-learn's bundled digits, and a PassInput to run passes on them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def digits(image: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 1437 / 360 rows, pixels scaled to [0, 1]; 8x8x1 images if asked."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    if image:
        x = x.reshape(-1, 8, 8, 1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[:1437], y[:1437], x[1437:], y[1437:]


def mlp(hidden: tuple[int, ...] = (64, 64), softmax: bool = True, epochs: int = 10) -> Any:
    """A trained Sequential MLP 64 -> hidden -> 10."""
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input((64,), name="pixels")]
    layers += [keras.layers.Dense(h, activation="relu", name=f"hidden{i}") for i, h in enumerate(hidden)]
    layers.append(keras.layers.Dense(10, activation="softmax" if softmax else None, name="out"))
    model = keras.Sequential(layers, name="mlp")
    return _train(model, epochs)


def cnn(epochs: int = 6) -> Any:
    """A trained functional CNN on 8x8x1 digits: Conv -> BN -> ReLU -> Conv -> pool -> Flatten -> Dense."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation("relu", name="relu1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc")(x)
    out = keras.layers.Dense(10, activation="softmax", name="out")(x)
    return _train(keras.Model(inp, out, name="cnn"), epochs, image=True)


def _train(model: Any, epochs: int, image: bool = False) -> Any:
    import keras

    x, y, _, _ = digits(image)
    from_logits = model.layers[-1].get_config().get("activation") != "softmax"
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def save(model: Any, path: Path) -> Path:
    model.save(path)
    return path


def pass_input(model_path: Path, out_dir: Path, config: Any, image: bool = False, with_eval: bool = True,
               spec_dir: Path | None = None) -> Any:
    """A PassInput whose data("train") / data("eval") serve digits (eval optional, as in a spec without it)."""
    from deployc.passes.base import PassInput

    x, y, xt, yt = digits(image)

    def data(which: str) -> tuple[np.ndarray, np.ndarray]:
        if which == "train":
            return x, y
        if which == "eval" and with_eval:
            return xt, yt
        raise ValueError(f"data.{which} is not set")

    def no_eval(path: Path) -> dict[str, Any]:
        raise AssertionError("not used by Keras passes")

    return PassInput(model=model_path, out_dir=out_dir, config=config, data=data, evaluate=no_eval, gates=None,
                     log=lambda s: None, spec_dir=spec_dir)
