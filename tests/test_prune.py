"""The prune pass on tiny digits models: exact sparsity, masks that hold, smaller files, smaller rebuilt models."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from keras_support import cnn, digits, mlp, pass_input, save

from deployc.errors import InputError
from deployc.schema.passes import PruneConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(mlp(), tmp_path_factory.mktemp("mlp") / "model.keras")


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(cnn(), tmp_path_factory.mktemp("cnn") / "model.keras")


def run(path: Path, out: Path, image: bool = False, **cfg: Any) -> Any:
    from deployc.passes.prune import PrunePass

    return PrunePass().apply(pass_input(path, out, PruneConfig(**cfg), image=image))


def load(path: Path) -> Any:
    from deployc.ml.convert import load_keras

    return load_keras(path)


def test_schedule_is_cubic_from_zero_to_target() -> None:
    from deployc.ml.prune import polynomial_sparsity

    assert polynomial_sparsity(0, 100, 0.8) == 0.0
    assert polynomial_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert polynomial_sparsity(100, 100, 0.8) == 0.8
    assert polynomial_sparsity(140, 100, 0.8) == 0.8


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_unstructured_zeroes_exactly_the_asked_share_of_each_kernel(mlp_path: Path, tmp_path: Path,
                                                                    sparsity: float) -> None:
    res = run(mlp_path, tmp_path, sparsity=sparsity, epochs=2)
    model = load(res.model)
    for name in ("hidden0", "hidden1", "out"):
        kernel, bias = model.get_layer(name).get_weights()
        assert np.count_nonzero(kernel == 0) == round(sparsity * kernel.size), name
        assert np.count_nonzero(bias == 0) < bias.size  # biases are not pruned
    assert res.details["sparsity"]["overall"] == pytest.approx(sparsity, abs=1e-3)
    assert res.details["sparsity"]["per_layer"]["hidden0"] == pytest.approx(sparsity, abs=1e-4)
    before, after = res.details["before"], res.details["after"]
    assert after["weights_bytes"] == before["weights_bytes"]  # same shapes, same raw size
    assert after["weights_gzip_bytes"] < (1 - sparsity / 2) * before["weights_gzip_bytes"]
    assert res.details["eval_accuracy"] >= (0.95 if sparsity == 0.5 else 0.9)


def test_masks_hold_through_fine_tuning(mlp_path: Path) -> None:
    import keras

    from deployc.ml.prune import kernel_layers, prune_unstructured

    keras.utils.set_random_seed(0)
    model = load(mlp_path)
    layers = kernel_layers(model)
    seen: list[list[np.ndarray]] = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            seen.append([layer.kernel.numpy() == 0 for layer in layers])

    x, y, _, _ = digits()
    prune_unstructured(model, x, y, 0.6, epochs=2, batch_size=64, learning_rate=1e-3, callbacks=[Record()])
    shares = [float(np.mean(z[0])) for z in seen]
    assert len(seen) == 46 and shares[0] == 0.0  # nothing is pruned before the first mask update
    assert 0.0 < shares[len(shares) // 3] < 0.6  # ramping
    assert shares[-1] == pytest.approx(0.6, abs=1e-3)  # at target before the end, then held
    for prev, cur in itertools.pairwise(seen):  # a weight once pruned stays zero through every optimizer step
        for p, c in zip(prev, cur, strict=True):
            assert np.all(c[p])


def test_same_input_gives_the_same_file(mlp_path: Path, tmp_path: Path) -> None:
    a = run(mlp_path, tmp_path / "a", sparsity=0.5, epochs=1)
    b = run(mlp_path, tmp_path / "b", sparsity=0.5, epochs=1)
    assert a.model.read_bytes() == b.model.read_bytes()


def test_structured_mlp_has_fewer_units_and_still_predicts(mlp_path: Path, tmp_path: Path) -> None:
    res = run(mlp_path, tmp_path, sparsity=0.5, structured=True, epochs=3)
    model = load(res.model)
    assert model.get_layer("hidden0").kernel.shape == (64, 32)
    assert model.get_layer("hidden1").kernel.shape == (32, 32)
    assert model.get_layer("out").kernel.shape == (32, 10)  # the output layer keeps its classes
    assert res.details["widths_after"] == {"hidden0": 32, "hidden1": 32, "out": 10}
    assert res.details["params_after"] < 0.4 * res.details["params_before"]
    assert res.details["eval_accuracy"] >= 0.95


def test_structured_cnn_rebuild_equals_the_original_with_those_channels_silenced(cnn_path: Path) -> None:
    """Before fine-tuning, the rebuilt model computes exactly what the original computes when the removed
    filters' outgoing weights are zero: slicing through BatchNormalization, pooling and Flatten is right."""
    from deployc.ml.channels import channel_graph
    from deployc.ml.prune import rebuild, structured_keep

    model = load(cnn_path)
    graph = channel_graph(model, "test")
    keep = structured_keep(graph, 0.5)
    small = rebuild(graph, keep)
    assert [small.get_layer(n).kernel.shape[-1] for n in ("conv1", "conv2", "fc", "out")] == [8, 8, 16, 10]
    assert small.get_layer("conv2").kernel.shape == (3, 3, 8, 8)
    assert small.get_layer("fc").kernel.shape == (4 * 4 * 8, 16)
    assert small.get_layer("bn1").get_weights()[0].shape == (8,)

    silenced = load(cnn_path)
    drop = {n: np.setdiff1d(np.arange(model.get_layer(n).kernel.shape[-1]), k) for n, k in keep.items()}
    k2, b2 = silenced.get_layer("conv2").get_weights()
    k2[:, :, drop["conv1"], :] = 0
    silenced.get_layer("conv2").set_weights([k2, b2])
    kf, bf = silenced.get_layer("fc").get_weights()
    kf[np.isin(np.arange(kf.shape[0]) % 16, drop["conv2"])] = 0  # Flatten of (4, 4, 16): channel = index % 16
    silenced.get_layer("fc").set_weights([kf, bf])
    ko, bo = silenced.get_layer("out").get_weights()
    ko[drop["fc"]] = 0
    silenced.get_layer("out").set_weights([ko, bo])
    x = digits(image=True)[2]
    np.testing.assert_allclose(small.predict(x, verbose=0), silenced.predict(x, verbose=0), atol=1e-5)


def test_structured_cnn_pass_fine_tunes_to_a_stated_accuracy(cnn_path: Path, tmp_path: Path) -> None:
    res = run(cnn_path, tmp_path, image=True, sparsity=0.5, structured=True, epochs=3)
    assert res.details["widths_after"] == {"conv1": 8, "conv2": 8, "fc": 16, "out": 10}
    assert res.details["eval_accuracy"] >= 0.93
    assert res.details["batchnorm_folded"] == ["bn1"]  # into conv1, after fine-tuning
    assert "bn1" not in [layer.name for layer in load(res.model).layers]


def residual(tmp: Path) -> Path:
    import keras

    inp = keras.Input((64,))
    h = keras.layers.Dense(64, activation="relu", name="h")(inp)
    s = keras.layers.Add(name="skip_add")([inp, h])
    return save(keras.Model(inp, keras.layers.Dense(10, activation="softmax")(s)), tmp / "residual.keras")


def test_structured_keeps_a_layer_added_to_the_input_whole(tmp_path: Path) -> None:
    """`h` is added to the model's input, whose channels are the data: its units are tied to them and stay."""
    res = run(residual(tmp_path), tmp_path / "out", structured=True, epochs=0)
    assert res.details["widths_after"]["h"] == 64
    assert "h" in res.details["channel_groups"]["unpruned"]


def test_structured_prunes_layers_joined_by_add_jointly(tmp_path: Path) -> None:
    import keras

    from deployc.ml.channels import channel_graph
    from deployc.ml.prune import group_scores, structured_keep

    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    a = keras.layers.Dense(32, activation="relu", name="a")(inp)
    b = keras.layers.Dense(32, name="b")(a)
    c = keras.layers.Dense(32, name="c")(inp)
    s = keras.layers.Add(name="join")([b, c])
    model = keras.Model(inp, keras.layers.Dense(10, name="out")(keras.layers.ReLU()(s)))
    graph = channel_graph(model, "test")
    keep = structured_keep(graph, 0.75)
    assert len(keep["a"]) == len(keep["b"]) == 8
    np.testing.assert_array_equal(keep["b"], keep["c"])
    kb, kc = (np.linalg.norm(model.get_layer(n).kernel.numpy(), axis=0) for n in "bc")
    want = kb / kb.mean() + kc / kc.mean()  # summed importance, each member normalized to mean 1
    np.testing.assert_allclose(group_scores(graph)["b"], want, rtol=1e-5)
    np.testing.assert_array_equal(keep["b"], np.sort(np.argsort(-want)[:8]))
    res = run(save(model, tmp_path / "m.keras"), tmp_path / "out", sparsity=0.75, structured=True, epochs=1)
    assert res.details["widths_after"] == {"a": 8, "b": 8, "c": 8, "out": 10}
    assert res.details["channel_groups"]["tied"] == [["b", "c"]]


def test_unstructured_accepts_branches(tmp_path: Path) -> None:
    res = run(residual(tmp_path), tmp_path / "out", sparsity=0.5, epochs=0)
    assert res.details["sparsity"]["per_layer"]["h"] == 0.5


def test_unsupported_layer_is_named(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((8, 8)), keras.layers.LSTM(8, name="rnn"),
                              keras.layers.Dense(10, name="out")])
    path = save(model, tmp_path / "rnn.keras")
    with pytest.raises(InputError, match="'rnn' \\(LSTM\\) is not supported"):
        from deployc.ml.channels import channel_graph

        channel_graph(load(path), "structured pruning")


def test_a_model_without_dense_or_conv_is_refused(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="flat"),
                              keras.layers.Softmax(name="sm")], name="nothing")
    path = save(model, tmp_path / "m.keras")
    with pytest.raises(InputError, match="no Dense or Conv layer"):
        run(path, tmp_path / "out", image=True, epochs=0)


def test_training_data_needs_labels(mlp_path: Path, tmp_path: Path) -> None:
    from deployc.passes.base import PassInput
    from deployc.passes.prune import PrunePass

    inp = pass_input(mlp_path, tmp_path, PruneConfig())
    unlabelled = PassInput(**{**inp.__dict__, "data": lambda which: (digits()[0], None)})
    with pytest.raises(InputError, match="data.train.y"):
        PrunePass().apply(unlabelled)


def test_one_input_may_come_as_a_mapping(mlp_path: Path, tmp_path: Path) -> None:
    from deployc.ml.feeds import ANY_INPUT
    from deployc.passes.base import PassInput
    from deployc.passes.prune import PrunePass

    inp = pass_input(mlp_path, tmp_path, PruneConfig(structured=True, epochs=0))
    for i, x in enumerate(({"pixels": digits()[0]}, {ANY_INPUT: digits()[0]})):
        mapped = PassInput(**{**inp.__dict__, "out_dir": tmp_path / str(i),
                              "data": lambda which, x=x: (x, digits()[1])})
        assert PrunePass().apply(mapped).details["widths_after"]["hidden0"] == 32


def test_shared_layer_is_refused_and_named(tmp_path: Path) -> None:
    import keras

    from deployc.ml.channels import channel_graph

    inp = keras.Input((64,))
    shared = keras.layers.Dense(64, activation="relu", name="twice")
    out = keras.layers.Dense(10, name="out")(shared(shared(inp)))
    path = save(keras.Model(inp, out), tmp_path / "shared.keras")
    with pytest.raises(InputError, match="'twice' \\(Dense\\) is called 2 times \\(shared layers"):
        channel_graph(load(path), "structured pruning")
