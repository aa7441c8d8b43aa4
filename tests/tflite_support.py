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


# Models of several inputs and outputs (tests/test_tflite_multi.py), trained briefly on synthetic data so that
# their outputs are confident enough for class agreement to mean something.

TOKENS, VOCAB, USERS, ITEMS = 16, 100, 50, 80


def text_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids and an attention mask (int64, padding id 0); y: which third of the vocabulary most of the
    unmasked tokens fall in; length: the unmasked share."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, TOKENS + 1, n)
    mask = (np.arange(TOKENS)[None, :] < lengths[:, None]).astype(np.int64)
    favourite = rng.integers(0, 3, n)
    pick = rng.random((n, TOKENS)) < 0.6
    third = np.where(pick, favourite[:, None], rng.integers(0, 3, (n, TOKENS)))
    ids = (1 + third * 33 + rng.integers(0, 33, (n, TOKENS))).astype(np.int64) * mask
    counts = np.stack([((ids - 1) // 33 == k).sum(1) for k in range(3)], 1)
    y = np.argmax(counts + 1e-3 * rng.random((n, 3)), 1).astype(np.int64)  # ties broken at random
    return {"ids": ids, "mask": mask, "y": y, "length": (lengths / TOKENS).astype(np.float32)}


def text_model(folder: Path) -> Path:
    """input_ids + attention_mask (int64, (None, 16)) -> Embedding -> masked mean -> outputs [score, probs]:
    the prediction output `probs` is not the first, and the .tflite file sorts them by name."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import keras
    from keras import ops

    keras.utils.set_random_seed(1)
    ids = keras.Input((TOKENS,), dtype="int64", name="input_ids")
    mask = keras.Input((TOKENS,), dtype="int64", name="attention_mask")
    weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
    pooled = ops.sum(keras.layers.Embedding(VOCAB, 8)(ids) * weights, axis=1) / ops.maximum(
        ops.sum(weights, axis=1), 1.0)
    hidden = keras.layers.Dense(16, activation="relu")(pooled)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    model = keras.Model({"input_ids": ids, "attention_mask": mask}, [score, probs])
    model.compile("adam", ["mse", "sparse_categorical_crossentropy"])
    d = text_data(1200, 0)
    model.fit({"input_ids": d["ids"], "attention_mask": d["mask"]}, [d["length"], d["y"]], epochs=12,
              batch_size=32, verbose=0)
    path = folder / "text.keras"
    model.save(path)
    for name, rows, seed in (("text_eval", 300, 1), ("text_calib", 200, 2)):
        e = text_data(rows, seed)
        np.savez(folder / f"{name}.npz", ids=e["ids"], mask=e["mask"], y=e["y"])
    return path


def rec_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """user_id (int64) and item_id (int32), both (n, 1), and 4 float features; y: clicked or not."""
    biases = np.random.default_rng(99)
    user_bias, item_bias, w = biases.normal(size=USERS), biases.normal(size=ITEMS), biases.normal(size=4)
    rng = np.random.default_rng(seed)
    user = rng.integers(0, USERS, (n, 1)).astype(np.int64)
    item = rng.integers(0, ITEMS, (n, 1)).astype(np.int32)
    dense = rng.normal(size=(n, 4)).astype(np.float32)
    y = (user_bias[user[:, 0]] + item_bias[item[:, 0]] + dense @ w > 0).astype(np.int64)
    return {"user": user, "item": item, "dense": dense, "y": y}


def rec_model(folder: Path) -> Path:
    """user_id (int64) + item_id (int32) -> embeddings, with dense (float32, (None, 4)) -> sigmoid `click`."""
    from deployc.ml.convert import quiet_tensorflow

    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(2)
    user = keras.Input((1,), dtype="int64", name="user_id")
    item = keras.Input((1,), dtype="int32", name="item_id")
    dense = keras.Input((4,), name="dense")
    z = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Embedding(USERS, 4)(user)),
                                    keras.layers.Flatten()(keras.layers.Embedding(ITEMS, 4)(item)), dense])
    z = keras.layers.Dense(16, activation="relu")(z)
    model = keras.Model([user, item, dense], keras.layers.Dense(1, activation="sigmoid", name="click")(z))
    model.compile("adam", "binary_crossentropy")
    d = rec_data(2000, 0)
    model.fit({"user_id": d["user"], "item_id": d["item"], "dense": d["dense"]}, d["y"], epochs=12, batch_size=32,
              verbose=0)
    path = folder / "rec.keras"
    model.save(path)
    for name, rows, seed in (("rec_eval", 300, 1), ("rec_calib", 200, 2)):
        e = rec_data(rows, seed)
        np.savez(folder / f"{name}.npz", user=e["user"], item=e["item"], dense=e["dense"], y=e["y"])
    return path


def text_inputs(npz: Path) -> dict[str, np.ndarray]:
    d = np.load(npz)
    return {"input_ids": d["ids"], "attention_mask": d["mask"]}


def rec_inputs(npz: Path) -> dict[str, np.ndarray]:
    d = np.load(npz)
    return {"user_id": d["user"], "item_id": d["item"], "dense": d["dense"]}


def markdown_headings(text: str) -> list[str]:
    """The headings of a Markdown text outside code fences (CommonMark: a fence opens or closes only at the start
    of a line); every fence must be closed."""
    headings, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            headings.append(line)
    assert not in_code
    return headings
