"""Structured pruning and width distillation of mobile CV models (BatchNormalization, DepthwiseConv2D,
SeparableConv2D, ReLU6, residual Add) and of a two-input functional model, on real numbers: outputs against the
original, channel counts, folded BatchNormalization, an artifact that converts, accuracy after fine-tuning."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from keras_support import digits, save

from deployc.errors import InputError
from deployc.schema.passes import DistillConfig, PruneConfig

pytestmark = pytest.mark.slow

Data = Callable[[str], tuple[Any, Any]]


def digits16() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits upscaled to 16x16x1 (each pixel repeated 2x2)."""
    x, y, xt, yt = digits(image=True)
    up = lambda a: a.repeat(2, axis=1).repeat(2, axis=2)  # noqa: E731
    return up(x), y, up(xt), yt


def mobile() -> Any:
    """Conv(no bias)+BN+ReLU6, two residual blocks (DW+BN+ReLU6+1x1 Conv+BN, Add), SeparableConv+BN+ReLU6,
    DW x2 (depth multiplier)+BN+ReLU6, global average pool, Dense softmax."""
    import keras

    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1), name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu")(x)
    for i in (1, 2):
        y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{i}")(x)
        y = layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(y)
        y = layers.ReLU(max_value=6.0, name=f"dw{i}_relu")(y)
        y = layers.Conv2D(16, 1, use_bias=False, name=f"pw{i}")(y)
        y = layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(y)
        x = layers.Add(name=f"add{i}")([x, y])
    x = layers.SeparableConv2D(32, 3, strides=2, padding="same", name="sep")(x)
    x = layers.BatchNormalization(momentum=0.9, name="sep_bn")(x)
    x = layers.Activation("relu6", name="sep_relu")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw3")(x)
    x = layers.BatchNormalization(momentum=0.9, name="dw3_bn")(x)
    x = layers.ReLU(max_value=6.0, name="dw3_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(10, activation="softmax", name="out")(x)
    return keras.Model(inp, out, name="mobile")


def two_inputs() -> Any:
    """ids (int64) -> Embedding -> Flatten, and 6 float features; concatenated -> Dense 32 -> Dense 16 -> sigmoid."""
    import keras

    layers = keras.layers
    keras.utils.set_random_seed(0)
    ids = keras.Input((1,), dtype="int64", name="ids")
    feats = keras.Input((6,), name="feats")
    e = layers.Flatten(name="emb_flat")(layers.Embedding(20, 4, name="emb")(ids))
    h = layers.Concatenate(name="join")([e, feats])
    h = layers.Dense(32, activation="relu", name="d1")(h)
    h = layers.Dense(16, activation="relu", name="d2")(h)
    return keras.Model([ids, feats], layers.Dense(1, activation="sigmoid", name="o")(h), name="two")


def tabular(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A label that needs both inputs: the id's hidden offset plus a linear score of the features."""
    rng = np.random.default_rng(seed)
    offset = np.random.default_rng(99).normal(size=20)
    ids = rng.integers(0, 20, size=(n, 1))
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    y = (offset[ids[:, 0]] + feats @ np.array([1.0, -1.0, 0.5, 0.0, 0.0, 0.5]) > 0).astype(np.int64)
    return {"ids": ids, "feats": feats}, y


def train(model: Any, x: Any, y: np.ndarray, epochs: int, binary: bool = False) -> Any:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def data_of(train_set: tuple[Any, Any], eval_set: tuple[Any, Any]) -> Data:
    def data(which: str) -> tuple[Any, Any]:
        return {"train": train_set, "eval": eval_set}[which]

    return data


def pass_input(model: Path, out: Path, config: Any, data: Data) -> Any:
    from deployc.passes.base import PassInput

    def no_eval(path: Path) -> dict[str, Any]:
        raise AssertionError("not used by Keras passes")

    return PassInput(model=model, out_dir=out, config=config, data=data, evaluate=no_eval, gates=None,
                     log=lambda s: None)


def prune_pass(model: Path, out: Path, data: Data, **cfg: Any) -> Any:
    from deployc.passes.prune import PrunePass

    return PrunePass().apply(pass_input(model, out, PruneConfig(**cfg), data))


def distill_pass(model: Path, out: Path, data: Data, **cfg: Any) -> Any:
    from deployc.passes.distill import DistillPass

    return DistillPass().apply(pass_input(model, out, DistillConfig(**cfg), data))


def load(path: Path) -> Any:
    from deployc.ml.convert import load_keras

    return load_keras(path)


def kinds(model: Any) -> set[str]:
    return {type(layer).__name__ for layer in model.layers}


def randomize_batchnorm(model: Any, seed: int = 0) -> None:
    """Moving statistics and affine weights far from the identity, so that folding has something to do."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n), rng.normal(0, 0.3, n),
                               rng.uniform(0.5, 2.0, n)])


@pytest.fixture(scope="module")
def mobile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y, _, _ = digits16()
    return save(train(mobile(), x, y, epochs=8), tmp_path_factory.mktemp("mobile") / "model.keras")


@pytest.fixture(scope="module")
def two_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(train(two_inputs(), *tabular(2000, 0), epochs=12, binary=True),
                tmp_path_factory.mktemp("two") / "model.keras")


def mobile_data() -> Data:
    x, y, xt, yt = digits16()
    return data_of((x, y), (xt, yt))


def two_data() -> Data:
    return data_of(tabular(2000, 0), tabular(500, 1))


# ---------------------------------------------------------------- channel groups and exact rebuilds


def test_residual_branches_form_one_group_pruned_jointly(mobile_path: Path) -> None:
    from deployc.ml.channels import channel_graph
    from deployc.ml.prune import structured_keep

    graph = channel_graph(load(mobile_path), "test")
    groups = {g.name: (g.owners, g.fixed) for g in graph.groups()}
    assert groups == {"stem": (["stem", "pw1", "pw2"], False), "sep": (["sep"], False), "out": (["out"], True)}
    keep = structured_keep(graph, 0.5)
    assert set(keep) == {"stem", "pw1", "pw2", "sep"}  # the output keeps its classes
    assert len(keep["stem"]) == 8 and len(keep["sep"]) == 16
    np.testing.assert_array_equal(keep["stem"], keep["pw1"])
    np.testing.assert_array_equal(keep["stem"], keep["pw2"])


def silence(model: Any, space: dict[str, list[str]], dead: dict[str, np.ndarray], sizes: dict[str, int]) -> None:
    """Make channels exactly zero all along their way: the owners' output weights (and biases) and every
    BatchNormalization's gamma and beta, and depthwise biases, at those channels."""
    for group, layers in space.items():
        for name in layers:
            layer = model.get_layer(name)
            weights = layer.get_weights()
            kind = type(layer).__name__
            d = dead[group]
            times = weights[-1].shape[-1] // sizes[group]  # after a depth multiplier: c -> c * times + m
            d = (d[:, None] * times + np.arange(times)).ravel()
            if kind == "DepthwiseConv2D":
                weights = weights[:1] + [np.where(np.isin(np.arange(len(w)), d), 0, w) for w in weights[1:]]
            elif kind == "BatchNormalization":
                weights[0][d] = 0
                weights[1][d] = 0
            else:
                for w in weights[1:] if kind == "SeparableConv2D" else weights:
                    w[..., d] = 0
            layer.set_weights(weights)


def test_pruning_dead_channels_changes_no_output_and_folds_every_batchnorm(mobile_path: Path,
                                                                          tmp_path: Path) -> None:
    """Half the channels of each group are made exactly zero on their whole way (conv, BN, depthwise, Add,
    separable, depthwise x2); 50% structured pruning must remove exactly those, so the pruned and folded
    model (no fine-tuning) computes what the original computes."""
    model = load(mobile_path)
    randomize_batchnorm(model)
    rng = np.random.default_rng(5)
    dead = {"stem": np.sort(rng.permutation(16)[:8]), "sep": np.sort(rng.permutation(32)[:16])}
    silence(model, {"stem": ["stem", "stem_bn", "dw1_bn", "dw2_bn", "pw1", "pw1_bn", "pw2", "pw2_bn"],
                    "sep": ["sep", "sep_bn", "dw3", "dw3_bn"]}, dead, {"stem": 16, "sep": 32})
    path = save(model, tmp_path / "dead.keras")
    res = prune_pass(path, tmp_path / "out", mobile_data(), sparsity=0.5, structured=True, epochs=0)
    small = load(res.model)
    assert res.details["widths_after"] == {"stem": 8, "dw1": 8, "pw1": 8, "dw2": 8, "pw2": 8, "sep": 16,
                                           "dw3": 32, "out": 10}
    assert res.details["channel_groups"] == {"tied": [["stem", "pw1", "pw2"]], "unpruned": ["out"]}
    assert res.details["batchnorm_folded"] == sorted(["stem_bn", "dw1_bn", "pw1_bn", "dw2_bn", "pw2_bn", "sep_bn",
                                                      "dw3_bn"])
    assert "BatchNormalization" not in kinds(small)
    assert small.get_layer("sep").get_weights()[1].shape == (1, 1, 8, 16)  # depthwise 8 kept x 1, pointwise 16
    assert small.get_layer("dw3").get_weights()[0].shape == (3, 3, 16, 2)
    assert small.get_layer("out").kernel.shape == (32, 10)
    x = digits16()[2]
    want = model(x, training=False)
    np.testing.assert_allclose(small(x, training=False), want, atol=1e-5)
    assert float(np.std(np.asarray(want))) > 0.01  # not a constant model


def test_folding_is_exact_in_inference_mode_and_leaves_unfoldable_batchnorm() -> None:
    import keras

    from deployc.ml.fold import fold_batchnorm

    model = mobile()
    layers = keras.layers
    x = layers.Conv2D(4, 3, activation="relu", name="act_conv")(model.get_layer("dw3_relu").output)
    x = layers.BatchNormalization(momentum=0.9, name="after_relu")(x)  # a nonlinearity in between: not foldable
    x = layers.GlobalAveragePooling2D(name="gap2")(x)
    x = layers.Dense(8, name="fc")(x)
    x = layers.BatchNormalization(momentum=0.9, name="fc_bn")(x)  # after a linear Dense: folded
    model = keras.Model(model.inputs, layers.Dense(10, activation="softmax", name="out2")(x))
    randomize_batchnorm(model, seed=3)
    folded, names = fold_batchnorm(model)
    assert "after_relu" not in names and "fc_bn" in names and len(names) == 8
    assert [type(layer).__name__ for layer in folded.layers].count("BatchNormalization") == 1
    assert folded.get_layer("stem").use_bias and folded.get_layer("dw1").use_bias
    x = np.random.default_rng(0).random((64, 16, 16, 1), dtype=np.float32) * 2
    want = np.asarray(model(x, training=False))
    got = np.asarray(folded(x, training=False))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(np.abs(np.asarray(model(x, training=True)) - want).max()) > 1e-3  # the stats mattered


# ---------------------------------------------------------------- the passes on a trained mobile model


def test_structured_pass_fine_tunes_and_exports_a_model_that_converts(mobile_path: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from deployc.ml.convert import keras_to_onnx

    res = prune_pass(mobile_path, tmp_path, mobile_data(), sparsity=0.5, structured=True, epochs=5,
                     learning_rate=3e-3, batch_size=64)
    d = res.details
    assert d["widths_after"] == {"stem": 8, "dw1": 8, "pw1": 8, "dw2": 8, "pw2": 8, "sep": 16, "dw3": 32,
                                 "out": 10}
    assert d["params_after"] < 0.5 * d["params_before"]
    assert d["eval_accuracy_before"] >= 0.95
    assert d["eval_accuracy"] >= 0.88  # a half-width copy trained from scratch for 8 epochs: 0.94
    model = load(res.model)
    assert "BatchNormalization" not in kinds(model)
    onnx_path = tmp_path / "model.onnx"
    keras_to_onnx(res.model, onnx_path)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    x = digits16()[2][:50]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


def test_distilled_mobile_student_is_half_width_folded_and_learns(mobile_path: Path, tmp_path: Path) -> None:
    res = distill_pass(mobile_path, tmp_path, mobile_data(), width=0.5, epochs=6, learning_rate=3e-3,
                       batch_size=32)
    d = res.details
    assert d["widths_student"] == {"stem": 8, "dw1": 8, "pw1": 8, "dw2": 8, "pw2": 8, "sep": 16, "dw3": 32,
                                   "out": 10}
    assert len(d["batchnorm_folded"]) == 7
    assert "BatchNormalization" not in kinds(load(res.model))
    assert d["eval_accuracy"] >= 0.8  # 0.886 measured; the teacher 0.989


# ---------------------------------------------------------------- a model of two inputs


def test_structured_prunes_the_dense_layers_of_a_two_input_model(two_path: Path, tmp_path: Path) -> None:
    res = prune_pass(two_path, tmp_path, two_data(), sparsity=0.5, structured=True, epochs=4)
    d = res.details
    assert d["widths_before"] == {"d1": 32, "d2": 16, "o": 1}
    assert d["widths_after"] == {"d1": 16, "d2": 8, "o": 1}
    model = load(res.model)
    assert model.get_layer("emb").get_weights()[0].shape == (20, 4)  # embeddings left alone
    assert model.get_layer("d1").kernel.shape == (10, 16)
    assert d["eval_accuracy_before"] >= 0.85
    assert d["eval_accuracy"] >= d["eval_accuracy_before"] - 0.03


def test_same_two_input_model_gives_the_same_file(two_path: Path, tmp_path: Path) -> None:
    a = prune_pass(two_path, tmp_path / "a", two_data(), sparsity=0.5, structured=True, epochs=1)
    b = prune_pass(two_path, tmp_path / "b", two_data(), sparsity=0.5, structured=True, epochs=1)
    assert a.model.read_bytes() == b.model.read_bytes()


def test_unstructured_and_distill_take_a_mapping_of_inputs(two_path: Path, tmp_path: Path) -> None:
    res = prune_pass(two_path, tmp_path / "p", two_data(), sparsity=0.5, epochs=1)
    assert res.details["sparsity"]["per_layer"]["d1"] == 0.5
    assert res.details["eval_accuracy"] >= 0.8
    dist = distill_pass(two_path, tmp_path / "d", two_data(), width=0.5, epochs=15, learning_rate=3e-3)
    assert dist.details["widths_student"] == {"d1": 16, "d2": 8, "o": 1}
    assert dist.details["eval_accuracy"] >= dist.details["eval_accuracy_before"] - 0.05


def test_inputs_are_matched_by_name_and_checked(two_path: Path, tmp_path: Path) -> None:
    (x, y), ev = tabular(200, 0), tabular(50, 1)
    with pytest.raises(InputError, match="needs inputs feats"):
        prune_pass(two_path, tmp_path / "a", data_of(({"ids": x["ids"]}, y), ev), structured=True, epochs=0)
    bad = {**x, "feats": x["feats"][:, :5]}
    with pytest.raises(InputError, match="rows for input 'feats' have shape \\(5,\\)"):
        prune_pass(two_path, tmp_path / "b", data_of((bad, y), ev), structured=True, epochs=0)
    floats = {**x, "ids": x["ids"].astype(np.float64)}  # whole numbers as floats: cast to the int64 input
    res = prune_pass(two_path, tmp_path / "c", data_of((floats, y), ev), structured=True, epochs=0)
    assert res.details["widths_after"]["d1"] == 16


def test_a_model_returning_a_dict_of_one_output_is_pruned(tmp_path: Path) -> None:
    """Keras models built as `keras.Model(inputs, {"probs": ...})` (the bundled examples) predict a dict."""
    import keras

    keras.utils.set_random_seed(3)
    x_in = keras.Input((10,), name="features")
    h = keras.layers.Dense(32, activation="relu", name="d1")(x_in)
    model = keras.Model({"features": x_in}, {"probs": keras.layers.Dense(3, activation="softmax", name="probs")(h)})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    train(model, {"features": x}, y, 5)
    path = tmp_path / "m.keras"
    model.save(path)
    res = prune_pass(path, tmp_path / "out", data_of((x, y), (x, y)), sparsity=0.5, structured=True, epochs=2)
    assert res.details["widths_after"]["d1"] == 16
    assert res.details["eval_accuracy"] >= res.details["eval_accuracy_before"] - 0.1
