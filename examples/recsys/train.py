"""Train the bundled recsys example: a click model with user/item embeddings (synthetic data, fixed seeds).

The data are drawn from a known generator: 500 users and 300 items with latent 4-d factors and biases; a row's click
probability is the logistic of dot(user, item) plus a linear term in 8 dense features, and the label is
sampled from it. The model learns 8-d user and item embeddings plus an MLP over them and the dense features.

Inputs: user_id (int64, one id per row, shape (batch,)), item_id (int64, shape (batch,)),
dense (float32, shape (batch, 8)). Output: click (float32, shape (batch, 1), P(click)).

Writes, into the output folder (default: next to this file): model.keras, labels.txt ("no-click", "click")
and data/{train,eval,calib}.npz with keys user_id, item_id, dense (and y, int64 0/1, for train and eval;
calib holds inputs only). deploy.yaml is committed.
Run: python examples/recsys/train.py [OUTDIR]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

HERE = Path(__file__).resolve().parent
SEED = 11
N_USERS, N_ITEMS, N_DENSE, N_FACTORS, EMBED = 500, 300, 8, 4, 64
N_TRAIN, N_EVAL, N_CALIB = 80000, 5000, 256


def make_data(rng, n: int, user_f, item_f, user_b, item_b, w):
    import numpy as np

    users = rng.integers(0, N_USERS, size=n)
    items = rng.integers(0, N_ITEMS, size=n)
    dense = rng.normal(size=(n, N_DENSE)).astype("float32")
    logit = (user_f[users] * item_f[items]).sum(axis=1) + user_b[users] + item_b[items] + dense @ w - 0.5
    p = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random(n) < p).astype("int64")
    return {"user_id": users.astype("int64"), "item_id": items.astype("int64"), "dense": dense}, y


def main(out: Path = HERE, epochs: int = 8) -> None:
    from deployc.ml.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines (absl, oneDNN, CUDA) kept off stderr
    import keras
    import numpy as np
    from sklearn.metrics import roc_auc_score

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    user_f = rng.normal(scale=1.0, size=(N_USERS, N_FACTORS))
    item_f = rng.normal(scale=1.0, size=(N_ITEMS, N_FACTORS))
    user_b = rng.normal(scale=0.5, size=N_USERS)
    item_b = rng.normal(scale=0.5, size=N_ITEMS)
    w = rng.normal(scale=0.6, size=N_DENSE)
    x_train, y_train = make_data(rng, N_TRAIN, user_f, item_f, user_b, item_b, w)
    x_eval, y_eval = make_data(rng, N_EVAL, user_f, item_f, user_b, item_b, w)
    x_calib = {k: v[:N_CALIB] for k, v in x_train.items()}

    user_id = keras.Input(shape=(), dtype="int64", name="user_id")
    item_id = keras.Input(shape=(), dtype="int64", name="item_id")
    dense = keras.Input(shape=(N_DENSE,), dtype="float32", name="dense")
    u = keras.layers.Embedding(N_USERS, EMBED, embeddings_regularizer=keras.regularizers.L2(1e-3),
                               name="user_embedding")(user_id)
    i = keras.layers.Embedding(N_ITEMS, EMBED, embeddings_regularizer=keras.regularizers.L2(1e-3),
                               name="item_embedding")(item_id)
    dot = keras.layers.Dot(axes=1, name="user_item_dot")([u, i])
    h = keras.layers.Concatenate(name="features")([u, i, dot, dense])
    h = keras.layers.Dense(64, activation="relu", name="hidden1")(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden2")(h)
    h = keras.layers.Concatenate(name="head_features")([h, dot])
    click = keras.layers.Dense(1, activation="sigmoid", name="click")(h)
    model = keras.Model({"user_id": user_id, "item_id": item_id, "dense": dense}, {"click": click},
                        name="recsys")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss={"click": "binary_crossentropy"})
    model.fit(x_train, {"click": y_train.astype("float32")}, epochs=epochs, batch_size=256, verbose=0,
              shuffle=True)
    p_eval = np.asarray(model.predict(x_eval, batch_size=1024, verbose=0)["click"]).reshape(-1)
    auc = roc_auc_score(y_eval, p_eval)

    (out / "data").mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    np.savez(out / "data" / "train.npz", **x_train, y=y_train)
    np.savez(out / "data" / "eval.npz", **x_eval, y=y_eval)
    np.savez(out / "data" / "calib.npz", **x_calib)
    (out / "labels.txt").write_text("no-click\nclick\n")
    print(f"trained recsys model: eval AUC {auc:.4f}; wrote {out / 'model.keras'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
