"""Deterministic benchmark models: built locally from fixed seeds, trained once, cached as .keras + .onnx + data.

Three shapes of workload that optimization passes treat differently:
- `mlp`: digits, 64 -> 1024 -> 1024 -> 1024 -> 10 (MatMul-bound, the int8-dynamic case).
- `cnn`: digits upsampled to 32x32, Conv 32 -> Conv 64 -> 4x4 max-pool -> Conv 128 (5x5) -> global pool -> Dense
  (int8-static); the wide pool and kernel give the global pool a view of the whole digit (99% accurate).
- `transformer`: a synthetic token task, vocab 2000, length 64, 2 blocks, d=256, 4 heads, FFN 1024 (int8-dynamic).

Nothing is downloaded: digits ship with scikit-learn, the token task is generated. The cache folder is
`$DEPLOYC_BENCH_CACHE` or `<tmp>/deployc-bench`; bump VERSION when a builder changes.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VERSION = 2
SEED = 1234
VOCAB, SEQ_LEN, D_MODEL, HEADS, N_CLASSES_TEXT = 2000, 64, 256, 4, 4


@dataclass(frozen=True)
class BenchModel:
    """A trained model as the passes see it: the fp32 ONNX file, its Keras source and the data splits."""

    name: str
    keras_path: Path
    onnx_path: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_calib: np.ndarray


def cache_dir() -> Path:
    root = Path(os.environ.get("DEPLOYC_BENCH_CACHE") or Path(tempfile.gettempdir()) / "deployc-bench")
    path = root / f"v{VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- data -----------------------------------------------------------------------------------------------------
def digits_split(size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits scaled to [0, 1]; 32x32 images are bilinear upsamplings (NHWC)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    if size != 8:
        from scipy.ndimage import zoom

        imgs = x.reshape(-1, 8, 8)
        x = np.stack([zoom(im, size / 8, order=1) for im in imgs]).astype(np.float32)[..., None]
    cut = int(len(x) * 0.75)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def token_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens with a few class keywords planted (plus one distractor from another class).

    The label is the class with the most keywords in the sequence, so a model must look across positions.
    """
    rng = np.random.default_rng(seed)
    keywords = np.arange(16, 16 + N_CLASSES_TEXT * 20).reshape(N_CLASSES_TEXT, 20)  # 20 keywords per class
    x = rng.integers(16 + keywords.size, VOCAB, size=(n, SEQ_LEN))
    y = rng.integers(0, N_CLASSES_TEXT, size=n)
    for i in range(n):
        other = (y[i] + rng.integers(1, N_CLASSES_TEXT)) % N_CLASSES_TEXT
        words = list(rng.choice(keywords[y[i]], 4)) + list(rng.choice(keywords[other], 2))
        x[i, rng.choice(SEQ_LEN, len(words), replace=False)] = words
    return x.astype(np.int32), y.astype(np.int64)


# --- builders -------------------------------------------------------------------------------------------------
def _keras() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras

    keras.utils.set_random_seed(SEED)
    return keras


def build_mlp() -> Any:
    keras = _keras()
    inp = keras.Input((64,), name="x")
    h = inp
    for _ in range(3):
        h = keras.layers.Dense(1024, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inp, out)


def build_cnn() -> Any:
    keras = _keras()
    L = keras.layers
    inp = keras.Input((32, 32, 1), name="x")
    h = L.Conv2D(32, 3, padding="same", activation="relu")(inp)
    h = L.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = L.MaxPooling2D(4)(h)  # a wide receptive field before the global pool: digits span the whole image
    h = L.Conv2D(128, 5, padding="same", activation="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    out = L.Dense(10, activation="softmax")(h)
    return keras.Model(inp, out)


def build_transformer() -> Any:
    keras = _keras()
    _register_layers(keras)
    L = keras.layers
    inp = keras.Input((SEQ_LEN,), dtype="int32", name="tokens")
    h = PositionalEmbedding(VOCAB, SEQ_LEN, D_MODEL)(inp)
    for _ in range(2):
        a = SelfAttention(D_MODEL, HEADS)(h)
        h = L.LayerNormalization(epsilon=1e-6)(h + a)
        f = L.Dense(4 * D_MODEL, activation="relu")(h)
        f = L.Dense(D_MODEL)(f)
        h = L.LayerNormalization(epsilon=1e-6)(h + f)
    h = L.GlobalAveragePooling1D()(h)
    out = L.Dense(N_CLASSES_TEXT, activation="softmax")(h)
    return keras.Model(inp, out)


PositionalEmbedding: Any = None
SelfAttention: Any = None


def _register_layers(keras: Any) -> None:
    """Custom layers for the transformer; registered so keras.models.load_model(safe_mode=True) finds them.

    Attention is written with Dense + matmul (not keras' MultiHeadAttention) so it lowers to ONNX MatMul,
    which is what ONNX Runtime's int8 quantizers act on.
    """
    global PositionalEmbedding, SelfAttention
    if PositionalEmbedding is not None:
        return
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="deployc_bench")
    class _PositionalEmbedding(keras.layers.Layer):
        def __init__(self, vocab: int, length: int, dim: int, **kw: Any):
            super().__init__(**kw)
            self.vocab, self.length, self.dim = vocab, length, dim
            self.tok = keras.layers.Embedding(vocab, dim)

        def build(self, shape: Any) -> None:
            self.pos = self.add_weight(name="pos", shape=(self.length, self.dim), initializer="random_normal")

        def call(self, x: Any) -> Any:
            return self.tok(x) + self.pos

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "vocab": self.vocab, "length": self.length, "dim": self.dim}

    @keras.saving.register_keras_serializable(package="deployc_bench")
    class _SelfAttention(keras.layers.Layer):
        def __init__(self, dim: int, heads: int, **kw: Any):
            super().__init__(**kw)
            self.dim, self.heads = dim, heads
            self.q, self.k, self.v, self.o = (keras.layers.Dense(dim) for _ in range(4))

        def _split(self, t: Any) -> Any:
            t = ops.reshape(t, (-1, SEQ_LEN, self.heads, self.dim // self.heads))
            return ops.transpose(t, (0, 2, 1, 3))

        def call(self, x: Any) -> Any:
            q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
            scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / float(np.sqrt(self.dim // self.heads))
            ctx = ops.matmul(ops.softmax(scores, axis=-1), v)
            ctx = ops.reshape(ops.transpose(ctx, (0, 2, 1, 3)), (-1, SEQ_LEN, self.dim))
            return self.o(ctx)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "dim": self.dim, "heads": self.heads}

    PositionalEmbedding, SelfAttention = _PositionalEmbedding, _SelfAttention


# --- training + cache -----------------------------------------------------------------------------------------
def _data(name: str) -> tuple[np.ndarray, ...]:
    if name == "mlp":
        return digits_split(8)
    if name == "cnn":
        return digits_split(32)
    xt, yt = token_task(10000, SEED)
    xe, ye = token_task(1000, SEED + 1)
    return xt, yt, xe, ye


TRAINING: dict[str, tuple[Callable[[], Any], int, float]] = {  # builder, epochs, learning rate
    "mlp": (build_mlp, 20, 1e-3),
    "cnn": (build_cnn, 40, 2e-3),
    "transformer": (build_transformer, 6, 5e-4),
}
MODELS = tuple(TRAINING)


def load(name: str, log: Callable[[str], None] = print) -> BenchModel:
    """The trained model `name`, from the cache when present (training and conversion happen once)."""
    from deployc.ml.convert import keras_to_onnx

    if name == "transformer":
        _register_layers(_keras())
    folder = cache_dir() / name
    keras_path, onnx_path, npz = folder / "model.keras", folder / "model.onnx", folder / "data.npz"
    if not (keras_path.exists() and onnx_path.exists() and npz.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        xt, yt, xe, ye = _data(name)
        build, epochs, lr = TRAINING[name]
        keras = _keras()
        model = build()
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        log(f"training {name} ({model.count_params()} parameters, {epochs} epochs)...")
        model.fit(xt, yt, epochs=epochs, batch_size=64, verbose=0, shuffle=True)
        acc = float(np.mean(model.predict(xe, verbose=0).argmax(1) == ye))
        log(f"{name}: eval accuracy {acc:.4f}")
        model.save(keras_path)
        keras_to_onnx(keras_path, onnx_path)
        rng = np.random.default_rng(SEED)
        xc = xt[rng.choice(len(xt), min(len(xt), 256), replace=False)]
        np.savez(npz, x_train=xt, y_train=yt, x_eval=xe, y_eval=ye, x_calib=xc)
    d = np.load(npz)
    return BenchModel(name, keras_path, onnx_path, d["x_train"], d["y_train"], d["x_eval"], d["y_eval"],
                      d["x_calib"])


if __name__ == "__main__":
    import sys

    for n in sys.argv[1:] or MODELS:
        load(n)
