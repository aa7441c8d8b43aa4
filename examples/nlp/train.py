"""Train the bundled NLP example: a small Transformer topic classifier on a synthetic corpus (fixed seeds).

The corpus is drawn from a known generator: a 200-token vocabulary (id 0 is padding), 4 topics with 24
keywords each and 100 shared filler words; a document is 8-32 tokens long and each token is, with
probability 0.25, a keyword of its topic (otherwise filler). Documents are padded with 0 to 32 tokens.
The model: token + learned position embeddings, two Transformer encoder blocks (MultiHeadAttention using
the attention mask, LayerNormalization, feed-forward), masked mean pooling and a softmax head. The mask
handling is built from keras.ops calls on the functional graph (no Lambda or custom layers), so the
saved model loads with safe_mode=True.

Inputs: input_ids (int64, shape (batch, 32)), attention_mask (int64, shape (batch, 32), 1 = token,
0 = padding). Output: probs (float32, shape (batch, 4)).

Writes, into the output folder (default: next to this file): model.keras, labels.txt (the 4 topic names)
and data/{train,eval,calib}.npz with keys input_ids, attention_mask (and y, int64 class indices, for
train and eval; calib holds inputs only). deploy.yaml is committed.
Run: python examples/nlp/train.py [OUTDIR]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

HERE = Path(__file__).resolve().parent
SEED = 13
TOPICS = ("sports", "finance", "science", "travel")
VOCAB, SEQ_LEN, MIN_LEN = 200, 32, 8
N_KEYWORDS, P_KEYWORD = 24, 0.25
N_TRAIN, N_EVAL, N_CALIB = 4000, 1000, 256
DIM, HEADS, FF, BLOCKS = 32, 4, 64, 2


def make_corpus(rng, n: int):
    import numpy as np

    first_filler = 1 + len(TOPICS) * N_KEYWORDS
    y = rng.integers(0, len(TOPICS), size=n)
    lengths = rng.integers(MIN_LEN, SEQ_LEN + 1, size=n)
    keyword = 1 + y[:, None] * N_KEYWORDS + rng.integers(0, N_KEYWORDS, size=(n, SEQ_LEN))
    filler = rng.integers(first_filler, VOCAB, size=(n, SEQ_LEN))
    ids = np.where(rng.random((n, SEQ_LEN)) < P_KEYWORD, keyword, filler)
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype("int64")
    ids = (ids * mask).astype("int64")
    return {"input_ids": ids, "attention_mask": mask}, y.astype("int64")


def encoder_block(x, attn_mask, i: int, dim: int = DIM, ff: int = FF):
    import keras

    a = keras.layers.MultiHeadAttention(HEADS, dim // HEADS, name=f"block{i}_attention")(
        x, x, attention_mask=attn_mask)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(
        keras.layers.Add(name=f"block{i}_residual1")([x, a]))
    f = keras.layers.Dense(ff, activation="relu", name=f"block{i}_ff1")(x)
    f = keras.layers.Dense(dim, name=f"block{i}_ff2")(f)
    return keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(
        keras.layers.Add(name=f"block{i}_residual2")([x, f]))


def main(out: Path = HERE, epochs: int = 6, *, dim: int = DIM, ff: int = FF) -> None:
    """Train and write the example. `dim` (the model width) and `ff` (the feed-forward width) size the model;
    the defaults are the shipped example. bench/examples.py also trains a larger one."""
    from deployc.ml.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines (absl, oneDNN, CUDA) kept off stderr
    import keras
    import numpy as np
    from keras import ops

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x_train, y_train = make_corpus(rng, N_TRAIN)
    x_eval, y_eval = make_corpus(rng, N_EVAL)
    x_calib = {k: v[:N_CALIB] for k, v in x_train.items()}

    input_ids = keras.Input(shape=(SEQ_LEN,), dtype="int64", name="input_ids")
    attention_mask = keras.Input(shape=(SEQ_LEN,), dtype="int64", name="attention_mask")
    positions = ops.cumsum(ops.ones_like(input_ids), axis=1) - 1          # 0..31 per row
    x = keras.layers.Add(name="embeddings")([
        keras.layers.Embedding(VOCAB, dim, name="token_embedding")(input_ids),
        keras.layers.Embedding(SEQ_LEN, dim, name="position_embedding")(positions)])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="embedding_norm")(x)
    key_mask = ops.expand_dims(ops.not_equal(attention_mask, 0), 1)       # (batch, 1, 32): keys to attend
    for i in range(BLOCKS):
        x = encoder_block(x, key_mask, i, dim, ff)
    token_weight = ops.expand_dims(ops.cast(attention_mask, "float32"), -1)
    pooled = ops.sum(x * token_weight, axis=1) / ops.maximum(ops.sum(token_weight, axis=1), 1.0)
    probs = keras.layers.Dense(len(TOPICS), activation="softmax", name="probs")(pooled)
    model = keras.Model({"input_ids": input_ids, "attention_mask": attention_mask}, {"probs": probs},
                        name="nlp")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss={"probs": "sparse_categorical_crossentropy"})
    model.fit(x_train, {"probs": y_train}, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
    p_eval = np.asarray(model.predict(x_eval, batch_size=500, verbose=0)["probs"])
    acc = float((p_eval.argmax(axis=-1) == y_eval).mean())

    (out / "data").mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    np.savez(out / "data" / "train.npz", **x_train, y=y_train)
    np.savez(out / "data" / "eval.npz", **x_eval, y=y_eval)
    np.savez(out / "data" / "calib.npz", **x_calib)
    (out / "labels.txt").write_text("".join(f"{t}\n" for t in TOPICS))
    print(f"trained nlp model: eval accuracy {acc:.4f}; wrote {out / 'model.keras'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
