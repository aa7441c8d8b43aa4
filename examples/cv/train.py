"""Train the bundled CV example: a MobileNet-style CNN on scikit-learn's digits (no downloads, fixed seeds).

The 8x8 digit images are scaled to [0, 1] and upsampled to 16x16 by pixel repetition (deterministic).
The model: a Conv2D + BatchNormalization + ReLU6 stem, depthwise-separable blocks (DepthwiseConv2D + BN +
ReLU6, then a 1x1 Conv2D + BN), one with a residual Add, a SeparableConv2D block, global average pooling
and a softmax head. BatchNormalization uses momentum 0.9 so its moving statistics settle within the run;
the printed accuracy is measured in inference mode.

Input: image (float32, shape (batch, 16, 16, 1), values in [0, 1]). Output: probs (float32, shape
(batch, 10)).

Writes, into the output folder (default: next to this file): model.keras, labels.txt (digit-0..digit-9)
and data/{train,eval,calib}.npz with keys image (and y, int64 class indices, for train and eval; calib
holds inputs only). deploy.yaml is committed.
Run: python examples/cv/train.py [OUTDIR]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

HERE = Path(__file__).resolve().parent
SEED = 17
SIZE = 16
N_EVAL, N_CALIB = 360, 256
BN_MOMENTUM = 0.9


def conv_bn(x, filters: int, kernel: int, strides: int, name: str, relu: bool = True):
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if relu else x


def depthwise_separable(x, filters: int, strides: int, name: str, relu_out: bool = True):
    """DepthwiseConv2D + BN + ReLU6, then a 1x1 Conv2D + BN (+ ReLU6 unless it feeds a residual Add)."""
    import keras

    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                     name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(x)
    return conv_bn(x, filters, 1, 1, f"{name}_pw", relu=relu_out)


def main(out: Path = HERE, epochs: int = 20, *, width: int = 1, size: int = SIZE) -> None:
    """Train and write the example. `width` multiplies every layer's filters and `size` (a multiple of 8) is
    the image side; the defaults are the shipped example. bench/examples.py also trains larger variants."""
    from deployc.ml.quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow's start-up lines (absl, oneDNN, CUDA) kept off stderr
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(SEED)
    digits = load_digits()
    scale = size // 8
    x = (digits.images / 16.0).astype("float32").repeat(scale, axis=1).repeat(scale, axis=2)[..., None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_eval, y_eval = x[N_EVAL:], y[N_EVAL:], x[:N_EVAL], y[:N_EVAL]

    image = keras.Input((size, size, 1), dtype="float32", name="image")
    h = conv_bn(image, 16 * width, 3, 1, "stem")                           # 16x16x16
    h = depthwise_separable(h, 32 * width, 2, "block1")                    # 8x8x32
    r = depthwise_separable(h, 32 * width, 1, "block2", relu_out=False)    # 8x8x32, linear
    h = keras.layers.Add(name="block2_residual")([h, r])
    h = keras.layers.SeparableConv2D(64 * width, 3, strides=2, padding="same", use_bias=False,
                                     name="block3_sepconv")(h)             # 4x4x64
    h = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="block3_bn")(h)
    h = keras.layers.ReLU(max_value=6.0, name="block3_relu6")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    probs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model({"image": image}, {"probs": probs}, name="cv")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss={"probs": "sparse_categorical_crossentropy"})
    model.fit({"image": x_train}, {"probs": y_train}, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    p_eval = np.asarray(model.predict({"image": x_eval}, batch_size=360, verbose=0)["probs"])  # inference mode
    acc = float((p_eval.argmax(axis=-1) == y_eval).mean())

    (out / "data").mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    np.savez(out / "data" / "train.npz", image=x_train, y=y_train)
    np.savez(out / "data" / "eval.npz", image=x_eval, y=y_eval)
    np.savez(out / "data" / "calib.npz", image=x_train[:N_CALIB])
    (out / "labels.txt").write_text("".join(f"digit-{i}\n" for i in range(10)))
    print(f"trained cv model: eval accuracy {acc:.4f}; wrote {out / 'model.keras'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
